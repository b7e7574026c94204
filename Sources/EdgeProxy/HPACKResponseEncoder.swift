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
/// first field block starts with a dynamic table size update to 0 (§6.3): a client that
/// lowered SETTINGS_HEADER_TABLE_SIZE expects one (§4.2), and after it no SETTINGS the
/// client sends can ask for another. That holds only if blocks are encoded in the order
/// they go on the wire: the engine encodes a block as it writes its frames, never ahead
/// (a block held in its queue waits there unencoded).
struct HPACKResponseEncoder {
    private var announcedNoTable = false

    /// Appends the block for `headers` to `buffer`.
    mutating func encode(_ headers: HPACKHeaders, into buffer: inout ByteBuffer) {
        if !self.announcedNoTable {
            self.announcedNoTable = true
            buffer.writeInteger(UInt8(0x20))  // 001xxxxx: dynamic table size update, 0
        }
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
