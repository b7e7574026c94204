import EdgeTLS
import Logging
import NIOCore
import NIOHTTP1
import NIOTLS

/// What the proxy needs to know about the downstream connection.
public struct DownstreamInfo: Sendable {
    public var scheme: String
    public var remoteAddress: SocketAddress?
    public var listenerName: String
    /// The listener verifies client certificates: forward the verified identity.
    public var mutualTLS: Bool
    /// The verified client certificate, once the handshake is done.
    public var clientIdentity: ClientIdentity?

    public init(scheme: String, remoteAddress: SocketAddress?, listenerName: String, mutualTLS: Bool = false) {
        self.scheme = scheme
        self.remoteAddress = remoteAddress
        self.listenerName = listenerName
        self.mutualTLS = mutualTLS
    }

    var clientIP: String? { self.remoteAddress?.ipAddress }
}

/// The verified client certificate of a mutual-TLS connection, as forwarded upstream.
public struct ClientIdentity: Sendable {
    /// Envoy's `x-forwarded-client-cert` value (hash, subject, URI and DNS SANs); nil without a certificate.
    public var forwardedClientCert: String?

    /// Reads the peer certificate the TLS handler verified.
    public init(tls: OpenSSLHandler?) {
        self.forwardedClientCert = tls?.peerCertificate?.forwardedClientCert
    }

    /// `SUCCESS` with a verified certificate, `NONE` without (optional mode).
    public var verifyResult: String { self.forwardedClientCert == nil ? "NONE" : "SUCCESS" }

    /// Identity headers a client may try to forge; removed from every request first.
    static let headerNames = ["x-forwarded-client-cert", "x-client-verify"]
}

/// Limits of the proxy path.
public struct ProxyLimits: Sendable {
    /// A request body up to this size is kept so the request can be replayed
    /// once on a fresh connection after a reused one failed before any response byte.
    public var retryBufferBytes = 64 * 1024

    public init() {}
}

/// Counters the proxy path keeps, read by status and metrics.
public protocol ProxyObserver: Sendable {
    func requestCompleted(listener: String, status: Int)
    /// `result`: ok, failed, timeout.
    func handshake(listener: String, result: String)
}

/// Proxies HTTP/1.1 requests of one downstream connection to upstream groups.
///
/// One exchange at a time (`HTTPServerPipelineHandler` serialises pipelined
/// requests). Bodies stream in both directions: the downstream is not read
/// while the upstream cannot take more, and the upstream is not read while the
/// downstream cannot take more.
public final class ProxyHandler: ChannelDuplexHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias OutboundIn = HTTPServerResponsePart
    public typealias OutboundOut = HTTPServerResponsePart

    private final class Exchange {
        let request: HTTPRequestHead
        let upstreamHead: HTTPRequestHead
        let group: UpstreamGroup
        let keepAliveDownstream: Bool
        var connection: UpstreamConnection?
        var pending: [HTTPClientRequestPart] = []
        var requestEnded = false
        var responseStarted = false
        var responseEnded = false
        var upstreamKeepAlive = true
        var retriedStale = false
        /// The backend chosen for this exchange, counted in its in-flight figure while set.
        var backendIndex: Int?
        /// Backends whose connect failed for this request.
        var tried: [Int] = []
        /// The request body as sent, while it fits the retry buffer; nil once it does not.
        var replayBody: [ByteBuffer]? = []
        var replayBytes = 0
        var readTimer: Scheduled<Void>?
        var readDeadline = NIODeadline.now()
        var writeTimer: Scheduled<Void>?
        var closeDownstreamAfterResponse = false
        var status = 0

        init(request: HTTPRequestHead, upstreamHead: HTTPRequestHead, group: UpstreamGroup, keepAlive: Bool) {
            self.request = request
            self.upstreamHead = upstreamHead
            self.group = group
            self.keepAliveDownstream = keepAlive
        }

        /// Leaves the backend's in-flight count; called once when the exchange ends or moves on.
        func leaveBackend() {
            if let index = self.backendIndex {
                self.group.states[index].active.wrappingDecrement(ordering: .relaxed)
                self.backendIndex = nil
            }
            self.writeTimer?.cancel()
            self.writeTimer = nil
        }
    }

    private let router: Router
    private let pool: UpstreamPool
    private var info: DownstreamInfo
    private let limits: ProxyLimits
    private let logger: Logger
    private let observer: (any ProxyObserver)?
    private var context: ChannelHandlerContext?
    private var exchange: Exchange?
    /// Discard request body parts until `.end` (after a local response).
    private var discardingBody = false
    private var readPending = false
    private var closed = false
    private var upstreamNeedsFlush = false
    private var downstreamNeedsFlush = false

    public init(router: Router, pool: UpstreamPool, info: DownstreamInfo, limits: ProxyLimits = .init(), logger: Logger, observer: (any ProxyObserver)? = nil) {
        self.router = router
        self.pool = pool
        self.info = info
        self.limits = limits
        self.logger = logger
        self.observer = observer
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    // MARK: downstream inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.receivedHead(head, context: context)
        case .body(let body):
            guard let exchange = self.exchange, !self.discardingBody else { return }
            if var replay = exchange.replayBody {
                exchange.replayBytes += body.readableBytes
                if exchange.replayBytes <= self.limits.retryBufferBytes {
                    replay.append(body)
                    exchange.replayBody = replay
                } else {
                    exchange.replayBody = nil
                }
            }
            if let connection = exchange.connection {
                connection.write(.body(.byteBuffer(body)))
                self.upstreamNeedsFlush = true
            } else {
                exchange.pending.append(.body(.byteBuffer(body)))
            }
        case .end(let trailers):
            if self.discardingBody {
                self.discardingBody = false
                return
            }
            guard let exchange = self.exchange else { return }
            exchange.requestEnded = true
            if let connection = exchange.connection {
                connection.write(.end(trailers))
                connection.flush()
                self.armReadTimer(exchange)
                self.finishIfDone(exchange)
            } else {
                exchange.pending.append(.end(trailers))
            }
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        if self.upstreamNeedsFlush {
            self.upstreamNeedsFlush = false
            self.exchange?.connection?.flush()
        }
        context.fireChannelReadComplete()
    }

    private func receivedHead(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        var head = head
        if head.headers["expect"].contains(where: { $0.lowercased() == "100-continue" }) {
            // Answer 100-continue here so the client streams at once; the upstream
            // gets the body without the expectation.
            head.headers.remove(name: "expect")
            context.writeAndFlush(Self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .continue))), promise: nil)
        }
        guard let group = self.router.route(host: head.headers.first(name: "host"), uri: head.uri) else {
            self.respondLocally(status: .notFound, message: "no route for this host and path", requestEnded: false, request: head)
            return
        }
        let exchange = Exchange(request: head, upstreamHead: self.upstreamHead(for: head, group: group), group: group, keepAlive: head.isKeepAlive)
        self.exchange = exchange
        self.connect(exchange)
    }

    private func upstreamHead(for head: HTTPRequestHead, group: UpstreamGroup) -> HTTPRequestHead {
        var headers = head.headers
        var chunked = ProxyHeaders.isChunked(headers)
        ProxyHeaders.removeHopByHop(&headers)
        if head.version.major == 2, !headers.contains(name: "content-length"), head.method.mayHaveRequestBody {
            chunked = true  // HTTP/2 frames the body itself; HTTP/1.1 upstream needs chunked framing
        }
        if chunked { headers.add(name: "transfer-encoding", value: "chunked") }
        for name in ClientIdentity.headerNames { headers.remove(name: name) }
        if self.info.mutualTLS {
            let identity = self.info.clientIdentity
            if let cert = identity?.forwardedClientCert { headers.add(name: "x-forwarded-client-cert", value: cert) }
            headers.add(name: "x-client-verify", value: identity?.verifyResult ?? "NONE")
        }
        if let ip = self.info.clientIP {
            if let existing = headers.first(name: "x-forwarded-for") {
                headers.replaceOrAdd(name: "x-forwarded-for", value: existing + ", " + ip)
            } else {
                headers.add(name: "x-forwarded-for", value: ip)
            }
        }
        headers.replaceOrAdd(name: "x-forwarded-proto", value: self.info.scheme)
        if let host = head.headers.first(name: "host") {
            headers.replaceOrAdd(name: "x-forwarded-host", value: host)
        }
        if let hostHeader = group.hostHeader {
            headers.replaceOrAdd(name: "host", value: hostHeader)
        }
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: head.uri, headers: headers)
    }

    // MARK: upstream connection

    private func connect(_ exchange: Exchange) {
        let group = exchange.group
        if exchange.backendIndex == nil {
            let key = UpstreamGroup.RequestKey(client: self.info.remoteAddress, head: exchange.request)
            guard let chosen = group.select(key, tried: exchange.tried) else {
                let reason = exchange.tried.isEmpty ? "every backend is down" : "no backend left to try"
                self.failExchange(exchange, error: UpstreamError(kind: .noHealthyBackend, backend: group.name, reason: reason))
                return
            }
            exchange.backendIndex = chosen
            group.states[chosen].active.wrappingIncrement(ordering: .relaxed)
        }
        let index = exchange.backendIndex!
        // After a stale reused connection, the retry always gets a fresh one.
        if !exchange.retriedStale, let idle = self.pool.takeIdle(group: group, backend: index) {
            self.attach(idle, to: exchange)  // the common keep-alive case: no future, no hop
            return
        }
        self.pool.open(group: group, backend: index).assumeIsolated().whenComplete { result in
            guard self.exchange === exchange, !self.closed else {
                if case .success(let connection) = result {
                    group.connectSucceeded(index)
                    self.pool.release(connection, group: group)
                }
                return
            }
            switch result {
            case .success(let connection):
                group.connectSucceeded(index)
                self.attach(connection, to: exchange)
            case .failure(let error):
                let upstream = error as? UpstreamError
                guard upstream?.kind == .connectFailed || upstream?.kind == .connectTimeout else {
                    self.failExchange(exchange, error: error)
                    return
                }
                let backend = group.backends[index].description
                if group.connectFailed(index, reason: "\(error)") {
                    self.logger.warning("backend ejected after consecutive connect failures", metadata: [
                        "upstream": "\(group.name)", "backend": "\(backend)",
                        "fail_timeout": "\(group.passive.failTimeout.nanoseconds / 1_000_000_000)s", "error": "\(error)",
                    ])
                }
                // Connect failures move on to another backend, a bounded number of times.
                exchange.tried.append(index)
                exchange.leaveBackend()
                if exchange.tried.count < group.maxConnectAttempts {
                    self.logger.warning("upstream connect failed; trying another backend", metadata: ["upstream": "\(group.name)", "error": "\(error)"])
                    self.connect(exchange)
                    return
                }
                self.failExchange(exchange, error: error)
            }
        }
    }

    private func attach(_ connection: UpstreamConnection, to exchange: Exchange) {
        exchange.connection = connection
        connection.uses += 1
        exchange.group.states[connection.backendIndex].requests.wrappingIncrement(ordering: .relaxed)
        connection.handler.delegate = self
        connection.write(.head(exchange.upstreamHead))
        for part in exchange.pending { connection.write(part) }
        exchange.pending.removeAll()
        connection.flush()
        if exchange.requestEnded { self.armReadTimer(exchange) }
        if self.readPending, connection.isWritable {
            self.readPending = false
            self.context?.read()
        }
    }

    /// Pushes the read deadline out. One timer per exchange: when it fires early
    /// (the deadline moved), it re-arms itself instead of being rescheduled per event.
    private func armReadTimer(_ exchange: Exchange) {
        exchange.readDeadline = .now() + exchange.group.timeouts.read
        if exchange.readTimer == nil { self.scheduleReadCheck(exchange) }
    }

    private func scheduleReadCheck(_ exchange: Exchange) {
        guard let context = self.context else { return }
        exchange.readTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: exchange.readDeadline) {
            exchange.readTimer = nil
            guard self.exchange === exchange, !exchange.responseEnded else { return }
            if NIODeadline.now() < exchange.readDeadline {
                self.scheduleReadCheck(exchange)
                return
            }
            let error = UpstreamError(kind: .readTimeout, backend: exchange.connection.map { $0.key.address.hostPort } ?? "?", reason: "no response within the read timeout")
            exchange.connection?.handler.delegate = nil
            exchange.connection?.close()
            exchange.connection = nil
            self.failExchange(exchange, error: error)
        }
    }

    func upstreamReceived(_ part: HTTPClientResponsePart, from connection: UpstreamConnection) {
        guard let exchange = self.exchange, exchange.connection === connection, let context = self.context else { return }
        switch part {
        case .head(let response):
            exchange.responseStarted = true
            exchange.upstreamKeepAlive = response.isKeepAlive
            exchange.status = Int(response.status.code)
            self.armReadTimer(exchange)
            context.write(Self.wrapOutboundOut(.head(self.downstreamHead(for: response, exchange: exchange))), promise: nil)
        case .body(let body):
            self.armReadTimer(exchange)
            // Flushed once per upstream read batch (upstreamReadComplete): one TLS
            // record and one syscall for a small response instead of one per part.
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            self.downstreamNeedsFlush = true
        case .end(let trailers):
            exchange.readTimer?.cancel()
            exchange.readTimer = nil
            exchange.responseEnded = true
            context.writeAndFlush(Self.wrapOutboundOut(.end(trailers)), promise: nil)
            self.downstreamNeedsFlush = false
            self.observer?.requestCompleted(listener: self.info.listenerName, status: exchange.status)
            self.finishIfDone(exchange)
        }
    }

    private func downstreamHead(for response: HTTPResponseHead, exchange: Exchange) -> HTTPResponseHead {
        var headers = response.headers
        ProxyHeaders.removeHopByHop(&headers)
        let code = response.status.code
        let noBody = exchange.request.method == .HEAD || code == 204 || code == 304 || (100..<200).contains(code)
        let version = exchange.request.version
        if version.major == 2 {
            // HTTP/2 frames the body; connection-specific headers are forbidden there.
            return HTTPResponseHead(version: version, status: response.status, headers: headers)
        }
        var close = !exchange.keepAliveDownstream
        if !noBody && !headers.contains(name: "content-length") {
            if version.major == 1 && version.minor >= 1 {
                headers.add(name: "transfer-encoding", value: "chunked")
            } else {
                close = true  // HTTP/1.0: the end of the body is the end of the connection
            }
        }
        if close {
            exchange.closeDownstreamAfterResponse = true
            headers.replaceOrAdd(name: "connection", value: "close")
        } else if version.major == 1 && version.minor == 0 {
            headers.replaceOrAdd(name: "connection", value: "keep-alive")
        }
        return HTTPResponseHead(version: version, status: response.status, headers: headers)
    }

    /// Ends an exchange once both directions are complete.
    private func finishIfDone(_ exchange: Exchange) {
        guard exchange.responseEnded, let context = self.context else { return }
        guard exchange.requestEnded else {
            // The upstream answered before the request body ended: neither side can be reused.
            exchange.connection?.handler.delegate = nil
            exchange.connection?.close()
            exchange.connection = nil
            exchange.leaveBackend()
            self.exchange = nil
            context.close(promise: nil)
            return
        }
        if let connection = exchange.connection {
            exchange.connection = nil
            if exchange.upstreamKeepAlive {
                self.pool.release(connection, group: exchange.group)
            } else {
                connection.handler.delegate = nil
                connection.close()
            }
        }
        exchange.leaveBackend()
        self.exchange = nil
        if exchange.closeDownstreamAfterResponse {
            context.close(promise: nil)
        }
    }

    func upstreamFailed(_ error: Error, from connection: UpstreamConnection) {
        guard let exchange = self.exchange, exchange.connection === connection else { return }
        exchange.readTimer?.cancel()
        exchange.connection = nil
        connection.close()
        if !exchange.responseStarted {
            // A reused connection that died before any response byte: the upstream
            // closed it while idle. Replay once on a fresh connection when safe.
            // Safe to replay: everything sent so far is still held, and the method is
            // idempotent or the whole (small) request was held.
            let replayable = exchange.replayBody != nil && (exchange.request.method.isIdempotent || exchange.requestEnded)
            if connection.uses > 1, !exchange.retriedStale, replayable {
                exchange.retriedStale = true
                exchange.pending = (exchange.replayBody ?? []).map { .body(.byteBuffer($0)) }
                if exchange.requestEnded { exchange.pending.append(.end(nil)) }
                self.logger.debug("retrying request on a fresh upstream connection", metadata: ["error": "\(error)"])
                self.connect(exchange)
                return
            }
            self.failExchange(exchange, error: error)
        } else {
            // Part of the response is already out: the only honest signal is to close.
            self.logger.warning("upstream failed mid-response; closing client connection", metadata: [
                "upstream": "\(exchange.group.name)", "error": "\(error)",
            ])
            exchange.leaveBackend()
            self.exchange = nil
            self.context?.close(promise: nil)
        }
    }

    func upstreamReadComplete() {
        if self.downstreamNeedsFlush {
            self.downstreamNeedsFlush = false
            self.context?.flush()
        }
    }

    func upstreamWritabilityChanged(_ writable: Bool) {
        guard let exchange = self.exchange else { return }
        if writable {
            exchange.writeTimer?.cancel()
            exchange.writeTimer = nil
            if self.readPending, let context = self.context {
                self.readPending = false
                context.read()
            }
        } else if !exchange.requestEnded, exchange.writeTimer == nil, let context = self.context {
            // The upstream stopped taking the request body: it has the write timeout to resume.
            exchange.writeTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: exchange.group.timeouts.write) {
                exchange.writeTimer = nil
                guard self.exchange === exchange, let connection = exchange.connection, !connection.isWritable else { return }
                exchange.readTimer?.cancel()
                connection.handler.delegate = nil
                connection.close()
                exchange.connection = nil
                let error = UpstreamError(kind: .writeTimeout, backend: connection.key.address.hostPort, reason: "the upstream stopped reading the request body")
                if exchange.responseStarted {
                    exchange.leaveBackend()
                    self.exchange = nil
                    self.context?.close(promise: nil)
                } else {
                    self.failExchange(exchange, error: error)
                }
            }
        }
    }

    var downstreamWritable: Bool { self.context?.channel.isWritable ?? false }

    private func failExchange(_ exchange: Exchange, error: Error) {
        exchange.leaveBackend()
        let status: HTTPResponseStatus
        let message: String
        switch (error as? UpstreamError)?.kind {
        case .connectTimeout, .readTimeout, .writeTimeout:
            (status, message) = (.gatewayTimeout, "upstream timed out")
        case .noHealthyBackend:
            (status, message) = (.serviceUnavailable, "no healthy backend in upstream '\(exchange.group.name)'")
        default:
            (status, message) = (.badGateway, "upstream unavailable")
        }
        self.logger.warning("upstream request failed", metadata: [
            "upstream": "\(exchange.group.name)", "status": "\(status.code)", "error": "\(error)",
            "method": "\(exchange.request.method)", "uri": "\(exchange.request.uri)",
        ])
        self.exchange = nil
        self.respondLocally(status: status, message: message, requestEnded: exchange.requestEnded, request: exchange.request)
    }

    /// Answers from the gateway itself. The rest of an unread request body is
    /// discarded; a connection whose request was not fully read is closed.
    private func respondLocally(status: HTTPResponseStatus, message: String, requestEnded: Bool, request: HTTPRequestHead) {
        guard let context = self.context else { return }
        let body = context.channel.allocator.buffer(string: "\(status.code) \(status.reasonPhrase): \(message)\n")
        let http2 = request.version.major == 2
        let close = !http2 && (!requestEnded || !request.isKeepAlive)
        var headers = HTTPHeaders([("content-type", "text/plain; charset=utf-8"), ("content-length", "\(body.readableBytes)")])
        if close { headers.add(name: "connection", value: "close") }
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        }
        let done = context.writeAndFlush(Self.wrapOutboundOut(.end(nil)))
        self.observer?.requestCompleted(listener: self.info.listenerName, status: Int(status.code))
        if close {
            self.discardingBody = !requestEnded
            done.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        } else {
            // HTTP/2: the rest of this stream's body is dropped; the stream ends with the response.
            self.discardingBody = !requestEnded
        }
    }

    // MARK: downstream outbound and lifecycle

    public func read(context: ChannelHandlerContext) {
        if let exchange = self.exchange, !self.discardingBody, !exchange.requestEnded {
            // Hold the client while the upstream is not connected or full.
            if exchange.connection == nil || !(exchange.connection!.isWritable) {
                self.readPending = true
                return
            }
        }
        context.read()
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            self.exchange?.connection?.resumeRead()
        }
        context.fireChannelWritabilityChanged()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        self.closed = true
        if let exchange = self.exchange {
            exchange.readTimer?.cancel()
            exchange.leaveBackend()
            if let connection = exchange.connection {
                connection.handler.delegate = nil
                connection.close()
            }
            self.exchange = nil
        }
        context.fireChannelInactive()
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            self.observer?.handshake(listener: self.info.listenerName, result: "ok")
            if self.info.mutualTLS {
                self.info.clientIdentity = ClientIdentity(tls: try? context.pipeline.syncOperations.handler(type: OpenSSLHandler.self))
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let tls = error as? TLSError {
            reportClientTLSError(tls, info: self.info, logger: self.logger, observer: self.observer)
        } else if error is HTTPParserError {
            self.logger.info("bad request from client", metadata: self.peerMetadata.merging(["error": "\(error)"]) { a, _ in a })
        } else {
            self.logger.debug("client connection error", metadata: self.peerMetadata.merging(["error": "\(error)"]) { a, _ in a })
        }
        context.close(promise: nil)
    }

    private var peerMetadata: Logger.Metadata {
        ["peer": "\(self.info.remoteAddress?.hostPort ?? "?")", "listener": "\(self.info.listenerName)"]
    }
}

extension ProxyHandler: UpstreamExchangeDelegate {}

/// Counts and logs a TLS error of a client connection, once, wherever the pipeline caught it.
public func reportClientTLSError(_ tls: TLSError, info: DownstreamInfo, logger: Logger, observer: (any ProxyObserver)?) {
    if tls.isHandshakeFailure { observer?.handshake(listener: info.listenerName, result: "failed") }
    if tls.isHandshakeTimeout { observer?.handshake(listener: info.listenerName, result: "timeout") }
    let peer: Logger.Metadata = ["peer": "\(info.remoteAddress?.hostPort ?? "?")", "listener": "\(info.listenerName)"]
    if tls.isUncleanShutdown {
        // Most HTTP clients close without close_notify; nothing to report.
    } else if tls.isEOFDuringHandshake {
        logger.debug("client closed during the TLS handshake", metadata: peer)
    } else {
        logger.warning("TLS handshake failed", metadata: peer.merging(["reason": "\(tls.reason)"]) { a, _ in a })
    }
}

extension HTTPMethod {
    /// Methods whose requests usually carry a body.
    var mayHaveRequestBody: Bool {
        switch self {
        case .GET, .HEAD, .DELETE, .OPTIONS, .TRACE, .CONNECT: return false
        default: return true
        }
    }
}

@available(*, unavailable)
extension ProxyHandler: Sendable {}
