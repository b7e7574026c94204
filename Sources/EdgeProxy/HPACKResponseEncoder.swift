import NIOCore
import NIOHPACK

/// Encodes the gateway's response field blocks (RFC 7541) without a dynamic table: a
/// field is the static table's index when name and value are there (`:status: 200`), a
/// literal with the static table's name index when its name is, and a plain literal
/// otherwise, none of them added to a table; strings go as they are, not Huffman-coded.
///
/// Why not NIO's `HPACKEncoder`: its dynamic table is 4 kB sized ahead for every
/// connection, idle or not, and each field costs a hashed lookup in its index (2-3k
/// instructions a response). nginx and HAProxy encode responses the same way, without a
/// dynamic table: what it saves is a few dozen bytes a response, inside one TLS record.
///
/// The encoder's table size is the protocol's 4,096 bytes until it says otherwise, so the
/// first field block on the wire starts with a dynamic table size update to 0 (§6.3): a
/// client that lowered SETTINGS_HEADER_TABLE_SIZE expects one (§4.2), and after it no
/// SETTINGS the client sends can ask for another. Without a table a block means the same
/// whenever it is encoded, so blocks may be encoded ahead (a block held in the engine's
/// queue is); only the size update goes with the first block written (`beginBlock`).
///
/// A response from an upstream is encoded straight from its parsed HTTP/1.1 head
/// (`encodeResponse`): names lower-cased byte by byte, values as received, without a
/// `String` for each of them (building `HPACKHeaders` first was a tenth of an HTTP/2
/// request).
struct HPACKResponseEncoder {
    private var announcedNoTable = false

    /// Starts a block that is written now: the size update, in the first one only.
    mutating func beginBlock(into buffer: inout ByteBuffer) {
        if !self.announcedNoTable {
            self.announcedNoTable = true
            buffer.writeInteger(UInt8(0x20))  // 001xxxxx: dynamic table size update, 0
        }
    }

    /// Appends the block for `headers` to `buffer`, as the next one written.
    mutating func encode(_ headers: HPACKHeaders, into buffer: inout ByteBuffer) {
        self.beginBlock(into: &buffer)
        Self.encodeFields(headers, into: &buffer)
    }

    /// Appends the fields of `headers` (a block without the size update).
    static func encodeFields(_ headers: HPACKHeaders, into buffer: inout ByteBuffer) {
        for (name, value, indexing) in headers {
            if name == ":status", let index = Self.statusIndex(value) {
                buffer.writeInteger(UInt8(0x80 | index))  // 1xxxxxxx: indexed field
                continue
            }
            // 0000xxxx: literal without indexing; 0001xxxx: never indexed (by intermediaries either).
            let flags: UInt8 = indexing == .neverIndexed ? 0x10 : 0x00
            if let index = Self.nameIndex(name) {
                Self.writeInteger(index, prefixBits: 4, flags: flags, into: &buffer)
            } else {
                buffer.writeInteger(flags)
                Self.writeString(name, into: &buffer)
            }
            Self.writeString(value, into: &buffer)
        }
    }

    /// A response head's fields (a block without the size update): `:status`, then the
    /// fields that are not hop-by-hop (connection-specific in HTTP/2), names in lower
    /// case; the listener's `strict-transport-security` (`hsts`) in place of the
    /// upstream's; without `content-length` when END_STREAM says it (`withoutContentLength`).
    static func encodeResponse(_ head: HTTPHead, hsts: String?, withoutContentLength: Bool, into buffer: inout ByteBuffer) {
        if let index = Self.statusIndex(head.status) {
            buffer.writeInteger(UInt8(0x80 | index))
        } else {
            buffer.writeInteger(UInt8(0x08))  // literal, the name `:status` (index 8)
            Self.writeString(HTTP2StreamBridge.statusString(head.status), into: &buffer)
        }
        head.bytes.withUnsafeBytes { p in
            for field in head.fields where !head.isHopByHop(field) {
                if field.known == .strictTransportSecurity && hsts != nil || field.known == .contentLength && withoutContentLength { continue }
                let name = field.name
                if let index = Self.nameIndex(p, name) {
                    Self.writeInteger(index, prefixBits: 4, flags: 0, into: &buffer)
                } else {
                    buffer.writeInteger(UInt8(0))
                    Self.writeInteger(name.count, prefixBits: 7, flags: 0, into: &buffer)
                    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: name.count) { out in
                        for i in 0..<name.count {
                            let b = p[name.lowerBound + i]
                            out[i] = b &- 0x41 < 26 ? b | 0x20 : b
                        }
                        return name.count
                    }
                }
                Self.writeInteger(field.value.count, prefixBits: 7, flags: 0, into: &buffer)
                buffer.writeBytes(UnsafeRawBufferPointer(rebasing: p[field.value]))
            }
        }
        if let hsts {
            Self.writeInteger(56, prefixBits: 4, flags: 0, into: &buffer)  // strict-transport-security
            Self.writeString(hsts, into: &buffer)
        }
    }

    /// At least what `encodeResponse` writes: a literal takes its strings and at most
    /// 9 bytes more (an index or a name's length, and the value's length, below 2 MB).
    static func responseSizeBound(_ head: HTTPHead, hsts: String?) -> Int {
        var bound = 5 + (hsts.map { $0.utf8.count + 9 } ?? 0)
        for field in head.fields { bound += field.name.count + field.value.count + 9 }
        return bound
    }

    /// The bytes `encode` writes for `headers`, the size update of a first block aside.
    static func encodedSize(_ headers: HPACKHeaders) -> Int {
        var size = 0
        for (name, value, _) in headers {
            if name == ":status", Self.statusIndex(value) != nil {
                size += 1
                continue
            }
            if let index = Self.nameIndex(name) {
                size += Self.integerSize(index, prefixBits: 4)
            } else {
                size += 1 + Self.integerSize(name.utf8.count, prefixBits: 7) + name.utf8.count
            }
            size += Self.integerSize(value.utf8.count, prefixBits: 7) + value.utf8.count
        }
        return size
    }

    private static func integerSize(_ value: Int, prefixBits: Int) -> Int {
        let limit = (1 << prefixBits) - 1
        guard value >= limit else { return 1 }
        var size = 2
        var rest = (value - limit) >> 7
        while rest > 0 {
            size += 1
            rest >>= 7
        }
        return size
    }

    /// An integer with an N-bit prefix (§5.1).
    static func writeInteger(_ value: Int, prefixBits: Int, flags: UInt8, into buffer: inout ByteBuffer) {
        let limit = (1 << prefixBits) - 1
        guard value >= limit else {
            buffer.writeInteger(flags | UInt8(value))
            return
        }
        buffer.writeInteger(flags | UInt8(limit))
        var rest = value - limit
        while rest >= 128 {
            buffer.writeInteger(UInt8(rest & 0x7f | 0x80))
            rest >>= 7
        }
        buffer.writeInteger(UInt8(rest))
    }

    /// A string literal as it is (H = 0), its length a 7-bit-prefix integer (§5.2).
    private static func writeString(_ string: String, into buffer: inout ByteBuffer) {
        Self.writeInteger(string.utf8.count, prefixBits: 7, flags: 0, into: &buffer)
        buffer.writeString(string)
    }

    /// The static table's `:status` entries (indices 8-14).
    private static func statusIndex(_ status: Int) -> UInt8? {
        switch status {
        case 200: return 8
        case 204: return 9
        case 206: return 10
        case 304: return 11
        case 400: return 12
        case 404: return 13
        case 500: return 14
        default: return nil
        }
    }

    private static func statusIndex(_ value: String) -> UInt8? {
        switch value {
        case "200": return 8
        case "204": return 9
        case "206": return 10
        case "304": return 11
        case "400": return 12
        case "404": return 13
        case "500": return 14
        default: return nil
        }
    }

    /// The static table's index of a field name (its first entry for the name), if it is
    /// there: candidates are found by the name's length, then compared.
    static func nameIndex(_ name: String) -> Int? {
        let length = name.utf8.count
        guard length < Self.namesByLength.count else { return nil }
        for (candidate, index) in Self.namesByLength[length] where candidate == name { return index }
        return nil
    }

    /// The static table's index of the field name at `range` in `p` (a token, in any
    /// case): a switch on the length, then word-wise comparisons, as `KnownHeader.classify`
    /// (a search of the table's strings cost a fifth of encoding a response).
    private static func nameIndex(_ p: UnsafeRawBufferPointer, _ range: Range<Int>) -> Int? {
        func matches(_ name: StaticString) -> Bool { asciiCaseInsensitiveEquals(p, range, name) }
        switch range.count {
        case 3: return matches("age") ? 21 : matches("via") ? 60 : nil
        case 4: return matches("date") ? 33 : matches("etag") ? 34 : matches("from") ? 37 : matches("host") ? 38 : matches("link") ? 45 : matches("vary") ? 59 : nil
        case 5: return matches("allow") ? 22 : matches("range") ? 50 : nil
        case 6: return matches("accept") ? 19 : matches("cookie") ? 32 : matches("expect") ? 35 : matches("server") ? 54 : nil
        case 7: return matches("expires") ? 36 : matches("referer") ? 51 : matches("refresh") ? 52 : nil
        case 8: return matches("if-match") ? 39 : matches("if-range") ? 42 : matches("location") ? 46 : nil
        case 10: return matches("set-cookie") ? 55 : matches("user-agent") ? 58 : nil
        case 11: return matches("retry-after") ? 53 : nil
        case 12: return matches("content-type") ? 31 : matches("max-forwards") ? 47 : nil
        case 13: return matches("accept-ranges") ? 18 : matches("authorization") ? 23 : matches("cache-control") ? 24 : matches("content-range") ? 30 : matches("if-none-match") ? 41 : matches("last-modified") ? 44 : nil
        case 14: return matches("accept-charset") ? 15 : matches("content-length") ? 28 : nil
        case 15: return matches("accept-encoding") ? 16 : matches("accept-language") ? 17 : nil
        case 16: return matches("content-encoding") ? 26 : matches("content-language") ? 27 : matches("content-location") ? 29 : matches("www-authenticate") ? 61 : nil
        case 17: return matches("if-modified-since") ? 40 : matches("transfer-encoding") ? 57 : nil
        case 18: return matches("proxy-authenticate") ? 48 : nil
        case 19: return matches("content-disposition") ? 25 : matches("if-unmodified-since") ? 43 : matches("proxy-authorization") ? 49 : nil
        case 25: return matches("strict-transport-security") ? 56 : nil
        case 27: return matches("access-control-allow-origin") ? 20 : nil
        default: return nil
        }
    }

    /// RFC 7541 Appendix A's names, each with its first index.
    static let staticNames: [String] = [
        ":authority", ":method", ":method", ":path", ":path", ":scheme", ":scheme", ":status", ":status", ":status", ":status",
        ":status", ":status", ":status", "accept-charset", "accept-encoding", "accept-language", "accept-ranges", "accept",
        "access-control-allow-origin", "age", "allow", "authorization", "cache-control", "content-disposition", "content-encoding",
        "content-language", "content-length", "content-location", "content-range", "content-type", "cookie", "date", "etag",
        "expect", "expires", "from", "host", "if-match", "if-modified-since", "if-none-match", "if-range", "if-unmodified-since",
        "last-modified", "link", "location", "max-forwards", "proxy-authenticate", "proxy-authorization", "range", "referer",
        "refresh", "retry-after", "server", "set-cookie", "strict-transport-security", "transfer-encoding", "user-agent", "vary",
        "via", "www-authenticate",
    ]

    private static let namesByLength: [[(String, Int)]] = {
        var table = [[(String, Int)]](repeating: [], count: 28)
        for (offset, name) in Self.staticNames.enumerated() where !table[name.utf8.count].contains(where: { $0.0 == name }) {
            table[name.utf8.count].append((name, offset + 1))
        }
        return table
    }()
}
