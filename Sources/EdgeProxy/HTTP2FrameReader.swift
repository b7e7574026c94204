import NIOCore

/// Cuts HTTP/2 frames out of the bytes a peer sends and checks what RFC 9113 §4-6 asks of
/// each frame on its own (sizes, stream 0 or not, padding, SETTINGS values, the preface,
/// field blocks kept whole): what is left for the connection's state machine is what
/// depends on the streams. No I/O: bytes in, frames or a connection error out, so that
/// it is tested byte by byte and fuzzed (`FuzzHTTP2Frames`).
///
/// A field block split into CONTINUATION frames comes out joined, as one HEADERS (or
/// PUSH_PROMISE) frame, and is bounded while it is put together: at most
/// `maxContinuationFrames` CONTINUATION frames and `maxFieldBlockBytes` in all, else
/// ENHANCE_YOUR_CALM (the CONTINUATION flood of 2024, CVE-2024-27316 and its kin, was
/// servers that buffered or decoded such blocks without a bound).
///
/// The frames' payloads are slices of the caller's buffer: while one is kept, writing
/// into that buffer copies it, so a caller gives each read its own buffer.
struct HTTP2FrameReader {
    /// This endpoint's SETTINGS_MAX_FRAME_SIZE: a larger frame is a connection error,
    /// refused as soon as its header is read.
    var maxFrameSize: Int
    let maxFieldBlockBytes: Int
    let maxContinuationFrames: Int
    /// A server's reader: the client's frames.
    let isServer: Bool
    /// The client preface's 24 bytes are still to come (a server's reader).
    private var awaitingPreface: Bool
    /// No frame yet: the first must be SETTINGS (§3.4).
    private var awaitingSettings = true
    /// A HEADERS or PUSH_PROMISE frame whose block goes on in CONTINUATION frames.
    private var open: FieldBlock?

    private struct FieldBlock {
        var type: HTTP2FrameType
        var stream: UInt32
        var block: ByteBuffer
        var endStream: Bool
        var priority: HTTP2WirePriority?
        var promised: UInt32
        var continuations = 0
    }

    /// `expectsClientPreface`: this is a server's reader, and the connection begins with
    /// the client's preface string.
    init(expectsClientPreface: Bool, maxFrameSize: Int = 16_384, maxFieldBlockBytes: Int = 65_536, maxContinuationFrames: Int = 16) {
        self.isServer = expectsClientPreface
        self.awaitingPreface = expectsClientPreface
        self.maxFrameSize = maxFrameSize
        self.maxFieldBlockBytes = maxFieldBlockBytes
        self.maxContinuationFrames = maxContinuationFrames
    }

    /// The next whole frame in `buffer` (its bytes consumed), or nil when more bytes are
    /// needed (none consumed but a preface's). Throws a connection error; the connection
    /// then ends, and nothing more should be read.
    mutating func next(from buffer: inout ByteBuffer) throws(HTTP2WireError) -> HTTP2WireFrame? {
        if self.awaitingPreface {
            let available = min(buffer.readableBytes, http2ClientPreface.count)
            guard buffer.readableBytesView.prefix(available).elementsEqual(http2ClientPreface.prefix(available)) else {
                throw HTTP2WireError(code: .protocolError, reason: "the connection does not begin with HTTP/2's client preface")
            }
            guard available == http2ClientPreface.count else { return nil }
            buffer.moveReaderIndex(forwardBy: available)
            self.awaitingPreface = false
        }
        while buffer.readableBytes >= 9 {
            let start = buffer.readerIndex
            let length = Int(buffer.getInteger(at: start, as: UInt16.self)!) << 8 | Int(buffer.getInteger(at: start + 2, as: UInt8.self)!)
            let type = buffer.getInteger(at: start + 3, as: UInt8.self)!
            let flags = buffer.getInteger(at: start + 4, as: UInt8.self)!
            // Refused as soon as the frame's header says so, not once its payload is in.
            if self.awaitingSettings, type != HTTP2FrameType.settings.rawValue || flags & HTTP2FrameFlags.ack != 0 {
                throw HTTP2WireError(code: .protocolError, reason: "the first frame is not SETTINGS")
            }
            if self.isServer, type == HTTP2FrameType.pushPromise.rawValue {
                throw HTTP2WireError(code: .protocolError, reason: "a PUSH_PROMISE from a client")  // §8.4
            }
            guard length <= self.maxFrameSize else {
                throw HTTP2WireError(code: .frameSizeError, reason: "a frame of \(length) bytes, more than SETTINGS_MAX_FRAME_SIZE (\(self.maxFrameSize))")
            }
            guard buffer.readableBytes >= 9 + length else { return nil }
            let stream = buffer.getInteger(at: start + 5, as: UInt32.self)! & 0x7FFF_FFFF  // the reserved bit is ignored (§4.1)
            buffer.moveReaderIndex(forwardBy: 9)
            var payload = buffer.readSlice(length: length)!
            if let frame = try self.frame(type: type, flags: flags, stream: stream, payload: &payload) { return frame }
        }
        return nil
    }

    private mutating func frame(type rawType: UInt8, flags: UInt8, stream: UInt32, payload: inout ByteBuffer) throws(HTTP2WireError) -> HTTP2WireFrame? {
        let type = HTTP2FrameType(rawValue: rawType)
        self.awaitingSettings = false  // checked with the frame's header
        if let open = self.open, type != .continuation || stream != open.stream {
            throw HTTP2WireError(code: .protocolError, reason: "a frame other than CONTINUATION inside stream \(open.stream)'s field block")
        }
        guard let type else { return .ignored(type: rawType) }
        let length = payload.readableBytes
        switch type {
        case .data:
            try Self.needsStream(stream, "DATA")
            try Self.removePadding(flags: flags, payload: &payload, "DATA")
            return .data(stream: stream, data: payload, endStream: flags & HTTP2FrameFlags.endStream != 0, flowControlled: length)

        case .headers:
            try Self.needsStream(stream, "HEADERS")
            try Self.removePadding(flags: flags, payload: &payload, "HEADERS", fixed: flags & HTTP2FrameFlags.priority != 0 ? 5 : 0)
            var priority: HTTP2WirePriority?
            if flags & HTTP2FrameFlags.priority != 0 {
                guard let read = Self.readPriority(&payload) else {
                    throw HTTP2WireError(code: .frameSizeError, reason: "a HEADERS frame too short for its priority fields")
                }
                priority = read
            }
            return try self.fieldBlock(FieldBlock(type: .headers, stream: stream, block: payload, endStream: flags & HTTP2FrameFlags.endStream != 0,
                                                  priority: priority, promised: 0), ends: flags & HTTP2FrameFlags.endHeaders != 0)

        case .priority:
            try Self.needsStream(stream, "PRIORITY")
            guard length == 5, let priority = Self.readPriority(&payload) else {
                return .invalid(stream: stream, type: .priority, code: .frameSizeError, reason: "a PRIORITY frame of \(length) bytes, not 5")
            }
            guard priority.dependency != stream else {
                return .invalid(stream: stream, type: .priority, code: .protocolError, reason: "stream \(stream) made dependent on itself")
            }
            return .priority(stream: stream, priority)

        case .resetStream:
            try Self.needsStream(stream, "RST_STREAM")
            guard length == 4 else { throw HTTP2WireError(code: .frameSizeError, reason: "an RST_STREAM frame of \(length) bytes, not 4") }
            return .resetStream(stream: stream, code: payload.readInteger(as: UInt32.self)!)

        case .settings:
            try Self.needsConnection(stream, "SETTINGS")
            if flags & HTTP2FrameFlags.ack != 0 {
                guard length == 0 else { throw HTTP2WireError(code: .frameSizeError, reason: "a SETTINGS acknowledgement with a payload") }
                return .settingsAck
            }
            guard length % 6 == 0 else { throw HTTP2WireError(code: .frameSizeError, reason: "a SETTINGS frame of \(length) bytes, not a multiple of 6") }
            var settings: [HTTP2WireSetting] = []
            settings.reserveCapacity(length / 6)
            while let identifier = payload.readInteger(as: UInt16.self), let value = payload.readInteger(as: UInt32.self) {
                try Self.check(HTTP2WireSetting(identifier: identifier, value: value), isServer: self.isServer)
                settings.append(HTTP2WireSetting(identifier: identifier, value: value))
            }
            return .settings(settings)

        case .pushPromise:
            try Self.needsStream(stream, "PUSH_PROMISE")
            try Self.removePadding(flags: flags, payload: &payload, "PUSH_PROMISE", fixed: 4)
            guard let promised = payload.readInteger(as: UInt32.self) else {
                throw HTTP2WireError(code: .frameSizeError, reason: "a PUSH_PROMISE frame too short for its stream ID")
            }
            return try self.fieldBlock(FieldBlock(type: .pushPromise, stream: stream, block: payload, endStream: false, priority: nil, promised: promised & 0x7FFF_FFFF),
                                       ends: flags & HTTP2FrameFlags.endHeaders != 0)

        case .ping:
            try Self.needsConnection(stream, "PING")
            guard length == 8 else { throw HTTP2WireError(code: .frameSizeError, reason: "a PING frame of \(length) bytes, not 8") }
            return .ping(payload.readInteger(as: UInt64.self)!, ack: flags & HTTP2FrameFlags.ack != 0)

        case .goAway:
            try Self.needsConnection(stream, "GOAWAY")
            guard length >= 8 else { throw HTTP2WireError(code: .frameSizeError, reason: "a GOAWAY frame of \(length) bytes, under 8") }
            let last = payload.readInteger(as: UInt32.self)! & 0x7FFF_FFFF
            let code = payload.readInteger(as: UInt32.self)!
            return .goAway(lastStream: last, code: code, debug: payload)

        case .windowUpdate:
            guard length == 4 else { throw HTTP2WireError(code: .frameSizeError, reason: "a WINDOW_UPDATE frame of \(length) bytes, not 4") }
            let increment = payload.readInteger(as: UInt32.self)! & 0x7FFF_FFFF
            guard increment > 0 else {
                // §6.9: an error of the stream it is for, or of the connection's window.
                if stream == 0 { throw HTTP2WireError(code: .protocolError, reason: "a WINDOW_UPDATE of 0 for the connection") }
                return .invalid(stream: stream, type: .windowUpdate, code: .protocolError, reason: "a WINDOW_UPDATE of 0")
            }
            return .windowUpdate(stream: stream, increment: increment)

        case .continuation:
            guard var open = self.open else {
                throw HTTP2WireError(code: .protocolError, reason: "a CONTINUATION frame with no field block open")
            }
            self.open = nil
            open.continuations += 1
            guard open.continuations <= self.maxContinuationFrames else {
                throw HTTP2WireError(code: .enhanceYourCalm, reason: "a field block in more than \(self.maxContinuationFrames) CONTINUATION frames")
            }
            // Bounded before it grows: the block never holds more than the bound.
            guard open.block.readableBytes + payload.readableBytes <= self.maxFieldBlockBytes else {
                throw HTTP2WireError(code: .enhanceYourCalm, reason: "a field block of more than \(self.maxFieldBlockBytes) bytes")
            }
            open.block.writeBuffer(&payload)
            return try self.fieldBlock(open, ends: flags & HTTP2FrameFlags.endHeaders != 0)
        }
    }

    /// The block as a frame when it ends, else kept open for its CONTINUATION frames.
    private mutating func fieldBlock(_ block: FieldBlock, ends: Bool) throws(HTTP2WireError) -> HTTP2WireFrame? {
        guard block.block.readableBytes <= self.maxFieldBlockBytes else {
            throw HTTP2WireError(code: .enhanceYourCalm, reason: "a field block of more than \(self.maxFieldBlockBytes) bytes")
        }
        guard ends else {
            self.open = block
            return nil
        }
        if block.type == .pushPromise { return .pushPromise(stream: block.stream, promised: block.promised, block: block.block) }
        return .headers(stream: block.stream, block: block.block, endStream: block.endStream, priority: block.priority)
    }

    private static func needsStream(_ stream: UInt32, _ name: String) throws(HTTP2WireError) {
        if stream == 0 { throw HTTP2WireError(code: .protocolError, reason: "a \(name) frame on stream 0") }
    }

    private static func needsConnection(_ stream: UInt32, _ name: String) throws(HTTP2WireError) {
        if stream != 0 { throw HTTP2WireError(code: .protocolError, reason: "a \(name) frame on stream \(stream), not 0") }
    }

    /// Drops a PADDED frame's pad length field and its padding (§6.1, §6.2, §6.6): padding
    /// that reaches into the payload's `fixed` fields (priority, promised stream ID), or
    /// beyond, is a connection error.
    private static func removePadding(flags: UInt8, payload: inout ByteBuffer, _ name: String, fixed: Int = 0) throws(HTTP2WireError) {
        guard flags & HTTP2FrameFlags.padded != 0 else { return }
        guard let padding = payload.readInteger(as: UInt8.self), Int(padding) + fixed <= payload.readableBytes else {
            throw HTTP2WireError(code: .protocolError, reason: "a \(name) frame's padding as long as its payload or longer")
        }
        payload.moveWriterIndex(to: payload.writerIndex - Int(padding))
    }

    private static func readPriority(_ payload: inout ByteBuffer) -> HTTP2WirePriority? {
        guard let word = payload.readInteger(as: UInt32.self), let weight = payload.readInteger(as: UInt8.self) else { return nil }
        return HTTP2WirePriority(exclusive: word & 0x8000_0000 != 0, dependency: word & 0x7FFF_FFFF, weight: weight)
    }

    /// The values §6.5.2 bounds; unknown parameters are left to be ignored.
    private static func check(_ setting: HTTP2WireSetting, isServer: Bool) throws(HTTP2WireError) {
        switch setting.identifier {
        case HTTP2WireSetting.enablePush where !isServer && setting.value != 0:
            throw HTTP2WireError(code: .protocolError, reason: "a server's SETTINGS_ENABLE_PUSH of \(setting.value)")  // §6.5.2
        case HTTP2WireSetting.enablePush, HTTP2WireSetting.enableConnectProtocol, HTTP2WireSetting.noRFC7540Priorities:
            if setting.value > 1 { throw HTTP2WireError(code: .protocolError, reason: "SETTINGS parameter \(setting.identifier) set to \(setting.value), not 0 or 1") }
        case HTTP2WireSetting.initialWindowSize:
            if setting.value > 0x7FFF_FFFF { throw HTTP2WireError(code: .flowControlError, reason: "SETTINGS_INITIAL_WINDOW_SIZE of \(setting.value), over 2^31-1") }
        case HTTP2WireSetting.maxFrameSize:
            if setting.value < 16_384 || setting.value > 16_777_215 {
                throw HTTP2WireError(code: .protocolError, reason: "SETTINGS_MAX_FRAME_SIZE of \(setting.value), outside 16,384-16,777,215")
            }
        default:
            break
        }
    }
}
