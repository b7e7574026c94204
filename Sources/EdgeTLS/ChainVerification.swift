import COpenSSL
import CEdgeShims

/// Verifies a served chain (leaf first) as a TLS client would: against the system
/// trust store, or the CA bundle at `caFile`, for the TLS server purpose.
///
/// Returns nil when the chain verifies, else OpenSSL's reason. Expiry is not part
/// of this check (the expiry monitor reports it separately), so a chain is judged
/// on completeness and trust alone.
public func verifyServedChain(_ chain: [X509Certificate], caFile: String?) -> String? {
    guard let leaf = chain.first else { return "empty chain" }
    ERR_clear_error()
    defer { ERR_clear_error() }
    guard let store = X509_STORE_new() else { return "out of memory" }
    defer { X509_STORE_free(store) }
    if let caFile {
        guard X509_STORE_load_file(store, caFile) == 1 else { return "cannot load CA bundle \(caFile)" }
    } else {
        guard X509_STORE_set_default_paths(store) == 1 else { return "cannot load the system trust store" }
    }
    guard let untrusted = edge_sk_X509_new_null() else { return "out of memory" }
    defer { edge_sk_X509_free(untrusted) }
    for cert in chain.dropFirst() { _ = edge_sk_X509_push(untrusted, cert.pointer) }
    guard let context = X509_STORE_CTX_new() else { return "out of memory" }
    defer { X509_STORE_CTX_free(context) }
    guard X509_STORE_CTX_init(context, store, leaf.pointer, untrusted) == 1 else { return "cannot initialise verification" }
    X509_STORE_CTX_set_purpose(context, X509_PURPOSE_SSL_SERVER)
    // Judge trust and completeness, not dates: expiry has its own report.
    X509_STORE_CTX_set_flags(context, UInt(X509_V_FLAG_NO_CHECK_TIME))
    if X509_verify_cert(context) == 1 { return nil }
    let code = X509_STORE_CTX_get_error(context)
    let text = X509_verify_cert_error_string(Int(code)).map { String(cString: $0) } ?? "error \(code)"
    if code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY || code == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT {
        // Same code for a missing intermediate and an untrusted root: the certificate
        // whose issuer is missing tells them apart.
        let depth = Int(X509_STORE_CTX_get_error_depth(context))
        let stuck = depth < chain.count ? chain[depth] : chain[chain.count - 1]
        if X509_check_ca(stuck.pointer) != 0 {
            return "untrusted root: the issuer of '\(stuck.subject)' (\(stuck.issuer)) is not in the trust store"
        }
        return "incomplete chain: the intermediate that issued '\(stuck.subject)' (\(stuck.issuer)) is not served (is cert.pem configured instead of fullchain.pem?)"
    }
    return text
}
