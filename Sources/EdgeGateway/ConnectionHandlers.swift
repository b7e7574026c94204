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
final class RequestHeadTimeoutHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let headerTimeout: TimeAmount
    private let idleTimeout: TimeAmount
    private var timer: Scheduled<Void>?
    private var inFlight = 0

    init(headerTimeout: TimeAmount, idleTimeout: TimeAmount) {
        self.headerTimeout = headerTimeout
        self.idleTimeout = idleTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.arm(context: context, first: true) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.arm(context: context, first: true)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.timer?.cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = Self.unwrapInboundIn(data) {
            self.inFlight += 1
            self.timer?.cancel()
            self.timer = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = Self.unwrapOutboundIn(data) {
            self.inFlight = max(0, self.inFlight - 1)
            if self.inFlight == 0 { self.arm(context: context, first: false) }
        }
        context.write(data, promise: promise)
    }

    private func arm(context: ChannelHandlerContext, first: Bool) {
        guard self.timer == nil || !first else { return }
        self.timer?.cancel()
        let timeout = first ? self.headerTimeout : self.idleTimeout
        self.timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: timeout) {
            guard self.inFlight == 0 else { return }
            if first {
                let headers = HTTPHeaders([("connection", "close"), ("content-length", "0")])
                context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .requestTimeout, headers: headers))), promise: nil)
                context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).whenComplete { _ in context.close(promise: nil) }
            } else {
                context.close(promise: nil)
            }
        }
    }
}
