import NIOCore
import NIOHTTP2

/// Closes an HTTP/2 connection that has had no open stream for the listener's idle
/// timeout (nginx's `keepalive_timeout` for HTTP/2): GOAWAY with NO_ERROR, then close.
/// Streams in flight keep the connection open however long they take; their own
/// timeouts are the proxy's. Sits after the HTTP/2 handler, which reports streams
/// opening and closing as events (`NIOHTTP2StreamCreatedEvent`, `StreamClosedEvent`).
///
/// It also drains the connection when the gateway does (shutdown, a restart's handoff,
/// a reload): GOAWAY in two steps, as RFC 9113 §6.8 describes. The first names the
/// largest stream ID, so the client stops opening streams without losing one it is
/// sending at that moment; a PING follows, and once its ACK is back (a round trip, at
/// most a second) a second GOAWAY names the last stream that will be answered. The
/// connection closes when that stream and those before it are done. A single GOAWAY
/// with the last stream seen so far refused the streams already on their way, which a
/// client that does not retry counts as failed.
///
/// And it closes a connection the HTTP/2 handler refused for abuse (rapid reset, a
/// CONTINUATION flood): the handler sends GOAWAY but would otherwise keep reading, and
/// answer every further frame with another GOAWAY.
package final class HTTP2IdleTimeout: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = HTTP2Frame
    package typealias OutboundOut = HTTP2Frame

    private let timeout: TimeAmount
    private var context: ChannelHandlerContext?
    /// The streams NIO reported created and not yet closed: a stream it closed without
    /// creating (a request it refused, as one with a malformed content-length) counts for
    /// nothing, or the connection looked idle while a stream was still open.
    private var open: [HTTP2StreamID] = []
    private var openStreams: Int { self.open.count }
    private var lastStream = HTTP2StreamID(0)
    /// When the connection is idle long enough; nil while a stream is open.
    private var deadline: NIODeadline?
    private var timer: Scheduled<Void>?
    /// Where a drain is (`ChannelShouldQuiesceEvent`).
    private enum Drain {
        case serving
        /// The first GOAWAY (largest stream ID) and a PING went out; waiting for the ACK.
        case announced(ping: HTTP2PingData, timer: Scheduled<Void>?)
        /// The final GOAWAY went out: the connection closes with its last stream.
        case final
    }
    private var drain = Drain.serving
    private var draining: Bool {
        if case .serving = self.drain { return false }
        return true
    }

    package init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.arm()
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        if case .announced(_, let timer) = self.drain { timer?.cancel() }
        self.context = nil
    }

    private func streamOpened(_ id: HTTP2StreamID) {
        self.open.append(id)
        self.lastStream = max(self.lastStream, id)
        self.deadline = nil  // the timer, if any, finds nothing to do and lapses
    }

    private func streamClosed(_ id: HTTP2StreamID) {
        guard let index = self.open.firstIndex(of: id) else { return }
        self.open.remove(at: index)
        guard self.open.isEmpty else { return }
        switch self.drain {
        case .serving: self.arm()
        case .announced: break  // streams may still come until the final GOAWAY
        case .final: self.closeWhenDrained()
        }
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Compared by type first: NIO sends several events a request (window updates), and
        // a failing `as?` from `Any` searches the runtime's conformance records.
        let type = ObjectIdentifier(Swift.type(of: event))
        if type == ObjectIdentifier(NIOHTTP2WindowUpdatedEvent.self) {
            // Most events: nothing to do here.
        } else if type == ObjectIdentifier(NIOHTTP2StreamCreatedEvent.self) {
            self.streamOpened((event as! NIOHTTP2StreamCreatedEvent).streamID)
        } else if type == ObjectIdentifier(StreamClosedEvent.self) {
            self.streamClosed((event as! StreamClosedEvent).streamID)
        } else if event is ChannelShouldQuiesceEvent, !self.draining {
            // The streams (`HTTP2Downstream`, after this handler) each finish the exchange
            // in flight (the proxy's quiescing).
            let ping = HTTP2PingData(withInteger: UInt64.random(in: .min ... .max))
            let timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: Self.pingWait) {
                self.finalGoAway()
            }
            self.drain = .announced(ping: ping, timer: timer)
            self.deadline = nil  // the idle timer, if armed, finds nothing to do
            self.announceDrain(context)
            context.writeAndFlush(NIOAny(HTTP2Frame(streamID: .rootStream, payload: .ping(ping, ack: false))), promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .announced(let ping, _) = self.drain {
            let frame = self.unwrapInboundIn(data)
            if case .ping(let data, ack: true) = frame.payload, data == ping { self.finalGoAway() }
        }
        context.fireChannelRead(data)
    }

    package func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if Self.isAbuse(error) {
            // The HTTP/2 handler has sent GOAWAY for it; nothing more is read.
            context.close(promise: nil)
        }
        context.fireErrorCaught(error)
    }

    /// The errors for which NIO's HTTP/2 handler refuses the connection as a misbehaving peer.
    private static func isAbuse(_ error: any Error) -> Bool {
        error is NIOHTTP2Errors.ExcessiveRSTFrames || error is NIOHTTP2Errors.ExcessiveContinuationFrames
            || error is NIOHTTP2Errors.ExcessiveControlFrames || error is NIOHTTP2Errors.ExcessiveStreamErrors
            || error is NIOHTTP2Errors.ExcessiveEmptyDataFrames || error is NIOHTTP2Errors.ExcessiveNumberOfGlitches
            || error is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering || error is NIOHTTP2Errors.ExcessivelyLargeHeaderBlock
    }

    /// The first GOAWAY of a drain (largest stream ID, NO_ERROR), written as bytes below
    /// the HTTP/2 handler. Through it, NIO's connection state machine would count the
    /// connection as quiesced and, with no stream open at that moment, refuse every
    /// stream that arrives afterwards (REFUSED_STREAM) although the frame promised to
    /// process them: the very race the first step exists to avoid. The final GOAWAY
    /// goes through NIO, which then refuses only streams above the last one.
    private func announceDrain(_ context: ChannelHandlerContext) {
        guard let http2 = try? context.pipeline.syncOperations.context(handlerType: NIOHTTP2Handler.self) else {
            // The gateway's own engine (`HTTP2ServerEngine`) keeps the lowest GOAWAY's stream
            // as its limit: the frame goes through it.
            let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil))
            context.write(NIOAny(goAway), promise: nil)
            return
        }
        var frame = context.channel.allocator.buffer(capacity: 17)
        frame.writeBytes([0, 0, 8, 7, 0, 0, 0, 0, 0])  // length 8, type GOAWAY, no flags, stream 0
        frame.writeInteger(UInt32(Int32.max))  // last-stream-id 2^31-1
        frame.writeInteger(UInt32(0))  // NO_ERROR
        http2.write(NIOAny(frame), promise: nil)
    }

    /// How long a drain waits for its PING's ACK before the final GOAWAY.
    private static let pingWait = TimeAmount.seconds(1)

    /// The second GOAWAY of a drain: names the last stream that will be answered.
    private func finalGoAway() {
        guard case .announced(_, let timer) = self.drain, let context = self.context else { return }
        timer?.cancel()
        self.drain = .final
        let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: self.lastStream, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(NIOAny(goAway), promise: nil)
        if self.openStreams == 0 { self.closeWhenDrained() }
    }

    /// Closes the drained connection on the loop's next turn, outside the HTTP/2
    /// handler's stream bookkeeping that reported the last stream closed; the TLS
    /// handler sends what is still buffered, then close_notify.
    private func closeWhenDrained() {
        guard let context = self.context else { return }
        context.eventLoop.assumeIsolatedUnsafeUnchecked().execute {
            context.close(promise: nil)
        }
    }

    private func arm() {
        guard let context = self.context else { return }
        // The loop's clock (the system's, except on a test's embedded loop).
        self.deadline = context.eventLoop.now + self.timeout
        if self.timer == nil { self.schedule() }
    }

    private func schedule() {
        guard let context = self.context, let deadline = self.deadline else { return }
        self.timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: deadline) {
            self.timer = nil
            guard let deadline = self.deadline, self.openStreams == 0 else { return }
            if context.eventLoop.now < deadline {
                self.schedule()
                return
            }
            let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: self.lastStream, errorCode: .noError, opaqueData: nil))
            context.writeAndFlush(NIOAny(goAway)).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }
}

@available(*, unavailable)
extension HTTP2IdleTimeout: Sendable {}
