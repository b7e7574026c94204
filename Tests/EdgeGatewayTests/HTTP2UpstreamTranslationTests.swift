@testable import EdgeProxy
import NIOCore
import NIOHPACK
import NIOHTTP2
import XCTest

/// The h2/h2c upstream translation without sockets: the proxy's HTTP/1.1 request bytes
/// to frames, the upstream's frames to the HTTP/1.1 bytes `UpstreamHandler` parses.
final class HTTP2UpstreamTranslationTests: XCTestCase {
    func translation() -> HTTP2UpstreamTranslation { HTTP2UpstreamTranslation(scheme: "http", defaultAuthority: "backend:50051") }

    func frames(_ t: inout HTTP2UpstreamTranslation, _ writes: [String]) throws -> [HTTP2Frame] {
        try writes.flatMap { try t.requestFrames(ByteBuffer(string: $0)) }
    }

    func fields(_ frame: HTTP2Frame) -> [String] {
        guard case .headers(let headers) = frame.payload else { return [] }
        return headers.headers.map { "\($0.name): \($0.value)" }
    }

    func endStream(_ frame: HTTP2Frame) -> Bool {
        switch frame.payload {
        case .headers(let headers): return headers.endStream
        case .data(let data): return data.endStream
        default: return false
        }
    }

    func text(_ step: HTTP2UpstreamTranslation.ResponseStep) -> String {
        step.bytes.map { String(buffer: $0) } ?? ""
    }

    /// A gRPC call as the proxy writes it (chunked, in the pieces it writes: head, chunk
    /// line, data, CRLF, last chunk with trailers) becomes HEADERS, DATA and a trailer
    /// HEADERS frame with END_STREAM. The chunk line came in a write of its own, and
    /// the framer's progress through it was lost: "invalid chunk size" on the first call.
    func testAChunkedRequestInPiecesBecomesHeadersDataAndTrailers() throws {
        var t = self.translation()
        let out = try self.frames(&t, [
            "POST /test.Echo/Unary HTTP/1.1\r\nhost: grpc.example\r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\nx-forwarded-for: 127.0.0.1\r\n\r\n",
            "c\r\n", "\0\0\0\0\u{07}\n\u{05}hello", "\r\n", "0\r\nx-checksum: abc\r\n\r\n",
        ])
        XCTAssertEqual(out.count, 3)
        XCTAssertEqual(out.map(\.streamID), [1, 1, 1])
        XCTAssertEqual(self.fields(out[0]), [":method: POST", ":scheme: http", ":authority: grpc.example", ":path: /test.Echo/Unary",
                                             "content-type: application/grpc", "x-forwarded-for: 127.0.0.1", "te: trailers"])
        XCTAssertFalse(self.endStream(out[0]))
        guard case .data(let data) = out[1].payload, case .byteBuffer(let body) = data.data else { return XCTFail("\(out[1])") }
        XCTAssertEqual(body.readableBytes, 12)
        XCTAssertFalse(data.endStream)
        XCTAssertEqual(self.fields(out[2]), ["x-checksum: abc"])
        XCTAssertTrue(self.endStream(out[2]))
    }

    /// A body with a length: its last DATA frame ends the stream. A GET: its HEADERS do.
    /// Each request takes the next odd stream ID once the response before it ended.
    func testLengthBodiesAndBodilessRequestsEndTheirStreams() throws {
        var t = self.translation()
        var out = try self.frames(&t, ["PUT /f HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n01234", "56789"])
        XCTAssertEqual(out.count, 3)
        XCTAssertEqual(out.map(self.endStream), [false, false, true])
        XCTAssertThrowsError(try self.frames(&t, ["GET /next HTTP/1.1\r\nhost: a\r\n\r\n"]), "no second stream before the response")
        _ = try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: [":status": "201"], endStream: true))))
        var u = self.translation()
        out = try self.frames(&u, ["GET / HTTP/1.1\r\nHost: a\r\n\r\n"])
        XCTAssertEqual(out.count, 1)
        XCTAssertTrue(self.endStream(out[0]))
        _ = try u.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: [":status": "204"], endStream: true))))
        out = try self.frames(&u, ["GET /again HTTP/1.1\r\nHost: a\r\n\r\n"])
        XCTAssertEqual(out.first?.streamID, 3)
    }

    func testAnUpgradeCannotGoToAnHTTP2Upstream() {
        var t = self.translation()
        XCTAssertThrowsError(try self.frames(&t, ["GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"]))
    }

    /// A response of unknown length is chunked for the parser, and its trailers end the
    /// last chunk; an interim response is dropped; the parser takes the head.
    func testAStreamedResponseBecomesAChunkedBodyWithTrailers() throws {
        var t = self.translation()
        _ = try self.frames(&t, ["POST /s HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"])
        let interim = try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: [":status": "103", "link": "</a>"]))))
        XCTAssertNil(interim.bytes)
        let head = try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: [":status": "200", "content-type": "application/grpc"]))))
        XCTAssertEqual(self.text(head), "HTTP/1.1 200 \r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n")
        let parsed = try HTTP1Parser.parseResponse(Array(head.bytes!.readableBytesView))
        XCTAssertEqual(parsed.status, 200)
        XCTAssertTrue(parsed.chunked)
        let body = try t.responseStep(HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "hello")), paddingBytes: 3))))
        XCTAssertEqual(self.text(body), "5\r\nhello\r\n")
        XCTAssertEqual(body.consumed, 9, "data, padding and the pad length byte")
        XCTAssertFalse(body.ended)
        let end = try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: ["grpc-status": "0"], endStream: true))))
        XCTAssertEqual(self.text(end), "0\r\ngrpc-status: 0\r\n\r\n")
        XCTAssertTrue(end.ended)
        XCTAssertFalse(t.inExchange)
    }

    /// A trailers-only answer (HEADERS with END_STREAM) is a head with an empty body; a
    /// response to HEAD ends with its head whatever its length says; a body with a
    /// length passes as it is.
    func testBodilessAndLengthResponses() throws {
        var t = self.translation()
        _ = try self.frames(&t, ["POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"])
        let only = try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: [":status": "200", "grpc-status": "5"], endStream: true))))
        XCTAssertEqual(self.text(only), "HTTP/1.1 200 \r\ngrpc-status: 5\r\ncontent-length: 0\r\n\r\n")
        XCTAssertTrue(only.ended)

        _ = try self.frames(&t, ["HEAD /x HTTP/1.1\r\nhost: a\r\n\r\n"])
        let head = try t.responseStep(HTTP2Frame(streamID: 3, payload: .headers(.init(headers: [":status": "200", "content-length": "99"]))))
        XCTAssertEqual(self.text(head), "HTTP/1.1 200 \r\ncontent-length: 99\r\n\r\n")
        XCTAssertTrue(head.ended, "a response to HEAD ends with its head")
        let none = try t.responseStep(HTTP2Frame(streamID: 3, payload: .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))))
        XCTAssertNil(none.bytes)

        _ = try self.frames(&t, ["GET /x HTTP/1.1\r\nhost: a\r\n\r\n"])
        _ = try t.responseStep(HTTP2Frame(streamID: 5, payload: .headers(.init(headers: [":status": "200", "content-length": "3"]))))
        let raw = try t.responseStep(HTTP2Frame(streamID: 5, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "abc")), endStream: true))))
        XCTAssertEqual(self.text(raw), "abc")
        // A frame of another stream (one reset before) gives nothing.
        XCTAssertNil(try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: [":status": "200"])))).bytes)
    }

    /// What RFC 9113 calls malformed is refused, never turned into HTTP/1.1 lines.
    func testMalformedResponsesAreRefused() throws {
        let blocks: [HPACKHeaders] = [
            [":status": "200", "connection": "close"],
            [":status": "200", "transfer-encoding": "chunked"],
            [":status": "200", "X-Upper": "1"],
            [":status": "200", "x-a": "1\r\nx-b: 2"],
            [":status": "200", ":status": "204"],
            [":status": "200", ":path": "/"],
            ["x-a": "1", ":status": "200"],
            [":status": "200", "te": "trailers"],
            ["x-a": "1"],
            [":status": "2000"],
        ]
        for block in blocks {
            var t = self.translation()
            _ = try self.frames(&t, ["GET / HTTP/1.1\r\nhost: a\r\n\r\n"])
            XCTAssertThrowsError(try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: block)))), "\(block)")
        }
        var t = self.translation()
        _ = try self.frames(&t, ["GET / HTTP/1.1\r\nhost: a\r\n\r\n"])
        XCTAssertThrowsError(try t.responseStep(HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "x")))))),
                             "DATA before HEADERS")
    }

    /// The parser sees a response with a length end at its last byte: the exchange is over
    /// then, and the next request may start on the next stream, whenever the first
    /// stream's END_STREAM follows (an empty DATA frame, or trailers, both ignored; their
    /// DATA still counts for the connection's window). Before, the next request found the
    /// stream still open and failed with a 502 from a healthy backend.
    func testALengthReachedEndsTheExchangeBeforeEndStream() throws {
        var t = self.translation()
        _ = try self.frames(&t, ["GET /a HTTP/1.1\r\nhost: a\r\n\r\n"])
        _ = try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: [":status": "200", "content-length": "6"]))))
        let first = try t.responseStep(HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "abc"))))))
        XCTAssertFalse(first.ended)
        let last = try t.responseStep(HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "def"))))))
        XCTAssertEqual(self.text(last), "def")
        XCTAssertTrue(last.ended, "its last byte ends it")
        XCTAssertFalse(t.inExchange)
        XCTAssertEqual(try self.frames(&t, ["GET /b HTTP/1.1\r\nhost: a\r\n\r\n"]).first?.streamID, 3)
        let late = try t.responseStep(HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))))
        XCTAssertNil(late.bytes)
        XCTAssertFalse(late.ended, "the exchange on stream 3 goes on")
        XCTAssertNil(try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: ["x-t": "1"], endStream: true)))).bytes)
        XCTAssertEqual(try t.responseStep(HTTP2Frame(streamID: 1, payload: .data(.init(data: .byteBuffer(ByteBuffer(string: "xy")))))).consumed, 2)

        // A response to HEAD, and a 204, end with their heads, END_STREAM or not.
        _ = try t.responseStep(HTTP2Frame(streamID: 3, payload: .headers(.init(headers: [":status": "204"]))))
        XCTAssertFalse(t.inExchange)
        _ = try self.frames(&t, ["HEAD /c HTTP/1.1\r\nhost: a\r\n\r\n"])
        XCTAssertTrue(try t.responseStep(HTTP2Frame(streamID: 5, payload: .headers(.init(headers: [":status": "200", "content-length": "9"])))).ended)
    }

    /// A body that disagrees with its content-length, or a length that is not digits, is
    /// malformed.
    func testAResponseBodyMustMatchItsLength() throws {
        let cases: [(HPACKHeaders, Bool, [HTTP2Frame.FramePayload])] = [
            ([":status": "200", "content-length": "+5"], false, []),
            ([":status": "200", "content-length": "5", "content-length": "6"], false, []),
            ([":status": "200", "content-length": "5"], true, []),
            ([":status": "200", "content-length": "2"], false, [.data(.init(data: .byteBuffer(ByteBuffer(string: "abc"))))]),
            ([":status": "200", "content-length": "5"], false, [.data(.init(data: .byteBuffer(ByteBuffer(string: "abc")), endStream: true))]),
            ([":status": "200", "content-length": "5"], false, [.headers(.init(headers: ["x-t": "1"], endStream: true))]),
        ]
        for (head, endStream, frames) in cases {
            var t = self.translation()
            _ = try self.frames(&t, ["GET / HTTP/1.1\r\nhost: a\r\n\r\n"])
            XCTAssertThrowsError(try {
                _ = try t.responseStep(HTTP2Frame(streamID: 1, payload: .headers(.init(headers: head, endStream: endStream))))
                for payload in frames { _ = try t.responseStep(HTTP2Frame(streamID: 1, payload: payload)) }
            }(), "\(head) \(frames)")
        }
    }

    /// A head that would need CONTINUATION frames (NIO sends none) and a connection whose
    /// stream IDs are used up are refused before anything is written; the last ID is
    /// 2^31 - 1, past which NIO would stop the process.
    func testWhatCannotBeSentIsRefusedBeforeItIsWritten() throws {
        var t = self.translation()
        XCTAssertThrowsError(try self.frames(&t, ["GET / HTTP/1.1\r\nhost: a\r\nx-big: " + String(repeating: "\\", count: 9_000) + "\r\n\r\n"]))
        var last = HTTP2UpstreamTranslation(scheme: "http", defaultAuthority: "a", firstStreamID: HTTP2StreamID(Int(Int32.max) - 2))
        XCTAssertEqual(try self.frames(&last, ["GET / HTTP/1.1\r\nhost: a\r\n\r\n"]).first?.streamID, HTTP2StreamID(Int(Int32.max) - 2))
        _ = try last.responseStep(HTTP2Frame(streamID: HTTP2StreamID(Int(Int32.max) - 2), payload: .headers(.init(headers: [":status": "204"], endStream: true))))
        XCTAssertThrowsError(try self.frames(&last, ["GET / HTTP/1.1\r\nhost: a\r\n\r\n"]))
    }
}
