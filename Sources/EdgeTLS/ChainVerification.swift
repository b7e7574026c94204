import COpenSSL
import CEdgeShims

#if canImport(Glibc)
import Glibc
#endif

/// Verifies a served chain (leaf first) as a TLS client would: against the system
/// trust store, or the CA bundle at `caFile`, for the TLS server purpose.
///
/// Returns nil when the chain verifies, else OpenSSL's reason. Expiry is not part
/// of this check (the expiry monitor reports it separately), so a chain is judged
/// on completeness and trust alone.
///
/// `clientCertificate`: the chain is a client certificate's (upstream mutual TLS),
/// checked for the TLS client purpose.
package func verifyServedChain(_ chain: [X509Certificate], caFile: String?, clientCertificate: Bool = false) -> String? {
    guard let leaf = chain.first else { return "empty chain" }
    ERR_clear_error()
    defer { ERR_clear_error() }
    let store: OpaquePointer
    switch TrustStoreCache.shared.store(caFile: caFile) {
    case .success(let loaded): store = loaded
    case .failure(let reason): return reason
    }
    defer { X509_STORE_free(store) }  // drops the reference the cache handed out
    guard let untrusted = edge_sk_X509_new_null() else { return "out of memory" }
    defer { edge_sk_X509_free(untrusted) }
    for cert in chain.dropFirst() { _ = edge_sk_X509_push(untrusted, cert.pointer) }
    guard let context = X509_STORE_CTX_new() else { return "out of memory" }
    defer { X509_STORE_CTX_free(context) }
    guard X509_STORE_CTX_init(context, store, leaf.pointer, untrusted) == 1 else { return "cannot initialise verification" }
    X509_STORE_CTX_set_purpose(context, clientCertificate ? X509_PURPOSE_SSL_CLIENT : X509_PURPOSE_SSL_SERVER)
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

/// Loaded trust stores, one per CA file (nil: the system store), reused across reloads:
/// parsing a system CA bundle costs far more than verifying a chain.
///
/// `@unchecked Sendable`: the table is guarded by `lock`; an `X509_STORE` is only read
/// after loading (OpenSSL locks its lookups), and each caller gets its own reference.
final class TrustStoreCache: @unchecked Sendable {
    static let shared = TrustStoreCache()

    enum Lookup {
        case success(OpaquePointer)
        case failure(String)
    }

    private struct Entry {
        var store: OpaquePointer
        var modified: Int
    }

    private var entries: [String: Entry] = [:]
    private let lock = PThreadLock()

    /// A referenced store for `caFile`; the caller frees it. Reloaded when the file changes.
    func store(caFile: String?) -> Lookup {
        let key = caFile ?? "<system>"
        let modified = caFile.map(modificationTime) ?? 0
        return self.lock.withLock {
            if let entry = self.entries[key], entry.modified == modified {
                _ = X509_STORE_up_ref(entry.store)
                return .success(entry.store)
            }
            guard let store = X509_STORE_new() else { return .failure("out of memory") }
            if let caFile {
                guard X509_STORE_load_file(store, caFile) == 1 else {
                    X509_STORE_free(store)
                    return .failure("cannot load CA bundle \(caFile)")
                }
            } else {
                guard X509_STORE_set_default_paths(store) == 1 else {
                    X509_STORE_free(store)
                    return .failure("cannot load the system trust store")
                }
            }
            if let old = self.entries[key] { X509_STORE_free(old.store) }
            self.entries[key] = Entry(store: store, modified: modified)
            _ = X509_STORE_up_ref(store)
            return .success(store)
        }
    }
}

private func modificationTime(_ path: String) -> Int {
    var st = stat()
    guard stat(path, &st) == 0 else { return -1 }
    return Int(st.st_mtim.tv_sec) &* 1_000_000_000 &+ Int(st.st_mtim.tv_nsec)
}
