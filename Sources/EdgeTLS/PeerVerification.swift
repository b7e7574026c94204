import COpenSSL

#if canImport(Glibc)
import Glibc
#endif

/// The names an upstream's certificate may hold, each accepted on its own.
///
/// OpenSSL's own host check cannot express "any of these names": its verify
/// parameters keep DNS names (either-or) and one IP address apart, so a DNS name
/// and an IP both had to match and of two IPs only the last counted. The verify
/// callback checks the leaf itself instead, after the chain verified, against
/// every name in turn. Owned by the `SSL` (`OwnedExData.peerNames`).
final class PeerNameCheck: Sendable {
    let names: [String]
    /// Whether a certificate without subject alternative names may match by its
    /// subject CN (OpenSSL's fallback; browsers, Go and rustls refuse it).
    let allowCommonName: Bool

    init(names: [String], allowCommonName: Bool) {
        self.names = names
        self.allowCommonName = allowCommonName
    }

    /// Whether any name matches the leaf's subject alternative names (or its CN, when allowed).
    func accepts(_ leaf: OpaquePointer) -> Bool {
        var flags = UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS)
        if !self.allowCommonName { flags |= UInt32(X509_CHECK_FLAG_NEVER_CHECK_SUBJECT) }
        for name in self.names {
            if isIPAddress(name) {
                if X509_check_ip_asc(leaf, name, flags) == 1 { return true }
            } else if X509_check_host(leaf, name, name.utf8.count, flags, nil) == 1 {
                return true
            }
        }
        return false
    }

    var allAddresses: Bool { self.names.allSatisfy(isIPAddress) }
}

/// Marks an `SSL` whose peer asked for a client certificate (a non-null value; nothing to free).
let certificateRequestedIndex: Int32 = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL, 0, nil, nil, nil, nil)

/// Called by OpenSSL on a client connection when the server sends a CertificateRequest
/// (and only then), whether or not a certificate is configured: a refusal can then say
/// whether one was asked for.
let certificateRequestCallback: @convention(c) (OpaquePointer?, UnsafeMutableRawPointer?) -> Int32 = { ssl, _ in
    if let ssl { _ = SSL_set_ex_data(ssl, certificateRequestedIndex, UnsafeMutableRawPointer(bitPattern: 1)) }
    return 1
}

/// Keeps the leaf a peer presented, so that a refusal can name its subject and names
/// (OpenSSL drops the peer certificate when verification fails).
func rememberPresentedLeaf(_ ssl: OpaquePointer, store: OpaquePointer) {
    if SSL_get_ex_data(ssl, presentedLeafIndex) == nil, let presented = X509_STORE_CTX_get0_cert(store) {
        X509_up_ref(presented)
        _ = SSL_set_ex_data(ssl, presentedLeafIndex, UnsafeMutableRawPointer(presented))
    }
}

/// OpenSSL's verify callback on upstream connections: once the chain verified, the
/// leaf must match one of the connection's `PeerNameCheck` names.
let serverNameVerifyCallback: @convention(c) (Int32, OpaquePointer?) -> Int32 = { ok, store in
    guard let store, let rawSSL = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()) else { return ok }
    let ssl = OpaquePointer(rawSSL)
    rememberPresentedLeaf(ssl, store: store)
    if let verdict = revocationVerdict(ok, store: store, ssl: ssl) { return verdict }
    guard X509_STORE_CTX_get_error_depth(store) == 0 else { return ok }
    // Set only on connections that installed a check: without one, refuse rather than
    // accept a certificate whose names nobody looked at.
    guard let raw = SSL_get_ex_data(ssl, OwnedExData.peerNames), let leaf = X509_STORE_CTX_get_current_cert(store) else {
        X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION)
        return 0
    }
    let check = Unmanaged<PeerNameCheck>.fromOpaque(raw).takeUnretainedValue()
    if check.accepts(leaf) { return 1 }
    X509_STORE_CTX_set_error(store, check.allAddresses ? X509_V_ERR_IP_ADDRESS_MISMATCH : X509_V_ERR_HOSTNAME_MISMATCH)
    return 0
}

/// Why an upstream handshake failed, as a short label for metrics
/// (`edge_upstream_tls_handshake_failures_total{reason}`): bounded, stable, no names.
package enum UpstreamHandshakeFailure: String, Sendable, CaseIterable {
    case certificateExpired = "certificate_expired"
    case certificateNotYetValid = "certificate_not_yet_valid"
    /// The upstream's certificate (or, with `crl_check: chain`, one of its chain) is in `tls.crl_file`.
    case certificateRevoked = "certificate_revoked"
    /// The chain does not lead to a trusted CA (unknown issuer, self-signed, missing intermediate).
    case untrusted
    case nameMismatch = "name_mismatch"
    case certificateInvalid = "certificate_invalid"
    /// The upstream asked for a client certificate and none was configured.
    case clientCertificateRequired = "client_certificate_required"
    /// The upstream refused the client certificate that was sent.
    case clientCertificateRefused = "client_certificate_refused"
    case protocolVersion = "protocol_version"
    /// Another alert from the upstream (no shared cipher or group, ...).
    case handshakeFailure = "handshake_failure"
    case timeout
    /// The upstream closed the connection during the handshake.
    case closed
    case other

    static func classify(verifyResult verify: Int) -> UpstreamHandshakeFailure {
        switch Int32(verify) {
        case X509_V_ERR_CERT_HAS_EXPIRED: return .certificateExpired
        case X509_V_ERR_CERT_NOT_YET_VALID: return .certificateNotYetValid
        case X509_V_ERR_CERT_REVOKED: return .certificateRevoked
        case X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH: return .nameMismatch
        case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
             X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT, X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN,
             X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
            return .untrusted
        default: return .certificateInvalid
        }
    }
}
