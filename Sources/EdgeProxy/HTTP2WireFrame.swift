import NIOCore

/// One HTTP/2 frame as RFC 9113 §6 defines it, cut from a connection's bytes by
/// `HTTP2FrameReader` and written by `HTTP2FrameWriter`: the first layer of the gateway's
/// own HTTP/2 engine (#32), which is to replace NIO's connection handler. NIO's handler
/// and its state sizes tables for streams and flow control ahead (about 9 kB of the
/// 37.7 kB an idle HTTP/2 client connection holds, with 8.3 kB of HPACK tables and 17.7 kB
/// for what an HTTP/1.1 connection holds too), wraps every frame in `NIOAny`, and runs
/// its state machine besides ours. Field blocks stay HPACK-encoded here (NIOHPACK decodes
/// them one layer up), and payloads are slices of the bytes read: no copy.
enum HTTP2WireFrame: Equatable {
    /// `data` is the payload without padding; `flowControlled` is the frame's whole
    /// payload length (padding included), which is what both windows count (§6.9.1).
    case data(stream: UInt32, data: ByteBuffer, endStream: Bool, flowControlled: Int)
    /// A whole field block: a HEADERS frame and the CONTINUATION frames after it, joined.
    case headers(stream: UInt32, block: ByteBuffer, endStream: Bool, priority: HTTP2WirePriority?)
    case priority(stream: UInt32, HTTP2WirePriority)
    case resetStream(stream: UInt32, code: UInt32)
    case settings([HTTP2WireSetting])
    case settingsAck
    /// A whole field block, as for HEADERS.
    case pushPromise(stream: UInt32, promised: UInt32, block: ByteBuffer)
    case ping(UInt64, ack: Bool)
    case goAway(lastStream: UInt32, code: UInt32, debug: ByteBuffer)
    case windowUpdate(stream: UInt32, increment: UInt32)
    /// A frame that is a stream error (§5.4.2): reset that stream with `code` and go on
    /// (unless the stream is idle: `type` says whether that is allowed, §5.1).
    case invalid(stream: UInt32, type: HTTP2FrameType, code: HTTP2WireError.Code, reason: String)
    /// A frame of a type this endpoint does not know (§5.5), skipped; given back so that
    /// the connection can count them among a client's glitches.
    case ignored(type: UInt8)
}

/// A HEADERS or PRIORITY frame's priority fields (RFC 7540's scheme, deprecated by
/// RFC 9113 §5.3.2 but still sent by some clients; parsed only to be checked and skipped).
struct HTTP2WirePriority: Equatable {
    var exclusive: Bool
    var dependency: UInt32
    /// The weight as sent (0-255; the weight is one more).
    var weight: UInt8
}

/// One SETTINGS parameter (§6.5.1).
struct HTTP2WireSetting: Equatable {
    var identifier: UInt16
    var value: UInt32

    static let headerTableSize: UInt16 = 0x1
    static let enablePush: UInt16 = 0x2
    static let maxConcurrentStreams: UInt16 = 0x3
    static let initialWindowSize: UInt16 = 0x4
    static let maxFrameSize: UInt16 = 0x5
    static let maxHeaderListSize: UInt16 = 0x6
    /// RFC 8441 (WebSockets over HTTP/2).
    static let enableConnectProtocol: UInt16 = 0x8
    /// RFC 9218 §2.1.
    static let noRFC7540Priorities: UInt16 = 0x9
}

/// A connection error (§5.4.1): the connection ends with GOAWAY and this code.
struct HTTP2WireError: Error, Equatable {
    /// RFC 9113 §7.
    enum Code: UInt32 {
        case noError = 0x0, protocolError = 0x1, internalError = 0x2, flowControlError = 0x3
        case settingsTimeout = 0x4, streamClosed = 0x5, frameSizeError = 0x6, refusedStream = 0x7
        case cancel = 0x8, compressionError = 0x9, connectError = 0xa, enhanceYourCalm = 0xb
        case inadequateSecurity = 0xc, http11Required = 0xd
    }

    var code: Code
    /// Says what the peer did, for the log line that names the client.
    var reason: String
}

/// The frame types of §6 (and the flags they use).
enum HTTP2FrameType: UInt8 {
    case data = 0x0, headers = 0x1, priority = 0x2, resetStream = 0x3, settings = 0x4
    case pushPromise = 0x5, ping = 0x6, goAway = 0x7, windowUpdate = 0x8, continuation = 0x9
}

enum HTTP2FrameFlags {
    static let endStream: UInt8 = 0x1
    static let ack: UInt8 = 0x1
    static let endHeaders: UInt8 = 0x4
    static let padded: UInt8 = 0x8
    static let priority: UInt8 = 0x20
}

/// What a client's connection starts with (§3.4), before its SETTINGS frame.
let http2ClientPreface: [UInt8] = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)
