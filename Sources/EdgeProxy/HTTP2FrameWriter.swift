import NIOCore

/// Writes HTTP/2 frames (RFC 9113 §6) into a buffer: the other half of
/// `HTTP2FrameReader`. A field block longer than the peer's SETTINGS_MAX_FRAME_SIZE goes
/// out as HEADERS and CONTINUATION frames, back to back (§4.3); a DATA frame's header is
/// written apart from its payload, so that a body's bytes are handed on, not copied.
enum HTTP2FrameWriter {
    static func frameHeader(length: Int, type: HTTP2FrameType, flags: UInt8 = 0, stream: UInt32, into buffer: inout ByteBuffer) {
        precondition(length <= 0xFF_FFFF, "an HTTP/2 frame of \(length) bytes")
        buffer.writeInteger(UInt16(truncatingIfNeeded: length >> 8))
        buffer.writeInteger(UInt8(truncatingIfNeeded: length))
        buffer.writeInteger(type.rawValue)
        buffer.writeInteger(flags)
        buffer.writeInteger(stream & 0x7FFF_FFFF)
    }

    static func settings(_ settings: [HTTP2WireSetting], into buffer: inout ByteBuffer) {
        frameHeader(length: settings.count * 6, type: .settings, stream: 0, into: &buffer)
        for setting in settings {
            buffer.writeInteger(setting.identifier)
            buffer.writeInteger(setting.value)
        }
    }

    static func settingsAck(into buffer: inout ByteBuffer) {
        frameHeader(length: 0, type: .settings, flags: HTTP2FrameFlags.ack, stream: 0, into: &buffer)
    }

    /// A field block (HPACK-encoded) in frames of at most `maxFrameSize` bytes.
    static func headers(stream: UInt32, block: ByteBuffer, endStream: Bool, maxFrameSize: Int, into buffer: inout ByteBuffer) {
        precondition(stream != 0 && maxFrameSize > 0, "HEADERS on stream \(stream) in frames of \(maxFrameSize)")
        var rest = block
        var type = HTTP2FrameType.headers
        repeat {
            var piece = rest.readSlice(length: min(rest.readableBytes, maxFrameSize))!
            var flags: UInt8 = rest.readableBytes == 0 ? HTTP2FrameFlags.endHeaders : 0
            if type == .headers && endStream { flags |= HTTP2FrameFlags.endStream }
            frameHeader(length: piece.readableBytes, type: type, flags: flags, stream: stream, into: &buffer)
            buffer.writeBuffer(&piece)
            type = .continuation
        } while rest.readableBytes > 0
    }

    /// A DATA frame's header: the `length` bytes of payload follow it on the wire.
    static func dataHeader(stream: UInt32, length: Int, endStream: Bool, into buffer: inout ByteBuffer) {
        frameHeader(length: length, type: .data, flags: endStream ? HTTP2FrameFlags.endStream : 0, stream: stream, into: &buffer)
    }

    static func resetStream(stream: UInt32, code: HTTP2WireError.Code, into buffer: inout ByteBuffer) {
        precondition(stream != 0, "RST_STREAM on stream 0")
        frameHeader(length: 4, type: .resetStream, stream: stream, into: &buffer)
        buffer.writeInteger(code.rawValue)
    }

    static func ping(_ data: UInt64, ack: Bool, into buffer: inout ByteBuffer) {
        frameHeader(length: 8, type: .ping, flags: ack ? HTTP2FrameFlags.ack : 0, stream: 0, into: &buffer)
        buffer.writeInteger(data)
    }

    static func goAway(lastStream: UInt32, code: HTTP2WireError.Code, debug: String = "", into buffer: inout ByteBuffer) {
        let text = Array(debug.utf8.prefix(1_024))  // well under any SETTINGS_MAX_FRAME_SIZE
        frameHeader(length: 8 + text.count, type: .goAway, stream: 0, into: &buffer)
        buffer.writeInteger(lastStream & 0x7FFF_FFFF)
        buffer.writeInteger(code.rawValue)
        buffer.writeBytes(text)
    }

    static func windowUpdate(stream: UInt32, increment: UInt32, into buffer: inout ByteBuffer) {
        precondition(increment > 0 && increment <= 0x7FFF_FFFF, "a WINDOW_UPDATE of \(increment)")
        frameHeader(length: 4, type: .windowUpdate, stream: stream, into: &buffer)
        buffer.writeInteger(increment)
    }
}
