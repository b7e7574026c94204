import EdgeTLS
import Logging
import NIOCore
import NIOTLS
#if canImport(Glibc)
import Glibc
#endif

// What ProxyHandler is given: the listener's settings and limits, one connection's
// downstream facts and client identity, and the counters it reports to.

/// What the proxy needs to know about one downstream connection (what it shares with
/// the listener's other connections is the `ProxyListener`'s).
package struct DownstreamInfo: Sendable {
    /// The verified client certificate, once the handshake is done.
    package var clientIdentity: ClientIdentity?
    /// The SNI name of a TLS connection (`ServerName.normalized`), once the handshake is done.
    package var serverName: String?
    /// The client's address as text, formatted once per connection (not per HTTP/2 stream).
    /// It is all the proxy uses of the address (X-Forwarded-For, the access log, hashing by
    /// client), with the port for log lines: hashing by client address read the text from
    /// a `SocketAddress`, through glibc's inet_ntop, for every request.
    let clientIP: String?
    let clientPort: UInt16?
    /// The address is IPv6 (it holds a colon): bracketed and quoted in `Forwarded`.
    /// Decided once per connection: a `String.contains` per request walked the address
    /// by Characters, 2k instructions of a 54k keep-alive request.
    private(set) var clientIPIsV6 = false
    /// The address holds CR, LF or NUL, which the head writer must not put in a field
    /// line. A socket's address never does; a PROXY header's is checked as it is read.
    private(set) var clientIPUnsafe = false

    package init(remoteAddress: SocketAddress?) {
        self.clientIP = Self.text(remoteAddress)
        self.clientPort = remoteAddress?.port.map { UInt16(truncatingIfNeeded: $0) }
        self.classifyClientIP()
    }

    /// The client a PROXY protocol header named (`ProxyProtocolDecoder`).
    package init(clientIP: String, clientPort: UInt16) {
        self.clientIP = clientIP
        self.clientPort = clientPort
        self.classifyClientIP()
    }

    private mutating func classifyClientIP() {
        let bytes = self.clientIP?.utf8
        self.clientIPIsV6 = bytes?.contains(UInt8(ascii: ":")) ?? false
        self.clientIPUnsafe = bytes?.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 } ?? false
    }

    /// `127.0.0.1:50123` or `[::1]:50123` (as `SocketAddress.hostPort`) for log lines.
    var peer: String {
        guard let ip = self.clientIP, let port = self.clientPort else { return "?" }
        return self.clientIPIsV6 ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    /// IPv4 is formatted here: NIO's `ipAddress` goes through glibc's inet_ntop, which
    /// uses sprintf (~15k instructions a connection).
    static func text(_ address: SocketAddress?) -> String? {
        guard let address else { return nil }
        if case .v4(let v4) = address {
            return ProxyProtocol.ipv4(UInt32(bigEndian: v4.address.sin_addr.s_addr))
        }
        return address.ipAddress
    }
}

/// What every `ProxyHandler` of one listener on one event loop shares: the listener
/// (name, scheme, whether it verifies client certificates), its routes, limits, logger
/// and counters, and the loop's context (its upstream pool, deadlines, buffers). Each handler holds this one reference
/// instead of its own copies of all of them: a handler, one for every open connection
/// and every HTTP/2 stream, was 458 bytes and is 286. Confined to its event loop, as
/// the loop context is.
package final class ProxyListener {
    package let name: String
    /// `http` or `https`: X-Forwarded-Proto, and whether an `https` redirect applies.
    package let scheme: String
    /// The listener verifies client certificates: forward the verified identity.
    package let mutualTLS: Bool
    /// A TLS listener's SNI selector, asked whether a request's host belongs on the
    /// connection its SNI chose (`misdirection`): 421 when it does not.
    package let serverNames: (any ServerNameSelector)?
    let router: Router
    let loop: LoopContext
    let limits: ProxyLimits
    package let logger: Logger
    package let observer: (any ProxyObserver)?
    let requests: RequestCounter?
    /// Refused PROXY protocol headers on this loop (`proxy_protocol` listeners).
    let proxyProtocolWarnings = RateLimitedWarnings()
    /// Connections refused as they were accepted (`max_connections`) on this loop.
    let refusalWarnings = RateLimitedWarnings()
    /// Client-caused faults on this loop, summarised (`ClientFaultLog`).
    let clientFaults = ClientFaultLog()
    /// Upstream failures answered on this loop, rate-limited (`UpstreamFaultLog`).
    let upstreamFaults = UpstreamFaultLog()

    /// A client's TLS handshake is done: counted, and what the requests of its connection
    /// carry (the verified client identity, the SNI name) read from the handshake, once,
    /// for HTTP/1.1 (`ProxyHandler`) and HTTP/2 (`ProtocolSwitch`) alike.
    func handshakeCompleted(_ tls: OpenSSLHandler?, info: inout DownstreamInfo) {
        self.observer?.handshake(result: "ok")
        if self.mutualTLS { info.clientIdentity = ClientIdentity(tls: tls) }
        if self.serverNames != nil { info.serverName = tls?.serverName.map(ServerName.normalized) }
    }

    /// Logs (at most once a second on this loop, with a count of the rest) a connection
    /// the listener closed as it was accepted.
    package func refusedConnection(peer: SocketAddress?, reason: String) {
        self.refusalWarnings.warn(self, summary: "connection refused", peer: peer, reason: reason)
    }

    package init(name: String, scheme: String, mutualTLS: Bool = false, serverNames: (any ServerNameSelector)? = nil, router: Router,
                loop: LoopContext, limits: ProxyLimits = .init(), logger: Logger, observer: (any ProxyObserver)? = nil) {
        self.name = name
        self.scheme = scheme
        self.mutualTLS = mutualTLS
        self.serverNames = serverNames
        self.router = router
        self.loop = loop
        self.limits = limits
        self.logger = logger
        self.observer = observer
        self.requests = observer?.requests
    }
}

/// The verified client certificate of a mutual-TLS connection, as forwarded upstream.
package struct ClientIdentity: Sendable {
    /// Envoy's `x-forwarded-client-cert` value (hash, subject, URI and DNS SANs); nil without a certificate.
    package var forwardedClientCert: String?

    /// Reads the peer certificate the TLS handler verified.
    package init(tls: OpenSSLHandler?) {
        self.forwardedClientCert = tls?.peerCertificate?.forwardedClientCert
    }

    /// `SUCCESS` with a verified certificate, `NONE` without (optional mode).
    package var verifyResult: String { self.forwardedClientCert == nil ? "NONE" : "SUCCESS" }

    /// Identity headers a client may try to forge; removed from every request first.
    static let headerNames = ["x-forwarded-client-cert", "x-client-verify"]
}

/// Limits of the proxy path.
package struct ProxyLimits: Sendable {
    /// A request body up to this size is kept so the request can be replayed
    /// once on a fresh connection after a reused one failed before any response byte.
    package var retryBufferBytes = 64 * 1024
    /// The largest request head (request line and headers): 431 beyond it.
    package var maxHeadBytes = 32 * 1024
    /// The largest request body (nginx's `client_max_body_size`): 413 beyond it; nil, no limit.
    package var maxBodyBytes: Int?
    /// How long a new connection may take to send its first request head: 408 after it.
    package var headerTimeout = TimeAmount.seconds(10)
    /// How long a keep-alive connection may idle between requests before it is closed.
    package var idleTimeout = TimeAmount.seconds(60)
    /// How long the client may send no request body bytes while a body is due
    /// (nginx's `client_body_timeout`): 408 after it, or a close once the response began.
    package var bodyTimeout = TimeAmount.seconds(60)
    /// While draining, how long an idle keep-alive connection stays open for a request
    /// its client may already be sending (answered with `connection: close`).
    package var drainQuietPeriod = TimeAmount.seconds(1)
    /// The listener's `strict-transport-security` value: every response carries it,
    /// in place of one from the upstream.
    package var strictTransportSecurity: String?
    /// HTTP/2: streams a client may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`).
    package var http2MaxConcurrentStreams = 128
    /// HTTP/2: stream resets a client may cause per 30 s before its connection is closed
    /// (rapid reset, CVE-2023-44487).
    package var http2MaxResetsPer30s = 200

    package init() {}
}

/// The counters of one listener that the proxy path keeps (its metrics), resolved
/// when the listener is bound: a request or a handshake costs an atomic increment,
/// not a lookup by name.
package protocol ProxyObserver: ConnectionCloseObserver {
    /// Counts the listener's answered requests by status.
    var requests: RequestCounter { get }
    /// `result`: ok, failed, timeout.
    func handshake(result: String)
    /// A connection was closed for a missing or malformed PROXY protocol header.
    func proxyProtocolRefused()
}

/// Counts answered requests by status code.
package struct RequestCounter: Sendable {
    private let count: @Sendable (Int) -> Void

    package init(_ count: @escaping @Sendable (_ status: Int) -> Void) {
        self.count = count
    }

    func completed(status: Int) { self.count(status) }
}
