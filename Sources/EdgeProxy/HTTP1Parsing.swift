import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// A strict HTTP/1.1 message-head parser and body framer for the proxy's byte path.
//
// The proxy forwards bytes, not NIOHTTP1 parts: a head is found, checked and
// rewritten once, and bodies move as slices of what was read. Everything that
// decides where a message ends (Content-Length, Transfer-Encoding, chunk sizes)
// is validated strictly, since a proxy that frames a message differently from
// its upstream is the definition of request smuggling (RFC 9112 §6.3, §11.2).

/// Why a message head or body was rejected.
struct HTTPFramingError: Error, CustomStringConvertible, Equatable {
    enum Kind: Equatable { case badRequest, headTooLarge }
    var kind: Kind
    var reason: String
    var description: String { self.reason }

    static func bad(_ reason: String) -> HTTPFramingError { HTTPFramingError(kind: .badRequest, reason: reason) }

    init(kind: Kind, reason: String) {
        self.kind = kind
        self.reason = reason
    }

    init(_ error: any Error) {
        self = (error as? HTTPFramingError) ?? .bad("\(error)")
    }
}

/// Headers the proxy treats specially, recognised once per field while parsing.
enum KnownHeader: UInt8 {
    case other, contentLength, transferEncoding, host, connection, expect, keepAlive, proxyConnection, te, trailer, upgrade
    case xForwardedFor, xForwardedProto, xForwardedHost, xForwardedClientCert, xClientVerify, forwarded
    case strictTransportSecurity

    /// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded as received.
    var isHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .trailer, .transferEncoding, .upgrade: return true
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
            buffer.writeHead(maxBytes: p.count) { $0.putFields(of: self, p, skip: skip) }
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
    mutating func putFields(of head: HTTPHead, _ p: UnsafeRawBufferPointer, skip: (HeaderField) -> Bool) {
        var run = 0..<0
        for field in head.fields {
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

enum HTTP1Parser {
    /// Where the head in `buffer` ends (the index just past CRLF CRLF), scanning from
    /// `from` bytes into the readable region; nil if it is not complete yet.
    static func headEnd(in buffer: ByteBuffer, from: Int) -> Int? {
        buffer.withUnsafeReadableBytes { bytes -> Int? in
            guard let base = bytes.baseAddress else { return nil }
            let start = max(from, 0)
            var i = start + 3  // the LF of a CR LF CR LF that begins at `start` or later
            let n = bytes.count
            while i < n {
                guard let lf = memchr(base + i, 0x0A, n - i) else { return nil }
                let j = base.distance(to: UnsafeRawPointer(lf))
                if bytes[j - 1] == 0x0D && bytes[j - 2] == 0x0A && bytes[j - 3] == 0x0D { return j + 1 }
                i = j + 1
            }
            return nil
        }
    }

    static func parseRequest(_ bytes: [UInt8]) throws -> HTTPHead {
        var head = HTTPHead(bytes: bytes)
        try parseRequest(&head)
        return head
    }

    /// Parses the request head in `head.bytes` into `head` (see `HTTPHead.refill`).
    static func parseRequest(_ head: inout HTTPHead) throws {
        let lineEnd = try parseFields(&head)
        var absolute = false
        try head.bytes.withUnsafeBytes { (p: UnsafeRawBufferPointer) throws in
            // method SP request-target SP HTTP-version
            var i = 0
            while i < lineEnd, isToken(p[i]) { i += 1 }
            guard i > 0, i < lineEnd, p[i] == 0x20 else { throw HTTPFramingError.bad("malformed request line") }
            head.method = String(decoding: UnsafeRawBufferPointer(rebasing: p[0..<i]), as: UTF8.self)
            head.isHeadMethod = i == 4 && p[0] == UInt8(ascii: "H") && p[1] == UInt8(ascii: "E") && p[2] == UInt8(ascii: "A") && p[3] == UInt8(ascii: "D")
            let targetStart = i + 1
            var j = targetStart
            while j < lineEnd, p[j] > 0x20, p[j] != 0x7F { j += 1 }
            guard j > targetStart, j < lineEnd, p[j] == 0x20 else { throw HTTPFramingError.bad("malformed request target") }
            head.target = String(decoding: UnsafeRawBufferPointer(rebasing: p[targetStart..<j]), as: UTF8.self)
            head.minorVersion = try version(p, j + 1, lineEnd)
            // RFC 9112 §3.2: origin-form ("/..."), absolute-form (http(s)://, below),
            // authority-form for CONNECT (which gets 405), and "*" for OPTIONS. Anything
            // else ("internal", "@evil/x") would reach the upstream as a path of the
            // client's making that no route matched.
            switch p[targetStart] {
            case UInt8(ascii: "/"):
                break
            case UInt8(ascii: "*") where j == targetStart + 1:
                guard head.method == "OPTIONS" else { throw HTTPFramingError.bad("request target * is for OPTIONS only") }
            default:
                absolute = true
            }
        }
        try checkRequestFraming(&head)
        var rewrite: (target: [UInt8], host: ArraySlice<UInt8>?)?
        if absolute {
            guard let (authority, path) = try absoluteFormParts(of: head) else {
                if head.method == "CONNECT" { return }  // authority-form: refused with 405 once routed
                throw HTTPFramingError.bad("request target is not a path, an http(s) URI or * for OPTIONS")
            }
            rewrite = (path, authority)
        }
        // Routed and forwarded by its normal form (`PathNormalization`).
        let normalized: [UInt8]?
        if let rewrite {
            normalized = try normalizedTarget(rewrite.target)
        } else if head.target.utf8.first == UInt8(ascii: "/") {
            // A native string's bytes in place; `*` and CONNECT's authority are not paths.
            normalized = try head.target.utf8.withContiguousStorageIfAvailable { try normalizedTarget($0) } ?? normalizedTarget(Array(head.target.utf8))
        } else {
            normalized = nil
        }
        if let normalized { rewrite = (normalized, rewrite?.host) }
        if let rewrite { head = try rewritten(head, target: rewrite.target, host: rewrite.host) }
    }

    /// The target with its path (before any `?`) in normal form; nil when it is normal already.
    static func normalizedTarget<Bytes: RandomAccessCollection>(_ target: Bytes) throws -> [UInt8]? where Bytes.Element == UInt8 {
        let queryStart = target.firstIndex(of: UInt8(ascii: "?")) ?? target.endIndex
        guard PathNormalization.needsWork(target[..<queryStart]) else { return nil }  // no copy for a normal path
        let path = Array(target[..<queryStart])
        switch PathNormalization.normalize(path) {
        case .unchanged:
            return nil
        case .normalized(let normal):
            return normal + target[queryStart...]
        case .malformed:
            throw HTTPFramingError.bad("malformed percent-encoding in the request path")
        case .ambiguous:
            throw HTTPFramingError.bad("a dot segment behind %2F, %5C, a backslash or a ;parameter in the request path")
        }
    }

    /// The authority and origin-form target of a request whose target is in absolute
    /// form (`GET http://host/path`, RFC 9112 §3.2.2): a server must take the host from
    /// such a target and ignore the Host field. Routed by its Host while the upstream read
    /// the target's host, the request would reach a virtual host of the upstream that no
    /// route sends it to (nginx takes the target's host as well, and forwards the origin
    /// form). nil for a target that is not an http(s) URI.
    static func absoluteFormParts(of head: HTTPHead) throws -> (authority: ArraySlice<UInt8>, target: [UInt8])? {
        let lower = head.target.lowercased()
        let schemeLength = lower.hasPrefix("http://") ? 7 : lower.hasPrefix("https://") ? 8 : 0
        guard schemeLength > 0 else { return nil }
        let rest = Array(head.target.utf8.dropFirst(schemeLength))
        let authorityEnd = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") } ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        // RFC 9110 §4.2.4: userinfo in an http(s) URI is an error to refuse.
        guard !authority.isEmpty, !authority.contains(UInt8(ascii: "@")) else {
            throw HTTPFramingError.bad("malformed absolute-form request target")
        }
        var path = Array(rest[authorityEnd...])
        if let fragment = path.firstIndex(of: UInt8(ascii: "#")) { path.removeSubrange(fragment...) }
        if path.first != UInt8(ascii: "/") { path.insert(UInt8(ascii: "/"), at: 0) }
        return (authority, path)
    }

    /// The same request with another target and, when `host` is given, that Host in
    /// place of its own, parsed again (the forwarded request line is the head's own).
    static func rewritten(_ head: HTTPHead, target: [UInt8], host: ArraySlice<UInt8>?) throws -> HTTPHead {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(head.bytes.count + target.count + 16)
        bytes += head.method.utf8
        bytes.append(0x20)
        bytes += target
        bytes += " HTTP/1.\(head.minorVersion)\r\n".utf8
        if let host {
            bytes += "host: ".utf8
            bytes += host
            bytes += "\r\n".utf8
        }
        for field in head.fields where host == nil || field.known != .host {
            bytes += head.bytes[field.name]
            bytes += ": ".utf8
            bytes += head.bytes[field.value]
            bytes += "\r\n".utf8
        }
        bytes += "\r\n".utf8
        var normalized = HTTPHead(bytes: bytes)
        try parseRequest(&normalized)
        return normalized
    }

    static func parseResponse(_ bytes: [UInt8]) throws -> HTTPHead {
        var head = HTTPHead(bytes: bytes)
        try parseResponse(&head)
        return head
    }

    /// Parses the response head in `head.bytes` into `head` (see `HTTPHead.refill`).
    static func parseResponse(_ head: inout HTTPHead) throws {
        let lineEnd = try parseFields(&head)
        try head.bytes.withUnsafeBytes { (p: UnsafeRawBufferPointer) throws in
            // HTTP-version SP 3DIGIT SP reason-phrase (the reason may be empty or missing)
            guard lineEnd >= 12, p[8] == 0x20 else { throw HTTPFramingError.bad("malformed status line") }
            head.minorVersion = try version(p, 0, 8)
            var status = 0
            for k in 9..<12 {
                guard p[k] >= 0x30, p[k] <= 0x39 else { throw HTTPFramingError.bad("malformed status code") }
                status = status * 10 + Int(p[k] - 0x30)
            }
            guard status >= 100 else { throw HTTPFramingError.bad("malformed status code") }
            head.status = status
            if lineEnd > 12 {
                guard p[12] == 0x20 else { throw HTTPFramingError.bad("malformed status line") }
                head.reason = 13..<lineEnd
            }
        }
        // A response the gateway and a client could frame differently is refused, not
        // repaired (RFC 9112 §6.3 lets Transfer-Encoding override Content-Length, but a
        // message with both is a smuggling vector, and a coding before chunked would be
        // lost when the body is re-chunked for the client): 502, the connection not reused.
        if head.chunked || head.otherTransferCoding {
            guard head.contentLength == nil else { throw HTTPFramingError.bad("response with both Content-Length and Transfer-Encoding") }
            guard head.chunked, !head.otherTransferCoding else {
                throw HTTPFramingError.bad("response Transfer-Encoding other than a single chunked")
            }
        }
    }

    /// "HTTP/1.0" or "HTTP/1.1" in p[start..<end]; returns the minor version.
    private static func version(_ p: UnsafeRawBufferPointer, _ start: Int, _ end: Int) throws -> Int {
        let expected: StaticString = "HTTP/1."
        guard end - start == 8 else { throw HTTPFramingError.bad("unsupported HTTP version") }
        for k in 0..<7 where p[start + k] != expected.utf8Start[k] { throw HTTPFramingError.bad("unsupported HTTP version") }
        switch p[start + 7] {
        case 0x30: return 0
        case 0x31: return 1
        default: throw HTTPFramingError.bad("unsupported HTTP version")
        }
    }

    /// Parses the header fields after the start line; returns where the start line ends.
    private static func parseFields(_ head: inout HTTPHead) throws -> Int {
        var fields = head.fields  // a refilled head's storage, emptied
        head.fields = []
        fields.removeAll(keepingCapacity: true)
        fields.reserveCapacity(16)
        var contentLength: Int?
        var transferEncodings = 0
        var chunked = false
        var otherCoding = false
        var close = false, keepAlive = false, expectContinue = false
        var names: [String] = []
        let startLineEnd = try head.bytes.withUnsafeBytes { (p: UnsafeRawBufferPointer) throws -> Int in
            let n = p.count  // ends with CR LF CR LF
            guard let base = p.baseAddress else { throw HTTPFramingError.bad("unterminated head") }
            // Where the line starting at `from` ends (its CR), and whether it holds a
            // control character (HTAB included) that the byte checks below must look at.
            // memchr finds the CR; the rest of the line is checked eight bytes at a time,
            // so a clean line costs a few instructions per word rather than per byte.
            func lineEnd(_ from: Int) throws -> (end: Int, control: Bool) {
                guard from < n, let cr = memchr(base + from, 0x0D, n - from) else { throw HTTPFramingError.bad("unterminated head") }
                let end = base.distance(to: UnsafeRawPointer(cr))
                guard end + 1 < n, p[end + 1] == 0x0A else { throw HTTPFramingError.bad("bare CR in head") }
                guard hasControlByte(p, from, end) else { return (end, false) }
                for k in from..<end where p[k] == 0x0A { throw HTTPFramingError.bad("bare LF in head") }
                return (end, true)
            }
            let tokens = Self.tokenTable.utf8Start
            let first = try lineEnd(0).end
            var i = first + 2
            while true {
                let (end, control) = try lineEnd(i)
                if end == i { break }  // the empty line
                guard p[i] != 0x20, p[i] != 0x09 else { throw HTTPFramingError.bad("obsolete line folding") }
                // One table load a byte; no bound check: the line's CR, not a token
                // byte, stops the scan at `end` at the latest.
                var colon = i
                while tokens[Int(p[colon])] & 1 != 0 { colon += 1 }
                guard colon > i, colon < end, p[colon] == 0x3A else { throw HTTPFramingError.bad("malformed header field name") }
                var vs = colon + 1
                var ve = end
                while vs < ve, p[vs] == 0x20 || p[vs] == 0x09 { vs += 1 }
                while ve > vs, p[ve - 1] == 0x20 || p[ve - 1] == 0x09 { ve -= 1 }
                if control {
                    for k in vs..<ve {
                        let b = p[k]
                        guard b >= 0x20 || b == 0x09, b != 0x7F else { throw HTTPFramingError.bad("control character in header value") }
                    }
                }
                let known = KnownHeader.classify(p, i..<colon)
                switch known {
                case .contentLength:
                    guard ve > vs, ve - vs <= 18 else { throw HTTPFramingError.bad("invalid Content-Length") }
                    var value = 0
                    for k in vs..<ve {
                        guard p[k] >= 0x30, p[k] <= 0x39 else { throw HTTPFramingError.bad("invalid Content-Length") }
                        value = value * 10 + Int(p[k] - 0x30)
                    }
                    if let existing = contentLength, existing != value { throw HTTPFramingError.bad("conflicting Content-Length values") }
                    contentLength = value
                case .transferEncoding:
                    transferEncodings += 1
                    // The final coding decides the framing; anything but chunked alone is flagged.
                    var codings = 0
                    var lastIsChunked = false
                    forEachListElement(p, vs..<ve) { element in
                        codings += 1
                        lastIsChunked = asciiCaseInsensitiveEquals(p, element, "chunked")
                    }
                    chunked = lastIsChunked
                    otherCoding = otherCoding || codings != 1 || !chunked
                case .connection:
                    forEachListElement(p, vs..<ve) { element in
                        if asciiCaseInsensitiveEquals(p, element, "close") {
                            close = true
                        } else if asciiCaseInsensitiveEquals(p, element, "keep-alive") {
                            keepAlive = true
                        } else {
                            names.append(String(decoding: UnsafeRawBufferPointer(rebasing: p[element]), as: UTF8.self).lowercased())
                        }
                    }
                case .expect:
                    if asciiCaseInsensitiveEquals(p, vs..<ve, "100-continue") {
                        expectContinue = true
                    }
                default:
                    break
                }
                fields.append(HeaderField(name: i..<colon, value: vs..<ve, known: known, lineEnd: end + 2))
                i = end + 2
            }
            return first
        }
        head.fields = fields
        head.contentLength = contentLength
        head.chunked = chunked
        head.otherTransferCoding = otherCoding || transferEncodings > 1
        head.connectionClose = close
        head.connectionKeepAlive = keepAlive
        head.expectContinue = expectContinue
        head.connectionNames = names
        head.startLineEnd = startLineEnd
        return startLineEnd
    }

    /// Calls `body` with each non-empty element of a comma-separated list value
    /// (RFC 9110 §5.6.1), spaces and tabs around it trimmed.
    @inline(__always)
    private static func forEachListElement(_ p: UnsafeRawBufferPointer, _ range: Range<Int>, _ body: (Range<Int>) -> Void) {
        var start = range.lowerBound
        while start < range.upperBound {
            var end = start
            while end < range.upperBound, p[end] != UInt8(ascii: ",") { end += 1 }
            var s = start, e = end
            while s < e, p[s] == 0x20 || p[s] == 0x09 { s += 1 }
            while e > s, p[e - 1] == 0x20 || p[e - 1] == 0x09 { e -= 1 }
            if s < e { body(s..<e) }
            start = end + 1
        }
    }

    /// Request framing rules that stop smuggling (RFC 9112 §6.1, §6.3).
    private static func checkRequestFraming(_ head: inout HTTPHead) throws {
        let hasTE = head.chunked || head.otherTransferCoding
        if hasTE {
            guard head.contentLength == nil else { throw HTTPFramingError.bad("both Content-Length and Transfer-Encoding") }
            guard head.minorVersion == 1 else { throw HTTPFramingError.bad("Transfer-Encoding in an HTTP/1.0 request") }
            guard head.chunked, !head.otherTransferCoding else { throw HTTPFramingError.bad("unsupported Transfer-Encoding") }
        }
        var host: HeaderField?
        for field in head.fields where field.known == .host {
            if host != nil { throw HTTPFramingError.bad("more than one Host header") }
            host = field
        }
        guard let host else {
            if head.minorVersion == 1 { throw HTTPFramingError.bad("missing Host header") }
            return
        }
        try head.bytes.withUnsafeBytes { try checkHost(UnsafeRawBufferPointer(rebasing: $0[host.value])) }
    }

    /// A Host value the gateway routes by and the upstream builds URLs from (redirects,
    /// links): refused, as nginx refuses them, when empty or when it holds whitespace, a
    /// slash or backslash (a path smuggled into the host, `Host: evil.test/x`) or `..`.
    /// Control bytes were refused with the rest of the field values.
    static func checkHost(_ value: UnsafeRawBufferPointer) throws {
        guard value.count > 0 else { throw HTTPFramingError.bad("empty Host header") }
        // The bytes below 0x40 that need a second look: HTAB, space, '.' and '/'. Letters,
        // digits, ':' and '-' pass with one comparison and a bit test.
        let suspicious: UInt64 = 1 << 0x09 | 1 << 0x20 | 1 << 0x2E | 1 << 0x2F
        var previous: UInt8 = 0
        for i in 0..<value.count {
            let byte = value[i]
            if byte < 0x40 {
                if suspicious >> UInt64(byte) & 1 != 0, byte != UInt8(ascii: ".") || previous == UInt8(ascii: ".") {
                    throw HTTPFramingError.bad("invalid Host header")
                }
            } else if byte == UInt8(ascii: "\\") {
                throw HTTPFramingError.bad("invalid Host header")
            }
            previous = byte
        }
    }

    /// Whether p[from..<end] holds a byte below 0x20 or 0x7F, eight bytes at a time
    /// (the "has less than" and "has zero byte" word tricks: exact about whether
    /// such a byte exists, which is all the caller asks).
    @inline(__always)
    static func hasControlByte(_ p: UnsafeRawBufferPointer, _ from: Int, _ end: Int) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        @inline(__always) func word(at offset: Int) -> Bool {
            let w = p.loadUnaligned(fromByteOffset: offset, as: UInt64.self)
            let below = (w &- ones &* 0x20) & ~w & highs
            let del = w ^ (ones &* 0x7F)
            return below | ((del &- ones) & ~del & highs) != 0
        }
        var k = from
        while k + 8 <= end {
            if word(at: k) { return true }
            k += 8
        }
        // The rest in one word that overlaps the last one checked (bytes of the line only).
        if k < end && end - from >= 8 { return word(at: end - 8) }
        while k < end {
            let b = p[k]
            if b < 0x20 || b == 0x7F { return true }
            k += 1
        }
        return false
    }

    /// RFC 9110 `tchar` (§5.6.2: letters, digits, ``!#$%&'*+-.^_`|~``) for each byte value,
    /// as 256 ASCII digits, "1" (odd) for a token byte: a literal in the binary's constant
    /// data, where a table in a global array would be a lazy global, checked on every use.
    static var tokenTable: StaticString {
        "0000000000000000000000000000000001011111001101101111111111000000011111111111111111111111111000111111111111111111111111111110101000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    }

    @inline(__always)
    static func isToken(_ b: UInt8) -> Bool {
        tokenTable.utf8Start[Int(b)] & 1 != 0
    }
}

/// Finds where a message body ends in a stream of bytes, handing out its data
/// as slices. Chunked bodies are decoded (the receiver re-frames them); chunk
/// extensions and trailers are dropped.
struct BodyFramer {
    enum State: Equatable {
        case length(Int)
        case chunkSize
        case chunkData(Int)
        case chunkDataEnd
        case trailers(Int)
        case untilClose
        /// The last byte of a length-delimited body was handed out; `.end` comes next.
        case ending
        case done
    }

    enum Piece {
        case data(ByteBuffer)
        case end
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
                return .end
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
                self.state = size == 0 ? .trailers(0) : .chunkData(size)
            case .trailers(let seen):
                guard let line = try Self.line(in: &buffer) else { return nil }
                if line.isEmpty {
                    self.state = .done
                    return .end
                }
                guard seen + line.count <= 16 * 1024 else { throw HTTPFramingError.bad("trailer section too large") }
                self.state = .trailers(seen + line.count)
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
    private static func line(in buffer: inout ByteBuffer) throws -> [UInt8]? {
        let found = buffer.withUnsafeReadableBytes { p -> Int? in
            var i = 0
            while i + 1 < p.count {
                if p[i] == 0x0D && p[i + 1] == 0x0A { return i }
                i += 1
            }
            return nil
        }
        guard let end = found else {
            if buffer.readableBytes > maxLineBytes { throw HTTPFramingError.bad("chunk line too long") }
            return nil
        }
        guard end <= maxLineBytes else { throw HTTPFramingError.bad("chunk line too long") }
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
