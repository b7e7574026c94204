import COpenSSL
import CEdgeShims

/// One certificate revocation list, owned and parsed once.
///
/// `@unchecked Sendable`: the `X509_CRL` is never mutated after parsing, and the store
/// it is added to takes its own reference.
package final class RevocationList: @unchecked Sendable {
    let pointer: OpaquePointer
    /// The issuing CA's name (RFC 2253).
    package let issuer: String
    package let thisUpdate: Int64
    /// nil: the CRL names no next update (it never goes stale).
    package let nextUpdate: Int64?
    package let revokedCount: Int

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
        self.issuer = X509Certificate.nameString(X509_CRL_get_issuer(pointer))
        self.thisUpdate = X509Certificate.epochSeconds(X509_CRL_get0_lastUpdate(pointer))
        self.nextUpdate = X509_CRL_get0_nextUpdate(pointer).map { X509Certificate.epochSeconds($0) }
        self.revokedCount = X509_CRL_get_REVOKED(pointer).map { Int(edge_sk_X509_REVOKED_num($0)) } ?? 0
    }

    deinit { X509_CRL_free(self.pointer) }

    /// Past its next update: revocations since are not in it.
    package func isStale(now: Int64) -> Bool { self.nextUpdate.map { now > $0 } ?? false }
}

/// A CRL file as read once for one server context: its lists and the hash of its bytes.
///
/// Like `ClientTrust`, the context checks against exactly the bytes it hashed, and the
/// hash goes into the session-ID context: a session made before a revocation never
/// resumes after the new list is in place.
package struct RevocationListFile: Sendable {
    package let path: String
    package let lists: [RevocationList]
    let bytesSHA256: String

    /// The earliest next update of its lists: when the file goes stale.
    package var nextUpdate: Int64? { self.lists.compactMap(\.nextUpdate).min() }
    package func isStale(now: Int64) -> Bool { self.lists.contains { $0.isStale(now: now) } }

    /// Reads and checks `path`: PEM `X509 CRL` blocks, each signed by one of `issuers`
    /// (a CRL no trusted CA signed would make OpenSSL refuse every peer it covers); nil:
    /// the trust is the system store, and OpenSSL checks the signature at each handshake.
    package init(path: String, issuers: [X509Certificate]?) throws {
        let bytes: [UInt8]
        do {
            bytes = try readRegularFile(path)
        } catch {
            throw TLSError.configuration("cannot load CRL file \(error)")
        }
        let lists = try Self.parse(bytes, path: path)
        for list in lists {
            guard let issuers else { break }
            // A CRL of a CA the bundle does not hold (an intermediate the peers send) is
            // checked by OpenSSL at each handshake, against the intermediate presented.
            let named = issuers.filter { X509_NAME_cmp(X509_CRL_get_issuer(list.pointer), X509_get_subject_name($0.pointer)) == 0 }
            guard !named.isEmpty else { continue }
            // Any CA of that name (a key rollover keeps two).
            guard let signer = named.first(where: { X509_get0_pubkey($0.pointer).map { X509_CRL_verify(list.pointer, $0) == 1 } ?? false }) else {
                ERR_clear_error()
                throw TLSError.configuration("CRL file \(path): the CRL of \(list.issuer) is not signed by the key of that CA in the bundle")
            }
            ERR_clear_error()
            // Without cRLSign in its key usage, OpenSSL refuses every certificate the list covers.
            guard X509_get_key_usage(signer.pointer) & UInt32(KU_CRL_SIGN) != 0 else {
                throw TLSError.configuration("CRL file \(path): the key usage of \(list.issuer) does not include cRLSign, so OpenSSL would refuse every certificate it covers")
            }
        }
        self.path = path
        self.lists = lists
        self.bytesSHA256 = sha256Hex(bytes)
    }

    /// Every `X509 CRL` block of PEM text; throws with the file and the reason.
    package static func parse(_ bytes: [UInt8], path: String) throws -> [RevocationList] {
        ERR_clear_error()
        var lists: [RevocationList] = []
        try bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { throw TLSError.configuration("out of memory") }
            defer { BIO_free(bio) }
            while true {
                guard let crl = PEM_read_bio_X509_CRL(bio, nil, nil, nil) else {
                    let code = ERR_peek_last_error()
                    ERR_clear_error()
                    if ERR_GET_REASON_shim(code) == PEM_R_NO_START_LINE { break }
                    throw TLSError.configuration("CRL file \(path): malformed PEM (truncated or corrupt X509 CRL block)")
                }
                lists.append(RevocationList(taking: crl))
            }
        }
        guard !lists.isEmpty else { throw TLSError.configuration("CRL file \(path): no X509 CRL block found (not a PEM CRL)") }
        return lists
    }

    /// Adds the lists to a context's store and turns checking on: for the client's
    /// certificate only, or (`chain`) for every certificate of its chain.
    func install(in store: OpaquePointer, chain: Bool) throws {
        ERR_clear_error()
        for list in self.lists {
            guard X509_STORE_add_crl(store, list.pointer) == 1 else {
                throw TLSError.configuration("CRL file \(self.path): \(openSSLErrorQueueDescription())")
            }
        }
        let flags = UInt(X509_V_FLAG_CRL_CHECK) | (chain ? UInt(X509_V_FLAG_CRL_CHECK_ALL) : 0)
        _ = X509_STORE_set_flags(store, flags)
    }
}

/// What a verify callback does with OpenSSL's verdict on a CRL: a list past its next update
/// (or not yet valid) is still looked in, and refuses only with `crl_strict` (the context's
/// `ClientVerificationBox`); a revoked certificate is remembered to name in the refusal.
/// Returns the callback's answer when it decided, nil to go on.
func revocationVerdict(_ ok: Int32, store: OpaquePointer, ssl: OpaquePointer) -> Int32? {
    guard ok != 1 else { return nil }
    let error = X509_STORE_CTX_get_error(store)
    if error == X509_V_ERR_CRL_HAS_EXPIRED || error == X509_V_ERR_CRL_NOT_YET_VALID,
       let raw = SSL_get_SSL_CTX(ssl).flatMap({ SSL_CTX_get_ex_data($0, OwnedExData.clientVerification) }),
       !Unmanaged<ClientVerificationBox>.fromOpaque(raw).takeUnretainedValue().crlStrict {
        // OpenSSL goes on to look the certificate up in that list; the verdict is that lookup's.
        X509_STORE_CTX_set_error(store, X509_V_OK)
        return 1
    }
    if error == X509_V_ERR_CERT_REVOKED, let current = X509_STORE_CTX_get_current_cert(store) {
        X509_up_ref(current)
        let certificate = X509Certificate(taking: current)
        OwnedExData.replace(RevokedCertificate(serial: certificate.serialNumberHex, subject: certificate.subject,
                                               depth: X509_STORE_CTX_get_error_depth(store)), on: ssl, index: OwnedExData.revokedCertificate)
    }
    return ok
}

/// The verify callback of upstream contexts with a CRL, for connections that check no names.
let upstreamCRLVerifyCallback: @convention(c) (Int32, OpaquePointer?) -> Int32 = { ok, store in
    guard let store, let rawSSL = X509_STORE_CTX_get_ex_data(store, SSL_get_ex_data_X509_STORE_CTX_idx()) else { return ok }
    let ssl = OpaquePointer(rawSSL)
    rememberPresentedLeaf(ssl, store: store)
    return revocationVerdict(ok, store: store, ssl: ssl) ?? ok
}
