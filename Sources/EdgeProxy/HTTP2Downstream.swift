import NIOCore
import NIOHTTP2

/// A client's HTTP/2 connection at the frame level: sits after the gateway's HTTP/2
/// engine (`HTTP2ServerEngine`, which calls it with the frames and what happens to the
/// streams, `HTTP2ServerStreams`, and which it calls with the frames it writes), and serves each
/// stream with a `ProxyHandler` and an `HTTP2StreamBridge` held in a table
/// (`HTTP2DownstreamStream`), not a child channel, pipeline and contexts per stream:
/// creating and activating those was about 40 % of an HTTP/2 request.
///
/// It does what the stream channels did for the proxy: hands each stream its frames,
/// completes its reads at the end of a read batch, gives flow-control window back as
/// the proxy reads (a stream's only while its proxy takes the body, so an upstream that
/// cannot take a request body holds back that stream alone; the engine grants the
/// connection's), reports a stream unwritable while its response piles up in the engine (the
/// client's window closed), and tells a stream's proxy when the stream is gone (reset
/// by the client, closed both ways, or the connection lost). The engine keeps the
/// defences NIO's handler had (stream limits, glitch counting, control-frame limits, HPACK
/// limits, content-length checks); resets of open streams (rapid reset) are counted here
/// (`HTTP2RateLimit`). And it ends the connection when it idles or the gateway drains,
/// as `HTTP2ConnectionLifetime` decides, waiting in the loop's deadline heap: a handler,
/// its pipeline context and a NIO scheduled task fewer than a handler of its own took
/// (about 0.7 kB of an idle connection).
final class HTTP2Downstream: ChannelInboundHandler, HTTP2ServerStreams, DeadlineOwner {
    typealias InboundIn = Never

    private let listener: ProxyListener
    private let info: DownstreamInfo
    let eventLoop: any EventLoop
    private let strictTransportSecurity: String?
    private var context: ChannelHandlerContext?
    /// The open streams, oldest first: a few at a time (the client's concurrency, at most
    /// SETTINGS_MAX_CONCURRENT_STREAMS), found by a scan of their IDs, which costs less
    /// than hashing one (a dictionary's hashing was 3 % of a request).
    private var streams: [HTTP2DownstreamStream] = []
    /// The highest stream ID opened: a stream's HEADERS after it was done (trailers
    /// behind a reset the client has not seen yet) open nothing again.
    private var lastOpened: UInt32 = 0
    /// Streams that got frames in this read batch.
    private var touched: [HTTP2DownstreamStream] = []
    /// From the engine's first call in a read batch to the batch's end: flushes wait for
    /// the batch's end.
    private var reading = false
    private var needsFlush = false
    /// Looks for streams whose response is stuck (`sweepStalled`); armed by a response
    /// write while none is scheduled.
    private var stallSweep: Scheduled<Void>?
    /// RST_STREAM frames from the client for open streams (rapid reset, CVE-2023-44487:
    /// the listener's `http2.max_resets_per_30s`): beyond, GOAWAY ENHANCE_YOUR_CALM and
    /// close. (A reset of a stream already closed the engine drops before it gets here; it
    /// costs no more than any frame dropped, and the work for that stream was done.)
    private var resets: HTTP2RateLimit
    /// Refused for abuse: what else the client sends is dropped until the close.
    private var refused = false
    /// WINDOW_UPDATE frames for the whole connection: the client is taking responses, so
    /// no stream counts as stalled (`sweepStalled`).
    private var connectionWindowUpdates: UInt32 = 0
    private var connectionWindowUpdatesAtSweep: UInt32 = 0
    /// The engine in front (set by the pipeline's assembly): it sends what the streams
    /// write, and says what it still holds of a stream's response, for the stall sweep.
    var engine: HTTP2ServerEngine?
    /// Writability changes of the channel, and sweeps in a row that found it unwritable,
    /// unchanged, with parts of a response held (`sweepStalled`).
    private var writabilityChanges: UInt32 = 0
    private var writabilityChangesAtSweep: UInt32 = 0
    private var unreadSweeps = 0
    /// A stream held back fell to its low-water mark in the engine's current pass.
    private var writableAgain = false
    /// The idle timeout and the drain.
    private var lifetime: HTTP2ConnectionLifetime
    /// This handler's place in `listener.loop.deadlines` (-1: not queued).
    var deadlineSlot = -1

    init(listener: ProxyListener, info: DownstreamInfo, strictTransportSecurity: String?, eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
        self.listener = listener
        self.info = info
        self.strictTransportSecurity = strictTransportSecurity
        self.resets = HTTP2RateLimit(limit: listener.limits.http2MaxResetsPer30s, window: .seconds(30))
        // The loop's clock: the system's, except on a test's embedded loop.
        self.lifetime = HTTP2ConnectionLifetime(timeout: listener.limits.idleTimeout, now: eventLoop.now)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.queueDeadline()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.stallSweep?.cancel()
        self.stallSweep = nil
        self.listener.loop.deadlines.cancel(self)
        self.context = nil
        self.engine = nil
    }

    var allocator: ByteBufferAllocator { self.context?.channel.allocator ?? ByteBufferAllocator() }
    var isWritable: Bool { self.context?.channel.isWritable ?? false }

    // MARK: frames from the client (the engine's calls)

    func streamCreated(_ id: UInt32) {
        self.lifetime.streamOpened(id)
    }

    func received(_ payload: HTTP2Frame.FramePayload, on id: UInt32) {
        guard !self.refused, let context = self.context else { return }
        self.reading = true
        var stream = self.stream(id)
        if stream == nil {
            // A new stream's HEADERS: the engine has checked its ID and the stream limit.
            guard case .headers = payload, id > self.lastOpened else { return }
            stream = self.open(id, context: context)
        }
        guard let stream, !stream.finished, let proxy = stream.proxy else { return }
        switch payload {
        case .data(let data):
            stream.unacknowledged += HTTP2UpstreamTranslation.flowControlledLength(data)
            if data.endStream { stream.requestEnded = true }
        case .headers(let headers):
            if headers.endStream { stream.requestEnded = true }
        default:
            return
        }
        if !stream.touched {
            stream.touched = true
            self.touched.append(stream)
        }
        proxy.streamReceived(payload)
    }

    func clientReset(_ id: UInt32) {
        guard !self.refused, let context = self.context else { return }
        self.reading = true
        if self.resets.exceeded(at: .now()) { return self.refuse(context, reason: "too many stream resets (rapid reset)") }
        // The engine reports the stream closed next.
        self.stream(id)?.requestEnded = true
    }

    func windowOpened(on id: UInt32?) {
        // A stream it lets write again flushes at the batch's end.
        self.reading = true
        // The client takes more of the responses: progress for the stall sweep.
        if let id {
            self.stream(id)?.windowUpdates &+= 1
        } else {
            self.connectionWindowUpdates &+= 1
        }
    }

    func pingAcknowledged(_ data: UInt64) {
        guard !self.refused, let context = self.context else { return }
        self.reading = true
        self.perform(self.lifetime.pingAcknowledged(data), context: context)
    }

    func streamClosed(_ id: UInt32) {
        guard let context = self.context else { return }
        if let stream = self.stream(id) {
            stream.requestEnded = true
            self.finishLater(stream)
        }
        self.perform(self.lifetime.streamClosed(id, now: context.eventLoop.now), context: context)
    }

    /// GOAWAY with ENHANCE_YOUR_CALM, as NIO answered the same abuse, and the close at
    /// once: a client that stopped reading would otherwise keep the connection open with
    /// the GOAWAY stuck behind its responses.
    private func refuse(_ context: ChannelHandlerContext, reason: String) {
        self.refused = true
        self.listener.clientFaults.report("HTTP/2 connection refused", reason: reason, level: .info, peer: self.info.clientIP,
                                          metadata: ["peer": "\(self.info.peer)", "listener": "\(self.listener.name)"], listener: self.listener)
        self.engine?.send(.goAway(lastStreamID: Self.streamID(self.lastOpened), errorCode: .enhanceYourCalm, opaqueData: nil), on: 0, promise: nil)
        context.flush()
        context.close(promise: nil)
    }

    private func open(_ id: UInt32, context: ChannelHandlerContext) -> HTTP2DownstreamStream {
        self.lastOpened = id
        let stream = HTTP2DownstreamStream(id: id, connection: self)
        // Opened while the connection is backed up, it is unwritable from the start, and
        // told when that ends.
        stream.reportedWritable = stream.isWritable
        let bridge = HTTP2StreamBridge(strictTransportSecurity: self.strictTransportSecurity)
        bridge.port = stream
        let proxy = ProxyHandler(stream: bridge, listener: self.listener, info: self.info)
        stream.proxy = proxy
        self.streams.append(stream)
        proxy.streamOpened(context: context)
        return stream
    }

    func stream(_ id: UInt32) -> HTTP2DownstreamStream? {
        for stream in self.streams where stream.id == id { return stream }
        return nil
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Each stream's read completes (its upstream writes flush), and it reads on unless
        // its proxy holds the client back.
        if !self.touched.isEmpty {
            let touched = self.touched
            self.touched.removeAll(keepingCapacity: true)
            for stream in touched {
                stream.touched = false
                guard !stream.finished, let proxy = stream.proxy else { continue }
                proxy.streamReadComplete()
            }
        }
        self.reading = false
        if self.needsFlush {
            self.needsFlush = false
            context.flush()
        }
        context.fireChannelReadComplete()
    }

    // MARK: what the streams ask

    func write(_ payload: HTTP2Frame.FramePayload, on stream: HTTP2DownstreamStream, promise: EventLoopPromise<Void>?) {
        guard let engine = self.engine else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        guard case .data(let data) = payload, case .byteBuffer(let body) = data.data, body.readableBytes > 0 else {
            engine.send(payload, on: stream.id, promise: promise)
            // A response's fields (a head with no body, trailers) or its empty end may wait
            // in the engine too.
            if self.stallSweep == nil, engine.holdsParts(on: stream.id) { self.armStallSweep() }
            return
        }
        // Counted until the engine is done with it (`dataDone`): past the client's window it
        // waits there.
        stream.queuedBytes += body.readableBytes
        engine.send(payload, on: stream.id, promise: promise)
        if stream.reportedWritable, stream.queuedBytes >= HTTP2DownstreamStream.highWater { self.reportWritability(stream) }
        if self.stallSweep == nil { self.armStallSweep() }
    }

    func writeFields(on stream: HTTP2DownstreamStream, endStream: Bool, encode: (inout ByteBuffer) -> Void) {
        guard let engine = self.engine else { return }
        engine.sendFields(on: stream.id, endStream: endStream, promise: nil, encode: encode)
        // Held in the engine (the client reads nothing): the stall sweep looks at it.
        if self.stallSweep == nil, engine.holdsParts(on: stream.id) { self.armStallSweep() }
    }

    /// The engine is done with `bytes` of a stream's response DATA (written to the channel,
    /// or refused): progress for the stall sweep, and the stream may take more again once
    /// the engine's pass ends (`dataPassEnded`).
    func dataDone(_ bytes: Int, on id: UInt32) {
        for stream in self.streams where stream.id == id {
            stream.queuedBytes -= bytes
            stream.writesDone &+= 1
            if !stream.reportedWritable, stream.queuedBytes <= HTTP2DownstreamStream.lowWater { self.writableAgain = true }
            return
        }
    }

    func dataPassEnded() {
        guard self.writableAgain else { return }
        self.writableAgain = false
        guard self.isWritable else { return }  // every stream is told when the connection is
        for stream in self.streams where !stream.reportedWritable && stream.queuedBytes <= HTTP2DownstreamStream.lowWater {
            self.reportWritability(stream)
        }
    }

    /// The sweep runs every half idle timeout (a quarter of a second at least) while any
    /// response is written.
    private func armStallSweep() {
        let every = TimeAmount.nanoseconds(max(self.listener.limits.idleTimeout.nanoseconds / 2, 250_000_000))
        self.stallSweep = self.eventLoop.assumeIsolated().scheduleTask(in: every) { self.sweepStalled() }
    }

    /// A stream whose response waits in the engine for a window the client never opens has no
    /// deadline of its own once its exchange is over (its upstream's read timeout ended
    /// with it), and keeps its connection from idling out: it held what it had read (up
    /// to 64 KiB a stream) for ever. A stream with response bytes waiting that saw no
    /// progress in three sweeps in a row (between one and two idle timeouts after the
    /// last) is reset with CANCEL, which frees them; an HTTP/1.1 client that reads nothing
    /// loses its connection at the idle timeout too. Progress is a piece of DATA the engine
    /// handed to the channel (`dataDone`) or a WINDOW_UPDATE from the client, for the
    /// stream or the whole connection: a slow reader whose window opens now and then is
    /// not stalled.
    ///
    /// And the connection: a client that reads nothing at all (the channel not writable,
    /// and not once writable since the sweep before) while the engine holds parts of a
    /// response is closed after four such sweeps (one after its streams would have been
    /// reset, which keeps the connection), as an HTTP/1.1 connection would be closed at
    /// its idle timeout. That covers what the streams' check cannot see: the end of a
    /// stream already gone from the table waiting in the engine, and WINDOW_UPDATEs from
    /// a client that never reads its socket, which count as progress for its streams.
    private func sweepStalled() {
        self.stallSweep = nil
        guard let context = self.context else { return }
        let holding = self.engine?.holdsAnyParts == true
        if holding, !context.channel.isWritable, self.writabilityChanges == self.writabilityChangesAtSweep {
            self.unreadSweeps += 1
        } else {
            self.unreadSweeps = 0
        }
        self.writabilityChangesAtSweep = self.writabilityChanges
        if self.unreadSweeps >= 4 {
            self.listener.clientFaults.report("HTTP/2 connection closed", reason: "the client read nothing of its responses for the idle timeout", level: .info,
                                              peer: self.info.clientIP, metadata: ["peer": "\(self.info.peer)", "listener": "\(self.listener.name)"],
                                              listener: self.listener)
            context.close(promise: nil)
            return
        }
        let connectionMoved = self.connectionWindowUpdates != self.connectionWindowUpdatesAtSweep
        self.connectionWindowUpdatesAtSweep = self.connectionWindowUpdates
        var writing = holding
        for stream in self.streams where !stream.finished {
            let progress = stream.writesDone &+ stream.windowUpdates
            // What waits may be response DATA (counted) or fields held while the client
            // reads nothing: a head without a body, trailers after DATA the channel took.
            let held = stream.queuedBytes > 0 || self.engine?.holdsParts(on: stream.id) == true
            guard held, progress == stream.progressAtSweep, !connectionMoved else {
                stream.progressAtSweep = progress
                stream.stalledSweeps = 0
                writing = writing || held
                continue
            }
            stream.stalledSweeps += 1
            guard stream.stalledSweeps >= 3 else {
                writing = true
                continue
            }
            self.listener.clientFaults.report("HTTP/2 stream reset", reason: "the client took none of its response for the idle timeout", level: .info,
                                              peer: self.info.clientIP, metadata: ["peer": "\(self.info.peer)", "listener": "\(self.listener.name)"],
                                              listener: self.listener)
            stream.reset()
        }
        if writing { self.armStallSweep() }
    }

    /// Flushes now, or at the end of the read batch when one is under way: one flush (one
    /// TLS record, one syscall) for what every stream wrote meanwhile.
    func flush() {
        if self.reading {
            self.needsFlush = true
        } else {
            self.context?.flush()
        }
    }

    /// The window of what a stream's proxy took goes back to the client once it is worth
    /// a frame; none once the client ended the request.
    func giveBack(_ stream: HTTP2DownstreamStream) {
        guard stream.unacknowledged >= HTTP2DownstreamStream.windowUpdateThreshold, !stream.requestEnded, !stream.closed,
              let engine = self.engine else { return }
        let increment = stream.unacknowledged
        stream.unacknowledged = 0
        engine.send(.windowUpdate(windowSizeIncrement: increment), on: stream.id, promise: nil)
        self.flush()
    }

    private func reportWritability(_ stream: HTTP2DownstreamStream) {
        let writable = stream.isWritable
        guard writable != stream.reportedWritable else { return }
        stream.reportedWritable = writable
        guard !stream.finished else { return }
        stream.proxy?.streamWritabilityChanged(writable)
    }

    /// The stream is done (closed by the engine or by its proxy): its proxy is told on the
    /// next turn of the loop, never from inside one of its own writes (the engine reports
    /// a stream closed from within the write of its last frame, as NIO did, and the proxy
    /// still had its exchange to finish).
    func finishLater(_ stream: HTTP2DownstreamStream) {
        guard !stream.finished else { return }
        stream.finished = true
        stream.closed = true
        self.context?.eventLoop.assumeIsolated().execute { self.finish(stream) }
    }

    private func finish(_ stream: HTTP2DownstreamStream) {
        if let index = self.streams.firstIndex(where: { $0 === stream }) { self.streams.remove(at: index) }
        guard let proxy = stream.proxy else { return }
        stream.proxy = nil
        proxy.streamClosed()
    }

    // MARK: the connection

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.writabilityChanges &+= 1
        for stream in self.streams where !stream.finished {
            self.reportWritability(stream)
        }
        context.fireChannelWritabilityChanged()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Compared by type, not cast: a failing cast from `Any` searches the runtime's conformance records.
        if ObjectIdentifier(type(of: event)) == ObjectIdentifier(ChannelShouldQuiesceEvent.self) {
            // GOAWAY's first step, then each stream finishes the exchange in flight.
            self.perform(self.lifetime.quiesce(now: context.eventLoop.now, ping: UInt64.random(in: .min ... .max)), context: context)
            for stream in self.streams where !stream.finished { stream.proxy?.streamQuiesce() }
        }
        context.fireUserInboundEventTriggered(event)
    }

    // MARK: idling and draining

    func deadlineReached(now: NIODeadline) {
        guard let context = self.context else { return }
        self.perform(self.lifetime.deadlineReached(now: now), context: context)
    }

    /// Does what the connection's lifetime decided, and queues its next deadline.
    private func perform(_ action: HTTP2ConnectionLifetime.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .goAwayAndClose(let last):
            guard let engine = self.engine else {
                context.close(promise: nil)
                break
            }
            let written = context.eventLoop.makePromise(of: Void.self)
            engine.send(.goAway(lastStreamID: Self.streamID(last), errorCode: .noError, opaqueData: nil), on: 0, promise: written)
            context.flush()
            written.futureResult.assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        case .announceDrain(let ping):
            // The engine keeps the lowest GOAWAY's stream as its limit.
            self.engine?.send(.goAway(lastStreamID: .maxID, errorCode: .noError, opaqueData: nil), on: 0, promise: nil)
            self.engine?.send(.ping(HTTP2PingData(withInteger: ping), ack: false), on: 0, promise: nil)
            context.flush()
        case .finalGoAway(let last, let close):
            self.engine?.send(.goAway(lastStreamID: Self.streamID(last), errorCode: .noError, opaqueData: nil), on: 0, promise: nil)
            context.flush()
            if close { self.closeWhenDrained(context) }
        case .close:
            self.closeWhenDrained(context)
        }
        self.queueDeadline()
    }

    private static func streamID(_ id: UInt32) -> HTTP2StreamID { HTTP2StreamID(Int32(truncatingIfNeeded: id)) }

    private func queueDeadline() {
        guard self.context != nil, let deadline = self.lifetime.deadline else { return }
        // Queued already for an earlier time, it stays: reached early, it queues itself again.
        self.listener.loop.deadlines.schedule(self, at: deadline)
    }

    /// Closes the drained connection on the loop's next turn, outside the engine's stream
    /// bookkeeping that reported the last stream closed; the TLS handler sends what is
    /// still buffered, then close_notify.
    private func closeWhenDrained(_ context: ChannelHandlerContext) {
        context.eventLoop.assumeIsolatedUnsafeUnchecked().execute {
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.stallSweep?.cancel()
        self.stallSweep = nil
        self.listener.loop.deadlines.cancel(self)
        for stream in self.streams where !stream.finished {
            stream.finished = true
            stream.closed = true
            self.finish(stream)
        }
        self.streams.removeAll()
        context.fireChannelInactive()
    }
}

@available(*, unavailable)
extension HTTP2Downstream: Sendable {}
