import COpenSSL
import CEdgeShims
#if canImport(Glibc)
import Glibc
#endif

/// A TLS handshake with one of the gateway's own listeners, as a client would make it,
/// to see which certificate chain it really serves for a name: the proof that a
/// publication reached the handshakes (`ServedProof`). Blocking, with a deadline on
/// every step; run off the event loops.
///
/// It verifies nothing: the chain it sees is compared, certificate by certificate, with
/// the one just published, which says more than any trust check could. A listener that
/// requires client certificates still shows its chain: it sends the chain before the
/// client's certificate is due (TLS 1.2 and 1.3 alike), and the probe stops there. It
/// offers no ALPN: a listener whose `tls.alpn` lacks what it offered would refuse the
/// handshake before sending a certificate.
package enum ServedProbe {
    package struct Seen: Sendable, Equatable {
        /// SHA-256 fingerprints of the chain served, leaf first (colon-separated hex, as
        /// `X509Certificate.sha256Fingerprint`).
        package var chain: [String]
        /// The OCSP response stapled to the handshake (DER, as sent; unchecked), if any.
        package var staple: [UInt8]? = nil
        /// The served chain itself, leaf first, to check the staple against.
        package var certificates: [X509Certificate] = []

        package static func == (a: Seen, b: Seen) -> Bool { a.chain == b.chain && a.staple == b.staple }
    }

    package struct Failure: Error, Sendable, CustomStringConvertible {
        package var description: String
    }

    /// Handshakes with `host:port` (a numeric IPv4 or IPv6 address) naming `serverName`
    /// (none when empty); `proxyHeader` sends a PROXY protocol v1 header from loopback
    /// first. `signatureAlgorithms` (OpenSSL's list syntax) narrows what the probe offers:
    /// where an ECDSA and an RSA certificate share a name, only a client that cannot take
    /// ECDSA is served the RSA one.
    package static func handshake(host: String, port: Int, serverName: String, proxyHeader: Bool, signatureAlgorithms: String? = nil,
                                  timeoutSeconds: Int = 5) -> Result<Seen, Failure> {
        let ipv6 = host.contains(":")
        let fd = socket(ipv6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return .failure(Failure(description: "socket: \(String(cString: strerror(errno)))")) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var connected: Int32 = -1
        if ipv6 {
            var address = sockaddr_in6()
            address.sin6_family = sa_family_t(AF_INET6)
            address.sin6_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET6, host, &address.sin6_addr) == 1 else { return .failure(Failure(description: "not an address: \(host)")) }
            connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        } else {
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            guard inet_pton(AF_INET, host, &address.sin_addr) == 1 else { return .failure(Failure(description: "not an address: \(host)")) }
            connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        guard connected == 0 else { return .failure(Failure(description: "connect to \(host):\(port): \(String(cString: strerror(errno)))")) }
        if proxyHeader {
            // The client and the listener as the balancer would name them: loopback both.
            let family = ipv6 ? "TCP6" : "TCP4"
            let loopback = ipv6 ? "::1" : "127.0.0.1"
            let header = Array("PROXY \(family) \(loopback) \(loopback) \(port) \(port)\r\n".utf8)
            guard send(fd, header, header.count, Int32(MSG_NOSIGNAL)) == header.count else {
                return .failure(Failure(description: "sending the PROXY header: \(String(cString: strerror(errno)))"))
            }
        }
        guard let context = SSL_CTX_new(TLS_client_method()) else { return .failure(Failure(description: "SSL_CTX_new failed")) }
        defer { SSL_CTX_free(context) }
        SSL_CTX_set_verify(context, SSL_VERIFY_NONE, nil)
        // A listener that asks for a client certificate has sent its whole flight by the
        // time OpenSSL asks us for one: the probe stops there (the handshake is suspended)
        // and closes (a reset: the server's last bytes are unread). Sending none instead
        // would make it a failed handshake in a `required` listener's log and metrics at
        // every publication; a connection dropped mid-handshake is not.
        SSL_CTX_set_client_cert_cb(context) { _, _, _ in -1 }
        guard let ssl = SSL_new(context) else { return .failure(Failure(description: "SSL_new failed")) }
        defer { SSL_free(ssl) }
        if !serverName.isEmpty { _ = edge_SSL_set_tlsext_host_name(ssl, serverName) }
        if let signatureAlgorithms { _ = edge_SSL_set1_sigalgs_list(ssl, signatureAlgorithms) }
        // Asks for a stapled OCSP response, as browsers do: what is stapled is seen too.
        _ = edge_SSL_set_tlsext_status_type(ssl, TLSEXT_STATUSTYPE_ocsp)
        SSL_set_fd(ssl, fd)
        let rc = SSL_connect(ssl)
        // Seen when the handshake stopped after the server's flight (a listener that wants
        // a client certificate), or ended in an alert after the server's certificate.
        guard let stack = SSL_get_peer_cert_chain(ssl), edge_sk_X509_num(stack) > 0 else {
            ERR_clear_error()
            return .failure(Failure(description: rc == 1 ? "no certificate served" : "handshake failed before a certificate was served"))
        }
        var certificates: [X509Certificate] = []
        for index in 0..<edge_sk_X509_num(stack) {
            guard let certificate = edge_sk_X509_value(stack, index) else { continue }
            X509_up_ref(certificate)
            certificates.append(X509Certificate(taking: certificate))
        }
        var staple: UnsafePointer<UInt8>?
        let stapleLength = edge_SSL_get_tlsext_status_ocsp_resp(ssl, &staple)
        let stapled = staple.flatMap { stapleLength > 0 ? Array(UnsafeBufferPointer(start: $0, count: stapleLength)) : nil }
        if rc == 1 { _ = SSL_shutdown(ssl) }
        ERR_clear_error()
        return .success(Seen(chain: certificates.map(\.sha256Fingerprint), staple: stapled, certificates: certificates))
    }
}
