@testable import EdgeProxy
import NIOCore
import NIOHPACK
import NIOHTTP2
import XCTest

/// One HTTP/2 upstream stream's translation without sockets: the proxy's HTTP/1.1 request
/// bytes to frames, the upstream's frames to the parts the proxy takes from any upstream.
final class HTTP2UpstreamTranslationTests: XCTestCase {
    func translation() -> HTTP2UpstreamTranslation { HTTP2UpstreamTranslation(scheme: "http", defaultAuthority: "backend:50051") }

    func frames(_ t: inout HTTP2UpstreamTranslation, _ writes: [String], id: HTTP2StreamID = 1) throws -> [HTTP2Frame] {
        try writes.flatMap { try t.requestFrames(ByteBuffer(string: $0), newStream: { id }) }
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

    func headers(_ block: HPACKHeaders, end: Bool = false) -> HTTP2Frame.FramePayload { .headers(.init(headers: block, endStream: end)) }
    func data(_ text: String, end: Bool = false) -> HTTP2Frame.FramePayload { .data(.init(data: .byteBuffer(ByteBuffer(string: text)), endStream: end)) }

    /// A part as text: the head as the proxy's parser holds it, a body's bytes, the end's trailers.
    func text(_ step: HTTP2UpstreamTranslation.ResponseStep) -> String {
        switch step.part {
        case .head(let head): return "head " + String(decoding: head.bytes, as: UTF8.self)
        case .body(let body): return "body " + String(buffer: body)
        case .end(let trailers): return "end " + String(decoding: trailers, as: UTF8.self)
        case nil: return ""
        }
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
        ], id: 7)
        XCTAssertEqual(out.count, 3)
        XCTAssertEqual(out.map(\.streamID), [7, 7, 7], "the ID the connection handed out")
        XCTAssertEqual(t.streamID, 7)
        XCTAssertEqual(self.fields(out[0]), [":method: POST", ":scheme: http", ":authority: grpc.example", ":path: /test.Echo/Unary",
                                             "content-type: application/grpc", "x-forwarded-for: 127.0.0.1", "te: trailers"])
        XCTAssertFalse(self.endStream(out[0]))
        guard case .data(let data) = out[1].payload, case .byteBuffer(let body) = data.data else { return XCTFail("\(out[1])") }
        XCTAssertEqual(body.readableBytes, 12)
        XCTAssertFalse(data.endStream)
        XCTAssertEqual(self.fields(out[2]), ["x-checksum: abc"])
        XCTAssertTrue(self.endStream(out[2]))
        XCTAssertTrue(t.requestEnded)
    }

    /// A body with a length: its last DATA frame ends the stream. A GET: its HEADERS do.
    /// The ID is asked for once, when the head is complete; what comes after the request
    /// ended goes nowhere.
    func testLengthBodiesAndBodilessRequestsEndTheirStreams() throws {
        var t = self.translation()
        var asked = 0
        var out = try ["PUT /f HTTP/1.1\r\nhost: a\r\ncontent-length: 10\r\n\r\n01234", "56789"].flatMap { bytes in
            try t.requestFrames(ByteBuffer(string: bytes), newStream: { asked += 1; return 5 })
        }
        XCTAssertEqual(asked, 1)
        XCTAssertEqual(out.count, 3)
        XCTAssertEqual(out.map(self.endStream), [false, false, true])
        XCTAssertEqual(try self.frames(&t, ["GET /next HTTP/1.1\r\nhost: a\r\n\r\n"]).count, 0, "one request per stream")
        var u = self.translation()
        out = try self.frames(&u, ["GET / HTTP/1.1\r\nHost: a\r\n\r\n"])
        XCTAssertEqual(out.count, 1)
        XCTAssertTrue(self.endStream(out[0]))
        XCTAssertTrue(u.requestEnded)
    }

    func testAnUpgradeCannotGoToAnHTTP2Upstream() {
        var t = self.translation()
        XCTAssertThrowsError(try self.frames(&t, ["GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"]))
    }

    /// A response of unknown length: its head is marked chunked for the proxy (how it
    /// frames it for HTTP/1.1 clients), its DATA passes as it came, its trailers come with
    /// the end; an interim response is dropped.
    func testAStreamedResponseGivesAHeadBodyAndTrailers() throws {
        var t = self.translation()
        _ = try self.frames(&t, ["POST /s HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"])
        let interim = try t.responseStep(self.headers([":status": "103", "link": "</a>"]))
        XCTAssertNil(interim.part)
        let head = try t.responseStep(self.headers([":status": "200", "content-type": "application/grpc"]))
        XCTAssertEqual(self.text(head), "head HTTP/1.1 200 \r\ncontent-type: application/grpc\r\ntransfer-encoding: chunked\r\n\r\n")
        guard case .head(let parsed) = head.part else { return XCTFail("no head") }
        XCTAssertEqual(parsed.status, 200)
        XCTAssertTrue(parsed.chunked)
        let body = try t.responseStep(.data(.init(data: .byteBuffer(ByteBuffer(string: "hello")), paddingBytes: 3)))
        XCTAssertEqual(self.text(body), "body hello")
        XCTAssertEqual(body.consumed, 9, "data, padding and the pad length byte")
        XCTAssertFalse(body.ended)
        let end = try t.responseStep(self.headers(["grpc-status": "0"], end: true))
        XCTAssertEqual(self.text(end), "end grpc-status: 0\r\n")
        XCTAssertTrue(end.ended)
        XCTAssertTrue(t.responseEnded)
        XCTAssertEqual(try t.responseStep(self.data("late")).consumed, 4, "after the end: only the window")
    }

    /// A trailers-only answer (HEADERS with END_STREAM) is a head with an empty body that
    /// ends there; a response to HEAD has no body whatever its length says, and ends with
    /// its END_STREAM; a body with a length passes as it is.
    func testBodilessAndLengthResponses() throws {
        var t = self.translation()
        _ = try self.frames(&t, ["POST /x HTTP/1.1\r\nhost: a\r\ncontent-length: 0\r\n\r\n"])
        let only = try t.responseStep(self.headers([":status": "200", "grpc-status": "5"], end: true))
        XCTAssertEqual(self.text(only), "head HTTP/1.1 200 \r\ngrpc-status: 5\r\ncontent-length: 0\r\n\r\n")
        XCTAssertTrue(only.ended)

        var h = self.translation()
        _ = try self.frames(&h, ["HEAD /x HTTP/1.1\r\nhost: a\r\n\r\n"])
        let head = try h.responseStep(self.headers([":status": "200", "content-length": "99"]))
        XCTAssertEqual(self.text(head), "head HTTP/1.1 200 \r\ncontent-length: 99\r\n\r\n")
        XCTAssertFalse(head.ended, "the stream ends with END_STREAM")
        let none = try h.responseStep(self.data("", end: true))
        XCTAssertNil(none.part)
        XCTAssertTrue(none.ended)

        var g = self.translation()
        _ = try self.frames(&g, ["GET /x HTTP/1.1\r\nhost: a\r\n\r\n"])
        _ = try g.responseStep(self.headers([":status": "200", "content-length": "3"]))
        let raw = try g.responseStep(self.data("abc", end: true))
        XCTAssertEqual(self.text(raw), "body abc")
        XCTAssertTrue(raw.ended)
    }

    /// What RFC 9113 calls malformed is refused, never turned into HTTP/1.1 lines; so are
    /// trailers the proxy refuses from an HTTP/1.1 upstream, and a head over the limit.
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
            XCTAssertThrowsError(try t.responseStep(self.headers(block)), "\(block)")
        }
        var t = self.translation()
        _ = try self.frames(&t, ["GET / HTTP/1.1\r\nhost: a\r\n\r\n"])
        XCTAssertThrowsError(try t.responseStep(self.data("x")), "DATA before HEADERS")
        for trailer in ["content-length", "x-forwarded-for", "host"] {
            var u = self.translation()
            _ = try self.frames(&u, ["GET / HTTP/1.1\r\nhost: a\r\n\r\n"])
            _ = try u.responseStep(self.headers([":status": "200"]))
            XCTAssertThrowsError(try u.responseStep(self.headers([trailer: "1"], end: true)), trailer)
        }
        var small = HTTP2UpstreamTranslation(scheme: "http", defaultAuthority: "a", maxHeadBytes: 100)
        _ = try self.frames(&small, ["GET / HTTP/1.1\r\nhost: a\r\n\r\n"])
        XCTAssertThrowsError(try small.responseStep(self.headers([":status": "200", "x-long": String(repeating: "v", count: 100)]))) {
            XCTAssertTrue($0 is ResponseHeadTooLarge, "\($0)")
        }
    }

    /// A body with a length ends with its stream's END_STREAM, which may come in an empty
    /// DATA frame after the last byte, or with trailers, which now pass (they were dropped
    /// when the exchange ended at the last byte).
    func testALengthBodyEndsWithEndStreamAndKeepsItsTrailers() throws {
        var t = self.translation()
        _ = try self.frames(&t, ["GET /a HTTP/1.1\r\nhost: a\r\n\r\n"])
        _ = try t.responseStep(self.headers([":status": "200", "content-length": "6"]))
        XCTAssertFalse(try t.responseStep(self.data("abc")).ended)
        let last = try t.responseStep(self.data("def"))
        XCTAssertEqual(self.text(last), "body def")
        XCTAssertFalse(last.ended, "END_STREAM is still to come")
        let end = try t.responseStep(self.headers(["x-t": "1"], end: true))
        XCTAssertEqual(self.text(end), "end x-t: 1\r\n")
        XCTAssertTrue(end.ended)

        var u = self.translation()
        _ = try self.frames(&u, ["GET /a HTTP/1.1\r\nhost: a\r\n\r\n"])
        _ = try u.responseStep(self.headers([":status": "200", "content-length": "2"]))
        _ = try u.responseStep(self.data("ab"))
        let empty = try u.responseStep(self.data("", end: true))
        XCTAssertNil(empty.part)
        XCTAssertTrue(empty.ended)
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
                _ = try t.responseStep(.headers(.init(headers: head, endStream: endStream)))
                for payload in frames { _ = try t.responseStep(payload) }
            }(), "\(head) \(frames)")
        }
    }

    /// A head that would need CONTINUATION frames (NIO sends none) is refused before
    /// anything is written; so is a request the connection has no stream ID for.
    func testWhatCannotBeSentIsRefusedBeforeItIsWritten() throws {
        var t = self.translation()
        XCTAssertThrowsError(try self.frames(&t, ["GET / HTTP/1.1\r\nhost: a\r\nx-big: " + String(repeating: "\\", count: 9_000) + "\r\n\r\n"]))
        struct NoID: Error {}
        var u = self.translation()
        XCTAssertThrowsError(try u.requestFrames(ByteBuffer(string: "GET / HTTP/1.1\r\nhost: a\r\n\r\n"), newStream: { throw NoID() })) {
            XCTAssertTrue($0 is NoID)
        }
        XCTAssertNil(u.streamID)
    }
}
