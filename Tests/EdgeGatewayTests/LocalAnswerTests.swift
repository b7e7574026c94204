@testable import EdgeProxy
import EdgeTestSupport
import Foundation
import NIOCore
import XCTest

/// The gateway's own answers as values (#31: local responses out of ProxyHandler), without
/// sockets. ProxyTests and CertbotTests get the same answers through real connections.
final class LocalAnswerTests: XCTestCase {
    func request(_ text: String) throws -> HTTPHead { try HTTP1Parser.parseRequest(Array(text.utf8)) }

    func text(_ answer: LocalAnswer, for request: HTTPHead?, close: Bool = false, hsts: String? = nil) -> String {
        String(buffer: answer.bytes(for: request, close: close, hsts: hsts, allocator: ByteBufferAllocator()))
    }

    func testATextAnswerSaysWhyInTheRequestsVersion() throws {
        let answer = LocalAnswer(status: 404, message: "no such file")
        XCTAssertEqual(text(answer, for: try request("GET /x HTTP/1.1\r\nHost: a\r\n\r\n")),
                       "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 28\r\n\r\n404 Not Found: no such file\n")
        XCTAssertEqual(text(answer, for: try request("GET /x HTTP/1.0\r\n\r\n"), close: true, hsts: "max-age=1"),
                       "HTTP/1.0 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\nstrict-transport-security: max-age=1\r\n"
                       + "content-length: 28\r\nconnection: close\r\n\r\n404 Not Found: no such file\n")
        XCTAssertEqual(text(answer, for: try request("HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")),
                       "HTTP/1.1 404 Not Found\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 28\r\n\r\n", "HEAD: the head alone")
        XCTAssertTrue(text(LocalAnswer(status: 431, message: "too large"), for: nil).hasPrefix("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
                      "no head parsed: HTTP/1.1")
        XCTAssertEqual(LocalAnswer.reasonPhrase(599), "Error")
    }

    /// A gRPC call's error is a trailers-only gRPC response: 200, `grpc-status` by gRPC's
    /// mapping of the HTTP status, the reason percent-encoded in `grpc-message`, no body.
    func testAGRPCCallsErrorIsATrailersOnlyGRPCAnswer() throws {
        func call(_ type: String) throws -> HTTPHead {
            try request("POST /pkg.Service/Method HTTP/1.1\r\nHost: a\r\nte: trailers\r\ncontent-type: \(type)\r\ncontent-length: 5\r\n\r\n")
        }
        for type in ["application/grpc", "application/grpc+proto", "Application/GRPC;charset=utf-8", "application/grpc+json"] {
            XCTAssertTrue(GRPCAnswer.isGRPC(try call(type)), type)
        }
        for type in ["application/grpc-web", "application/grpc-web-text", "application/json", "application/grp", "text/plain"] {
            XCTAssertFalse(GRPCAnswer.isGRPC(try call(type)), type)
        }
        XCTAssertFalse(GRPCAnswer.isGRPC(try request("POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 0\r\n\r\n")), "no content-type")

        let table: [(Int, GRPCAnswer.Status)] = [(400, .internal), (401, .unauthenticated), (403, .permissionDenied), (404, .unimplemented),
                                                  (429, .unavailable), (502, .unavailable), (503, .unavailable), (504, .unavailable),
                                                  (405, .unknown), (408, .unknown), (413, .unknown), (421, .unknown), (431, .unknown), (500, .unknown)]
        for (http, grpc) in table { XCTAssertEqual(GRPCAnswer.status(forHTTP: http), grpc, "\(http)") }

        let answer = GRPCAnswer.answer(LocalAnswer(status: 503, message: "no healthy backend in upstream 'a'"))
        XCTAssertEqual(text(answer, for: try call("application/grpc")),
                       "HTTP/1.1 200 OK\r\ncontent-type: application/grpc\r\ngrpc-status: 14\r\n"
                       + "grpc-message: no healthy backend in upstream 'a'\r\ncontent-length: 0\r\n\r\n")
        XCTAssertEqual(GRPCAnswer.percentEncoded("50% off\r\nx: é"), "50%25 off%0D%0Ax: %C3%A9", "nothing can end the field line")
        var deadline = LocalAnswer(status: 504, message: "deadline exceeded (grpc-timeout)")
        deadline.grpcStatus = .deadlineExceeded
        XCTAssertTrue(GRPCAnswer.answer(deadline).fields.contains("grpc-status: 4\r\n"), "a passed deadline is DEADLINE_EXCEEDED, not 504's UNAVAILABLE")
        XCTAssertEqual(GRPCAnswer.answer(LocalAnswer(status: 404, fields: "", body: ByteBuffer())).fields,
                       "content-type: application/grpc\r\ngrpc-status: 12\r\ngrpc-message: Not Found\r\n", "no message: the reason phrase")
    }

    /// `grpc-timeout`: one to eight digits and a unit; anything else is no deadline.
    func testGRPCTimeoutsParseAsTheProtocolWritesThem() {
        XCTAssertEqual(GRPCAnswer.timeout("1H"), .hours(1))
        XCTAssertEqual(GRPCAnswer.timeout("2M"), .minutes(2))
        XCTAssertEqual(GRPCAnswer.timeout("30S"), .seconds(30))
        XCTAssertEqual(GRPCAnswer.timeout("250m"), .milliseconds(250))
        XCTAssertEqual(GRPCAnswer.timeout("99999999u"), .microseconds(99_999_999))
        XCTAssertEqual(GRPCAnswer.timeout("5n"), .nanoseconds(5))
        XCTAssertNotNil(GRPCAnswer.timeout("99999999H"), "the largest: NIO saturates it, no overflow")
        XCTAssertEqual(NIODeadline.now() + GRPCAnswer.timeout("99999999H")!, .distantFuture)
        for bad in ["", "m", "100", "100x", "123456789S", "-1S", "1.5S", " 1S", "1s"] {
            XCTAssertNil(GRPCAnswer.timeout(bad), bad)
        }
    }

    func testWhenTheConnectionCloses() throws {
        let keep = try request("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        XCTAssertFalse(LocalAnswer.closes(request: keep, requestEnded: true, draining: false))
        XCTAssertTrue(LocalAnswer.closes(request: keep, requestEnded: false, draining: false), "a body not read")
        XCTAssertTrue(LocalAnswer.closes(request: keep, requestEnded: true, draining: true), "draining")
        XCTAssertTrue(LocalAnswer.closes(request: try request("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"), requestEnded: true, draining: false))
        XCTAssertTrue(LocalAnswer.closes(request: try request("GET / HTTP/1.0\r\n\r\n"), requestEnded: true, draining: false))
        XCTAssertFalse(LocalAnswer.closes(request: try request("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), requestEnded: true, draining: false))
        XCTAssertTrue(LocalAnswer.closes(request: nil, requestEnded: true, draining: false), "a head that never parsed")
    }

    func testARedirectKeepsThePathAndNeedsAHost() throws {
        let moved = LocalAnswer.redirect(try request("GET /app?x=1 HTTP/1.1\r\nHost: a.test:8080\r\n\r\n"), to: Redirect())
        XCTAssertEqual(moved.status, 301)
        XCTAssertEqual(moved.fields, "content-type: text/plain; charset=utf-8\r\nlocation: https://a.test/app?x=1\r\n")
        let found = LocalAnswer.redirect(try request("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), to: Redirect(host: "b.test", port: 8443, status: 308))
        XCTAssertEqual(found.status, 308)
        XCTAssertTrue(found.fields.contains("location: https://b.test:8443/\r\n"), found.fields)
        XCTAssertEqual(LocalAnswer.redirect(try request("GET / HTTP/1.0\r\n\r\n"), to: Redirect()).status, 400, "no Host to redirect to")
    }

    func testAStaticRootAnswersGetAndHeadFromItsDirectoryOnly() throws {
        let dir = TemporaryDirectory()
        try dir.write("token", "abc")
        let root = StaticRoot(directory: dir.path)
        func answer(_ line: String) throws -> LocalAnswer {
            LocalAnswer.file(try request(line + "\r\nHost: a\r\n\r\n"), from: root, allocator: ByteBufferAllocator())
        }
        let file = try answer("GET /token HTTP/1.1")
        XCTAssertEqual(file.status, 200)
        XCTAssertEqual(String(buffer: file.body), "abc")
        XCTAssertEqual(try answer("HEAD /token HTTP/1.1").status, 200)
        let post = try answer("POST /token HTTP/1.1")
        XCTAssertEqual(post.status, 405)
        XCTAssertTrue(post.fields.contains("allow: GET, HEAD\r\n"))
        XCTAssertEqual(try answer("GET /missing HTTP/1.1").status, 404)
        // A link out of the directory is refused, with the reason for the log only.
        try FileManager.default.createSymbolicLink(atPath: dir.file("out"), withDestinationPath: "/etc/hostname")
        let out = try answer("GET /out HTTP/1.1")
        XCTAssertEqual(out.status, 403)
        XCTAssertEqual(String(buffer: out.body), "403 Forbidden: not served\n")
        XCTAssertNotNil(out.refusal)
        XCTAssertNil(file.refusal)
    }
}
