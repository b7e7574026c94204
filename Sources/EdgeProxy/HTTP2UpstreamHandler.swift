import EdgeTLS
import NIOCore
import NIOHTTP2

/// Sits between NIO's HTTP/2 connection handler and `UpstreamHandler` on an h2 or h2c
/// upstream connection: request bytes from the proxy go out as frames, response frames
/// come in as HTTP/1.1 bytes (`HTTP2UpstreamTranslation`). It also does what NIO's
/// stream channels would do without a multiplexer: gives back flow-control window as
/// the response is passed on, holds the proxy's request body while the upstream's
/// window is closed (writability), and retires the connection (`UpstreamRetired`) when
/// no request may follow: GOAWAY, stream IDs running out, a stream left open.
final class HTTP2UpstreamHandler: ChannelDuplexHandler {
    typealias InboundIn = HTTP2Frame
    typealias InboundOut = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = HTTP2Frame

    /// Window given back once this much was passed on: half the default 65,535-byte
    /// windows, so the upstream never waits for an update while the proxy keeps reading.
    static let windowUpdateThreshold = 32 * 1024
    /// Request body bytes written but not yet on the wire (waiting for the upstream's
    /// window) above which the proxy stops reading the client's body, and below which it
    /// resumes: the watermarks of NIO's stream channels.
    static let highWater = 64 * 1024
    static let lowWater = 32 * 1024
    /// Client stream IDs are odd and end at 2^31 - 1 (NIO stops the process on a larger
    /// one): a connection whose next would be the last retires instead.
    static let lastStreamID = Int(Int32.max)

    private var translation: HTTP2UpstreamTranslation
    private let backend: String
    private var context: ChannelHandlerContext?
    /// Flow-controlled bytes passed on since the last WINDOW_UPDATE of the connection's
    /// window and of the current stream's (a new stream starts with a full window).
    private var connectionUnacknowledged = 0
    private var streamUnacknowledged = 0
    private var needsFlush = false
    /// The upstream's GOAWAY: its last stream ID. No new stream; a stream above it was
    /// never processed.
    private var goneAwayAfter: HTTP2StreamID?
    private var retired = false
    private var failed = false
    private var queuedBodyBytes = 0
    /// Whether the proxy may write more request body (see `highWater`).
    private(set) var isWritable = true

    init(scheme: String, authority: String, backend: String) {
        self.translation = HTTP2UpstreamTranslation(scheme: scheme, defaultAuthority: authority)
        self.backend = backend
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    // MARK: outbound: the proxy's request

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard !self.failed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        let frames: [HTTP2Frame]
        do {
            if !self.translation.inExchange, let last = self.goneAwayAfter {
                throw UpstreamError(kind: .refusedStream, backend: self.backend, reason: "the upstream is going away (GOAWAY after stream \(last))")
            }
            frames = try self.translation.requestFrames(self.unwrapOutboundIn(data))
        } catch let used as HTTP2UpstreamTranslation.StreamIDsUsedUp {
            promise?.fail(used)
            self.fail(UpstreamError(kind: .refusedStream, backend: self.backend, reason: used.description), context: context)
            return
        } catch {
            promise?.fail(error)
            self.fail(error as? UpstreamError ?? UpstreamError(kind: .cannotCarry, backend: self.backend, reason: "cannot send the request over HTTP/2: \(error)"),
                      context: context)
            return
        }
        for frame in frames {
            guard case .data(let data) = frame.payload, case .byteBuffer(let body) = data.data, body.readableBytes > 0 else {
                context.write(self.wrapOutboundOut(frame), promise: nil)
                continue
            }
            // Completed when the frame reaches the socket, which the HTTP/2 handler holds
            // back while the upstream's window is closed.
            let bytes = body.readableBytes
            self.queuedBodyBytes += bytes
            let written = context.eventLoop.makePromise(of: Void.self)
            context.write(self.wrapOutboundOut(frame), promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in self.bodyWritten(bytes) }
        }
        promise?.succeed(())
        if self.isWritable, self.queuedBodyBytes > Self.highWater {
            self.isWritable = false
            context.fireChannelWritabilityChanged()
        }
    }

    private func bodyWritten(_ bytes: Int) {
        self.queuedBodyBytes -= bytes
        guard !self.isWritable, self.queuedBodyBytes <= Self.lowWater, let context = self.context else { return }
        self.isWritable = true
        context.fireChannelWritabilityChanged()
    }

    // MARK: inbound: the upstream's response

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !self.failed else { return }  // closing: the exchange has heard why
        let frame = self.unwrapInboundIn(data)
        let current = self.translation.streamID
        switch frame.payload {
        case .goAway(let last, _, _):
            self.goneAwayAfter = last
            self.retire("the upstream is going away (GOAWAY)", context: context)
            if current == nil { context.close(promise: nil) }
            return
        case .rstStream(let code) where frame.streamID == current:
            // REFUSED_STREAM promises the request was not processed; any other code does not.
            self.fail(UpstreamError(kind: code == .refusedStream ? .refusedStream : .streamReset, backend: self.backend,
                                    reason: "the upstream reset the stream (\(code))"), context: context)
            return
        default:
            break
        }
        let step: HTTP2UpstreamTranslation.ResponseStep
        do {
            step = try self.translation.responseStep(frame)
        } catch {
            self.fail(UpstreamError(kind: .protocolError, backend: self.backend, reason: "invalid HTTP/2 response: \(error)"), context: context)
            return
        }
        self.acknowledge(step, of: frame.streamID, current: current, context: context)
        if step.ended { self.exchangeEnded(context: context) }
        if let bytes = step.bytes { context.fireChannelRead(self.wrapInboundOut(bytes)) }
        if step.ended, self.goneAwayAfter != nil { context.close(promise: nil) }
    }

    /// Gives the window back: the connection's for every DATA frame, the stream's while its
    /// response goes on.
    private func acknowledge(_ step: HTTP2UpstreamTranslation.ResponseStep, of stream: HTTP2StreamID, current: HTTP2StreamID?, context: ChannelHandlerContext) {
        guard step.consumed > 0 else {
            if step.ended { self.streamUnacknowledged = 0 }
            return
        }
        self.connectionUnacknowledged += step.consumed
        if self.connectionUnacknowledged >= Self.windowUpdateThreshold {
            self.giveBack(&self.connectionUnacknowledged, on: .rootStream, context: context)
        }
        if stream == current, !step.ended {
            self.streamUnacknowledged += step.consumed
            if self.streamUnacknowledged >= Self.windowUpdateThreshold {
                self.giveBack(&self.streamUnacknowledged, on: stream, context: context)
            }
        } else if step.ended {
            self.streamUnacknowledged = 0
        }
    }

    /// The response is over for the proxy, which decides now whether the connection goes
    /// back to the pool: it must not when a stream of the exchange stays open (the request
    /// not all written: an early response) or when no further stream may start.
    private func exchangeEnded(context: ChannelHandlerContext) {
        if self.translation.requestInProgress || self.queuedBodyBytes > 0 {
            self.retire("the request was still being sent when the response ended", context: context)
        } else if Int(self.translation.nextStreamID) >= Self.lastStreamID {
            self.retire("the connection has used its stream IDs", context: context)
        }
    }

    private func retire(_ reason: String, context: ChannelHandlerContext) {
        guard !self.retired else { return }
        self.retired = true
        context.fireUserInboundEventTriggered(UpstreamRetired(reason: reason))
    }

    private func giveBack(_ bytes: inout Int, on stream: HTTP2StreamID, context: ChannelHandlerContext) {
        context.write(self.wrapOutboundOut(HTTP2Frame(streamID: stream, payload: .windowUpdate(windowSizeIncrement: bytes))), promise: nil)
        bytes = 0
        self.needsFlush = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if self.needsFlush {
            self.needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    /// A stream closed by the HTTP/2 handler before its response ended (refused by a
    /// GOAWAY, reset, or a stream error of its own) fails the exchange.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let closed = event as? StreamClosedEvent, closed.streamID == self.translation.streamID {
            // NIO closes the streams a GOAWAY left out with CANCEL: they were never processed.
            if self.goneAwayAfter.map({ closed.streamID > $0 }) == true {
                self.fail(UpstreamError(kind: .refusedStream, backend: self.backend, reason: "the upstream refused the stream (GOAWAY)"), context: context)
            } else {
                let cause = self.protocolError.map { ": \($0)" } ?? ""
                self.fail(UpstreamError(kind: .streamReset, backend: self.backend,
                                        reason: "the stream closed before the response ended (\(closed.reason.map { "\($0)" } ?? "no error"))\(cause)"),
                          context: context)
            }
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Socket and TLS errors fail the exchange as they are. NIO's own HTTP/2 errors do not,
    /// by themselves: a connection error closes the connection (which fails the exchange),
    /// a stream error resets its stream, whose closing fails the exchange if it is the
    /// current one; an error on a stream whose exchange ended (its END_STREAM still to
    /// come) must not fail the next exchange. The error is kept as the reason. An outbound
    /// stream error names its stream: the current one's fails the exchange (its HEADERS
    /// never went out, and no stream closes).
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let stream = error as? NIOHTTP2Errors.StreamError {
            guard stream.streamID == self.translation.streamID else { return }
            self.fail(UpstreamError(kind: .protocolError, backend: self.backend, reason: "HTTP/2: \(stream.baseError)"), context: context)
        } else if error is UpstreamError || error is IOError || error is TLSError {
            self.fail(error, context: context)
        } else {
            self.protocolError = "\(error)"
        }
    }
    /// NIO's last HTTP/2 error on this connection, as a failure's reason.
    private var protocolError: String?

    /// Reported on the next turn of the loop, never from inside a write: the proxy writes
    /// a request's head and then its held body, and an error reported from the head's
    /// write would start a retry whose held body the rest of that write then consumed.
    private func fail(_ error: Error, context: ChannelHandlerContext) {
        guard !self.failed else { return }
        self.failed = true
        context.eventLoop.assumeIsolated().execute {
            // Gone from the pipeline meanwhile (the channel closed): the handler above has
            // heard of the close, and its context would lead nowhere.
            guard let context = self.context else { return }
            context.fireErrorCaught(error)
            context.close(promise: nil)
        }
    }
}

@available(*, unavailable)
extension HTTP2UpstreamHandler: Sendable {}
