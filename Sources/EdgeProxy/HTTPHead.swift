import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// A message head as the proxy holds it: the bytes received, the fields found in them,
// and the writer that builds the heads the proxy sends. `HTTP1Parser` fills it.

/// Headers the proxy treats specially, recognised once per field while parsing.
enum KnownHeader: UInt8 {
    case other, contentLength, transferEncoding, host, connection, expect, keepAlive, proxyConnection, te, trailer, upgrade
    case xForwardedFor, xForwardedProto, xForwardedHost, xForwardedClientCert, xClientVerify, forwarded
    case strictTransportSecurity

    /// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded as received. Trailer is not
    /// one: it announces the trailer fields, which the gateway forwards (`TrailerSection`).
    var isHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .transferEncoding, .upgrade: return true
        default: return false
        }
    }

    /// Recognises a field name (already checked to be a token), case-insensitively.
    /// A switch on the length, then at most two byte comparisons: this runs for
    /// every field of every request and response.
    static func classify(_ bytes: UnsafeRawBufferPointer, _ range: Range<Int>) -> KnownHeader {
        let count = range.count
        func matches(_ name: StaticString) -> Bool { asciiCaseInsensitiveEquals(bytes, range, name) }
        switch count {
        case 2: return matches("te") ? .te : .other
        case 4: return matches("host") ? .host : .other
        case 6: return matches("expect") ? .expect : .other
        case 7: return matches("trailer") ? .trailer : matches("upgrade") ? .upgrade : .other
        case 9: return matches("forwarded") ? .forwarded : .other
        case 10: return matches("connection") ? .connection : matches("keep-alive") ? .keepAlive : .other
        case 14: return matches("content-length") ? .contentLength : .other
        case 15: return matches("x-forwarded-for") ? .xForwardedFor : matches("x-client-verify") ? .xClientVerify : .other
        case 16: return matches("proxy-connection") ? .proxyConnection : matches("x-forwarded-host") ? .xForwardedHost : .other
        case 17: return matches("transfer-encoding") ? .transferEncoding : matches("x-forwarded-proto") ? .xForwardedProto : .other
        case 23: return matches("x-forwarded-client-cert") ? .xForwardedClientCert : .other
        case 25: return matches("strict-transport-security") ? .strictTransportSecurity : .other
        default: return .other
        }
    }
}

/// Whether the bytes in `range` are `lower`, ignoring ASCII case. `lower` holds lowercase
/// letters, digits and `-` only, and `p` no control bytes (the parser has rejected them):
/// then OR-ing 0x20 into each byte folds exactly the uppercase letters, and the bytes
/// are compared a word at a time.
@inline(__always)
func asciiCaseInsensitiveEquals(_ p: UnsafeRawBufferPointer, _ range: Range<Int>, _ lower: StaticString) -> Bool {
    let n = range.count
    guard n == lower.utf8CodeUnitCount else { return false }
    let expected = UnsafeRawPointer(lower.utf8Start)
    let start = range.lowerBound
    if n >= 8 {
        let fold: UInt64 = 0x2020_2020_2020_2020
        var i = 0
        while i + 8 <= n {
            guard p.loadUnaligned(fromByteOffset: start + i, as: UInt64.self) | fold == expected.loadUnaligned(fromByteOffset: i, as: UInt64.self) else { return false }
            i += 8
        }
        // The last (overlapping) word covers what is left.
        return i == n || p.loadUnaligned(fromByteOffset: start + n - 8, as: UInt64.self) | fold == expected.loadUnaligned(fromByteOffset: n - 8, as: UInt64.self)
    }
    if n >= 4 {
        let fold: UInt32 = 0x2020_2020
        return p.loadUnaligned(fromByteOffset: start, as: UInt32.self) | fold == expected.loadUnaligned(as: UInt32.self)
            && p.loadUnaligned(fromByteOffset: start + n - 4, as: UInt32.self) | fold == expected.loadUnaligned(fromByteOffset: n - 4, as: UInt32.self)
    }
    for i in 0..<n where p[start + i] | 0x20 != expected.load(fromByteOffset: i, as: UInt8.self) {
        return false
    }
    return true
}

/// One header field: offsets of its name and (trimmed) value in the head's bytes.
struct HeaderField {
    var name: Range<Int>
    var value: Range<Int>
    var known: KnownHeader
    /// Just past the field line's CRLF: the next field line starts here.
    var lineEnd: Int
}

/// A message head as received, with what the proxy needs from it.
struct HTTPHead {
    /// The head's bytes, start line through the empty line.
    var bytes: [UInt8]
    var fields: [HeaderField] = []
    /// Request: method and target. Response: unused.
    var method = ""
    var target = ""
    /// Request: the method is HEAD (decided once; framing asks for every response).
    var isHeadMethod = false
    /// Where the start line's CRLF begins.
    var startLineEnd = 0
    /// Response: status code and reason phrase.
    var status = 0
    var reason: Range<Int> = 0..<0
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    var minorVersion = 1
    var contentLength: Int?
    var chunked = false
    /// A Transfer-Encoding other than chunked (responses only: read until close).
    var otherTransferCoding = false
    var connectionClose = false
    var connectionKeepAlive = false
    var expectContinue = false
    /// Lowercased names listed in Connection (other than close and keep-alive): hop-by-hop too.
    var connectionNames: [String] = []

    var keepAlive: Bool { self.minorVersion >= 1 ? !self.connectionClose : (self.connectionKeepAlive && !self.connectionClose) }

    /// A request to switch to WebSocket (RFC 6455 §4.1): an HTTP/1.1 GET with
    /// `Connection: upgrade` and `websocket` among its `Upgrade` protocols. Cheap
    /// for every other request: `connectionNames` is almost always empty.
    var isWebSocketUpgrade: Bool {
        guard !self.connectionNames.isEmpty, self.minorVersion == 1, self.connectionNames.contains("upgrade"), self.method == "GET",
              let upgrade = self.first(.upgrade) else { return false }
        return upgrade.split(separator: ",").contains { $0.trimmingSpaces().lowercased() == "websocket" }
    }

    /// Makes this head the next `length` bytes of `buffer`, unparsed, in the storage
    /// of the head it was: the byte and field arrays keep their capacity, so a handler
    /// that parses one head after another allocates for none of them.
    mutating func refill(reading length: Int, from buffer: inout ByteBuffer) {
        var bytes = self.bytes
        let fields = self.fields
        self = HTTPHead(bytes: [])
        bytes.removeAll(keepingCapacity: true)
        buffer.readWithUnsafeReadableBytes { p in
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: p[..<length]))
            return length
        }
        self.bytes = bytes
        self.fields = fields
    }

    func string(_ range: Range<Int>) -> String {
        String(decoding: self.bytes[range], as: UTF8.self)
    }

    /// A field name in lower case (HTTP/2 wants nothing else), in one pass over its bytes:
    /// a name is a token, so ASCII, and the String needs no validation beyond that.
    func lowercasedName(_ field: HeaderField) -> String {
        let range = field.name
        return self.bytes.withUnsafeBytes { p in
            String(unsafeUninitializedCapacity: range.count) { out in
                for i in 0..<range.count {
                    let b = p[range.lowerBound + i]
                    out[i] = b &- 0x41 < 26 ? b | 0x20 : b
                }
                return range.count
            }
        }
    }

    /// The first value of a header, by case-insensitive name.
    func value(of name: String) -> String? {
        let wanted = Array(name.lowercased().utf8)
        for field in self.fields where field.name.count == wanted.count {
            var same = true
            for i in 0..<wanted.count where self.bytes[field.name.lowerBound + i] | 0x20 != wanted[i] {
                same = false
                break
            }
            if same { return self.string(field.value) }
        }
        return nil
    }

    func first(_ known: KnownHeader) -> String? {
        self.fields.first { $0.known == known }.map { self.string($0.value) }
    }

    /// Whether a field is removed on the way through: hop-by-hop, or named by Connection.
    func isHopByHop(_ field: HeaderField) -> Bool {
        if field.known.isHopByHop { return true }
        guard !self.connectionNames.isEmpty, field.known == .other else { return false }
        let name = self.string(field.name).lowercased()
        return self.connectionNames.contains(name)
    }

    /// Appends the field lines `skip` lets through, byte for byte as received (see
    /// `HeadWriter.putFields`; the kept lines are at most the head's own bytes).
    func writeFields(to buffer: inout ByteBuffer, skip: (HeaderField) -> Bool) {
        self.bytes.withUnsafeBytes { p in
            buffer.writeHead(maxBytes: p.count) { $0.putFields(of: self.fields, p, skip: skip) }
        }
    }

    /// Appends bytes of the head as received.
    func writeBytes(_ range: Range<Int>, to buffer: inout ByteBuffer) {
        self.bytes.withUnsafeBytes { _ = buffer.writeBytes(UnsafeRawBufferPointer(rebasing: $0[range])) }
    }

    var isIdempotent: Bool {
        switch self.method {
        case "GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE": return true
        default: return false
        }
    }
}

/// Writes the pieces of a message head into raw memory that `ByteBuffer.writeHead` has
/// reserved: one capacity check and one writer-index move for the whole head, where a
/// `writeStaticString` or `writeString` per piece cost ~200 instructions each (a head
/// the proxy forwards is ten to fifteen pieces). Every write is bounds-checked against
/// what was reserved.
struct HeadWriter {
    private let start: UnsafeMutableRawPointer
    private let capacity: Int
    private(set) var count = 0

    fileprivate init(_ buffer: UnsafeMutableRawBufferPointer) {
        self.start = buffer.baseAddress!
        self.capacity = buffer.count
    }

    @inline(__always)
    mutating func put(_ bytes: UnsafeRawBufferPointer) {
        guard let source = bytes.baseAddress, bytes.count > 0 else { return }
        precondition(bytes.count <= self.capacity - self.count, "head larger than reserved")
        (self.start + self.count).copyMemory(from: source, byteCount: bytes.count)
        self.count += bytes.count
    }

    @inline(__always)
    mutating func put(_ text: StaticString) {
        self.put(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    @inline(__always)
    mutating func put(_ text: String) {
        var text = text
        text.withUTF8 { self.put(UnsafeRawBufferPointer($0)) }
    }

    /// Bytes `range` of a head's storage `p` (as `HTTPHead.bytes.withUnsafeBytes` gives it).
    @inline(__always)
    mutating func put(_ p: UnsafeRawBufferPointer, _ range: Range<Int>) {
        self.put(UnsafeRawBufferPointer(rebasing: p[range]))
    }

    /// The field lines of `head` (storage `p`) that `skip` lets through, byte for byte:
    /// a run of consecutive kept lines is one copy (most heads are one or two runs).
    @inline(__always)
    mutating func putFields(of fields: [HeaderField], _ p: UnsafeRawBufferPointer, skip: (HeaderField) -> Bool) {
        var run = 0..<0
        for field in fields {
            if skip(field) {
                self.put(p, run)
                run = 0..<0
            } else if run.isEmpty {
                run = field.name.lowerBound..<field.lineEnd
            } else {
                run = run.lowerBound..<field.lineEnd  // lines are contiguous
            }
        }
        self.put(p, run)
    }
}

extension ByteBuffer {
    /// Appends the field line `name: value` and its CRLF with one reservation.
    @inline(__always)
    mutating func writeField(_ name: String, _ value: String) {
        self.writeHead(maxBytes: name.utf8.count + value.utf8.count + 4) { w in
            w.put(name)
            w.put(": ")
            w.put(value)
            w.put("\r\n")
        }
    }

    /// Appends a head of at most `maxBytes` bytes, written by `body` through a `HeadWriter`.
    @inline(__always)
    mutating func writeHead(maxBytes: Int, _ body: (inout HeadWriter) -> Void) {
        self.writeWithUnsafeMutableBytes(minimumWritableBytes: maxBytes) { buffer in
            var writer = HeadWriter(buffer)
            body(&writer)
            return writer.count
        }
    }
}

extension HTTPHead {
    /// A response (to a HEAD request when `toHead`) that has no body whatever its headers say.
    func hasNoBody(toHead: Bool) -> Bool {
        toHead || self.status == 204 || self.status == 304 || self.status < 200
    }

    /// Where this response's body ends (RFC 9112 §6.3): the one rule for the upstream's
    /// responses and for the proxy's own on the HTTP/2 bridge.
    func responseFramer(toHead: Bool) -> BodyFramer {
        if self.hasNoBody(toHead: toHead) { return BodyFramer(length: 0) }
        if self.chunked { return .chunked }
        if let length = self.contentLength, !self.otherTransferCoding { return BodyFramer(length: length) }
        return .untilClose
    }
}
