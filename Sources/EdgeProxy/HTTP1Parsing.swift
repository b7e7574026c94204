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
