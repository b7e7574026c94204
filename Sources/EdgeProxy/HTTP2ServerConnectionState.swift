import NIOCore

/// The server side of one HTTP/2 connection as RFC 9113 §5.1 and §6.9 have it, for the
/// gateway's own engine (#32; `HTTP2FrameReader` is its frame layer): which client
/// streams exist and in which state, both directions' flow-control windows, the settings
/// of both sides, the drain's GOAWAY, and the count of a client's glitches. Frames read
/// go in, what they mean comes out (`Received`), and the engine says what it wrote
/// (`sentHeaders`, `sentData`, `sentReset`, `windowGiven`). No I/O, no clock and no HPACK:
/// field blocks come out still encoded, and the engine decodes every one of them, those
/// it then drops too, for the decoder's table to stay in step with the client's encoder.
///
/// Streams live in a small array (a client has a few open at a time, up to
/// `maxConcurrentStreams`), found by a scan, and a stream closed both ways leaves it: a
/// closed stream is known only as an ID at or below `lastStreamID`, so what a client
/// sends on one is dropped (DATA still counts against the connection's window) and
/// counted as a glitch, not answered, which could be made into an amplifier.
struct HTTP2ServerConnectionState {
    struct Limits {
        /// Our SETTINGS_MAX_CONCURRENT_STREAMS: streams beyond are refused (REFUSED_STREAM).
        var maxConcurrentStreams = 100
        /// Our SETTINGS_INITIAL_WINDOW_SIZE, in force once the client acknowledged it.
        var initialWindowSize = 65_535
        /// Frames dropped or refused (stream errors, frames on closed streams, frame types
        /// unknown, empty DATA frames) before the connection is ended with
        /// ENHANCE_YOUR_CALM: NIO's "glitches", with its default.
        var maxGlitches = 200
    }

    enum StreamState: Equatable {
        case open
        /// The client ended its side (END_STREAM); the response goes on.
        case halfClosedRemote
        /// The response ended; the request's body goes on.
        case halfClosedLocal
    }

    struct Stream {
        let id: UInt32
        var state: StreamState
        /// What the gateway may still send on the stream (may go below 0 when the client
        /// lowers SETTINGS_INITIAL_WINDOW_SIZE, §6.9.2).
        var sendWindow: Int
        /// What the client may still send on the stream.
        var receiveWindow: Int
        /// The request body still to come by its content-length; nil: none declared.
        var bodyRemaining: Int? = nil
        /// The engine took the response's last part (END_STREAM), which may still wait
        /// for a window: nothing more may be written on the stream.
        var endTaken = false
    }

    /// What a frame read means for the engine.
    enum Received: Equatable {
        /// A new stream's request head (still HPACK-encoded).
        case opened(stream: UInt32, block: ByteBuffer, endStream: Bool)
        /// A request's trailers, which end it.
        case trailers(stream: UInt32, block: ByteBuffer)
        /// `flowControlled`: the frame's length as the windows count it (padding included).
        case data(stream: UInt32, data: ByteBuffer, endStream: Bool, flowControlled: Int)
        /// The client reset the stream: it is gone, its proxy is told.
        case reset(stream: UInt32, code: UInt32)
        /// A field block for no stream the gateway serves (a closed one, or one past the
        /// drain's GOAWAY): decode it (HPACK's tables), then drop it.
        case discardFieldBlock(ByteBuffer)
        /// The same, and reset the stream with `code` (refused beyond the stream limit, or
        /// a field block the stream may not have); a stream being served is gone, its
        /// proxy is told.
        case refuseFieldBlock(ByteBuffer, stream: UInt32, code: HTTP2WireError.Code)
        /// Reset the stream with `code` (a stream error); the stream is gone.
        case resetStream(stream: UInt32, code: HTTP2WireError.Code, reason: String)
        /// More may be sent: on the stream, or on every stream when nil.
        case windowOpened(stream: UInt32?, increment: UInt32)
        /// Acknowledge the client's SETTINGS. (A header table size asks nothing of the
        /// gateway's encoder, which keeps no dynamic table: `HPACKResponseEncoder`.)
        case acknowledgeSettings
        case pong(UInt64)
        /// The client will open no more streams than `lastStream` said (its GOAWAY).
        case goingAway(lastStream: UInt32, code: UInt32)
        /// Nothing to do (DATA dropped on a closed stream still counts against the connection's window).
        case nothing
    }

    let limits: Limits
    private(set) var streams: [Stream] = []
    /// The highest stream ID the client used: everything at or below it that is not in
    /// `streams` is closed.
    private(set) var lastStreamID: UInt32 = 0
    private(set) var connectionSendWindow = 65_535
    /// What the client may still send on the connection.
    private(set) var connectionReceiveWindow = 65_535
    /// The client's SETTINGS_INITIAL_WINDOW_SIZE: each new stream's send window.
    private(set) var peerInitialWindowSize = 65_535
    /// The client's SETTINGS_MAX_FRAME_SIZE: the largest frame the gateway may send.
    private(set) var peerMaxFrameSize = 16_384
    /// The receive window of a new stream: 65,535 until the client acknowledged ours.
    private var initialReceiveWindow = 65_535
    private var settingsAcknowledged = false
    /// The drain's GOAWAY: streams past this ID are not served.
    private(set) var goAwayLastStream: UInt32?
    private(set) var glitches = 0
    /// The last streams the gateway reset (or refused) while the client could still send
    /// on them: what it sent before it saw the reset (DATA of an upload answered early,
    /// say, which RFC 9113 §8.1 has the server reset with NO_ERROR) is dropped without
    /// counting as a glitch. (NIO keeps 32 too.)
    private var recentlyReset: [UInt32] = []
    static let recentlyResetKept = 32

    init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// The SETTINGS the gateway sends first (its connection preface, §3.4).
    var settings: [HTTP2WireSetting] {
        var settings = [HTTP2WireSetting(identifier: HTTP2WireSetting.maxConcurrentStreams, value: UInt32(self.limits.maxConcurrentStreams)),
                        HTTP2WireSetting(identifier: HTTP2WireSetting.enablePush, value: 0)]
        if self.limits.initialWindowSize != 65_535 {
            settings.append(HTTP2WireSetting(identifier: HTTP2WireSetting.initialWindowSize, value: UInt32(self.limits.initialWindowSize)))
        }
        return settings
    }

    func stream(_ id: UInt32) -> Stream? {
        for stream in self.streams where stream.id == id { return stream }
        return nil
    }

    private func index(_ id: UInt32) -> Int? { self.streams.firstIndex { $0.id == id } }

    // MARK: frames from the client

    mutating func received(_ frame: HTTP2WireFrame) throws(HTTP2WireError) -> Received {
        switch frame {
        case .headers(let id, let block, let endStream, let priority):
            if priority?.dependency == id {
                // A stream made dependent on itself (§5.3.1): a stream error, its block still decoded.
                try self.glitch()
                if id > self.lastStreamID, id & 1 == 1 { self.lastStreamID = id }
                if let i = self.index(id) { _ = self.removeReset(at: i) } else if !endStream { self.remember(id) }
                return .refuseFieldBlock(block, stream: id, code: .protocolError)
            }
            return try self.receivedHeaders(id, block: block, endStream: endStream)

        case .data(let id, let data, let endStream, let length):
            // The connection's window counts every DATA frame, on whatever stream (§6.9).
            self.connectionReceiveWindow -= length
            guard self.connectionReceiveWindow >= 0 else {
                throw HTTP2WireError(code: .flowControlError, reason: "DATA beyond the connection's flow-control window")
            }
            guard let i = self.index(id) else {
                try self.mustBeKnown(id, "DATA")
                // Not for a stream the gateway reset lately, or one past the drain's GOAWAY:
                // the client sent it before it knew.
                if !self.recentlyReset.contains(id), id <= self.goAwayLastStream ?? .max { try self.glitch() }
                return .nothing
            }
            guard self.streams[i].state != .halfClosedRemote else {
                return try self.streamError(at: i, .streamClosed, "DATA after the request ended")
            }
            self.streams[i].receiveWindow -= length
            guard self.streams[i].receiveWindow >= 0 else {
                return try self.streamError(at: i, .flowControlError, "DATA beyond the stream's flow-control window")
            }
            if length == 0 && !endStream { try self.glitch() }  // empty DATA frames cost work and carry nothing
            if let remaining = self.streams[i].bodyRemaining {
                // The request's content-length (RFC 9113 §8.1.1): no more, and no less by its end.
                let left = remaining - data.readableBytes
                guard left >= 0, !endStream || left == 0 else {
                    return try self.streamError(at: i, .protocolError, "a request body of another length than its content-length")
                }
                self.streams[i].bodyRemaining = left
            }
            if endStream { self.endRemote(at: i) }
            return .data(stream: id, data: data, endStream: endStream, flowControlled: length)

        case .resetStream(let id, let code):
            guard let i = self.index(id) else {
                try self.mustBeKnown(id, "RST_STREAM")
                return .nothing
            }
            self.streams.remove(at: i)
            return .reset(stream: id, code: code)

        case .windowUpdate(stream: 0, let increment):
            self.connectionSendWindow += Int(increment)
            guard self.connectionSendWindow <= 0x7FFF_FFFF else {
                throw HTTP2WireError(code: .flowControlError, reason: "the connection's send window over 2^31-1")
            }
            return .windowOpened(stream: nil, increment: increment)

        case .windowUpdate(let id, let increment):
            guard let i = self.index(id) else {
                try self.mustBeKnown(id, "WINDOW_UPDATE")
                return .nothing
            }
            self.streams[i].sendWindow += Int(increment)
            guard self.streams[i].sendWindow <= 0x7FFF_FFFF else {
                return try self.streamError(at: i, .flowControlError, "the stream's send window over 2^31-1")
            }
            return .windowOpened(stream: id, increment: increment)

        case .settings(let settings):
            return try self.apply(settings)

        case .settingsAck:
            guard !self.settingsAcknowledged else { return .nothing }
            self.settingsAcknowledged = true
            // Ours is in force from here: streams opened before it take the difference (§6.9.2).
            let delta = self.limits.initialWindowSize - self.initialReceiveWindow
            self.initialReceiveWindow = self.limits.initialWindowSize
            for i in self.streams.indices { self.streams[i].receiveWindow += delta }
            return .nothing

        case .ping(let data, let ack):
            return ack ? .nothing : .pong(data)

        case .goAway(let last, let code, _):
            return .goingAway(lastStream: last, code: code)

        case .pushPromise:
            throw HTTP2WireError(code: .protocolError, reason: "a PUSH_PROMISE from a client")

        case .priority:
            return .nothing

        case .invalid(let id, let type, let code, let reason):
            guard let i = self.index(id) else {
                // No RST_STREAM for a stream never opened (§6.4); only PRIORITY may name one (§5.1).
                if type != .priority { try self.mustBeKnown(id, "\(type)") }
                try self.glitch()
                return .nothing
            }
            return try self.streamError(at: i, code, reason)

        case .ignored:
            return .nothing  // §5.5: ignored, as NIO ignores them (extension frames, GREASE)
        }
    }

    private mutating func receivedHeaders(_ id: UInt32, block: ByteBuffer, endStream: Bool) throws(HTTP2WireError) -> Received {
        if let i = self.index(id) {
            // The stream's second field block: its trailers, which must end it (§8.1).
            guard self.streams[i].state != .halfClosedRemote else {
                try self.glitch()
                self.streams.remove(at: i)
                return .refuseFieldBlock(block, stream: id, code: .streamClosed)
            }
            guard endStream, (self.streams[i].bodyRemaining ?? 0) == 0 else {
                try self.glitch()
                _ = self.removeReset(at: i)
                return .refuseFieldBlock(block, stream: id, code: .protocolError)
            }
            self.endRemote(at: i)
            return .trailers(stream: id, block: block)
        }
        guard id & 1 == 1 else {
            throw HTTP2WireError(code: .protocolError, reason: "a client's HEADERS on stream \(id), an even one")
        }
        guard id > self.lastStreamID else {
            // A closed stream: trailers behind a reset the client had not seen yet, say.
            if !self.recentlyReset.contains(id) { try self.glitch() }
            return .discardFieldBlock(block)
        }
        self.lastStreamID = id
        if let last = self.goAwayLastStream, id > last {
            return .discardFieldBlock(block)  // after the drain's GOAWAY: not served, not answered (§6.8)
        }
        guard self.streams.count < self.limits.maxConcurrentStreams else {
            try self.glitch()
            if !endStream { self.remember(id) }
            return .refuseFieldBlock(block, stream: id, code: .refusedStream)
        }
        self.streams.append(Stream(id: id, state: endStream ? .halfClosedRemote : .open,
                                   sendWindow: self.peerInitialWindowSize, receiveWindow: self.initialReceiveWindow))
        return .opened(stream: id, block: block, endStream: endStream)
    }

    private mutating func apply(_ settings: [HTTP2WireSetting]) throws(HTTP2WireError) -> Received {
        for setting in settings {
            switch setting.identifier {
            case HTTP2WireSetting.initialWindowSize:
                // Every stream's send window moves by the difference (§6.9.2).
                let delta = Int(setting.value) - self.peerInitialWindowSize
                self.peerInitialWindowSize = Int(setting.value)
                for i in self.streams.indices {
                    self.streams[i].sendWindow += delta
                    if self.streams[i].sendWindow > 0x7FFF_FFFF {
                        throw HTTP2WireError(code: .flowControlError, reason: "SETTINGS_INITIAL_WINDOW_SIZE takes stream \(self.streams[i].id)'s window over 2^31-1")
                    }
                }
            case HTTP2WireSetting.maxFrameSize:
                self.peerMaxFrameSize = Int(setting.value)
            default:
                break  // push, the client's own stream limit, header list size, header table size: nothing a server sends needs them
            }
        }
        return .acknowledgeSettings
    }

    /// A frame for a stream not in the table: a closed one is fine, an idle one (never
    /// opened) is a connection error (§5.1).
    private func mustBeKnown(_ id: UInt32, _ name: String) throws(HTTP2WireError) {
        if id > self.lastStreamID { throw HTTP2WireError(code: .protocolError, reason: "\(name) on stream \(id), which was never opened") }
    }

    private mutating func streamError(at i: Int, _ code: HTTP2WireError.Code, _ reason: String) throws(HTTP2WireError) -> Received {
        try self.glitch()
        let id = self.removeReset(at: i)
        return .resetStream(stream: id, code: code, reason: reason)
    }

    /// Takes the stream out of the table as the gateway resets it, remembered while the
    /// client could still be sending on it.
    private mutating func removeReset(at i: Int) -> UInt32 {
        let stream = self.streams.remove(at: i)
        if stream.state != .halfClosedRemote { self.remember(stream.id) }
        return stream.id
    }

    private mutating func remember(_ id: UInt32) {
        if self.recentlyReset.count >= Self.recentlyResetKept { self.recentlyReset.removeFirst() }
        self.recentlyReset.append(id)
    }

    /// A frame refused or dropped: too many of them end the connection.
    mutating func glitch() throws(HTTP2WireError) {
        self.glitches += 1
        if self.glitches > self.limits.maxGlitches {
            throw HTTP2WireError(code: .enhanceYourCalm, reason: "more than \(self.limits.maxGlitches) frames refused or dropped")
        }
    }

    /// The client ended its side; a stream whose response ended too is gone.
    private mutating func endRemote(at i: Int) {
        if self.streams[i].state == .halfClosedLocal {
            self.streams.remove(at: i)
        } else {
            self.streams[i].state = .halfClosedRemote
        }
    }

    // MARK: what the engine sent

    /// How many bytes of DATA the stream may send in its next frame: what both windows
    /// allow, in one frame of at most the client's SETTINGS_MAX_FRAME_SIZE.
    func sendable(on id: UInt32) -> Int {
        guard let stream = self.stream(id) else { return 0 }
        return max(0, min(stream.sendWindow, self.connectionSendWindow, self.peerMaxFrameSize))
    }

    /// The response's HEADERS (or trailers, with `endStream`) went out. False: the stream is gone.
    mutating func sentHeaders(on id: UInt32, endStream: Bool) -> Bool {
        guard let i = self.index(id) else { return false }
        if endStream { self.endLocal(at: i) }
        return true
    }

    /// A DATA frame of `length` bytes went out (at most `sendable`).
    mutating func sentData(on id: UInt32, length: Int, endStream: Bool) {
        guard let i = self.index(id) else { return }
        precondition(length <= max(0, min(self.streams[i].sendWindow, self.connectionSendWindow)), "DATA beyond the flow-control window")
        self.streams[i].sendWindow -= length
        self.connectionSendWindow -= length
        if endStream { self.endLocal(at: i) }
    }

    /// The request head (decoded by the engine) declared a body of `length` bytes, which
    /// the DATA frames must match. False: the stream ended already without them, a stream
    /// error to answer (`resetStream`).
    mutating func expectBody(on id: UInt32, length: Int) -> Bool {
        guard let i = self.index(id) else { return true }
        if self.streams[i].state == .halfClosedRemote {
            return length == 0
        }
        self.streams[i].bodyRemaining = length
        return true
    }

    /// Whether the engine may take a part of the response: the stream is open on the
    /// gateway's side and its end was not taken yet. `endStream`: this part ends it.
    mutating func takeResponsePart(on id: UInt32, endStream: Bool) -> Bool {
        guard let i = self.index(id), self.streams[i].state != .halfClosedLocal, !self.streams[i].endTaken else { return false }
        if endStream { self.streams[i].endTaken = true }
        return true
    }

    /// The gateway reset the stream.
    mutating func sentReset(on id: UInt32) {
        if let i = self.index(id) { _ = self.removeReset(at: i) }
    }

    /// A WINDOW_UPDATE went out: the client may send `increment` more, on the stream or
    /// on the connection (nil).
    mutating func windowGiven(on id: UInt32?, increment: Int) {
        guard let id else {
            self.connectionReceiveWindow += increment
            return
        }
        if let i = self.index(id) { self.streams[i].receiveWindow += increment }
    }

    /// The drain's GOAWAY went out: streams past `lastStream` will not be served.
    mutating func sentGoAway(lastStream: UInt32) {
        self.goAwayLastStream = min(lastStream, self.goAwayLastStream ?? lastStream)
    }

    private mutating func endLocal(at i: Int) {
        if self.streams[i].state == .halfClosedRemote {
            self.streams.remove(at: i)
        } else {
            self.streams[i].state = .halfClosedLocal
        }
    }
}
