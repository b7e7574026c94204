import NIOCore
import NIOHTTP1

/// Answers HTTP parse errors: 431 for an oversized head, 400 for everything
/// else (including request-smuggling shapes such as Content-Length together
/// with Transfer-Encoding). The decoder closes the connection afterwards.
final class ProtocolErrorHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var responseInProgress = false

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let parserError = error as? HTTPParserError, !self.responseInProgress {
            let status: HTTPResponseStatus = parserError == .headerOverflow ? .requestHeaderFieldsTooLarge : .badRequest
            let body = context.channel.allocator.buffer(string: "\(status.code) \(status.reasonPhrase)\n")
            let headers = HTTPHeaders([("connection", "close"), ("content-type", "text/plain"), ("content-length", "\(body.readableBytes)")])
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
            self.responseInProgress = true
        }
        context.fireErrorCaught(error)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch Self.unwrapOutboundIn(data) {
        case .head(let head) where !(100..<200).contains(head.status.code): self.responseInProgress = true
        case .end: self.responseInProgress = false
        default: break
        }
        context.write(data, promise: promise)
    }
}

/// Bounds how long a client may take to send a request head: 408 for the first
/// request of a connection, a silent close for an idle keep-alive connection.
///
/// One timer per connection that re-arms itself when it fires before the current
/// deadline, so a keep-alive request costs a clock read, not a timer.
final class RequestHeadTimeoutHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let headerTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private var timer: Scheduled<Void>?
    /// When the connection times out; nil while a request is in flight.
    private var deadline: NIODeadline?
    private var firstRequest = true
    private var inFlight = 0

    init(headerTimeout: TimeAmount, idleTimeout: TimeAmount) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.start(context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = Self.unwrapInboundIn(data) {
            self.inFlight += 1
            self.deadline = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = Self.unwrapOutboundIn(data) {
            self.inFlight = max(0, self.inFlight - 1)
            if self.inFlight == 0 {
                self.firstRequest = false
                self.deadline = .now() + self.idleTimeout
                if self.timer == nil { self.schedule(context: context) }
            }
        }
        context.write(data, promise: promise)
    }

    private func start(context: ChannelHandlerContext) {
        guard self.timer == nil, self.firstRequest, self.inFlight == 0 else { return }
        self.deadline = .now() + self.headerTimeout
        self.schedule(context: context)
    }

    private func schedule(context: ChannelHandlerContext) {
        guard let deadline = self.deadline else { return }
        self.timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: deadline) {
            self.timer = nil
            guard let deadline = self.deadline, self.inFlight == 0 else { return }
            if NIODeadline.now() < deadline {
                self.schedule(context: context)
                return
            }
            if self.firstRequest {
                let headers = HTTPHeaders([("connection", "close"), ("content-length", "0")])
                context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .requestTimeout, headers: headers))), promise: nil)
                context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
            } else {
                context.close(promise: nil)
            }
        }
    }
}
