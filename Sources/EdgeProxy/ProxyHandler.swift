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
///
/// Where the connection stands is `ConnectionState`, where its exchange stands
/// `ExchangeState`; this class performs what they decide. This file holds the client
/// side and the connection's lifecycle; the upstream side is in
/// `ProxyHandler+Upstream.swift`, the gateway's own answers in `ProxyHandler+Answers.swift`
/// (hence members without `private`: the three files share them).
package final class ProxyHandler: ChannelDuplexHandler, DeadlineOwner {
    package typealias InboundIn = ByteBuffer
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    let listener: ProxyListener
    var info: DownstreamInfo
    /// This handler is its connection's first and reports the connection's close (a
    /// plain-HTTP listener; on a TLS listener the TLS handler does).
    let reportsClose: Bool
    /// The listener's loop context and router, also held here: read through `listener` they
    /// cost a retain and a release in each of six functions of every request.
    let loop: LoopContext
    let router: Router
    var limits: ProxyLimits { self.listener.limits }
    var logger: Logger { self.listener.logger }
    var observer: (any ProxyObserver)? { self.listener.observer }
    var requests: RequestCounter? { self.listener.requests }
    var context: ChannelHandlerContext?
    var exchange: Exchange?
    /// Bytes read from the client and not consumed yet.
    var inbound = ByteBuffer()
    var firstRead: ReceiveBufferPin
    /// How far the search for the end of the next head got.
    var scanned = 0
    /// Frames the current request's body; nil between requests.
    var requestBody: BodyFramer?
    /// Body bytes of the current request so far, counted against `maxBodyBytes` when
    /// the head gave no length (chunked, or HTTP/2 without content-length).
    var bodyBytes = 0
    /// The current request's body limit: its route's, else the listener's.
    var maxBodyBytes: Int?
    /// When the current request's head was complete (read only with an access log).
    var requestStart = NIODeadline.uptimeNanoseconds(0)
    /// Awaiting a head, in a request, closing, lingering or closed; draining; reads held.
    var state: ConnectionState
    var upstreamNeedsFlush = false
    var downstreamNeedsFlush = false
    /// The connection's deadlines (header, idle, body, upstream read, drain, linger),
    /// waited for in the loop's `LoopDeadlines` as one entry: moved later without
    /// touching the queue, so a request costs a clock read and a comparison.
    var timers = ClientDeadlines()
    /// This handler's place in `loop.deadlines` (-1: not queued).
    var deadlineSlot = -1
    /// Where responses go: HTTP/1.1 bytes on the connection, or an HTTP/2 stream's frames
    /// (whose bridge also turns the request's frames into bytes).
    var downstream: Downstream
    var stream: HTTP2StreamBridge? { self.downstream.stream }

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

    /// The proxy of one HTTP/2 stream, in no pipeline of its own: `HTTP2Downstream` hands
    /// it the stream's frames (`streamReceived`), whose request becomes HTTP/1.1 bytes in
    /// `bridge`, and the response goes to the bridge in parts.
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
        if context.channel.isActive { self.startHeaderTimer() }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.loop.deadlines.cancel(self)
        self.context = nil
        if self.reportsClose { self.observer?.connectionClosed() }
    }

    package func channelActive(context: ChannelHandlerContext) {
        self.startHeaderTimer()
        context.fireChannelActive()
    }

    // MARK: downstream inbound

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.received(self.unwrapInboundIn(data))
    }

    /// Client bytes: HTTP/1.1 as read, or what an HTTP/2 stream's frames made.
    func received(_ bytes: ByteBuffer) {
        var bytes = bytes
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
        self.firstRead.recycle(bytes)
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        if self.upstreamNeedsFlush {
            self.upstreamNeedsFlush = false
            self.exchange?.connection?.flush()
        }
        context.fireChannelReadComplete()
    }

    /// Consumes buffered client bytes: the current request's body, then the next head.
    func process() {
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
                case .end(let trailers): self.endRequestBody(trailers: trailers)
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

    var headTooLarge: HTTPFramingError {
        HTTPFramingError(kind: .headTooLarge, reason: "request head larger than \(self.limits.maxHeadBytes) bytes")
    }

    func forwardBody(_ data: ByteBuffer) {
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

    /// `trailers`: a chunked body's trailer field lines, which go on with a chunked
    /// upstream request (a request with a length has nowhere to carry them).
    func endRequestBody(trailers: [UInt8] = []) {
        self.requestBody = nil
        guard let exchange = self.exchange else { return }
        let action = exchange.state.requestBodyEnded()
        if exchange.chunkedUpstream { self.sendUpstream(TrailerSection.lastChunk(trailers), exchange) }
        if let connection = exchange.connection {
            connection.flush()
            self.upstreamNeedsFlush = false
            if action == .armReadDeadline { self.armReadTimer(exchange) }
        }
    }

    /// Request bytes to the upstream, kept for a replay while they fit.
    func sendUpstream(_ bytes: ByteBuffer, _ exchange: Exchange) {
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
    func receivedHead(_ head: consuming HTTPHead) {
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
        // A gRPC call's deadline bounds the wait for its response (gRPC is HTTP/2 only:
        // an HTTP/1.1 request is never looked at).
        if self.stream != nil, GRPCAnswer.isGRPC(exchange.request), let range = exchange.request.valueRange(named: "grpc-timeout"),
           let timeout = GRPCAnswer.timeout(exchange.request.string(range)) {
            exchange.callDeadline = .now() + timeout
        }
        self.exchange = exchange
        self.connect(exchange)
    }

    /// Between requests: the idle deadline runs, and a pipelined request already read goes next.
    func requestDone() {
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
    func awaitDrainQuiet() {
        guard !self.state.singleRequest, self.timers.drainQuietUntil == nil, !self.state.awaitsFirstHead || self.noRequestBegun else { return }
        let until = NIODeadline.now() + self.limits.drainQuietPeriod
        self.timers.drainQuietUntil = until
        if self.context != nil { self.loop.deadlines.schedule(self, at: until) }
    }

    func flushDownstream() {
        if self.downstreamNeedsFlush {
            self.downstreamNeedsFlush = false
            if let context = self.context { self.downstream.flush(context: context) }
        }
    }

    /// Ends the client connection: what was written goes out, then it closes; input from
    /// now on is ignored.
    func closeAfterWhatIsWritten() {
        self.state.closeAfterWritten()
        self.flushDownstream()
        self.closeDownstream()
    }

    /// No request has begun on this new connection: no byte of a head has arrived, and a
    /// TLS handshake, if any, is done or has not started (no ClientHello byte).
    var noRequestBegun: Bool {
        guard self.state.awaitsFirstHead, self.inbound.readableBytes == 0, let context = self.context else { return false }
        guard let tls = try? context.pipeline.syncOperations.handler(type: OpenSSLHandler.self) else { return true }
        return tls.handshakeCompleted || !tls.hasReceivedBytes
    }

    // MARK: header and idle timeouts

    func startHeaderTimer() {
        guard self.deadlineSlot < 0, self.state.awaitsFirstHead, !self.state.singleRequest else { return }
        self.timers.client = .now() + self.limits.headerTimeout
        self.scheduleDeadline()
    }

    /// A later request's head arrived in part: from its first bytes it has the header
    /// timeout (nginx's `client_header_timeout`), however long the idle timeout is, and
    /// bytes trickling in do not extend it. A head that arrives whole never gets here.
    func startNextHeadTimer() {
        self.timers.client = .now() + self.limits.headerTimeout
        self.scheduleDeadline()
    }

    func scheduleDeadline() {
        guard let deadline = self.timers.client, self.context != nil else { return }
        self.loop.deadlines.schedule(self, at: deadline)
    }

    /// The response went out before the request body ended. Closing now, with the body
    /// still arriving, makes the kernel answer it with a reset that can overtake the
    /// response at the client; so the rest of the body is read and dropped until the
    /// client stops sending for `lingerPause` or for `lingerLimit` in all, then the
    /// connection closes (nginx's `lingering_close`). TLS connections are left to
    /// `OpenSSLHandler`'s close, which reads on while it waits for close_notify.
    func lingerForRequestBody(_ context: ChannelHandlerContext) {
        guard self.listener.scheme == "http" else {
            self.closeDownstream()
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
    static let lingerPause = TimeAmount.seconds(5)
    static let lingerLimit = TimeAmount.seconds(30)

    /// Where the connection stands, for its deadlines.
    var standing: ClientDeadlines.Standing {
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
    var holdsReads: Bool {
        guard let exchange = self.exchange else { return false }
        if !exchange.state.requestEnded { return !(exchange.connection?.isWritable ?? false) }
        return self.inbound.readableBytes > self.limits.maxHeadBytes
    }

    /// A read held back by `holdsReads` goes out, now that its cause is gone.
    func resumeReads() {
        if self.state.readsMayResume() == .read { self.readDownstream() }
    }

    /// Reads on from the client: the connection's next read, or an HTTP/2 stream's
    /// window given back.
    func readDownstream() {
        if let port = self.stream?.port {
            port.read()
        } else {
            self.context?.read()
        }
    }

    /// Closes the client connection, or resets the HTTP/2 stream (CANCEL) if it is still
    /// open: a stream's close never closes its connection.
    func closeDownstream() {
        if let stream = self.stream {
            stream.port?.close()
        } else {
            self.context?.close(promise: nil)
        }
    }

    package func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            self.exchange?.connection?.resumeRead()
        }
        context.fireChannelWritabilityChanged()
    }

    package func channelInactive(context: ChannelHandlerContext) {
        self.becameInactive()
        context.fireChannelInactive()
    }

    /// The connection (or the HTTP/2 stream) is gone: the exchange in flight ends.
    func becameInactive() {
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

    var peerMetadata: Logger.Metadata {
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
