import EdgeTLS
import NIOCore
import NIOHTTP2

/// An HTTP/2 upstream connection (h2, h2c, or auto agreed on h2) and its streams: sits
/// after NIO's HTTP/2 connection handler, which it uses without a multiplexer (no channel
/// per stream). Each exchange leases a stream (`HTTP2UpstreamStream`); the session
/// writes its request as frames, routes the response frames of each stream to its
/// exchange as parts, and does what NIO's stream channels would do: gives flow-control
/// window back as each response is passed on (a stream's only while its client takes
/// the bytes, so one slow client holds back its own stream and no other), holds a
/// stream's request body while the upstream's window is closed, and fails just the
/// stream that was reset. It respects the upstream's SETTINGS_MAX_CONCURRENT_STREAMS
/// and the group's `max_streams_per_connection` when leasing, retires on GOAWAY (streams
/// above its last stream ID fail as not processed, the rest finish) and when its stream
/// IDs run out, and closes once retired and idle.
final class HTTP2UpstreamSession: ChannelInboundHandler, StreamRoom, NIOHTTP2FrameDelegate {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    /// Window given back once this much was passed on: half a stream's default 65,535-byte
    /// window, so a stream's upstream rarely waits for an update while its client reads.
    static let windowUpdateThreshold = 32 * 1024
    /// The connection's receive window beyond its default 65,535 bytes, granted at once:
    /// shared by every stream, the default would let one connection carry 64 KiB per round
    /// trip for all its streams together. Each stream keeps the default window, which
    /// bounds what a slow client's stream holds.
    static let connectionWindowBoost = 4 * 1024 * 1024
    /// Request body bytes of a stream written but not yet on the wire above which its
    /// exchange stops reading the client's body, and below which it resumes: the
    /// watermarks of NIO's stream channels.
    static let highWater = 64 * 1024
    static let lowWater = 32 * 1024
    /// Client stream IDs are odd and end at 2^31 - 1 (NIO stops the process on a larger
    /// one): a connection whose next would pass it retires instead.
    static let lastStreamID = Int(Int32.max)

    let channel: Channel
    let key: PoolKey
    let backendIndex: Int
    /// The pipeline's byte-level handler, which leases share; it parses nothing on an
    /// HTTP/2 connection. None on a health check's connection, which leases nothing.
    let handler: UpstreamHandler?
    /// The pool that leases this connection's streams (nil for a health check's).
    var pool: UpstreamPool?
    private let backend: String
    private let scheme: String
    private let authority: String
    private let maxHeadBytes: Int
    /// The group's `max_streams_per_connection`.
    let maxStreams: Int
    /// The upstream's SETTINGS_MAX_CONCURRENT_STREAMS, once its SETTINGS came.
    private(set) var peerMaxStreams: Int?
    private var context: ChannelHandlerContext?
    /// Leased streams: those with an ID by it, all of them in `leased`.
    private var streams: [HTTP2StreamID: HTTP2UpstreamStream] = [:]
    private var leased: [HTTP2UpstreamStream] = []
    private var nextStreamID = 1
    /// The upstream's GOAWAY: its last stream ID. No new stream; a stream above it was
    /// never processed.
    private var goneAwayAfter: HTTP2StreamID?
    /// No stream may be leased any more: GOAWAY, stream IDs used up, the pool's
    /// generation ended, or the connection failed.
    private(set) var retired = false
    private var closed = false
    /// Streams started on this connection: a lease's exchange counts as on a reused
    /// connection after the first.
    private(set) var streamsStarted = 0
    /// What the upstream may still send on the connection: topped up at the end of each read.
    private var connectionWindow = HTTP2ConnectionWindow(boost: HTTP2UpstreamSession.connectionWindowBoost)
    /// NIO sent GOAWAY (`wroteFrame`): an error it reports now is the connection's.
    private var sentGoaway = false
    /// Where this connection came in its lane's order (`HTTP2Lane.connected`).
    var laneOrdinal = 0
    private var needsFlush = false
    /// Streams that got parts in this read batch: each exchange flushes once at its end.
    private var touched: [HTTP2UpstreamStream] = []
    /// NIO's last HTTP/2 error on this connection, as a failure's reason.
    private var protocolError: String?
    /// How long the connection may stay without a stream (the group's `idle` timeout).
    private let idleTimeout: TimeAmount?
    private var idleSince = NIODeadline.now()
    private var idleTimer: Scheduled<Void>?
    /// Whether the pool counts the connection among its backend's idle ones.
    var countedIdle = false
    /// PINGs while idle (`pool.ping_interval`), and their one timer.
    private var liveness: HTTP2PingLiveness?
    private var pingTimer: Scheduled<Void>?

    init(channel: Channel, key: PoolKey, backendIndex: Int, handler: UpstreamHandler?, backend: String, scheme: String, authority: String,
         maxHeadBytes: Int, maxStreams: Int, idleTimeout: TimeAmount?, ping: HTTP2Ping? = nil) {
        self.idleTimeout = idleTimeout
        self.liveness = ping.map { HTTP2PingLiveness(interval: $0.interval, timeout: $0.timeout, now: channel.eventLoop.now) }
        self.channel = channel
        self.key = key
        self.backendIndex = backendIndex
        self.handler = handler
        self.backend = backend
        self.scheme = scheme
        self.authority = authority
        self.maxHeadBytes = maxHeadBytes
        self.maxStreams = max(1, maxStreams)
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    /// NIO's connection handler for an upstream connection: our SETTINGS, NIO's header
    /// validation off (the translation checks every response field itself, and request
    /// fields come from the HTTP/1.1 parser; it cost 8 % of a request, as on the client
    /// side), the session told of each frame written, and room for the resets of a busy
    /// connection (DATA still arriving for one of the last 32 reset streams was fine, for
    /// an older one a connection error).
    ///
    /// NIO's limit on inbound RST_STREAM frames (200 in 30 s) defends a server from rapid
    /// reset; from an upstream, resets end only streams we opened, and a server that
    /// answers before it reads the body resets each such stream with NO_ERROR to stop the
    /// rest (RFC 9113 §8.1): nginx does, for every `return` or static file answering a
    /// POST. Under that limit the connection died at the 201st, with every stream in
    /// flight on it. Here only more resets in a millisecond than twice the streams we may
    /// have open (200 at least) end it, which no exchange of ours can cause (NIO keeps a
    /// timestamp per reset in the window: a longer window would cost memory per connection).
    static func connectionHandler(settings: HTTP2Settings, session: HTTP2UpstreamSession) -> NIOHTTP2Handler {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = settings
        connection.headerBlockValidation = .disabled
        connection.maximumRecentlyResetStreams = 1024
        var stream = NIOHTTP2Handler.StreamConfiguration()
        stream.streamResetFrameRateLimit.windowLength = .milliseconds(1)
        stream.streamResetFrameRateLimit.maximumCount = max(200, 2 * session.maxStreams)
        return NIOHTTP2Handler(mode: .client, frameDelegate: session, connectionConfiguration: connection, streamConfiguration: stream)
    }

    /// Once NIO's HTTP/2 handler is in front (it sends the preface and SETTINGS): the
    /// connection's window grows.
    func start() {
        guard let context = self.context else { return }
        context.write(self.wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: Self.connectionWindowBoost))),
                      promise: nil)
        context.flush()
    }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    // MARK: leasing

    /// How many streams may be in flight at once once the upstream's SETTINGS came: the
    /// group's limit, or the upstream's if lower.
    var capacity: Int? { self.peerMaxStreams.map { min(self.maxStreams, $0) } ?? (self.settingsReceived ? self.maxStreams : nil) }
    /// Before the SETTINGS: what a connection to the backend took last (else one stream).
    var assumedCapacity = 1
    private var settingsReceived = false
    /// Streams leased and not yet let go of.
    var inFlight: Int { self.leased.count }
    var freeStreams: Int {
        guard !self.retired, !self.closed else { return 0 }
        let room = min(self.maxStreams, self.capacity ?? self.assumedCapacity) - self.leased.count
        return max(0, min(room, (self.maxRequests ?? Int.max) - self.leasedTotal))
    }
    /// Streams the connection serves at most (`max_requests_per_connection`, or what the
    /// backend's GOAWAYs taught: `HTTP2Lane.requestLimit`); then it retires.
    var maxRequests: Int?
    /// Streams leased over the connection's life.
    private(set) var leasedTotal = 0
    var isIdle: Bool { self.leased.isEmpty }

    /// A new stream for an exchange (its ID comes with its request's head), held as an
    /// `UpstreamConnection` like any other.
    func lease() -> UpstreamConnection {
        let stream = self.openStream()
        let connection = UpstreamConnection(channel: self.channel, key: self.key, handler: self.handler!, backendIndex: self.backendIndex, stream: stream)
        // Reused (a replay on failure may be safe) only as an idle keep-alive connection is.
        connection.uses = stream.leasedIdle ? self.streamsStarted : 0
        stream.lease = connection
        return connection
    }

    /// A new stream, without a lease (a health check's).
    func openStream() -> HTTP2UpstreamStream {
        let stream = HTTP2UpstreamStream(session: self, translation: HTTP2UpstreamTranslation(scheme: self.scheme, defaultAuthority: self.authority,
                                                                                              maxHeadBytes: self.maxHeadBytes))
        let wasIdle = self.leased.isEmpty
        stream.leasedIdle = wasIdle
        self.leased.append(stream)
        self.leasedTotal += 1
        self.key.backend.streamsInFlightChanged(by: 1)
        if wasIdle { self.pool?.sessionBusy(self) }
        if let max = self.maxRequests, self.leasedTotal >= max { self.retire("it served max_requests_per_connection") }
        return stream
    }

    /// The exchange lets go of its stream: released after a whole exchange, or abandoned
    /// (a stream still open is reset with CANCEL, and the connection goes on).
    func end(_ stream: HTTP2UpstreamStream) {
        guard !stream.ended else { return }
        stream.ended = true
        stream.delegate = nil
        stream.lease = nil
        if let id = stream.translation.streamID, self.streams[id] === stream {
            self.streams[id] = nil
            // Ended both ways, the stream is closed (NIO says so after the frame that
            // closed it, which may be the one being read): a reset would be one too many,
            // and a server counts resets against its clients (rapid reset).
            let closedBothWays = stream.translation.requestEnded && stream.translation.responseEnded && stream.queuedBodyBytes == 0
            if stream.open, !closedBothWays, !self.closed, let context = self.context {
                stream.open = false
                context.writeAndFlush(self.wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.cancel))), promise: nil)
            }
        }
        guard let index = self.leased.firstIndex(where: { $0 === stream }) else { return }
        self.leased.remove(at: index)
        self.key.backend.streamsInFlightChanged(by: -1)
        if self.retired {
            if self.leased.isEmpty { self.close() }
            return
        }
        if self.leased.isEmpty {
            self.idleSince = .now()
            self.armIdleTimer(at: self.idleSince + (self.idleTimeout ?? .zero))
            self.watchLiveness()
            self.pool?.sessionIdle(self)
        }
        self.pool?.sessionHasRoom(self)  // a request waiting for a stream takes this one
    }

    /// One timer while idle, not one per stream: it looks again when due, and closes the
    /// connection once it has been idle for the whole timeout.
    private func armIdleTimer(at deadline: NIODeadline) {
        guard self.idleTimeout != nil, self.idleTimer == nil, !self.closed else { return }
        self.idleTimer = self.channel.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.idleTimer = nil
            guard self.leased.isEmpty, !self.closed, let timeout = self.idleTimeout else { return }
            if NIODeadline.now() >= self.idleSince + timeout {
                self.retire("idle for the idle timeout")
            } else {
                self.armIdleTimer(at: self.idleSince + timeout)
            }
        }
    }

    /// A connection the pool took and gave no stream (its waiters were served elsewhere or
    /// gave up) idles, and closes after the idle timeout, as one whose streams ended.
    func idleIfUnused() {
        guard self.leased.isEmpty, !self.retired, !self.countedIdle else { return }
        self.idleSince = .now()
        self.armIdleTimer(at: self.idleSince + (self.idleTimeout ?? .zero))
        self.watchLiveness()
        self.pool?.sessionIdle(self)
    }

    // MARK: liveness: PINGs while idle

    /// The connection idles: a PING is due an interval later (the timer may already be
    /// armed, for an earlier idle spell or a PING's ACK; it looks again when it fires).
    private func watchLiveness() {
        guard let due = self.liveness?.idled(at: self.channel.eventLoop.now), self.pingTimer == nil, !self.closed else { return }
        self.armPing(at: due)
    }

    private func armPing(at deadline: NIODeadline) {
        self.pingTimer = self.channel.eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            self.pingTimer = nil
            self.checkLiveness()
        }
    }

    private func checkLiveness() {
        guard !self.closed, !self.retired, let context = self.context,
              let step = self.liveness?.check(at: self.channel.eventLoop.now, idle: self.leased.isEmpty) else { return }
        switch step {
        case .ping(let payload, let due):
            context.writeAndFlush(self.wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .ping(HTTP2PingData(withInteger: payload), ack: false))),
                                  promise: nil)
            self.armPing(at: due)
        case .wait(let until):
            self.armPing(at: until)
        case .stop:
            break
        case .dead(let reason):
            // Closed now, not when a request finds out. A stream leased meanwhile whose
            // HEADERS went out fails as a read timeout would: the backend may be alive but
            // stalled and have the request, so only what a read timeout may replay goes
            // again (as a broken reused connection, a POST would have been sent twice).
            self.key.backend.pingTimedOut("\(self.backend): \(reason); the connection was closed")
            for stream in self.leased where stream.created {
                self.fail(stream, UpstreamError(kind: .readTimeout, backend: self.backend, reason: "\(reason); the gateway closed the connection"))
            }
            self.protocolError = reason
            self.retire(reason)
            context.close(promise: nil)
        }
    }

    /// No new stream from here on; closed once the last one ends.
    func retire(_ reason: String) {
        guard !self.retired else { return }
        self.retired = true
        self.pingTimer?.cancel()
        self.pingTimer = nil
        self.pool?.sessionRetired(self)
        if self.leased.isEmpty { self.close() }
    }

    func close() {
        self.channel.close(promise: nil)
    }

    // MARK: request: the exchanges' bytes as frames

    func write(_ bytes: ByteBuffer, on stream: HTTP2UpstreamStream) {
        guard !stream.failed, !stream.ended else { return }
        guard !self.closed, let context = self.context else {
            // A request not begun on the connection was not processed: it goes again.
            let kind: UpstreamError.Kind = stream.translation.streamID == nil ? .refusedStream : .closedEarly
            self.fail(stream, UpstreamError(kind: kind, backend: self.backend, reason: "connection closed by the upstream"))
            return
        }
        let hadID = stream.translation.streamID != nil
        let frames: [HTTP2Frame]
        do {
            frames = try stream.translation.requestFrames(bytes, newStream: self.newStreamID)
        } catch let error as UpstreamError {
            self.fail(stream, error)
            return
        } catch {
            self.fail(stream, UpstreamError(kind: .cannotCarry, backend: self.backend, reason: "cannot send the request over HTTP/2: \(error)"))
            return
        }
        if !hadID, let id = stream.translation.streamID {
            self.streams[id] = stream
            stream.open = true
            self.streamsStarted += 1
        }
        for frame in frames {
            guard case .data(let data) = frame.payload, case .byteBuffer(let body) = data.data, body.readableBytes > 0 else {
                context.write(self.wrapOutboundOut(frame), promise: nil)
                continue
            }
            // Completed when the frame reaches the socket, which the HTTP/2 handler holds
            // back while the upstream's window is closed (or fails it, the stream closed).
            let count = body.readableBytes
            stream.queuedBodyBytes += count
            let written = context.eventLoop.makePromise(of: Void.self)
            context.write(self.wrapOutboundOut(frame), promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in self.bodyWritten(count, on: stream) }
        }
        if stream.isWritable, stream.queuedBodyBytes > Self.highWater {
            stream.isWritable = false
            stream.delegate?.upstreamWritabilityChanged(false)
        }
    }

    func flush() {
        self.context?.flush()
    }

    /// The next stream ID, in the order HEADERS frames go out; a GOAWAY or IDs used up
    /// refuse the request unsent (it goes again elsewhere).
    private func newStreamID() throws -> HTTP2StreamID {
        if let last = self.goneAwayAfter {
            throw UpstreamError(kind: .refusedStream, backend: self.backend, reason: "the upstream is going away (GOAWAY after stream \(last))")
        }
        guard self.nextStreamID < Self.lastStreamID else {
            self.retire("the connection has used its stream IDs")
            throw UpstreamError(kind: .refusedStream, backend: self.backend, reason: "the connection has used its stream IDs")
        }
        let id = HTTP2StreamID(self.nextStreamID)
        self.nextStreamID += 2
        if self.nextStreamID >= Self.lastStreamID { self.retire("the connection has used its stream IDs") }
        return id
    }

    private func bodyWritten(_ count: Int, on stream: HTTP2UpstreamStream) {
        stream.queuedBodyBytes -= count
        guard !stream.isWritable, stream.queuedBodyBytes <= Self.lowWater else { return }
        stream.isWritable = true
        stream.delegate?.upstreamWritabilityChanged(self.channel.isWritable)
    }

    /// The exchange's client can take bytes again: the stream's window held for it goes back.
    func resumeRead(_ stream: HTTP2UpstreamStream) {
        guard stream.unacknowledged > 0, stream.open, let id = stream.translation.streamID, let context = self.context else { return }
        self.giveBack(&stream.unacknowledged, on: id, context: context)
        self.needsFlush = false
        context.flush()
    }

    // MARK: response: frames to each stream's exchange

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = self.unwrapInboundIn(data)
        // Any frame shows the connection alive, as the ACK would (Envoy's keepalive too):
        // a connection busy sending a response is not closed for a PING queued behind it.
        if self.liveness?.awaiting != nil { self.liveness?.heard(at: self.channel.eventLoop.now) }
        switch frame.payload {
        case .goAway(let last, let code, _):
            self.goneAwayAfter = last
            // Streams above the last one are refused: the backend ends its connections
            // after this many (nginx's keepalive_requests), which the pool learns.
            let refused = self.streams.filter { $0.key > last }.map(\.value)
            if !refused.isEmpty, code == .noError {
                self.pool?.sessionRefusedStreams(self, processed: (Int(last) + 1) / 2, ordinal: self.laneOrdinal)
            }
            // Not processed: they go again elsewhere, now. NIO closes those it had sent
            // (their StreamClosedEvent comes next). One whose HEADERS it still holds back
            // (the upstream's stream limit reached, or the socket full) it would never send
            // after a GOAWAY, whatever its last stream ID (a drain notice says 2^31-1), and
            // fail silently: reset now, which drops them, and refused.
            for stream in self.streams.filter({ $0.key > last || ($0.value.open && !$0.value.created) }).map(\.value) {
                if stream.open, !stream.created, let id = stream.translation.streamID {
                    stream.open = false
                    context.write(self.wrapOutboundOut(HTTP2Frame(streamID: id, payload: .rstStream(.cancel))), promise: nil)
                    self.needsFlush = true
                }
                self.fail(stream, UpstreamError(kind: .refusedStream, backend: self.backend, reason: "the upstream refused the stream (GOAWAY)"))
            }
            self.retire("the upstream is going away (GOAWAY)")
            return
        case .settings(.settings(let settings)):
            self.settingsReceived = true
            for setting in settings where setting.parameter == .maxConcurrentStreams {
                self.peerMaxStreams = setting.value
            }
            if !self.retired { self.pool?.sessionHasRoom(self) }
            return
        case .data:
            // The connection's window comes back at the end of the read batch (below): a
            // write here, before this frame reached its stream, made NIO deliver the
            // stream's StreamClosedEvent (pending since it read this very frame's
            // END_STREAM) first, and a response that had ended looked cut short (1 request
            // in 1,000 failed under h2load).
            break
        default:
            break
        }
        guard let stream = self.streams[frame.streamID], !stream.failed else { return }
        if case .rstStream(let code) = frame.payload {
            // REFUSED_STREAM promises the request was not processed; any other code does not.
            stream.open = false
            self.fail(stream, UpstreamError(kind: code == .refusedStream ? .refusedStream : .streamReset, backend: self.backend,
                                            reason: "the upstream reset the stream (\(code))"))
            return
        }
        let step: HTTP2UpstreamTranslation.ResponseStep
        do {
            step = try stream.translation.responseStep(frame.payload)
        } catch let error as ResponseHeadTooLarge {
            self.fail(stream, UpstreamError(kind: .responseHeadTooLarge, backend: self.backend, reason: error.description))
            return
        } catch {
            self.fail(stream, UpstreamError(kind: .protocolError, backend: self.backend, reason: "invalid HTTP/2 response: \(error)"))
            return
        }
        if step.consumed > 0, !step.ended {
            stream.unacknowledged += step.consumed
            if stream.unacknowledged >= Self.windowUpdateThreshold, stream.delegate?.downstreamWritable ?? true {
                self.giveBack(&stream.unacknowledged, on: frame.streamID, context: context)
            }
        }
        guard let delegate = stream.delegate else { return }
        if !stream.touched {
            stream.touched = true
            self.touched.append(stream)
        }
        if let part = step.part {
            let isEnd: Bool
            if case .end = part { isEnd = true } else { isEnd = false }
            delegate.upstreamReceived(part, from: stream.lease)
            // The exchange may have let go of the stream meanwhile (a head it refused).
            if step.ended, !isEnd, !stream.ended, let delegate = stream.delegate {
                delegate.upstreamReceived(.end(trailers: []), from: stream.lease)
            }
        } else if step.ended {
            delegate.upstreamReceived(.end(trailers: []), from: stream.lease)
        }
    }

    private func giveBack(_ bytes: inout Int, on stream: HTTP2StreamID, context: ChannelHandlerContext) {
        context.write(self.wrapOutboundOut(HTTP2Frame(streamID: stream, payload: .windowUpdate(windowSizeIncrement: bytes))), promise: nil)
        bytes = 0
        self.needsFlush = true
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        // Not once the upstream is going away and nothing is open: NIO refuses a
        // WINDOW_UPDATE on a connection with no stream left to receive.
        if self.goneAwayAfter == nil || self.streams.values.contains(where: \.open), let increment = self.connectionWindow.topUp() {
            let written = context.eventLoop.makePromise(of: Void.self)
            context.write(self.wrapOutboundOut(HTTP2Frame(streamID: .rootStream, payload: .windowUpdate(windowSizeIncrement: increment))), promise: written)
            written.futureResult.assumeIsolated().whenComplete { _ in self.connectionWindow.updateWritten() }
            self.needsFlush = true
        }
        if self.needsFlush {
            self.needsFlush = false
            context.flush()
        }
        if !self.touched.isEmpty {
            let touched = self.touched
            self.touched.removeAll(keepingCapacity: true)
            for stream in touched {
                stream.touched = false
                stream.delegate?.upstreamReadComplete()
            }
        }
        context.fireChannelReadComplete()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let writable = context.channel.isWritable
        for stream in self.leased where stream.isWritable {
            stream.delegate?.upstreamWritabilityChanged(writable)
        }
        context.fireChannelWritabilityChanged()
    }

    /// A stream closed by the HTTP/2 handler before its response ended (refused by a
    /// GOAWAY, reset, or a stream error of its own) fails its exchange.
    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Several of NIO's events come per stream: their types are compared before any
        // cast (a cast from `Any` searches the runtime's conformance records; the casts
        // that failed here were 4.5k instructions a gRPC call).
        let type = ObjectIdentifier(Swift.type(of: event))
        if type == ObjectIdentifier(NIOHTTP2StreamCreatedEvent.self) {
            self.streams[(event as! NIOHTTP2StreamCreatedEvent).streamID]?.created = true
            return
        }
        if type == ObjectIdentifier(NIOHTTP2WindowUpdatedEvent.self) {
            let window = event as! NIOHTTP2WindowUpdatedEvent
            if window.streamID == .rootStream, let inbound = window.inboundWindowSize { self.connectionWindow.nioReported(inbound) }
            return
        }
        guard type == ObjectIdentifier(StreamClosedEvent.self) else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        let closed = event as! StreamClosedEvent
        guard let stream = self.streams[closed.streamID] else { return }
        stream.open = false
        guard !stream.translation.responseEnded else { return }
        // NIO closes the streams a GOAWAY left out with CANCEL: they were never processed.
        if self.goneAwayAfter.map({ closed.streamID > $0 }) == true {
            self.fail(stream, UpstreamError(kind: .refusedStream, backend: self.backend, reason: "the upstream refused the stream (GOAWAY)"))
        } else {
            let cause = self.protocolError.map { ": \($0)" } ?? ""
            self.fail(stream, UpstreamError(kind: .streamReset, backend: self.backend,
                                            reason: "the stream closed before the response ended (\(closed.reason.map { "\($0)" } ?? "no error"))\(cause)"))
        }
    }

    /// Socket and TLS errors fail every stream, as they are. A stream error of ours fails
    /// its stream's exchange only (an outbound one before the stream was created means
    /// its HEADERS never went out, and there is nothing to reset). NIO reports an error in
    /// a frame the upstream sent unwrapped: when it answered it with GOAWAY (`wroteFrame`)
    /// it is the connection's, which NIO does not close, so it is closed here and every
    /// stream fails with it; otherwise NIO reset one stream, whose StreamClosedEvent fails
    /// it with this as its reason, and the others go on.
    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let streamError = error as? NIOHTTP2Errors.StreamError {
            guard let stream = self.streams[streamError.streamID] else { return }
            if !stream.created { stream.open = false }
            self.fail(stream, UpstreamError(kind: .protocolError, backend: self.backend, reason: "HTTP/2: \(streamError.baseError)"))
        } else if error is UpstreamError || error is IOError || error is TLSError {
            self.failAll(UpstreamHandler.describe(error, backend: self.backend))
            context.close(promise: nil)
        } else {
            self.protocolError = "\(error)"
            guard self.sentGoaway else { return }
            self.retire("HTTP/2 connection error: \(error)")
            self.failAll(UpstreamError(kind: .protocolError, backend: self.backend, reason: "HTTP/2: \(error)"))
            context.close(promise: nil)
        }
    }

    /// Every frame NIO writes (`NIOHTTP2FrameDelegate`): a GOAWAY of its own says the
    /// upstream broke the connection's protocol.
    func wroteFrame(_ frame: HTTP2Frame) {
        if case .goAway = frame.payload { self.sentGoaway = true }
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.closed = true
        self.retired = true
        self.idleTimer?.cancel()
        self.idleTimer = nil
        self.pingTimer?.cancel()
        self.pingTimer = nil
        let cause = self.protocolError.map { " (\($0))" } ?? ""
        self.failAll(UpstreamError(kind: .closedEarly, backend: self.backend, reason: "connection closed by the upstream\(cause)"))
        self.pool?.sessionClosed(self)
        context.fireChannelInactive()
    }

    /// Every stream fails; one whose HEADERS never went out (no ID yet, or held back in
    /// NIO) was not processed, and goes again whatever its method.
    private func failAll(_ error: Error) {
        for stream in self.leased {
            if !stream.created {
                self.fail(stream, UpstreamError(kind: .refusedStream, backend: self.backend, reason: "\(error) (the request was not sent)"))
            } else {
                self.fail(stream, error)
            }
        }
    }

    /// Reported on the next turn of the loop, never from inside a write: the proxy writes
    /// a request's head and then its held body, and an error reported from the head's
    /// write would start a retry whose held body the rest of that write then consumed.
    /// The stream ends then, if its exchange has not let go of it already.
    private func fail(_ stream: HTTP2UpstreamStream, _ error: Error) {
        guard !stream.failed, !stream.ended else { return }
        stream.failed = true
        self.channel.eventLoop.assumeIsolated().execute {
            stream.delegate?.upstreamFailed(error, from: stream.lease)
            self.end(stream)
        }
    }
}

@available(*, unavailable)
extension HTTP2UpstreamSession: Sendable {}
