import COpenSSL
import CEdgeShims
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// One `SSL` whose BIO reads and writes `ByteBuffer`s directly.
///
/// Not thread-safe: a connection belongs to one channel and is used on its event
/// loop only. It holds its initial context strongly, like swift-nio-ssl does, so
/// the `SSL_CTX` outlives the `SSL`.
///
/// A pair of `BIO_s_mem` would copy every record twice (buffer to BIO, BIO to
/// OpenSSL's record buffer, and the same on the way out) and keep each BIO's
/// largest size allocated for the connection's life. The `ByteBufferBIO` hands
/// OpenSSL the bytes NIO read and collects OpenSSL's output in a buffer that is
/// written to the socket as it is: one copy each way, nothing held while idle.
final class TLSConnection {
    enum Result {
        case complete
        case incomplete
        case failed(String)
    }

    enum ReadResult {
        case data(ByteBuffer)
        case wantMore
        case closeNotify
        case failed(String)
    }

    let ssl: OpaquePointer
    let context: TLSContext
    /// Where a client connection's sessions go and come from; kept alive as long as the `SSL`.
    private let sessionSlot: TLSSessionSlot?
    /// Ciphertext from the network that OpenSSL has not read yet (usually NIO's read buffer itself).
    fileprivate var inbound = ByteBuffer()
    /// Ciphertext OpenSSL wrote, not yet taken for the network (empty, with no
    /// storage, between writes: an idle connection holds no buffer).
    fileprivate var outbound = ByteBuffer()
    /// The event-loop thread's shared buffers, looked up at the first read or write
    /// (which happens on the channel's loop).
    fileprivate lazy var threadBuffers = TLSThreadBuffers.current

    /// `verifyHostnames`: on a client connection whose context verifies, the names of which
    /// the peer's certificate must hold one (each checked on its own, see `PeerNameCheck`);
    /// `allowCommonName` lets a certificate without subject alternative names match by its CN.
    init(context: TLSContext, serverName: String? = nil, verifyHostnames: [String] = [], allowCommonName: Bool = false,
         sessionSlot: TLSSessionSlot? = nil, alpn: [String]? = nil) throws {
        ERR_clear_error()
        guard let ssl = SSL_new(context.pointer) else {
            throw TLSError.configuration("SSL_new failed: \(openSSLErrorQueueDescription())")
        }
        if let alpn, !context.isServer {
            // Before `self.ssl` is set, so that failing frees the SSL once, here. OpenSSL
            // copies the list; 0 is success, unlike most of its calls.
            let wire = ALPNWireFormat.encode(alpn)
            guard SSL_set_alpn_protos(ssl, wire, UInt32(wire.count)) == 0 else {
                SSL_free(ssl)
                throw TLSError.configuration("SSL_set_alpn_protos failed: \(openSSLErrorQueueDescription())")
            }
        }
        guard let bio = BIO_new(ByteBufferBIO.method) else {
            SSL_free(ssl)
            throw TLSError.configuration("BIO_new failed: \(openSSLErrorQueueDescription())")
        }
        SSL_set_bio(ssl, bio, bio)  // one BIO both ways: SSL_free frees it once
        self.ssl = ssl
        self.context = context
        self.sessionSlot = sessionSlot
        // The BIO never outlives this object: SSL_free in deinit frees it.
        BIO_set_data(bio, Unmanaged.passUnretained(self).toOpaque())
        if context.isServer {
            SSL_set_accept_state(ssl)
        } else {
            SSL_set_connect_state(ssl)
            if let serverName, !serverName.isEmpty, !isIPAddress(serverName) {
                _ = edge_SSL_set_tlsext_host_name(ssl, serverName)
            }
            if let sessionSlot {
                _ = SSL_set_ex_data(ssl, sessionSlotIndex, Unmanaged.passUnretained(sessionSlot).toOpaque())
                sessionSlot.apply(to: ssl)
            }
            // Watches what arrives until the first plaintext (`classifyPostHandshakeRefusal`);
            // it reaches this object through the BIO, which the SSL frees before we go.
            SSL_set_msg_callback(ssl, upstreamMessageCallback)
            self.expectedNames = verifyHostnames
            self.allowCommonName = allowCommonName
            if !verifyHostnames.isEmpty, SSL_CTX_get_verify_mode(context.pointer) & SSL_VERIFY_PEER != 0 {
                OwnedExData.replace(PeerNameCheck(names: verifyHostnames, allowCommonName: allowCommonName), on: ssl, index: OwnedExData.peerNames)
                SSL_set_verify(ssl, SSL_VERIFY_PEER, serverNameVerifyCallback)
            }
        }
    }

    deinit {
        if let presented = SSL_get_ex_data(self.ssl, presentedLeafIndex) { X509_free(OpaquePointer(presented)) }
        SSL_free(self.ssl)  // frees the BIO
    }

    /// Feeds ciphertext from the network. Kept, not copied, unless a partial record is waiting.
    func consume(_ buffer: ByteBuffer) {
        if self.inbound.readableBytes == 0 {
            self.inbound = buffer
        } else {
            var buffer = buffer
            self.inbound.writeBuffer(&buffer)
        }
    }

    func doHandshake() -> Result {
        ERR_clear_error()
        let rc = SSL_do_handshake(self.ssl)
        if rc == 1 {
            self.handshakeCompleted = true
            return .complete
        }
        return self.classify(rc)
    }

    /// Reads one chunk of plaintext.
    func read() -> ReadResult {
        clearErrorQueue()
        // Plaintext never exceeds the ciphertext still buffered, nor one record.
        let buffered = self.inbound.readableBytes + Int(SSL_pending(self.ssl))
        // Read into the thread's plaintext buffer, which the last reader (of any
        // connection on this loop) has usually let go of by now.
        let buffers = self.threadBuffers
        var plaintext = buffers.plaintext.take(minimumCapacity: max(min(buffered, 16_384), 1_024))
        defer { buffers.plaintext.keep(plaintext) }
        var readBytes = 0
        let rc = plaintext.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { raw in
            let rc = SSL_read_ex(self.ssl, raw.baseAddress, raw.count, &readBytes)
            return rc == 1 ? readBytes : 0
        }
        if rc > 0 {
            if !self.receivedApplicationData {
                self.receivedApplicationData = true
                if !self.context.isServer { SSL_set_msg_callback(self.ssl, nil) }  // its question is answered
            }
            return .data(plaintext)
        }
        let error = SSL_get_error(self.ssl, 0)
        switch error {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .wantMore
        case SSL_ERROR_ZERO_RETURN:
            return .closeNotify
        default:
            let reason = self.reason(for: error)
            self.postHandshakeRefusal = self.classifyPostHandshakeRefusal()
            return .failed(reason)
        }
    }

    /// Encrypts all of `buffer` into the outbound BIO.
    func write(_ buffer: ByteBuffer) -> Result {
        var failure: Result = .complete
        buffer.withUnsafeReadableBytes { raw in
            guard let base = raw.baseAddress, raw.count > 0 else { return }
            clearErrorQueue()
            var written = 0
            if SSL_write_ex(self.ssl, base, raw.count, &written) != 1 || written != raw.count {
                failure = .failed(self.reason(for: SSL_get_error(self.ssl, 0)))
            }
        }
        return failure
    }

    /// Sends close_notify. `.complete` when the peer's close_notify was seen too.
    func shutdown() -> Result {
        ERR_clear_error()
        let rc = SSL_shutdown(self.ssl)
        if rc == 1 { return .complete }
        if rc == 0 { return .incomplete }
        let error = SSL_get_error(self.ssl, rc)
        if error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE { return .incomplete }
        return .failed(self.reason(for: error))
    }

    /// Takes every byte OpenSSL queued for the network. The buffer goes back to the
    /// thread's shared one, to be reused once the socket has written it.
    func takeOutbound() -> ByteBuffer? {
        guard self.outbound.readableBytes > 0 else { return nil }
        var ciphertext = ByteBuffer()
        swap(&ciphertext, &self.outbound)
        self.threadBuffers.ciphertext.keep(ciphertext)
        return ciphertext
    }

    /// Whether ciphertext or plaintext is still buffered: `read()` would do more than fail.
    var hasBufferedInput: Bool {
        self.inbound.readableBytes > 0 || SSL_has_pending(self.ssl) == 1
    }

    /// Frees OpenSSL's read and write record buffers (about 34 KB); the next read or write
    /// allocates them again. OpenSSL keeps them if a record is partly read or written.
    func releaseRecordBuffers() {
        _ = SSL_free_buffers(self.ssl)
    }

    var negotiatedProtocol: String? {
        var data: UnsafePointer<UInt8>? = nil
        var length: UInt32 = 0
        SSL_get0_alpn_selected(self.ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    /// The certificate the peer presented, if any (verified when the context verifies).
    var peerCertificate: X509Certificate? {
        guard let pointer = SSL_get1_peer_certificate(self.ssl) else { return nil }
        return X509Certificate(taking: pointer)
    }

    /// Whether the handshake resumed an earlier session.
    var sessionReused: Bool { SSL_session_reused(self.ssl) == 1 }

    var serverName: String? {
        SSL_get_servername(self.ssl, TLSEXT_NAMETYPE_host_name).map { String(cString: $0) }
    }

    private var expectedNames: [String] = []
    private var allowCommonName = false
    /// Why the last handshake of a client connection failed, for metrics.
    private(set) var upstreamFailure: UpstreamHandshakeFailure?
    /// Whether any plaintext came from the peer.
    private(set) var receivedApplicationData = false
    /// Whether our side of the handshake completed.
    fileprivate var handshakeCompleted = false
    /// On a client connection, until the first plaintext: a handshake message (a session
    /// ticket, a key update) arrived after our side of the handshake completed, and the
    /// last alert's description (`upstreamMessageCallback`).
    fileprivate var handshakeMessageAfterCompletion = false
    fileprivate var receivedAlert: UInt8?
    /// Set when a read failed because the upstream refused our client certificate after our
    /// side of the handshake (see `classifyPostHandshakeRefusal`).
    private(set) var postHandshakeRefusal: UpstreamHandshakeFailure?

    /// A client connection whose TLS 1.3 server asked for our certificate and has said
    /// nothing since our Finished: neither a session ticket (it accepted us) nor an alert.
    var awaitsClientCertificateVerdict: Bool {
        !self.context.isServer && self.handshakeCompleted && !self.receivedApplicationData && !self.handshakeMessageAfterCompletion
            && self.receivedAlert == nil && SSL_version(self.ssl) == TLS1_3_VERSION && SSL_get_ex_data(self.ssl, certificateRequestedIndex) != nil
    }

    /// TLS 1.3 checks the client certificate after the client's Finished: the server's
    /// refusal is the first thing the client reads, after its handshake "completed". Such
    /// a failure is the handshake's, and the server read none of the request (it reads
    /// nothing before the check), so the request may go to another backend. Only then:
    /// TLS 1.3, a certificate was asked for, a certificate alert, nothing read before it,
    /// not even a session ticket (an OpenSSL server sends those once it accepted us). With
    /// TLS 1.2 the server accepted our certificate before its Finished: a later alert may
    /// follow a request it acted on.
    private func classifyPostHandshakeRefusal() -> UpstreamHandshakeFailure? {
        guard !self.context.isServer, self.handshakeCompleted, !self.receivedApplicationData, !self.handshakeMessageAfterCompletion,
              SSL_version(self.ssl) == TLS1_3_VERSION, SSL_get_ex_data(self.ssl, certificateRequestedIndex) != nil,
              let alert = self.receivedAlert, certificateAlerts.contains(alert) else { return nil }
        return SSL_get_certificate(self.ssl) == nil ? .clientCertificateRequired : .clientCertificateRefused
    }

    /// Subject and names of the certificate the peer sent, for refusal logs.
    private var peerSubject: String {
        if let presented = SSL_get_ex_data(self.ssl, presentedLeafIndex) {
            let leaf = OpaquePointer(presented)
            X509_up_ref(leaf)
            let certificate = X509Certificate(taking: leaf)
            return "subject \(certificate.subject); names \(certificate.dnsNames.joined(separator: ", "))"
        }
        guard let chain = SSL_get_peer_cert_chain(self.ssl), edge_sk_X509_num(chain) > 0,
              let leaf = edge_sk_X509_value(chain, 0) else { return "no certificate" }
        X509_up_ref(leaf)
        return "subject \(X509Certificate(taking: leaf).subject); names \(self.peerNames)"
    }

    /// The DNS and IP names of the certificate the peer sent (verified or not).
    private var peerNames: String {
        guard let chain = SSL_get_peer_cert_chain(self.ssl), edge_sk_X509_num(chain) > 0,
              let leaf = edge_sk_X509_value(chain, 0) else { return "no names" }
        X509_up_ref(leaf)
        let certificate = X509Certificate(taking: leaf)
        let names = certificate.subjectAlternativeNames.map { name -> String in
            switch name {
            case .dns(let dns): return dns
            case .ip(let ip): return ip
            case .uri(let uri): return uri
            case .email(let email): return email
            }
        }
        if names.isEmpty { return "no subject alternative names (CN \(certificate.commonName ?? "none"))" }
        return names.joined(separator: ", ")
    }

    private func classify(_ rc: Int32) -> Result {
        let error = SSL_get_error(self.ssl, rc)
        switch error {
        case SSL_ERROR_WANT_READ, SSL_ERROR_WANT_WRITE:
            return .incomplete
        default:
            return .failed(self.reason(for: error))
        }
    }

    private func reason(for error: Int32) -> String {
        var reason = openSSLErrorQueueDescription(fallback: "SSL error \(error)")
        if self.context.isServer {
            let verify = SSL_get_verify_result(self.ssl)
            if verify == X509_V_ERR_APPLICATION_VERIFICATION {
                reason = "client certificate refused: not in client_auth.allow (\(self.peerSubject))"
            } else if verify == X509_V_ERR_CERT_REVOKED, let raw = SSL_get_ex_data(self.ssl, OwnedExData.revokedCertificate) {
                let revoked = Unmanaged<RevokedCertificate>.fromOpaque(raw).takeUnretainedValue()
                reason = revoked.depth == 0
                    ? "client certificate refused: revoked (serial \(revoked.serial), client_auth.crl_file) (\(self.peerSubject))"
                    : "client certificate refused: its issuer \(revoked.subject) is revoked (serial \(revoked.serial), client_auth.crl_file) (\(self.peerSubject))"
            } else if verify != X509_V_OK, let text = X509_verify_cert_error_string(verify) {
                reason = "client certificate refused: \(String(cString: text)) (\(self.peerSubject))"
            } else if reason.contains("peer did not return a certificate") {
                reason = "client certificate required but none was sent"
            }
        }
        if self.context.isServer, reason.contains("callback failed") {
            // Our servername callback refused the name (strict SNI).
            let name = self.serverName.map { "'\($0)'" } ?? "(none)"
            reason = "unrecognized server name \(name) refused (strict_sni)"
        }
        if !self.context.isServer, !self.receivedApplicationData {
            reason = self.upstreamReason(reason)
        }
        return reason
    }

    /// An upstream handshake failure, said with what was offered and checked: the
    /// versions, whether a client certificate was asked for and sent, the names each
    /// checked against the certificate's subject alternative names.
    private func upstreamReason(_ openSSLReason: String) -> String {
        // Without verify_cert the result is filled in but was never enforced: not the reason.
        let verifies = SSL_get_verify_mode(self.ssl) & SSL_VERIFY_PEER != 0
        let verify = verifies ? SSL_get_verify_result(self.ssl) : Int(X509_V_OK)
        if verify != X509_V_OK, let text = X509_verify_cert_error_string(verify) {
            self.upstreamFailure = .classify(verifyResult: verify)
            var reason = "certificate verify failed: \(String(cString: text))"
            if verify == X509_V_ERR_CERT_REVOKED, let raw = SSL_get_ex_data(self.ssl, OwnedExData.revokedCertificate) {
                let revoked = Unmanaged<RevokedCertificate>.fromOpaque(raw).takeUnretainedValue()
                reason += " (serial \(revoked.serial), \(revoked.subject), in tls.crl_file)"
            }
            if verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH {
                let checked = self.allowCommonName ? "subject alternative names (or CN, allow_common_name)" : "subject alternative names"
                reason += " (checked \(self.expectedNames.joined(separator: ", then ")) against the certificate's \(checked); it holds \(self.peerNames))"
            }
            return reason
        }
        let requested = SSL_get_ex_data(self.ssl, certificateRequestedIndex) != nil
        let sent = SSL_get_certificate(self.ssl) != nil
        let offered = self.context.offeredVersions
        let alert = openSSLReason.contains("alert")
        // "alert protocol version" from the upstream, or "unsupported protocol" here (it chose a version we do not offer).
        if openSSLReason.contains("protocol version") || openSSLReason.contains("unsupported protocol") {
            self.upstreamFailure = .protocolVersion
            return "the upstream accepts none of the TLS versions offered (\(offered); min_version sets the lowest) (\(openSSLReason))"
        }
        if requested && !sent && alert {
            self.upstreamFailure = .clientCertificateRequired
            return "the upstream requires a client certificate and none is configured (client_certificate) (\(openSSLReason); offered \(offered))"
        }
        if requested && sent && alert {
            self.upstreamFailure = .clientCertificateRefused
            return "the upstream refused our client certificate (\(openSSLReason); offered \(offered))"
        }
        if alert {
            self.upstreamFailure = .handshakeFailure
            let asked = requested ? "a client certificate was requested" : "no client certificate was requested"
            return "the upstream refused the handshake (\(openSSLReason); offered \(offered); \(asked))"
        }
        self.upstreamFailure = .other
        return openSSLReason
    }
}

/// Empties this thread's OpenSSL error queue, so that SSL_get_error describes the
/// next call only. ERR_clear_error walks all sixteen slots of the queue every
/// time; peeking first makes the usual case (nothing queued) a single lookup.
@inline(__always)
func clearErrorQueue() {
    if ERR_peek_error() != 0 { ERR_clear_error() }
}

package func isIPAddress(_ host: String) -> Bool {
    var v4 = in_addr()
    var v6 = in6_addr()
    return host.withCString { inet_pton(AF_INET, $0, &v4) == 1 || inet_pton(AF_INET6, $0, &v6) == 1 }
}

/// Alerts about our certificate: handshake_failure (OpenSSL's alert when a server's verify
/// callback refuses it, as an allow list does), bad_certificate, unsupported_certificate,
/// certificate_revoked, certificate_expired, certificate_unknown, unknown_ca, access_denied,
/// decrypt_error (its CertificateVerify signature), certificate_required.
private let certificateAlerts: Set<UInt8> = [40, 42, 43, 44, 45, 46, 48, 49, 51, 116]

/// Notes, on a client connection, the handshake messages and alerts received (decrypted:
/// OpenSSL reports TLS 1.3's inner content type).
private let upstreamMessageCallback: @convention(c) (Int32, Int32, Int32, UnsafeRawPointer?, Int, OpaquePointer?, UnsafeMutableRawPointer?) -> Void = {
    writing, _, contentType, bytes, length, ssl, _ in
    guard writing == 0, let ssl, let bio = SSL_get_rbio(ssl), BIO_get_data(bio) != nil else { return }
    let connection = ByteBufferBIO.connection(bio)
    if contentType == SSL3_RT_HANDSHAKE, connection.handshakeCompleted {
        connection.handshakeMessageAfterCompletion = true
    } else if contentType == SSL3_RT_ALERT, let bytes, length >= 2 {
        connection.receivedAlert = bytes.load(fromByteOffset: 1, as: UInt8.self)
    }
}

/// The BIO behind every `TLSConnection`: reads from its `inbound` buffer, appends to its `outbound` one.
private enum ByteBufferBIO {
    /// Built once and never mutated after; OpenSSL only reads a BIO_METHOD.
    nonisolated(unsafe) static let method: OpaquePointer = {
        let method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "edge-gateway ByteBuffer")!
        _ = BIO_meth_set_create(method) { bio in
            BIO_set_init(bio, 1)
            return 1
        }
        _ = BIO_meth_set_destroy(method) { _ in 1 }
        _ = BIO_meth_set_read_ex(method) { bio, data, length, readBytes in
            let connection = ByteBufferBIO.connection(bio)
            edge_BIO_clear_retry_flags(bio)
            let available = connection.inbound.readableBytes
            guard available > 0, let data else {
                readBytes?.pointee = 0
                edge_BIO_set_retry_read(bio)  // not EOF: more may arrive
                return 0
            }
            let count = min(available, length)
            connection.inbound.readWithUnsafeReadableBytes { raw in
                UnsafeMutableRawPointer(data).copyMemory(from: raw.baseAddress!, byteCount: count)
                return count
            }
            if connection.inbound.readableBytes == 0 {
                connection.inbound = ByteBuffer()  // NIO may reuse its read buffer
            }
            readBytes?.pointee = count
            return 1
        }
        _ = BIO_meth_set_write_ex(method) { bio, data, length, written in
            let connection = ByteBufferBIO.connection(bio)
            edge_BIO_clear_retry_flags(bio)
            if let data, length > 0 {
                if connection.outbound.capacity == 0 {
                    let buffers = connection.threadBuffers
                    connection.outbound = buffers.ciphertext.take(minimumCapacity: length)
                }
                connection.outbound.writeBytes(UnsafeRawBufferPointer(start: data, count: length))
            }
            written?.pointee = length
            return 1
        }
        _ = BIO_meth_set_ctrl(method) { bio, command, _, _ in
            switch command {
            case BIO_CTRL_FLUSH, BIO_CTRL_DUP:
                return 1
            case BIO_CTRL_PENDING:
                return Int(ByteBufferBIO.connection(bio).inbound.readableBytes)
            case BIO_CTRL_WPENDING:
                return Int(ByteBufferBIO.connection(bio).outbound.readableBytes)
            default:
                return 0
            }
        }
        return method
    }()

    static func connection(_ bio: OpaquePointer?) -> TLSConnection {
        Unmanaged<TLSConnection>.fromOpaque(BIO_get_data(bio)!).takeUnretainedValue()
    }
}
