import EdgeTLS
import Logging
import NIOCore
import NIOTLS
#if canImport(Glibc)
import Glibc
#endif

/// Proxies the HTTP/1.1 requests of one downstream connection to upstream groups,
/// as bytes: the request head is parsed and checked once (`HTTP1Parser`), rewritten
/// straight into the upstream request's bytes, and bodies move as slices of what
/// was read. The response comes back the same way through `UpstreamHandler`.
///
/// One exchange at a time; bytes of a pipelined next request wait in the buffer.
/// Bodies stream in both directions: the downstream is not read while the upstream
/// cannot take more, and the upstream is not read while the downstream cannot.
package final class ProxyHandler: ChannelDuplexHandler, DeadlineOwner {
    package typealias InboundIn = ByteBuffer
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    private final class Exchange {
        let request: HTTPHead
        let group: UpstreamGroup
        var connection: UpstreamConnection?
        /// Request body bytes read before a connection was ready.
        var pending: [ByteBuffer] = []
        /// Where the exchange stands; its events say what to do next.
        var state: ExchangeState
        /// The request body is sent chunked (it came chunked).
        let chunkedUpstream: Bool
        /// The backend chosen for this exchange, counted in its in-flight figure while set.
        var backendIndex: Int?
        /// Backends whose connect failed for this request, or whose connection broke with it.
        var tried: [Int] = []
        /// The broken connection's error, when the request moved on to another backend.
        var retryError: Error?
        /// When the first response was due (the first read deadline): how long the
        /// request has been trying backends, without a clock read of its own.
        var firstReadDeadline: NIODeadline?
        /// The request body as sent (framed), while it fits the retry buffer; nil once it does not.
        var replay: [ByteBuffer]? = []
        var replayBytes = 0
        var writeTimer: Scheduled<Void>?
        var closeDownstreamAfterResponse = false
        var status = 0
        /// Response body bytes passed to the client (the access log's `body_bytes_sent`).
        var bodyBytesSent = 0
        /// The client asked to switch to WebSocket; the upstream gets the handshake.
        let upgrade: Bool

        init(request: consuming HTTPHead, group: UpstreamGroup, upgrade: Bool, requestEnded: Bool) {
            self.chunkedUpstream = request.chunked
            self.request = request
            self.group = group
            self.upgrade = upgrade
            self.state = ExchangeState(requestEnded: requestEnded)
        }

        /// Leaves the backend's in-flight count; called once when the exchange ends or moves on.
        func leaveBackend() {
            if let index = self.backendIndex {
                self.group.requestLeft(index)
                self.backendIndex = nil
            }
            self.writeTimer?.cancel()
            self.writeTimer = nil
        }
    }

    private let listener: ProxyListener
    private var info: DownstreamInfo
    /// This handler is its connection's first and reports the connection's close (a
    /// plain-HTTP listener; on a TLS listener the TLS handler does).
    private let reportsClose: Bool
    /// The listener's loop context and router, also held here: read through `listener` they
    /// cost a retain and a release in each of six functions of every request.
    private let loop: LoopContext
    private let router: Router
    private var limits: ProxyLimits { self.listener.limits }
    private var logger: Logger { self.listener.logger }
    private var observer: (any ProxyObserver)? { self.listener.observer }
    private var requests: RequestCounter? { self.listener.requests }
    private var context: ChannelHandlerContext?
    private var exchange: Exchange?
    /// Bytes read from the client and not consumed yet.
    private var inbound = ByteBuffer()
    private var firstRead: ReceiveBufferPin
    /// How far the search for the end of the next head got.
    private var scanned = 0
    /// Frames the current request's body; nil between requests.
    private var requestBody: BodyFramer?
    /// Body bytes of the current request so far, counted against `maxBodyBytes` when
    /// the head gave no length (chunked, or HTTP/2 without content-length).
    private var bodyBytes = 0
    /// The current request's body limit: its route's, else the listener's.
    private var maxBodyBytes: Int?
    /// When the current request's head was complete (read only with an access log).
    private var requestStart = NIODeadline.uptimeNanoseconds(0)
    /// Awaiting a head, in a request, closing, lingering or closed; draining; reads held.
    private var state: ConnectionState
    private var upstreamNeedsFlush = false
    private var downstreamNeedsFlush = false
    /// The connection's deadlines (header, idle, body, upstream read, drain, linger),
    /// waited for in the loop's `LoopDeadlines` as one entry: moved later without
    /// touching the queue, so a request costs a clock read and a comparison.
    private var timers = ClientDeadlines()
    /// This handler's place in `loop.deadlines` (-1: not queued).
    var deadlineSlot = -1
    /// Where responses go: HTTP/1.1 bytes on the connection, or an HTTP/2 stream's frames
    /// (whose bridge also turns the request's frames into bytes).
    private var downstream: Downstream
    private var stream: HTTP2StreamBridge? { self.downstream.stream }

    /// `holdsFirstRead`: the channel reads as `ReceiveBuffers.configure` sets up and
    /// this handler is first in its pipeline (a plain-HTTP listener); `reportsClose`:
    /// this handler tells the listener's observer when the connection closes (it is the
    /// connection's first handler).
    ///
    /// `singleRequest`: the channel carries one request whose head arrives with it (an
    /// HTTP/2 stream): no header timer and no idle deadline after the response; the
    /// connection's idle timeout is its own.
    package convenience init(listener: ProxyListener, info: DownstreamInfo, holdsFirstRead: Bool = false, reportsClose: Bool = false,
                            singleRequest: Bool = false) {
        self.init(listener: listener, info: info, holdsFirstRead: holdsFirstRead, reportsClose: reportsClose, singleRequest: singleRequest,
                  stream: nil)
    }

    /// The proxy of one HTTP/2 stream, the only handler in the stream's pipeline: the
    /// request's frames become HTTP/1.1 bytes in `bridge`, the response goes to it in parts.
    package convenience init(stream bridge: HTTP2StreamBridge, listener: ProxyListener, info: DownstreamInfo) {
        self.init(listener: listener, info: info, holdsFirstRead: false, reportsClose: false, singleRequest: true, stream: bridge)
    }

    private init(listener: ProxyListener, info: DownstreamInfo, holdsFirstRead: Bool, reportsClose: Bool, singleRequest: Bool,
                 stream: HTTP2StreamBridge?) {
        self.downstream = stream.map { .http2($0) } ?? .http1(HTTP1Responses())
        self.state = ConnectionState(singleRequest: singleRequest)
        self.firstRead = ReceiveBufferPin(enabled: holdsFirstRead)
        self.listener = listener
        self.loop = listener.loop
        self.router = listener.router
        self.info = info
        self.reportsClose = reportsClose
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.stream?.attach(context)
        if context.channel.isActive { self.startHeaderTimer() }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.loop.deadlines.cancel(self)
        self.context = nil
        self.stream?.detach()
        if self.reportsClose { self.observer?.connectionClosed() }
    }

    package func channelActive(context: ChannelHandlerContext) {
        self.startHeaderTimer()
        context.fireChannelActive()
    }

    // MARK: downstream inbound

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes: ByteBuffer
        if let stream = self.stream {
            guard let request = stream.requestBytes(stream.unwrapInboundIn(data)) else { return }
            bytes = request
        } else {
            bytes = self.unwrapInboundIn(data)
        }
        switch self.state.bytesArrived() {
        case .process: break
        case .extendLinger:
            if let until = self.timers.lingerUntil { self.timers.client = min(.now() + Self.lingerPause, until) }
            return
        default: return
        }
        self.firstRead.hold(bytes)
        if self.timers.body != nil { self.timers.body = .now() + self.limits.bodyTimeout }
        if self.inbound.readableBytes == 0 {
            self.inbound = bytes
        } else {
            self.inbound.writeBuffer(&bytes)
        }
        self.process()
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        if self.upstreamNeedsFlush {
            self.upstreamNeedsFlush = false
            self.exchange?.connection?.flush()
        }
        context.fireChannelReadComplete()
    }

    /// Consumes buffered client bytes: the current request's body, then the next head.
    private func process() {
        guard self.state.beginProcessing() else { return }
        defer { self.state.endProcessing() }
        while self.state.acceptsInput {
            if var framer = self.requestBody {
                let piece: BodyFramer.Piece?
                do {
                    piece = try framer.next(from: &self.inbound)
                } catch {
                    self.requestBody = nil
                    self.badRequest(HTTPFramingError(error))
                    return
                }
                self.requestBody = framer
                guard let piece else { break }
                switch piece {
                case .data(let data):
                    if let max = self.maxBodyBytes {
                        self.bodyBytes += data.readableBytes
                        if self.bodyBytes > max {
                            self.bodyTooLarge()
                            return
                        }
                    }
                    self.forwardBody(data)
                case .end: self.endRequestBody()
                }
                continue
            }
            guard self.exchange == nil, self.inbound.readableBytes > 0 else { break }  // a pipelined request waits for the current response
            guard let end = HTTP1Parser.headEnd(in: self.inbound, from: self.scanned) else {
                self.scanned = max(0, self.inbound.readableBytes - 3)
                if self.inbound.readableBytes > self.limits.maxHeadBytes { self.badRequest(self.headTooLarge) }
                if self.state.headIncomplete() == .startHeaderTimeout { self.startNextHeadTimer() }
                return
            }
            self.scanned = 0
            guard end <= self.limits.maxHeadBytes else {
                self.badRequest(self.headTooLarge)
                return
            }
            var head = self.loop.takeSpareRequestHead()
            head.refill(reading: end, from: &self.inbound)
            do {
                try HTTP1Parser.parseRequest(&head)
            } catch {
                self.badRequest(HTTPFramingError(error))
                return
            }
            self.receivedHead(consume head)
        }
        if self.inbound.readableBytes == 0, self.inbound.capacity > 0 {
            self.inbound = ByteBuffer()
        }
    }

    private var headTooLarge: HTTPFramingError {
        HTTPFramingError(kind: .headTooLarge, reason: "request head larger than \(self.limits.maxHeadBytes) bytes")
    }

    private func forwardBody(_ data: ByteBuffer) {
        guard let exchange = self.exchange else { return }  // a local answer: the body is dropped
        if exchange.state.isTunnel { self.armReadTimer(exchange) }
        if exchange.chunkedUpstream {
            self.sendUpstream(Chunked.prefix(data.readableBytes), exchange)
            self.sendUpstream(data, exchange)
            self.sendUpstream(Chunked.crlf, exchange)
        } else {
            self.sendUpstream(data, exchange)
        }
    }

    private func endRequestBody() {
        self.requestBody = nil
        guard let exchange = self.exchange else { return }
        let action = exchange.state.requestBodyEnded()
        if exchange.chunkedUpstream { self.sendUpstream(Chunked.lastChunk, exchange) }
        if let connection = exchange.connection {
            connection.flush()
            self.upstreamNeedsFlush = false
            if action == .armReadDeadline { self.armReadTimer(exchange) }
        }
    }

    /// Request bytes to the upstream, kept for a replay while they fit.
    private func sendUpstream(_ bytes: ByteBuffer, _ exchange: Exchange) {
        if exchange.replay != nil {
            exchange.replayBytes += bytes.readableBytes
            if exchange.replayBytes <= self.limits.retryBufferBytes {
                exchange.replay!.append(bytes)
            } else {
                exchange.replay = nil
            }
        }
        if let connection = exchange.connection {
            connection.write(bytes)
            self.upstreamNeedsFlush = true
        } else {
            exchange.pending.append(bytes)
        }
    }

    /// `consuming`: the head moves into the exchange rather than being copied.
    private func receivedHead(_ head: consuming HTTPHead) {
        guard let context = self.context else { return }
        self.timers.client = nil
        self.state.headParsed()
        let hasBody = head.chunked || (head.contentLength ?? 0) > 0
        if self.loop.accessLog != nil { self.requestStart = .now() }
        self.requestBody = head.chunked ? .chunked : (hasBody ? BodyFramer(length: head.contentLength!) : nil)
        if hasBody {
            self.timers.body = .now() + self.limits.bodyTimeout
            if self.context != nil { self.loop.deadlines.schedule(self, at: self.timers.body!) }
        }
        self.bodyBytes = 0
        let methodLength = head.method.utf8.count  // GET and POST skip the comparisons
        if (methodLength == 7 && head.method == "CONNECT") || (methodLength == 5 && head.method == "TRACE") {
            // Refused, as nginx refuses them (CONNECT with 400). The gateway has no tunnel
            // to offer, and a 2xx from an upstream would make the connection one that the
            // client reads as a tunnel and the gateway as HTTP; TRACE would echo the
            // request's headers, the gateway's forwarded ones and the client's cookies
            // included, to a script that sent it.
            self.respondLocally(status: 405, message: "\(head.method) is not allowed", request: head, requestEnded: !hasBody)
            return
        }
        if let serverNames = self.listener.serverNames, let reason = self.misdirection(head, serverNames) {
            // nginx answers 421 for a host whose client authentication differs from the
            // SNI's; without it, SNI `www` and `Host: admin` reached the admin upstream
            // without the certificate admin requires.
            self.listener.clientFaults.report("misdirected request", reason: reason, level: .info, peer: self.info.clientIP,
                                              metadata: self.peerMetadata.merging([
                                                  "host": "\(head.first(.host) ?? "")", "uri": "\(head.target)", "reason": "\(reason)",
                                              ]) { a, _ in a }, listener: self.listener)
            self.respondLocally(status: 421, message: "this connection does not serve that host; connect with its name as SNI",
                                request: head, requestEnded: !hasBody)
            return
        }
        let route = self.router.route(listener: self.listener.name, host: head.first(.host), uri: head.target)
        self.maxBodyBytes = route?.maxBodyBytes ?? self.limits.maxBodyBytes
        if let max = self.maxBodyBytes, let length = head.contentLength, length > max {
            // Refused before a byte of it is read (and without `100 Continue`, so a
            // client that asked never sends it).
            self.logger.info("request body too large", metadata: self.peerMetadata.merging([
                "content_length": "\(length)", "max_request_body_bytes": "\(max)", "uri": "\(head.target)",
            ]) { a, _ in a })
            self.respondLocally(status: 413, message: "request body larger than \(max) bytes", request: head, requestEnded: false)
            return
        }
        let group: UpstreamGroup
        switch route?.action {
        case .upstream(let upstream):
            group = upstream
        case .redirect(let redirect):
            self.answerLocally(LocalAnswer.redirect(head, to: redirect), request: head, requestEnded: !hasBody)
            return
        case .root(let root):
            self.serveFile(head, from: root, requestEnded: !hasBody)
            return
        case nil:
            self.respondLocally(status: 404, message: "no route for this host and path", request: head, requestEnded: !hasBody)
            return
        }
        if head.expectContinue && head.minorVersion == 1 {
            // Answer 100-continue here so the client streams at once; the upstream
            // gets the body without the expectation.
            if let stream = self.stream {
                stream.continueRequest()
            } else {
                context.writeAndFlush(NIOAny(context.channel.allocator.buffer(staticString: "HTTP/1.1 100 Continue\r\n\r\n")), promise: nil)
            }
        }
        let upgrade = self.stream == nil && head.isWebSocketUpgrade
        let exchange = Exchange(request: consume head, group: group, upgrade: upgrade, requestEnded: !hasBody)
        self.exchange = exchange
        self.connect(exchange)
    }

    // MARK: upstream connection

    private func connect(_ exchange: Exchange) {
        let group = exchange.group
        if exchange.backendIndex == nil {
            guard let chosen = group.select(UpstreamGroup.RequestKey(clientIP: self.info.clientIP, request: exchange.request), tried: exchange.tried) else {
                let reason = exchange.tried.isEmpty ? "every backend is down" : "no backend left to try"
                // A request moved on from a broken connection keeps that failure's answer.
                self.failExchange(exchange, error: exchange.retryError ?? UpstreamError(kind: .noHealthyBackend, backend: group.name, reason: reason))
                return
            }
            exchange.backendIndex = chosen
            group.requestBegan(on: chosen)
        }
        let index = exchange.backendIndex!
        // After a stale reused connection, the retry always gets a fresh one.
        if !exchange.state.retriedStale, let idle = self.loop.pool.takeIdle(group: group, backend: index) {
            self.attach(idle, to: exchange)  // the common keep-alive case: no future, no hop
            return
        }
        self.loop.pool.open(group: group, backend: index).assumeIsolated().whenComplete { result in
            guard self.exchange === exchange, !self.state.isClosed else {
                if case .success(let connection) = result {
                    group.connectSucceeded(index)
                    self.loop.pool.release(connection, group: group)
                }
                return
            }
            switch result {
            case .success(let connection):
                group.connectSucceeded(index)
                self.attach(connection, to: exchange)
            case .failure(let error):
                guard let upstream = error as? UpstreamError, upstream.isConnectFailure else {
                    self.failExchange(exchange, error: error)
                    return
                }
                self.connectFailed(exchange, backend: index, error: upstream, failure: .connect)
            }
        }
    }

    /// A connect to the exchange's backend failed: refused, timed out, or its TLS
    /// handshake failed (nginx counts that against the server too: the backend is not
    /// usable, whatever its TCP port says). Counted towards ejection, then the request
    /// moves on to another backend, a bounded number of times, as `FailedAttempt` decides.
    private func connectFailed(_ exchange: Exchange, backend index: Int, error: UpstreamError, failure: FailedAttempt.Failure) {
        let group = exchange.group
        if let failure = error.tlsFailure { group.tlsHandshakeFailed(index, reason: failure) }
        if group.backendFailed(index, reason: "\(error)") {
            self.logger.warning("backend ejected after consecutive connect failures", metadata: [
                "upstream": "\(group.name)", "backend": "\(group.backends[index].description)",
                "fail_timeout": "\(group.passive.failTimeout.nanoseconds / 1_000_000_000)s", "error": "\(error)",
            ])
        }
        exchange.tried.append(index)
        exchange.leaveBackend()
        if case .retry = exchange.state.failed(self.attempt(exchange, failed: failure)) {
            exchange.retryError = error  // the answer if no backend is left to try
            self.logger.warning("upstream connect failed; trying another backend", metadata: ["upstream": "\(group.name)", "error": "\(error)"])
            self.connect(exchange)
            return
        }
        self.failExchange(exchange, error: error)
    }

    private func attach(_ connection: UpstreamConnection, to exchange: Exchange) {
        if let field = HeadRewriting.unsafeAddedField(group: exchange.group, mutualTLS: self.listener.mutualTLS, info: self.info) {
            // The head writer writes no line a value could end early, whatever its source.
            self.loop.pool.release(connection, group: exchange.group)
            self.failExchange(exchange, error: UpstreamError(kind: .protocolError, backend: exchange.group.name,
                                                             reason: "refusing to send \(field): it holds CR, LF or NUL"))
            return
        }
        exchange.connection = connection
        // Before the first write: a flush that fails (a pooled connection the upstream had
        // reset) reports the failure before it returns, and the retry it leads to must find
        // the exchange sending, not still connecting.
        let connected = exchange.state.connected()
        connection.uses += 1
        exchange.group.requestSent(to: connection.backendIndex)
        connection.begin(for: self, headRequest: exchange.request.isHeadMethod, upgrade: exchange.upgrade)
        let head = HeadRewriting.upstreamHead(for: exchange.request, group: exchange.group, upgrade: exchange.upgrade,
                                              scheme: self.listener.scheme, mutualTLS: self.listener.mutualTLS, info: self.info,
                                              heads: &self.loop.requestHeads)
        connection.write(head)
        if !exchange.pending.isEmpty {
            for bytes in exchange.pending { connection.write(bytes) }
            exchange.pending.removeAll()
        }
        connection.flush()
        // Written and let go of by NIO unless the socket was full; a buffer still shared
        // is copied by the next `take`, never overwritten. (Kept by the exchange instead,
        // as before, the buffer was shared by every request in flight on the loop: one
        // allocation per request.)
        self.loop.requestHeads.keep(head)
        self.upstreamNeedsFlush = false
        guard exchange.connection === connection else { return }  // failed in the flush, and retried
        if connected == .armReadDeadline { self.armReadTimer(exchange) }
        if connection.isWritable { self.resumeReads() }
    }

    /// Pushes the read deadline out. The handler's entry in the loop's deadline heap is
    /// moved only when the new deadline is earlier; reached before a deadline that moved
    /// later, it re-queues itself, so a request costs a clock read and a comparison.
    private func armReadTimer(_ exchange: Exchange) {
        let deadline = NIODeadline.now() + exchange.group.timeouts.read
        self.timers.upstreamRead = deadline
        if exchange.firstReadDeadline == nil { exchange.firstReadDeadline = deadline }
        if self.context != nil { self.loop.deadlines.schedule(self, at: deadline) }
    }

    /// The upstream sent nothing within the read timeout.
    private func readTimedOut(_ exchange: Exchange) {
        self.timers.upstreamRead = nil
        let backend = exchange.connection.map { $0.key.address.hostPort } ?? "?"
        exchange.connection?.abandon()
        exchange.connection = nil
        let group = exchange.group
        let stalled = exchange.state.responseStarted
        let error = UpstreamError(kind: .readTimeout, backend: backend,
                                  reason: stalled ? "the response stalled: no more of it within the read timeout" : "no response within the read timeout")
        // A backend that accepts and never answers is a failing backend (nginx's
        // `proxy_next_upstream timeout`): it counts towards ejection, shows as the
        // backend's last error, and an idempotent request whose body is held goes to
        // another backend, if the first try began less than `next_upstream` ago.
        if !stalled, let index = exchange.backendIndex, group.backendFailed(index, reason: "\(error)", connect: false) {
            self.logger.warning("backend ejected after consecutive failures", metadata: [
                "upstream": "\(group.name)", "backend": "\(group.backends[index].description)",
                "fail_timeout": "\(group.passive.failTimeout.nanoseconds / 1_000_000_000)s", "error": "\(error)",
            ])
        }
        let now = NIODeadline.now()
        let firstTry = (exchange.firstReadDeadline ?? now) - group.timeouts.read
        let attempt = self.attempt(exchange, failed: .readTimeout, counting: exchange.backendIndex,
                                   withinNextUpstream: now < firstTry + group.timeouts.nextUpstream)
        switch exchange.state.failed(attempt) {
        case .endTunnel:
            self.endTunnel(exchange, reason: "idle for the read timeout")
        case .abortResponse:
            self.abortMidResponse(exchange, error: error)
        case .retry:
            if let more = self.listener.upstreamFaults.shouldLog("\(group.name) \(backend) read timeout retry") {
                self.logger.warning("upstream sent no response within the read timeout; trying another backend", metadata: more.merging([
                    "upstream": "\(group.name)", "backend": "\(backend)", "method": "\(exchange.request.method)",
                ]) { a, _ in a })
            }
            self.sendElsewhere(exchange, after: error)
        case .answer, .none, .armReadDeadline, .finish, .finishBeforeRequestEnded, .openTunnel:
            self.failExchange(exchange, error: error)
        }
    }

    /// The request goes to another backend, as the retry policy decided after `error`:
    /// the failed backend is excluded, and the request bytes held are sent again.
    private func sendElsewhere(_ exchange: Exchange, after error: Error) {
        guard let index = exchange.backendIndex else {
            self.failExchange(exchange, error: error)  // no backend to exclude: never retried without one
            return
        }
        exchange.tried.append(index)
        exchange.leaveBackend()
        exchange.retryError = error  // the answer if no backend is left to try
        exchange.pending = exchange.replay ?? []
        self.connect(exchange)
    }

    private func stopReadTimer() {
        self.timers.upstreamRead = nil  // the heap entry, if due for it, finds nothing to do
    }

    func upstreamReceived(_ part: UpstreamResponsePart, from connection: UpstreamConnection) {
        guard let exchange = self.exchange, exchange.connection === connection, let context = self.context else { return }
        switch part {
        case .head(let response):
            if response.status != 101 {
                switch self.downstream.responseHead(response, request: exchange.request, draining: self.state.draining,
                                                   hsts: self.limits.strictTransportSecurity, heads: &self.loop.responseHeads, context: context) {
                case .refused(let kind, let reason):
                    connection.abandon()
                    exchange.connection = nil
                    self.stopReadTimer()
                    self.failExchange(exchange, error: UpstreamError(kind: kind, backend: connection.key.address.hostPort, reason: reason))
                    return
                case .written(let closeAfter, let written):
                    exchange.closeDownstreamAfterResponse = closeAfter
                    written?.assumeIsolated().whenFailure { error in
                        // Never silently: the stream is reset, and the line says why.
                        self.logger.warning("HTTP/2 response head not written; resetting the stream", metadata: self.peerMetadata.merging([
                            "error": "\(error)", "uri": "\(exchange.request.target)",
                        ]) { a, _ in a })
                        context.close(promise: nil)
                    }
                }
            }
            exchange.status = response.status
            exchange.group.responseReceived(connection.backendIndex)
            self.armReadTimer(exchange)
            if exchange.state.responseHead(status: response.status) == .openTunnel {
                self.startTunnel(exchange, response: response, context: context)
            } else {
                self.downstreamNeedsFlush = true
            }
        case .body(let body):
            self.armReadTimer(exchange)
            exchange.bodyBytesSent &+= body.readableBytes
            // Flushed once per upstream read batch (upstreamReadComplete): one TLS
            // record and one syscall for a small response instead of one per part.
            self.downstream.responseBody(body, context: context)
            self.downstreamNeedsFlush = true
        case .end:
            self.stopReadTimer()
            let action = exchange.state.responseEnded(reusable: connection.handler.reusable)
            if action == .endTunnel {
                self.endTunnel(exchange, reason: "closed by the upstream")
                return
            }
            self.downstream.responseEnd(context: context)
            self.downstreamNeedsFlush = true
            self.requests?.completed(status: exchange.status)
            if self.loop.accessLog != nil { self.logAccess(exchange.request, status: exchange.status, bodyBytes: exchange.bodyBytesSent, exchange: exchange) }
            switch action {
            case .finish(let reuse):
                self.finish(exchange, reuseUpstream: reuse)
            case .finishBeforeRequestEnded:
                self.finishBeforeRequestEnded(exchange, context: context)
            case .none, .armReadDeadline, .openTunnel, .endTunnel, .retry, .answer, .abortResponse:
                break
            }
        }
    }

    /// The upstream accepted a WebSocket handshake: the client gets the `101` with the
    /// upgrade fields, then both connections carry the protocol's bytes unframed (the
    /// client's as a request body without end, the upstream's as a response body
    /// delimited by its close), with the usual back-pressure both ways. The upstream
    /// read timeout becomes the tunnel's idle timeout (HAProxy's `timeout tunnel`),
    /// reset by traffic either way.
    private func startTunnel(_ exchange: Exchange, response: HTTPHead, context: ChannelHandlerContext) {
        self.downstream.beginTunnel()
        var out = context.channel.allocator.buffer(capacity: response.bytes.count + 64)
        out.writeStaticString("HTTP/1.1 ")
        response.writeBytes(9..<response.startLineEnd + 2, to: &out)
        response.writeFields(to: &out) { response.isHopByHop($0) }
        out.writeStaticString("connection: upgrade\r\nupgrade: ")
        out.writeString(response.first(.upgrade) ?? "websocket")
        out.writeStaticString("\r\n\r\n")
        context.write(NIOAny(out), promise: nil)
        self.downstreamNeedsFlush = true
        self.logger.debug("websocket tunnel open", metadata: self.peerMetadata.merging(["uri": "\(exchange.request.target)"]) { a, _ in a })
        // The client's bytes from now on (and any that came early) go upstream as they are.
        exchange.replay = nil
        self.requestBody = .untilClose
        self.timers.body = nil  // a tunnel idles out on the upstream's read timeout
        self.maxBodyBytes = nil
        self.process()
        if self.upstreamNeedsFlush {
            self.upstreamNeedsFlush = false
            exchange.connection?.flush()
        }
        if exchange.connection?.isWritable ?? false { self.resumeReads() }
    }

    /// One side of a WebSocket tunnel closed (or it idled out): the other is closed
    /// after what is in flight, and the exchange is logged as the `101` it was.
    private func endTunnel(_ exchange: Exchange, reason: String) {
        self.logger.debug("websocket tunnel closed", metadata: self.peerMetadata.merging(["reason": "\(reason)"]) { a, _ in a })
        self.requests?.completed(status: 101)
        if self.loop.accessLog != nil { self.logAccess(exchange.request, status: 101, bodyBytes: exchange.bodyBytesSent, exchange: exchange) }
        self.stopReadTimer()
        self.dropExchange(exchange)
        self.requestBody = nil
        self.closeAfterWhatIsWritten()
    }

    /// Forgets the exchange and closes its upstream connection, which holds an
    /// unfinished exchange (a tunnel, a request cut short) and cannot be pooled.
    private func dropExchange(_ exchange: Exchange) {
        exchange.connection?.abandon()
        exchange.connection = nil
        exchange.leaveBackend()
        self.exchange = nil
    }

    /// The upstream answered before the request body ended: neither side can be reused.
    private func finishBeforeRequestEnded(_ exchange: Exchange, context: ChannelHandlerContext) {
        self.dropExchange(exchange)
        self.state.closeAfterWritten()
        self.flushDownstream()
        // An HTTP/2 stream is reset with NO_ERROR, not closed (CANCEL); a connection lingers.
        if !self.downstream.endRequestEarly() { self.lingerForRequestBody(context) }
    }

    /// Both directions are complete: the upstream connection goes back to the pool (or
    /// closes), and the client connection goes on to its next request (or closes).
    private func finish(_ exchange: Exchange, reuseUpstream: Bool) {
        if let connection = exchange.connection {
            exchange.connection = nil
            if reuseUpstream {
                self.loop.pool.release(connection, group: exchange.group)
            } else {
                connection.abandon()
            }
        }
        exchange.leaveBackend()
        self.exchange = nil
        self.loop.recycle(exchange.request)
        if exchange.closeDownstreamAfterResponse {
            self.closeAfterWhatIsWritten()
            return
        }
        self.requestDone()
    }

    /// Between requests: the idle deadline runs, and a pipelined request already read goes next.
    private func requestDone() {
        self.flushDownstream()  // the upstream connection went back to the pool: its read-complete no longer reaches us
        if self.state.requestDone() == .startIdleTimeout {
            self.timers.client = .now() + self.limits.idleTimeout
            // Queued for a later deadline (the header timeout's, when the idle timeout
            // is shorter): moved earlier. Queued for an earlier one: nothing to do.
            self.scheduleDeadline()
        }
        if self.inbound.readableBytes > 0 { self.process() }
        guard self.exchange == nil else { return }  // a pipelined request began
        self.resumeReads()
        // Draining, and this response told the client to keep the connection (the drain
        // began after its head went out): wait for a next request, to close after it.
        if self.state.waitsOutDrain { self.awaitDrainQuiet() }
    }

    /// Draining with no request in flight: the connection stays open for the quiet
    /// period, then closes unless a request has begun. Closing at once would race a
    /// request the client may be sending that very moment; a client that does not
    /// retry (an API client, any POST) would lose it. A new connection whose first
    /// request head, or TLS handshake, has begun keeps its header timeout instead; one
    /// with no request byte yet (silent, or done with its handshake, as a browser's
    /// preconnect) waits the quiet period too.
    private func awaitDrainQuiet() {
        guard !self.state.singleRequest, self.timers.drainQuietUntil == nil, !self.state.awaitsFirstHead || self.noRequestBegun else { return }
        let until = NIODeadline.now() + self.limits.drainQuietPeriod
        self.timers.drainQuietUntil = until
        if self.context != nil { self.loop.deadlines.schedule(self, at: until) }
    }

    private func flushDownstream() {
        if self.downstreamNeedsFlush {
            self.downstreamNeedsFlush = false
            if let context = self.context { self.downstream.flush(context: context) }
        }
    }

    /// Ends the client connection: what was written goes out, then it closes; input from
    /// now on is ignored.
    private func closeAfterWhatIsWritten() {
        self.state.closeAfterWritten()
        self.flushDownstream()
        self.context?.close(promise: nil)
    }

    func upstreamFailed(_ error: Error, from connection: UpstreamConnection) {
        guard let exchange = self.exchange, exchange.connection === connection else { return }
        self.stopReadTimer()
        exchange.connection = nil
        connection.close()
        if !exchange.state.responseStarted, let upstream = error as? UpstreamError, upstream.kind == .tlsHandshake, let index = exchange.backendIndex {
            // TLS 1.3: the upstream refused our client certificate after our side of the
            // handshake ended; its alert is the first thing read. It read nothing of the
            // request, so any request whose bytes are all held may go to another backend.
            exchange.pending = exchange.replay ?? []
            self.connectFailed(exchange, backend: index, error: upstream, failure: .refusedAfterHandshake)
            return
        }
        // Before the response: a reused connection that died before any response byte
        // (the upstream closed it while idle) is replayed once on a fresh connection when
        // safe: everything sent so far is still held, and the method is idempotent or the
        // whole (small) request was held. Only a broken connection: a backend that
        // answered badly (a head too large, not HTTP) has acted on the request, and a
        // POST must not reach it twice. A backend that broke the connection with the
        // request in it (it died, restarted, or reset it): an idempotent request goes to
        // another backend, as nginx's default `proxy_next_upstream error` does, within
        // max_connect_attempts; a non-idempotent one may have been acted on and is not
        // repeated.
        let action = exchange.state.failed(self.attempt(exchange, failed: Self.brokeConnection(error) ? .broken : .other,
                                                        counting: exchange.backendIndex, reused: connection.uses > 1))
        if action == .retry(.freshConnection) {
            exchange.pending = exchange.replay ?? []  // attach writes the head first
            self.logger.debug("retrying request on a fresh upstream connection", metadata: ["error": "\(error)"])
            self.connect(exchange)
            return
        }
        // Not the routine end of a pooled connection the backend closed while idle
        // (replayed above): a failure to show as the backend's last error.
        exchange.group.recordError(connection.backendIndex, reason: "\(error)")
        switch action {
        case .retry:
            self.logger.warning("upstream connection broke before the response; trying another backend", metadata: [
                "upstream": "\(exchange.group.name)", "error": "\(error)", "method": "\(exchange.request.method)",
            ])
            self.sendElsewhere(exchange, after: error)
        case .endTunnel:
            self.endTunnel(exchange, reason: "\(error)")
        case .abortResponse:
            self.abortMidResponse(exchange, error: error)
        case .answer, .none, .armReadDeadline, .finish, .finishBeforeRequestEnded, .openTunnel:
            self.failExchange(exchange, error: error)
        }
    }

    /// The exchange's failed attempt as the retry policy sees it; `counting`: the backend
    /// that failed when it is not in `tried` yet (it counts as an attempt).
    private func attempt(_ exchange: Exchange, failed failure: FailedAttempt.Failure, counting backend: Int? = nil,
                         reused: Bool = false, withinNextUpstream: Bool = true) -> FailedAttempt {
        FailedAttempt(failure: failure, idempotent: exchange.request.isIdempotent, held: exchange.replay != nil,
                      requestEnded: exchange.state.requestEnded, reused: reused, retriedStale: exchange.state.retriedStale,
                      attempts: exchange.tried.count + (backend == nil ? 0 : 1), maxAttempts: exchange.group.maxConnectAttempts,
                      withinNextUpstream: withinNextUpstream)
    }

    /// The upstream connection broke (closed before the response, or reset), rather
    /// than answering badly or too slowly.
    private static func brokeConnection(_ error: Error) -> Bool {
        if let upstream = error as? UpstreamError { return upstream.kind == .closedEarly }
        return error is IOError
    }

    /// Part of the response is already out: the only honest signal is to close.
    private func abortMidResponse(_ exchange: Exchange, error: Error) {
        self.logger.warning("upstream failed mid-response; closing client connection", metadata: [
            "upstream": "\(exchange.group.name)", "error": "\(error)",
        ])
        if self.loop.accessLog != nil { self.logAccess(exchange.request, status: exchange.status, bodyBytes: exchange.bodyBytesSent, exchange: exchange) }
        exchange.leaveBackend()
        self.exchange = nil
        self.closeAfterWhatIsWritten()
    }

    func upstreamReadComplete() {
        self.flushDownstream()
    }

    func upstreamWritabilityChanged(_ writable: Bool) {
        guard let exchange = self.exchange else { return }
        if writable {
            exchange.writeTimer?.cancel()
            exchange.writeTimer = nil
            self.resumeReads()
        } else if !exchange.state.requestEnded, exchange.writeTimer == nil, let context = self.context {
            // The upstream stopped taking the request body: it has the write timeout to resume.
            exchange.writeTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: exchange.group.timeouts.write) {
                exchange.writeTimer = nil
                guard self.exchange === exchange, let connection = exchange.connection, !connection.isWritable else { return }
                self.stopReadTimer()
                connection.abandon()
                exchange.connection = nil
                let error = UpstreamError(kind: .writeTimeout, backend: connection.key.address.hostPort, reason: "the upstream stopped reading the request body")
                switch exchange.state.failed(self.attempt(exchange, failed: .other)) {
                case .endTunnel:
                    self.endTunnel(exchange, reason: "the upstream stopped reading for the write timeout")
                case .abortResponse:
                    self.abortMidResponse(exchange, error: error)
                case .retry, .none, .armReadDeadline, .finish, .finishBeforeRequestEnded, .openTunnel:
                    assertionFailure("a write timeout (`.other`) is never retried")
                    self.failExchange(exchange, error: error)
                case .answer:
                    self.failExchange(exchange, error: error)
                }
            }
        }
    }

    var downstreamWritable: Bool { self.context?.channel.isWritable ?? false }

    private func failExchange(_ exchange: Exchange, error: Error) {
        _ = exchange.state.abandon()  // answered here: no later event of this attempt counts
        exchange.leaveBackend()
        let status: Int
        let message: String
        switch (error as? UpstreamError)?.kind {
        case .connectTimeout, .readTimeout, .writeTimeout:
            (status, message) = (504, "upstream timed out")
        case .noHealthyBackend:
            (status, message) = (503, "no healthy backend in upstream '\(exchange.group.name)'")
        case .responseHeadTooLarge:
            (status, message) = (502, "upstream response head too large")
        case .localResources:
            (status, message) = (503, "the gateway is out of connections to open; try again")
        case .protocolError:
            (status, message) = (502, "invalid response from upstream")
        default:
            (status, message) = (502, "upstream unavailable")
        }
        let kind = (error as? UpstreamError).map { "\($0.backend) \($0.kind)" } ?? "\(type(of: error))"
        if let more = self.listener.upstreamFaults.shouldLog("\(exchange.group.name) \(kind)") {
            self.logger.warning("upstream request failed", metadata: more.merging([
                "upstream": "\(exchange.group.name)", "status": "\(status)", "error": "\(error)",
                "method": "\(exchange.request.method)", "uri": "\(exchange.request.target)",
            ]) { a, _ in a })
        }
        self.exchange = nil
        self.respondLocally(status: status, message: message, request: exchange.request, requestEnded: exchange.state.requestEnded,
                            upstream: exchange.group.name)
    }

    /// A body without a declared length went past `maxBodyBytes`: the upstream request
    /// is abandoned and the client gets 413 (its body still arriving, the connection
    /// lingers or the stream is reset with NO_ERROR); with the response already under
    /// way, the connection (or stream) is closed instead.
    private func bodyTooLarge() {
        let max = self.maxBodyBytes ?? 0
        self.requestBody = nil
        let request = self.exchange?.request
        self.logger.info("request body too large", metadata: self.peerMetadata.merging([
            "max_request_body_bytes": "\(max)", "uri": "\(request?.target ?? "?")",
        ]) { a, _ in a })
        guard self.abandonExchange() else { return }
        self.respondLocally(status: 413, message: "request body larger than \(max) bytes", request: request, requestEnded: false)
    }

    /// The client sent no body bytes for `timeouts.body`: a request that held its upstream
    /// connection for as long as the client liked (one byte every few seconds) is ended:
    /// 408 when the response has not started, else the connection (or stream) is closed.
    private func bodyTimedOut() {
        self.timers.body = nil
        self.requestBody = nil
        let request = self.exchange?.request
        self.listener.clientFaults.report("client sent no request body data within the body timeout", reason: "", level: .info,
                                          peer: self.info.clientIP, metadata: self.peerMetadata.merging([
                                              "uri": "\(request?.target ?? "?")", "body_timeout": "\(self.limits.bodyTimeout)",
                                          ]) { a, _ in a }, listener: self.listener)
        guard self.abandonExchange() else { return }
        self.respondLocally(status: 408, message: "no request body data within the body timeout", request: request, requestEnded: false)
    }

    /// Drops the exchange in flight, if any, before the gateway answers the client
    /// itself: its upstream connection, holding an unfinished request, is closed. False
    /// when the response had already started: the client connection is closed instead
    /// and there is nothing left to answer.
    private func abandonExchange() -> Bool {
        guard let exchange = self.exchange else { return true }
        self.stopReadTimer()
        let couldAnswer = exchange.state.abandon()
        self.dropExchange(exchange)
        guard couldAnswer else {
            self.closeAfterWhatIsWritten()
            return false
        }
        return true
    }

    /// A malformed request: 400 (431 for an oversized head), then the connection closes.
    private func badRequest(_ error: HTTPFramingError) {
        self.listener.clientFaults.report("bad request from client", reason: error.reason, level: .info, peer: self.info.clientIP,
                                          metadata: self.peerMetadata.merging(["error": "\(error)"]) { a, _ in a }, listener: self.listener)
        // The body of a request in flight broke its framing: nothing can be trusted after it.
        guard self.abandonExchange() else { return }
        let status = error.kind == .headTooLarge ? 431 : 400
        self.respondLocally(status: status, message: error.reason, request: nil, requestEnded: false)
    }

    /// Answers from the gateway itself: a text body saying why, plus `fields` (header
    /// lines, each ending in CRLF).
    private func respondLocally(status: Int, message: String, request: HTTPHead?, requestEnded: Bool, fields: String = "",
                                upstream: String? = nil) {
        self.answerLocally(LocalAnswer(status: status, message: message, fields: fields), request: request, requestEnded: requestEnded,
                           upstream: upstream)
    }

    /// Writes an answer of the gateway's own. A connection whose request was not fully
    /// read (or that asked for it) is closed after the answer.
    private func answerLocally(_ answer: LocalAnswer, request: HTTPHead?, requestEnded: Bool, upstream: String? = nil) {
        guard let context = self.context else { return }
        let status = answer.status
        let close = LocalAnswer.closes(request: request, requestEnded: requestEnded, draining: self.state.draining)
        let out = answer.bytes(for: request, close: close, hsts: self.limits.strictTransportSecurity, allocator: context.channel.allocator)
        self.downstreamNeedsFlush = false
        let done = self.downstream.writeLocalAnswer(out, context: context)
        self.requests?.completed(status: status)
        if self.loop.accessLog != nil {
            if request == nil { self.requestStart = .now() }  // a head that never parsed: no duration
            self.logAccess(request, status: status, bodyBytes: request?.isHeadMethod == true ? 0 : answer.body.readableBytes, upstream: upstream)
        }
        if close {
            self.state.closeAfterWritten()
            self.requestBody = nil
            self.inbound = ByteBuffer()
            // A request whose body is still arriving (a 404 or 502 for an upload) ends as
            // when the upstream answers early: an HTTP/2 stream is reset with NO_ERROR, a
            // plain HTTP/1.1 connection lingers, so the answer is not lost to a reset.
            let bodyArriving = request != nil && !requestEnded
            done.assumeIsolated().whenComplete { result in
                guard bodyArriving, case .success = result, !self.state.isClosed else {
                    context.close(promise: nil)
                    return
                }
                if !self.downstream.endRequestEarly() { self.lingerForRequestBody(context) }
            }
        } else {
            self.requestDone()
        }
    }

    /// One access log line (only called with an access log configured).
    private func logAccess(_ request: HTTPHead?, status: Int, bodyBytes: Int, exchange: Exchange? = nil, upstream: String? = nil) {
        guard let log = self.loop.accessLog else { return }
        let proto = self.downstream.protocolName(of: request)
        log.record(AccessLogEntry(
            listener: self.listener.name, client: self.info.clientIP, proto: proto, request: request, status: status,
            bodyBytesSent: bodyBytes, duration: .now() - self.requestStart, upstream: upstream ?? exchange?.group.name,
            backend: exchange?.backendIndex.map { exchange!.group.backends[$0].description }
        ))
    }

    /// Why this request's host does not belong on this connection
    /// (`ServerNameSelector.misdirection`); nil when it does, or names no host.
    private func misdirection(_ head: HTTPHead, _ serverNames: any ServerNameSelector) -> String? {
        guard let raw = head.first(.host) else { return nil }
        let host = Router.normalizedHost(raw)
        if host == self.info.serverName { return nil }  // the usual request: one comparison
        return serverNames.misdirection(serverName: self.info.serverName, host: host)
    }

    /// A `root` route's answer; a refused file is logged with the reason the client is not told.
    private func serveFile(_ head: HTTPHead, from root: StaticRoot, requestEnded: Bool) {
        let answer = LocalAnswer.file(head, from: root, allocator: self.context?.channel.allocator ?? ByteBufferAllocator())
        if let reason = answer.refusal {
            self.logger.warning("static file not served", metadata: self.peerMetadata.merging([
                "uri": "\(head.target)", "reason": "\(reason)",
            ]) { a, _ in a })
        }
        self.answerLocally(answer, request: head, requestEnded: requestEnded)
    }

    /// No request has begun on this new connection: no byte of a head has arrived, and a
    /// TLS handshake, if any, is done or has not started (no ClientHello byte).
    private var noRequestBegun: Bool {
        guard self.state.awaitsFirstHead, self.inbound.readableBytes == 0, let context = self.context else { return false }
        guard let tls = try? context.pipeline.syncOperations.handler(type: OpenSSLHandler.self) else { return true }
        return tls.handshakeCompleted || !tls.hasReceivedBytes
    }

    // MARK: header and idle timeouts

    private func startHeaderTimer() {
        guard self.deadlineSlot < 0, self.state.awaitsFirstHead, !self.state.singleRequest else { return }
        self.timers.client = .now() + self.limits.headerTimeout
        self.scheduleDeadline()
    }

    /// A later request's head arrived in part: from its first bytes it has the header
    /// timeout (nginx's `client_header_timeout`), however long the idle timeout is, and
    /// bytes trickling in do not extend it. A head that arrives whole never gets here.
    private func startNextHeadTimer() {
        self.timers.client = .now() + self.limits.headerTimeout
        self.scheduleDeadline()
    }

    private func scheduleDeadline() {
        guard let deadline = self.timers.client, self.context != nil else { return }
        self.loop.deadlines.schedule(self, at: deadline)
    }

    /// The response went out before the request body ended. Closing now, with the body
    /// still arriving, makes the kernel answer it with a reset that can overtake the
    /// response at the client; so the rest of the body is read and dropped until the
    /// client stops sending for `lingerPause` or for `lingerLimit` in all, then the
    /// connection closes (nginx's `lingering_close`). TLS connections are left to
    /// `OpenSSLHandler`'s close, which reads on while it waits for close_notify.
    private func lingerForRequestBody(_ context: ChannelHandlerContext) {
        guard self.listener.scheme == "http" else {
            context.close(promise: nil)
            return
        }
        let now = NIODeadline.now()
        self.requestBody = nil
        self.inbound = ByteBuffer()
        self.state.lingerStarted()
        self.timers.lingerUntil = now + Self.lingerLimit
        self.timers.client = now + Self.lingerPause
        self.scheduleDeadline()
    }

    /// nginx's `lingering_timeout` and `lingering_time`.
    private static let lingerPause = TimeAmount.seconds(5)
    private static let lingerLimit = TimeAmount.seconds(30)

    /// Where the connection stands, for its deadlines.
    private var standing: ClientDeadlines.Standing {
        let exchange = self.exchange
        return ClientDeadlines.Standing(
            readingBody: self.requestBody != nil && self.state.acceptsInput, gatewayHoldsReads: self.state.readHeld,
            awaitingResponse: exchange.map { $0.state.inFlight } ?? false, betweenRequests: self.state.betweenRequests,
            headAwaited: self.state.headAwaited,
            quiet: { self.inbound.readableBytes == 0 && (!self.state.awaitsFirstHead || self.noRequestBegun) })
    }

    func deadlineReached(now: NIODeadline) {
        while self.context != nil, let due = self.timers.due(at: now, self.standing, bodyTimeout: self.limits.bodyTimeout) {
            switch due {
            case .bodyTimeout:
                self.bodyTimedOut()
            case .readTimeout:
                if let exchange = self.exchange { self.readTimedOut(exchange) }
            case .drained, .lingerOver, .idleTimeout:
                self.closeAfterWhatIsWritten()
            case .headerTimeout:
                self.listener.clientFaults.report("client sent no complete request head in time", reason: "", level: .info, peer: self.info.clientIP,
                                                  metadata: self.peerMetadata, listener: self.listener)
                self.respondLocally(status: 408, message: "no complete request head within the header timeout", request: nil, requestEnded: false)
            }
        }
        if self.context != nil, !self.state.isClosed, let next = self.timers.next(self.standing) {
            self.loop.deadlines.schedule(self, at: next)
        }
    }

    // MARK: downstream outbound and lifecycle

    package func read(context: ChannelHandlerContext) {
        if self.state.readAsked(holding: self.holdsReads) == .read { context.read() }
    }

    /// The client is not read from: the upstream is not connected or full while the body
    /// arrives, or pipelined requests pile up behind a slow response.
    private var holdsReads: Bool {
        guard let exchange = self.exchange else { return false }
        if !exchange.state.requestEnded { return !(exchange.connection?.isWritable ?? false) }
        return self.inbound.readableBytes > self.limits.maxHeadBytes
    }

    /// A read held back by `holdsReads` goes out, now that its cause is gone.
    private func resumeReads() {
        if self.state.readsMayResume() == .read { self.context?.read() }
    }

    package func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            self.exchange?.connection?.resumeRead()
        }
        context.fireChannelWritabilityChanged()
    }

    package func channelInactive(context: ChannelHandlerContext) {
        self.state.inactive()
        self.loop.deadlines.cancel(self)
        if let exchange = self.exchange {
            if exchange.state.isTunnel {
                self.requests?.completed(status: 101)
                if self.loop.accessLog != nil { self.logAccess(exchange.request, status: 101, bodyBytes: exchange.bodyBytesSent, exchange: exchange) }
            }
            exchange.leaveBackend()
            if let connection = exchange.connection {
                connection.abandon()
            }
            self.exchange = nil
        }
        context.fireChannelInactive()
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Draining (a reload, a takeover, shutdown): the exchange in flight finishes;
            // the response that has not started, or the next request's, says
            // `connection: close`; an idle connection closes after the quiet period. An
            // HTTP/2 stream finishes its exchange; its connection's GOAWAY drains it.
            if self.state.quiesce() == .awaitDrainQuiet { self.awaitDrainQuiet() }
            return
        }
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            self.listener.handshakeCompleted(try? context.pipeline.syncOperations.handler(type: OpenSSLHandler.self), info: &self.info)
            // Draining began during the handshake: the quiet period starts now.
            if self.state.handshakeCompleted() == .awaitDrainQuiet { self.awaitDrainQuiet() }
        }
        context.fireUserInboundEventTriggered(event)
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) {
        // The error's type is compared before any cast: a failing `as?` from `any Error`
        // costs the runtime's conformance search (two of them were 0.8 % of a full
        // handshake's instructions, for a connection that ends with a reset).
        let errorType = ObjectIdentifier(type(of: error))
        if errorType == ObjectIdentifier(TLSError.self), let tls = error as? TLSError {
            reportClientTLSError(tls, info: self.info, listener: self.listener)
        } else if errorType == ObjectIdentifier(IOError.self), self.exchange == nil, let io = error as? IOError,
                  io.errnoCode == ECONNRESET || io.errnoCode == EPIPE {
            // A client resetting a connection between requests is routine (most load
            // generators close this way): not logged, and not even the log level is read
            // (copying the logger's handler for it was 1 % of a full handshake's
            // instructions). Resets mid-request are logged below.
        } else {
            self.logger.debug("client connection error", metadata: self.peerMetadata.merging(["error": "\(error)"]) { a, _ in a })
        }
        context.close(promise: nil)
    }

    private var peerMetadata: Logger.Metadata {
        ["peer": "\(self.info.peer)", "listener": "\(self.listener.name)"]
    }
}

extension ProxyHandler: UpstreamExchangeDelegate {}

/// Counts and logs a TLS error of a client connection, once, wherever the pipeline caught it.
package func reportClientTLSError(_ tls: TLSError, info: DownstreamInfo, listener: ProxyListener) {
    if tls.isHandshakeFailure { listener.observer?.handshake(result: "failed") }
    if tls.isHandshakeTimeout { listener.observer?.handshake(result: "timeout") }
    // Most HTTP clients close without close_notify: nothing to report, and the peer's
    // metadata is not built for it (it was, for every such connection).
    if tls.isUncleanShutdown { return }
    func peer() -> Logger.Metadata { ["peer": "\(info.peer)", "listener": "\(listener.name)"] }
    let logger = listener.logger
    if tls.isEOFDuringHandshake {
        logger.debug("client closed during the TLS handshake", metadata: peer())
    } else {
        listener.clientFaults.report("TLS handshake failed", reason: tls.reason, level: .warning, peer: info.clientIP,
                                     metadata: peer().merging(["reason": "\(tls.reason)"]) { a, _ in a }, listener: listener)
    }
}

@available(*, unavailable)
extension ProxyHandler: Sendable {}
