import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Finds where a message body ends in a stream of bytes, handing out its data
/// as slices. Chunked bodies are decoded (the receiver re-frames them); chunk
/// extensions are dropped, trailer fields checked and handed out with the end.
struct BodyFramer {
    enum State: Equatable {
        case length(Int)
        case chunkSize
        case chunkData(Int)
        case chunkDataEnd
        /// The field lines of the trailer section so far, each ending in CRLF.
        case trailers([UInt8])
        case untilClose
        /// The last byte of a length-delimited body was handed out; `.end` comes next.
        case ending
        case done
    }

    enum Piece: Equatable {
        case data(ByteBuffer)
        /// The body's end, with its trailer section's field lines (`TrailerSection`): empty
        /// unless a chunked body had trailers.
        case end(trailers: [UInt8])
    }

    private(set) var state: State
    static let maxLineBytes = 4096

    init(length: Int) { self.state = length == 0 ? .done : .length(length) }
    init(state: State) { self.state = state }
    static var chunked: BodyFramer { BodyFramer(state: .chunkSize) }
    static var untilClose: BodyFramer { BodyFramer(state: .untilClose) }

    var isDone: Bool { self.state == .done }

    /// The next piece of the body from `buffer`, or nil when more bytes are needed.
    /// `.end` is returned once (possibly with `buffer` empty, after the last data
    /// piece: keep calling until nil); bytes after it are left in `buffer`.
    mutating func next(from buffer: inout ByteBuffer) throws -> Piece? {
        while true {
            switch self.state {
            case .done:
                return nil
            case .ending:
                self.state = .done
                return .end(trailers: [])
            case .length(let remaining):
                return Self.take(remaining, from: &buffer, state: &self.state, then: .ending, rest: State.length)
            case .untilClose:
                guard buffer.readableBytes > 0 else { return nil }
                return .data(buffer.readSlice(length: buffer.readableBytes)!)
            case .chunkData(let remaining):
                return Self.take(remaining, from: &buffer, state: &self.state, then: .chunkDataEnd, rest: State.chunkData)
            case .chunkDataEnd:
                guard buffer.readableBytes >= 2 else { return nil }
                guard buffer.readInteger(as: UInt16.self) == 0x0D0A else { throw HTTPFramingError.bad("missing CRLF after chunk data") }
                self.state = .chunkSize
            case .chunkSize:
                guard let line = try Self.line(in: &buffer) else { return nil }
                let size = try Self.chunkSize(line)
                self.state = size == 0 ? .trailers([]) : .chunkData(size)
            case .trailers(var section):
                // A trailer line may take what is left of the section (a gRPC status's
                // details run past a chunk line's 4 KiB).
                guard let line = try Self.line(in: &buffer, limit: TrailerSection.maxBytes - section.count) else { return nil }
                if line.isEmpty {
                    self.state = .done
                    return .end(trailers: section)
                }
                guard section.count + line.count + 2 <= TrailerSection.maxBytes else { throw HTTPFramingError.bad("trailer section too large") }
                try TrailerSection.check(line)
                self.state = .done  // no second reference to `section` while it grows
                section += line
                section += [0x0D, 0x0A]
                self.state = .trailers(section)
            }
        }
    }

    /// Up to `remaining` body bytes as a slice; `then` once they are all out, else `rest(left)`.
    private static func take(_ remaining: Int, from buffer: inout ByteBuffer, state: inout State, then: State, rest: (Int) -> State) -> Piece? {
        guard buffer.readableBytes > 0 else { return nil }
        let count = min(remaining, buffer.readableBytes)
        state = count == remaining ? then : rest(remaining - count)
        return .data(buffer.readSlice(length: count)!)
    }

    /// The end of the body when the connection closes: fine only for close-delimited bodies.
    mutating func endOfStream() -> Bool {
        guard self.state == .untilClose else { return self.state == .done }
        self.state = .done
        return true
    }

    /// One CRLF-terminated line, consumed with its CRLF; nil if incomplete.
    private static func line(in buffer: inout ByteBuffer, limit: Int = maxLineBytes) throws -> [UInt8]? {
        let found = buffer.withUnsafeReadableBytes { p -> Int? in
            var i = 0
            while i + 1 < p.count {
                if p[i] == 0x0D && p[i + 1] == 0x0A { return i }
                i += 1
            }
            return nil
        }
        guard let end = found else {
            if buffer.readableBytes > limit { throw HTTPFramingError.bad("chunk line too long") }
            return nil
        }
        guard end <= limit else { throw HTTPFramingError.bad("chunk line too long") }
        let bytes = buffer.readBytes(length: end)!
        buffer.moveReaderIndex(forwardBy: 2)
        return bytes
    }

    /// chunk-size [ BWS ; chunk-ext ] (RFC 9112 §7.1).
    private static func chunkSize(_ line: [UInt8]) throws -> Int {
        var size = 0
        var digits = 0
        var i = 0
        while i < line.count {
            let b = line[i]
            let value: Int
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = Int(b - 0x30)
            case UInt8(ascii: "a")...UInt8(ascii: "f"): value = Int(b - 0x61 + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): value = Int(b - 0x41 + 10)
            default: value = -1
            }
            if value < 0 { break }
            digits += 1
            guard digits <= 15 else { throw HTTPFramingError.bad("chunk size too large") }
            size = size * 16 + value
            i += 1
        }
        guard digits > 0 else { throw HTTPFramingError.bad("invalid chunk size") }
        while i < line.count, line[i] == 0x20 || line[i] == 0x09 { i += 1 }
        guard i == line.count || line[i] == UInt8(ascii: ";") else { throw HTTPFramingError.bad("invalid chunk size") }
        for k in i..<line.count where line[k] < 0x20 && line[k] != 0x09 { throw HTTPFramingError.bad("control character in chunk extension") }
        return size
    }
}

/// A chunked body's trailer section (RFC 9112 §7.1.2), passed on as received: the
/// gateway forwards trailers (gRPC's status travels in them) where it used to drop them.
enum TrailerSection {
    /// As much as the section may take, its field lines counted with their CRLFs.
    static let maxBytes = 16 * 1024

    /// One field line, without its CRLF: a token, a colon, a value without control bytes
    /// (HTAB aside). A field that must not be a trailer (RFC 9110 §6.5.1: framing,
    /// routing, connection-specific: `KnownHeader`'s hop-by-hop names, Trailer,
    /// Content-Length, Host, Expect) makes the section malformed, as a message that could
    /// be read two ways; so does one of the fields the gateway writes itself about the
    /// client (X-Forwarded-*, Forwarded, X-Forwarded-Client-Cert, X-Client-Verify): the
    /// head's own are replaced, and an upstream that merges trailers into the head (Apache
    /// httpd's `MergeTrailers`) must not find a client's in the trailers instead.
    static func check(_ line: [UInt8]) throws {
        guard let colon = line.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { throw HTTPFramingError.bad("malformed trailer field") }
        for k in 0..<colon where !HTTP1Parser.isToken(line[k]) { throw HTTPFramingError.bad("malformed trailer field name") }
        for k in (colon + 1)..<line.count where (line[k] < 0x20 && line[k] != 0x09) || line[k] == 0x7F {
            throw HTTPFramingError.bad("control character in a trailer field")
        }
        let known = line.withUnsafeBytes { KnownHeader.classify($0, 0..<colon) }
        switch known {
        case .other, .strictTransportSecurity:
            return
        case .contentLength, .transferEncoding, .host, .connection, .keepAlive, .proxyConnection, .te, .trailer, .upgrade, .expect:
            throw HTTPFramingError.bad("a trailer field that must not be a trailer")
        case .xForwardedFor, .xForwardedProto, .xForwardedHost, .xForwardedClientCert, .xClientVerify, .forwarded:
            throw HTTPFramingError.bad("a trailer field the gateway writes itself")
        }
    }

    /// `0`, the trailer section and the empty line: a chunked body's last bytes.
    static func lastChunk(_ trailers: [UInt8]) -> ByteBuffer {
        guard !trailers.isEmpty else { return Chunked.lastChunk }
        var out = ByteBuffer()
        out.reserveCapacity(trailers.count + 5)
        out.writeStaticString("0\r\n")
        out.writeBytes(trailers)
        out.writeStaticString("\r\n")
        return out
    }
}

extension ByteBuffer {
    /// Writes `data` with chunked framing (an empty `data` writes nothing: that would end the body).
    mutating func writeChunk(_ data: ByteBuffer) {
        guard data.readableBytes > 0 else { return }
        self.writeString(String(data.readableBytes, radix: 16))
        self.writeStaticString("\r\n")
        self.writeImmutableBuffer(data)
        self.writeStaticString("\r\n")
    }
}
