import COpenSSL
import CEdgeShims
#if canImport(Glibc)
import Glibc
#endif

/// A client CA bundle as read once for one server context: its certificates and the
/// hash of its bytes.
///
/// The context verifies against exactly the bytes it hashed (nothing is read twice),
/// and the hash goes into the session-ID context, so a session made under one bundle
/// never resumes under another, even when the file keeps its path and size.
package struct ClientTrust: Sendable {
    let path: String
    let certificates: [X509Certificate]
    let bytesSHA256: String
    /// The CRLs clients are checked against, each signed by a CA of the bundle.
    let revocation: RevocationListFile?

    /// The bundle and CRL file `policy` names, read once; nil when it names no bundle.
    package static func load(for policy: TLSServerPolicy) throws -> ClientTrust? {
        try policy.clientCAFile.map { try ClientTrust(caFile: $0, crlFile: policy.clientCRLFile) }
    }

    init(caFile: String, crlFile: String? = nil) throws {
        let bytes: [UInt8]
        do {
            bytes = try readRegularFile(caFile)
        } catch {
            throw TLSError.configuration("cannot load client CA bundle \(error)")
        }
        let bundle: PEMBundle
        do {
            bundle = try PEMBundle.parse(bytes)
        } catch let error as TLSError {
            throw TLSError.configuration("cannot load client CA bundle \(caFile): \(error.reason)")
        }
        guard !bundle.certificates.isEmpty else {
            throw TLSError.configuration("cannot load client CA bundle \(caFile): it holds no certificate")
        }
        self.path = caFile
        self.certificates = bundle.certificates
        self.bytesSHA256 = sha256Hex(bytes)
        self.revocation = try crlFile.map { try RevocationListFile(path: $0, issuers: bundle.certificates) }
    }

    /// The session-ID context for `policy` under this bundle: everything that decides
    /// which client is admitted (the bundle's bytes, whether a certificate is
    /// required, the allow list, the CRLs' bytes and how they are checked), hashed to fit
    /// OpenSSL's 32 bytes.
    func sessionContext(_ policy: TLSServerPolicy) -> String {
        // Under crl_strict a stale list refuses every client; the watch builds the contexts
        // again when one goes stale, and this bit keeps the sessions made before from resuming.
        let staleStrict = policy.clientCRLStrict && (self.revocation?.isStale(now: Int64(time(nil))) ?? false)
        let revocation = self.revocation.map { "\($0.bytesSHA256)|\(policy.clientCRLChain)|\(policy.clientCRLStrict)|\(staleStrict)" } ?? "none"
        let admission = "\(self.bytesSHA256)|\(policy.requireClientCertificate)|\(String(reflecting: policy.clientAllow))|\(revocation)"
        return String(sha256Hex(Array(admission.utf8)).prefix(24))
    }

    /// Trusts the bundle's certificates for client verification and names them to
    /// clients as the CAs to choose a certificate by.
    func install(in ctx: OpaquePointer, crlChain: Bool = false) throws {
        guard let store = SSL_CTX_get_cert_store(ctx) else {
            throw TLSError.configuration("cannot load client CA bundle \(self.path): the context has no certificate store")
        }
        ERR_clear_error()
        for certificate in self.certificates {
            guard X509_STORE_add_cert(store, certificate.pointer) == 1,
                  SSL_CTX_add_client_CA(ctx, certificate.pointer) == 1 else {
                throw TLSError.configuration("cannot load client CA bundle \(self.path): \(openSSLErrorQueueDescription())")
            }
        }
        try self.revocation?.install(in: store, chain: crlChain)
    }
}
