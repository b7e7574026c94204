import COpenSSL
import CEdgeShims

/// Which verified client certificates a listener admits. A certificate is admitted
/// when any entry matches; an allow list with no entries admits every verified certificate.
package struct ClientAllowList: Sendable, Hashable {
    package var dnsNames: [String] = []
    package var uris: [String] = []
    package var commonNames: [String] = []
    /// SHA-256 of the SubjectPublicKeyInfo, hex (colons and case ignored).
    package var spkiSHA256: [String] = []

    package init() {}

    var isEmpty: Bool { self.dnsNames.isEmpty && self.uris.isEmpty && self.commonNames.isEmpty && self.spkiSHA256.isEmpty }

    package func admits(_ certificate: X509Certificate) -> Bool {
        if self.isEmpty { return true }
        for name in certificate.subjectAlternativeNames {
            switch name {
            case .dns(let dns) where self.dnsNames.contains(where: { $0.lowercased() == dns.lowercased() }): return true
            case .uri(let uri) where self.uris.contains(uri): return true
            default: continue
            }
        }
        if let cn = certificate.commonName, self.commonNames.contains(cn) { return true }
        if !self.spkiSHA256.isEmpty {
            let pin = certificate.spkiSHA256
            if self.spkiSHA256.contains(where: { $0.replacingColons.lowercased() == pin }) { return true }
        }
        return false
    }
}

extension String {
    var replacingColons: String { String(self.filter { $0 != ":" }) }
}

extension X509Certificate {
    /// SHA-256 of the DER SubjectPublicKeyInfo, lower-case hex (the value of an SPKI pin).
    package var spkiSHA256: String {
        guard let key = X509_get0_pubkey(self.pointer) else { return "" }
        var out: UnsafeMutablePointer<UInt8>? = nil
        let length = i2d_PUBKEY(key, &out)
        guard length > 0, let out else { return "" }
        defer { edge_OPENSSL_free(out) }
        return sha256Hex(Array(UnsafeBufferPointer(start: out, count: Int(length))))
    }

    /// Envoy's x-forwarded-client-cert element for this certificate.
    ///
    /// Every value is quoted as Envoy's format says when it holds `,`, `;`, `=` or `"`
    /// (with `"` and `\` escaped), so a SAN cannot add a `DNS=` element of its own; the
    /// subject is always quoted. A control character (a CR or LF in a SAN of a trusted
    /// CA's certificate) is percent-encoded: nothing from a certificate can end a header line.
    package var forwardedClientCert: String {
        let hash = self.sha256Fingerprint.replacingColons.lowercased()
        var parts = ["Hash=\(hash)", "Subject=" + forwardedClientCertValue(self.subject, alwaysQuoted: true)]
        for name in self.subjectAlternativeNames {
            switch name {
            case .uri(let uri): parts.append("URI=" + forwardedClientCertValue(uri))
            case .dns(let dns): parts.append("DNS=" + forwardedClientCertValue(dns))
            default: continue
            }
        }
        return parts.joined(separator: ";")
    }
}

/// One value of an `x-forwarded-client-cert` element, quoted and escaped as Envoy does.
package func forwardedClientCertValue(_ value: String, alwaysQuoted: Bool = false) -> String {
    var quoted = alwaysQuoted
    var out = ""
    for scalar in value.unicodeScalars {
        switch scalar.value {
        case 0x2C, 0x3B, 0x3D:  // , ; =
            quoted = true
            out.unicodeScalars.append(scalar)
        case 0x22, 0x5C:  // " \
            quoted = true
            out += "\\" + String(scalar)
        case 0..<0x20, 0x7F:
            out += scalar.value < 0x10 ? "%0" : "%"
            out += String(scalar.value, radix: 16, uppercase: true)
        default:
            out.unicodeScalars.append(scalar)
        }
    }
    return quoted ? "\"" + out + "\"" : out
}

/// What a server context's verify callback applies beyond the chain: the listener's allow
/// list and how a stale CRL is taken; owned by the `SSL_CTX` (`OwnedExData.clientVerification`).
final class ClientVerificationBox: Sendable {
    let allow: ClientAllowList?
    let crlStrict: Bool
    init(allow: ClientAllowList?, crlStrict: Bool) {
        self.allow = allow
        self.crlStrict = crlStrict
    }
}

/// A certificate the verify callback found revoked: named in the refusal (owned by the `SSL`).
final class RevokedCertificate: Sendable {
    let serial: String
    let subject: String
    let depth: Int32
    init(serial: String, subject: String, depth: Int32) {
        self.serial = serial
        self.subject = subject
        self.depth = depth
    }
}

/// The ex_data index holding the client leaf the verify callback saw (one reference, freed with the SSL).
let presentedLeafIndex: Int32 = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL, 0, nil, nil, nil, nil)

/// OpenSSL's verify callback on server contexts with client authentication: a CRL past
/// its next update is still checked against, and refuses only with `crl_strict`; a revoked
/// certificate is remembered for the refusal; after the chain verified, the leaf must pass
/// the allow list of the context the connection was switched to.
let clientVerifyCallback: @convention(c) (Int32, OpaquePointer?) -> Int32 = { ok, store in
    guard let store, let rawSSL = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()) else { return ok }
    let ssl = OpaquePointer(rawSSL)
    rememberPresentedLeaf(ssl, store: store)
    if let verdict = revocationVerdict(ok, store: store, ssl: ssl) { return verdict }
    let box = SSL_get_SSL_CTX(ssl).flatMap { SSL_CTX_get_ex_data($0, OwnedExData.clientVerification) }
        .map { Unmanaged<ClientVerificationBox>.fromOpaque($0).takeUnretainedValue() }
    guard X509_STORE_CTX_get_error_depth(store) == 0, let allow = box?.allow,
          let leaf = X509_STORE_CTX_get_current_cert(store) else { return ok }
    X509_up_ref(leaf)
    if allow.admits(X509Certificate(taking: leaf)) { return 1 }
    X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION)
    return 0
}
