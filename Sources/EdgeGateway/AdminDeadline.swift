import NIOCore
import NIOHTTP1

/// When an admin connection must have sent its next complete request: within
/// `admin.timeouts.header` of its start, and within `admin.timeouts.idle` of the previous
/// response's end. Bytes trickling in do not extend it, and a request must arrive whole
/// (head and body) before it counts, so a connection that sends a head and never its body
/// is closed too. While a request is handled no deadline runs (a reload may take a while).
///
/// Why: the admin endpoint answers on loopback, where any local process may connect; with
/// no deadline, connections that never finish a request (or a scraper's kept-alive ones
/// that went away) each held a descriptor of the gateway for good. The listeners have had
/// these timeouts from the start (nginx's `client_header_timeout` and `keepalive_timeout`).
///
/// No I/O and no clock: `AdminDeadlineHandler` reports events and performs the actions;
/// tests choose the times.
struct AdminConnectionDeadline {
    let header: TimeAmount
    let idle: TimeAmount
    /// When the awaited request must be complete; nil while one is handled.
    private(set) var deadline: NIODeadline?

    enum Action: Equatable {
        /// (Re)arm the timer for this instant.
        case schedule(NIODeadline)
        /// Stop the timer.
        case cancel
        /// Close the connection: the request did not come in time.
        case close
        case none
    }

    init(header: TimeAmount, idle: TimeAmount) {
        self.header = header
        self.idle = idle
    }

    mutating func opened(now: NIODeadline) -> Action {
        self.deadline = now + self.header
        return .schedule(now + self.header)
    }

    /// A request has arrived whole (NIO's pipeline handler passes one at a time).
    mutating func requestEnded() -> Action {
        self.deadline = nil
        return .cancel
    }

    /// Its response's end was handed to the channel: the next request must come within the
    /// idle timeout. (A client that reads no answers gets no more requests read either:
    /// `AdminDeadlineHandler` holds reads while the channel is not writable.)
    mutating func responseEnded(now: NIODeadline) -> Action {
        self.deadline = now + self.idle
        return .schedule(now + self.idle)
    }

    /// The timer fired; a stale one (a request came meanwhile, or the deadline moved) does nothing.
    func reached(now: NIODeadline) -> Action {
        guard let deadline = self.deadline else { return .none }
        return now >= deadline ? .close : .schedule(deadline)
    }
}

/// Performs `AdminConnectionDeadline`'s actions; sits between NIO's HTTP server pipeline
/// handlers and `AdminHandler`, where it sees whole requests come in and responses go out.
final class AdminDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private var state: AdminConnectionDeadline
    private var timer: Scheduled<Void>?
    private var closed = false
    /// A read asked for while the channel was not writable: done once it is.
    private var heldRead = false

    init(header: TimeAmount, idle: TimeAmount) {
        self.state = AdminConnectionDeadline(header: header, idle: idle)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.perform(self.state.opened(now: .now()), context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        self.perform(self.state.opened(now: .now()), context: context)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.stop()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.stop()
    }

    private func stop() {
        self.closed = true
        self.timer?.cancel()
        self.timer = nil
    }

    /// A request NIO could not parse was answered 400 with `connection: close`, but NIO
    /// leaves the connection open: it closes now.
    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if error is HTTPParserError { context.close(promise: nil) }
        context.fireErrorCaught(error)
    }

    /// A client that sends requests and reads none of the answers would have them pile
    /// up in the gateway: no more is read until the answers go out, and meanwhile its
    /// deadline runs.
    func read(context: ChannelHandlerContext) {
        guard context.channel.isWritable else {
            self.heldRead = true
            return
        }
        context.read()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if self.heldRead, context.channel.isWritable {
            self.heldRead = false
            context.read()
        }
        context.fireChannelWritabilityChanged()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = self.unwrapInboundIn(data) { self.perform(self.state.requestEnded(), context: context) }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = self.unwrapOutboundIn(data) { self.perform(self.state.responseEnded(now: .now()), context: context) }
        context.write(data, promise: promise)
    }

    private func perform(_ action: AdminConnectionDeadline.Action, context: ChannelHandlerContext) {
        switch action {
        case .schedule(let deadline):
            self.timer?.cancel()
            guard !self.closed else { return }
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            self.timer = context.eventLoop.scheduleTask(deadline: deadline) {
                let (handler, context) = loopBound.value
                handler.timer = nil
                handler.perform(handler.state.reached(now: .now()), context: context)
            }
        case .cancel:
            self.timer?.cancel()
            self.timer = nil
        case .close:
            context.close(promise: nil)
        case .none:
            break
        }
    }
}

@available(*, unavailable)
extension AdminDeadlineHandler: Sendable {}
