@testable import EdgeProxy
import NIOCore
import NIOHPACK
import XCTest

/// The gateway's response field blocks, decoded by NIO's HPACK decoder (a client's).
final class HPACKResponseEncoderTests: XCTestCase {
    func decode(_ blocks: [HPACKHeaders], decoder: inout HPACKDecoder) throws -> [HPACKHeaders] {
        var encoder = HPACKResponseEncoder()
        return try blocks.map { headers in
            var buffer = ByteBuffer()
            encoder.encode(headers, into: &buffer)
            let decoded = try decoder.decodeHeaders(from: &buffer)
            XCTAssertEqual(buffer.readableBytes, 0)
            return decoded
        }
    }

    /// Every static name (and every `:status` the table has, and some it has not), names
    /// of its own, long strings (multi-byte lengths) and a never-indexed field come back as
    /// they went, to a client with a dynamic table and to one without.
    func testEveryKindOfFieldDecodesAsItWent() throws {
        var fields: [(String, String)] = ["200", "204", "206", "304", "400", "404", "500", "502", "101"].map { (":status", $0) }
        fields += HPACKResponseEncoder.staticNames.filter { !$0.hasPrefix(":") }.map { ($0, "v-\($0)") }
        fields += [("x-request-id", "abc"), ("x-" + String(repeating: "n", count: 200), String(repeating: "v", count: 20_000)), ("grpc-status", "0")]
        var headers = HPACKHeaders(fields)
        headers.add(name: "set-cookie", value: "secret=1", indexing: .neverIndexed)
        var decoder = HPACKDecoder(allocator: ByteBufferAllocator(), maxDynamicTableSize: 4_096, maxHeaderListSize: 1 << 20)
        let decoded = try self.decode([headers, headers], decoder: &decoder)
        for block in decoded {
            XCTAssertEqual(block.map { "\($0.name): \($0.value)" }, headers.map { "\($0.name): \($0.value)" })
            XCTAssertEqual(block.last?.indexable, .neverIndexed)
        }
        var noTable = HPACKDecoder(allocator: ByteBufferAllocator(), maxDynamicTableSize: 0, maxHeaderListSize: 1 << 20)
        XCTAssertEqual(try self.decode([headers], decoder: &noTable).first?.count, headers.count, "a client with SETTINGS_HEADER_TABLE_SIZE 0")
        XCTAssertEqual(HPACKResponseEncoder.staticNames.count, 61)
        var second = ByteBuffer()
        var encoder = HPACKResponseEncoder()
        encoder.encode([":status": "200"], into: &second)
        encoder.encode(headers, into: &second)
        XCTAssertEqual(HPACKResponseEncoder.encodedSize(headers), second.readableBytes - 2, "the size it says is the size it writes")
        for length in [0, 14, 15, 126, 127, 128, 255, 16_510, 16_511, 2_097_279] {
            var one = ByteBuffer()
            var fresh = HPACKResponseEncoder()
            fresh.encode([":status": "200"], into: &one)
            let fields: HPACKHeaders = [String(repeating: "n", count: max(length % 300, 1)): String(repeating: "v", count: length)]
            fresh.encode(fields, into: &one)
            XCTAssertEqual(HPACKResponseEncoder.encodedSize(fields), one.readableBytes - 2, "a value of \(length) bytes")
        }
    }

    /// An upstream's HTTP/1.1 head, encoded straight from its bytes: names in lower case
    /// (a static name's index whatever its case), values as received, hop-by-hop fields
    /// and those Connection names gone, the listener's HSTS in place of the upstream's,
    /// `content-length` dropped when asked; the bound it gives is never below the size.
    func testAResponseHeadIsEncodedFromItsBytes() throws {
        let raw = "HTTP/1.1 502 Bad Gateway\r\nDate: Mon, 07 Dec 2026 23:05:00 GMT\r\nContent-Type: text/plain\r\nConnection: keep-alive, X-Hop\r\n"
            + "X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Request-ID: AbC\r\nStrict-Transport-Security: max-age=1\r\nContent-Length: 0\r\n"
            + "Set-Cookie: a=1\r\nTE: trailers\r\n\r\n"
        let head = try HTTP1Parser.parseResponse(Array(raw.utf8))
        var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
        for (hsts, withoutLength) in [("max-age=63072000", true), (nil, false)] as [(String?, Bool)] {
            var block = ByteBuffer()
            var encoder = HPACKResponseEncoder()
            encoder.beginBlock(into: &block)
            HPACKResponseEncoder.encodeResponse(head, hsts: hsts, withoutContentLength: withoutLength, into: &block)
            XCTAssertLessThanOrEqual(block.readableBytes - 1, HPACKResponseEncoder.responseSizeBound(head, hsts: hsts))
            let fields = try decoder.decodeHeaders(from: &block).map { "\($0.name): \($0.value)" }
            var expected = [":status: 502", "date: Mon, 07 Dec 2026 23:05:00 GMT", "content-type: text/plain", "x-request-id: AbC"]
            expected += hsts == nil ? ["strict-transport-security: max-age=1"] : []
            expected += withoutLength ? [] : ["content-length: 0"]
            expected += ["set-cookie: a=1"] + (hsts.map { ["strict-transport-security: \($0)"] } ?? [])
            XCTAssertEqual(fields, expected)
        }
        var indexed = ByteBuffer()
        HPACKResponseEncoder.encodeResponse(try HTTP1Parser.parseResponse(Array("HTTP/1.1 200 OK\r\nETag: x\r\n\r\n".utf8)), hsts: nil, withoutContentLength: false,
                                            into: &indexed)
        XCTAssertEqual(Array(indexed.readableBytesView), [0x88, 0x0F, 0x13, 0x01, 0x78], ":status 200 indexed; etag (34) by its index, a literal")
        // Every static name, in upper case, by its first index.
        for name in Set(HPACKResponseEncoder.staticNames) where !name.hasPrefix(":") && name != "transfer-encoding" {
            let field = try HTTP1Parser.parseResponse(Array("HTTP/1.1 200 OK\r\n\(name.uppercased()): 1\r\n\r\n".utf8))
            var encoded = ByteBuffer()
            HPACKResponseEncoder.encodeResponse(field, hsts: nil, withoutContentLength: false, into: &encoded)
            var expected = ByteBuffer(bytes: [0x88])
            HPACKResponseEncoder.writeInteger(try XCTUnwrap(HPACKResponseEncoder.nameIndex(name)), prefixBits: 4, flags: 0, into: &expected)
            expected.writeBytes([0x01, 0x31])
            XCTAssertEqual(encoded, expected, name)
        }
    }

    /// A client that lowered its table size (SETTINGS_HEADER_TABLE_SIZE 0) before the
    /// first response gets the size update it must see first (RFC 7541 §4.2), once.
    func testTheFirstBlockSignalsNoDynamicTable() throws {
        var encoder = HPACKResponseEncoder()
        var first = ByteBuffer()
        encoder.encode([":status": "200"], into: &first)
        XCTAssertEqual(Array(first.readableBytesView), [0x20, 0x88])
        var second = ByteBuffer()
        encoder.encode([":status": "200"], into: &second)
        XCTAssertEqual(Array(second.readableBytesView), [0x88])
    }

    /// Integers at and across a prefix's limit (RFC 7541 §5.1, C.1).
    func testIntegersAcrossThePrefix() {
        func bytes(_ value: Int, _ bits: Int) -> [UInt8] {
            var buffer = ByteBuffer()
            HPACKResponseEncoder.writeInteger(value, prefixBits: bits, flags: 0, into: &buffer)
            return Array(buffer.readableBytesView)
        }
        XCTAssertEqual(bytes(10, 5), [10])
        XCTAssertEqual(bytes(1_337, 5), [31, 154, 10])
        XCTAssertEqual(bytes(42, 8), [42])
        XCTAssertEqual(bytes(15, 4), [15, 0])
        XCTAssertEqual(bytes(127, 7), [127, 0])
        XCTAssertEqual(bytes(128, 7), [127, 1])
    }
}
