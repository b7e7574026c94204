@testable import EdgeProxy
import NIOCore
import XCTest

/// The byte-level HTTP/1.1 parser and body framer that decide where messages end.
/// (The gateway-level answers to the same inputs are in ProxyTests.)
final class HTTP1ParsingTests: XCTestCase {
    func request(_ text: String) throws -> HTTPHead {
        try HTTP1Parser.parseRequest(Array(text.utf8))
    }

    func rejection(_ text: String) -> String? {
        do {
            _ = try request(text)
            return nil
        } catch {
            return HTTPFramingError(error).reason
        }
    }

    /// RFC 9112 §3.2.2: an absolute-form target gives the request its host; the head goes
    /// on in origin form with that host, whatever Host said.
    func testAbsoluteFormTargetsBecomeOriginFormWithTheirHost() throws {
        let head = try request("GET http://other.test/x?y=1#frag HTTP/1.1\r\nHost: public.test\r\nX-A: b\r\n\r\n")
        XCTAssertEqual(head.target, "/x?y=1")
        XCTAssertEqual(head.first(.host), "other.test")
        XCTAssertEqual(head.fields.filter { $0.known == .host }.count, 1)
        XCTAssertEqual(head.value(of: "x-a"), "b")
        let bare = try request("POST HTTPS://Other.Test:8443 HTTP/1.1\r\nHost: p\r\nContent-Length: 2\r\n\r\n")
        XCTAssertEqual(bare.target, "/")
        XCTAssertEqual(bare.first(.host), "Other.Test:8443")
        XCTAssertEqual(bare.contentLength, 2)
        let query = try request("GET http://q.test?a HTTP/1.0\r\n\r\n")
        XCTAssertEqual(query.target, "/?a")
        XCTAssertEqual(query.first(.host), "q.test")
        XCTAssertEqual(try request("GET /plain HTTP/1.1\r\nHost: h\r\n\r\n").target, "/plain", "origin form as it was")
        XCTAssertEqual(rejection("GET httpx://a/ HTTP/1.1\r\nHost: h\r\n\r\n"), "request target is not a path, an http(s) URI or * for OPTIONS",
                       "another scheme is refused, as any target that is not a path (#29)")
        XCTAssertEqual(rejection("GET internal HTTP/1.1\r\nHost: h\r\n\r\n"), "request target is not a path, an http(s) URI or * for OPTIONS")
        XCTAssertEqual(rejection("GET * HTTP/1.1\r\nHost: h\r\n\r\n"), "request target * is for OPTIONS only")
        XCTAssertEqual(rejection("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"), nil)
        XCTAssertEqual(rejection("GET http://user@evil.test/ HTTP/1.1\r\nHost: h\r\n\r\n"), "malformed absolute-form request target")
        XCTAssertEqual(rejection("GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n"), "malformed absolute-form request target")
        XCTAssertEqual(rejection("GET http://a/b/../c HTTP/1.1\r\nHost: h\r\n\r\n"), nil, "dots in the path are the upstream's")
    }

    /// Host values that nginx refuses too: a path or whitespace smuggled into the host,
    /// `..`, nothing at all.
    func testHostValuesWithAPathWhitespaceOrDotsAreRefused() {
        for host in ["evil.test/x", "a b", "a\\b", "..", "a..b", "a\tb"] {
            XCTAssertEqual(rejection("GET / HTTP/1.1\r\nHost: \(host)\r\n\r\n"), "invalid Host header", host)
        }
        XCTAssertEqual(rejection("GET / HTTP/1.1\r\nHost: \r\n\r\n"), "empty Host header")
        XCTAssertEqual(rejection("GET http://a/b HTTP/1.1\r\nHost: a\r\n\r\n".replacingOccurrences(of: "http://a/", with: "http://evil..test/")),
                       "invalid Host header", "the target's host is checked as Host")
        for host in ["a_b.test:80", "[::1]:8443", "xn--bcher-kva.example", "127.0.0.1", "a.b.c"] {
            XCTAssertNil(rejection("GET / HTTP/1.1\r\nHost: \(host)\r\n\r\n"), host)
        }
        XCTAssertNil(rejection("GET / HTTP/1.0\r\n\r\n"), "HTTP/1.0 may leave Host out")
    }

    func testRequestHeadFieldsAndRewritingInputs() throws {
        let head = try request("POST /a?b=1 HTTP/1.1\r\nHost: x.test\r\nContent-Length: 5\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nX-Keep:  v \t\r\n\r\n")
        XCTAssertEqual(head.method, "POST")
        XCTAssertEqual(head.target, "/a?b=1")
        XCTAssertEqual(head.minorVersion, 1)
        XCTAssertEqual(head.contentLength, 5)
        XCTAssertFalse(head.chunked)
        XCTAssertTrue(head.keepAlive)
        XCTAssertEqual(head.first(.host), "x.test")
        XCTAssertEqual(head.value(of: "x-keep"), "v", "optional whitespace is trimmed")
        XCTAssertEqual(head.fields.filter { head.isHopByHop($0) }.map { head.string($0.name) }, ["Connection", "X-Hop"])
        let http10 = try request("GET / HTTP/1.0\r\n\r\n")
        XCTAssertFalse(http10.keepAlive, "HTTP/1.0 closes unless asked")
        XCTAssertTrue(try request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keepAlive)
        XCTAssertFalse(try request("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").keepAlive)
        XCTAssertTrue(try request("PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n").expectContinue)
        XCTAssertTrue(try request("HEAD / HTTP/1.1\r\nHost: x\r\n\r\n").isHeadMethod)
        XCTAssertFalse(try request("HEADX / HTTP/1.1\r\nHost: x\r\n\r\n").isHeadMethod)
        // List values: elements trimmed, case ignored, empty elements skipped.
        let listed = try request("GET / HTTP/1.1\r\nHost: x\r\nConnection: ,Keep-Alive , ,CLOSE,\tX-A\r\n\r\n")
        XCTAssertTrue(listed.connectionClose)
        XCTAssertTrue(listed.connectionKeepAlive)
        XCTAssertEqual(listed.connectionNames, ["x-a"])
    }

    func testKeptFieldLinesAreCopiedAsReceived() throws {
        let head = try request("GET /p HTTP/1.1\r\nA: 1\r\nHost: h\r\nConnection: X-Hop\r\nX-Hop: 2\r\nB:3  \r\nC: 4\r\nTE: trailers\r\n\r\n")
        var out = ByteBuffer()
        head.writeFields(to: &out) { head.isHopByHop($0) }
        XCTAssertEqual(String(buffer: out), "A: 1\r\nHost: h\r\nB:3  \r\nC: 4\r\n", "hop-by-hop lines dropped, the others byte for byte")
        out.clear()
        head.writeFields(to: &out) { _ in true }
        XCTAssertEqual(out.readableBytes, 0)
        out.clear()
        head.writeBytes(0..<head.startLineEnd + 2, to: &out)
        XCTAssertEqual(String(buffer: out), "GET /p HTTP/1.1\r\n")
    }

    func testSmugglingShapesAndMalformedHeadsAreRejected() {
        let cases: [(String, String)] = [
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "both Content-Length and Transfer-Encoding"),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting Content-Length values"),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", "invalid Content-Length"),
            ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", "invalid Content-Length"),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "unsupported Transfer-Encoding"),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", "unsupported Transfer-Encoding"),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "Transfer-Encoding in an HTTP/1.0 request"),
            ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", "malformed header field name"),
            ("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", "obsolete line folding"),
            ("GET / HTTP/1.1\nHost: x\r\n\r\n", "bare LF in head"),
            ("GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", "bare CR in head"),
            ("GET / HTTP/1.1\r\nX-A: a\u{0}b\r\nHost: x\r\n\r\n", "control character in header value"),
            ("GET / HTTP/1.1\r\n\r\n", "missing Host header"),
            ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "more than one Host header"),
            ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", "unsupported HTTP version"),
            ("GET  / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed request target"),
            ("G@T / HTTP/1.1\r\nHost: x\r\n\r\n", "malformed request line"),
        ]
        for (text, reason) in cases {
            XCTAssertEqual(rejection(text), reason, text.debugDescription)
        }
    }

    /// Field lines are checked a word at a time: a control byte, DEL or bare LF is found
    /// at every offset of a long value and in the short tail, while HTAB inside a value,
    /// obs-text (bytes from 0x80) and long clean values pass.
    func testControlBytesAreFoundAtEveryOffsetOfAFieldLine() throws {
        let value = "abcdefghijklmnopqrstuvwxyz0123456789"
        for offset in 0..<value.count {
            for (bad, reason) in [("\u{1}", "control character in header value"), ("\u{7F}", "control character in header value"),
                                  ("\n", "bare LF in head")] {
                var chars = Array(value)
                chars.insert(contentsOf: bad, at: offset)
                let text = "GET / HTTP/1.1\r\nHost: x\r\nX-Long: \(String(chars))\r\n\r\n"
                XCTAssertEqual(rejection(text), reason, "\(bad.debugDescription) at \(offset)")
            }
        }
        let fine = try request("GET / HTTP/1.1\r\nHost: x\r\nX-Tab: a\tb\r\nX-Text: caf\u{E9} \(value)\r\nX-Long: \(value)\(value)\r\n\r\n")
        XCTAssertEqual(fine.value(of: "x-tab"), "a\tb")
        XCTAssertEqual(fine.value(of: "x-text"), "caf\u{E9} \(value)")
        XCTAssertEqual(fine.value(of: "x-long"), value + value)
        XCTAssertEqual(rejection("GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B: 2\n\r\n"), "bare LF in head")
    }

    /// `hasControlByte` checks whole words and then one last word overlapping the previous:
    /// for every range length, offset into the storage and position, it finds exactly the
    /// control bytes inside the range, and none just outside it.
    func testControlByteScanAtEveryLengthAndPosition() {
        for length in 0...24 {
            for start in 0..<3 {
                var bytes = [UInt8](repeating: UInt8(ascii: "a"), count: start + length + 3)
                bytes.withUnsafeBytes { XCTAssertFalse(HTTP1Parser.hasControlByte($0, start, start + length), "clean \(length)@\(start)") }
                for bad: UInt8 in [0x00, 0x09, 0x1F, 0x7F] {
                    for position in 0..<length {
                        bytes[start + position] = bad
                        bytes.withUnsafeBytes { XCTAssertTrue(HTTP1Parser.hasControlByte($0, start, start + length), "\(bad) at \(position) of \(length)@\(start)") }
                        bytes[start + position] = UInt8(ascii: "a")
                    }
                    // Just outside the range, on either side: not the range's.
                    bytes[start + length] = bad
                    if start > 0 { bytes[start - 1] = bad }
                    bytes.withUnsafeBytes { XCTAssertFalse(HTTP1Parser.hasControlByte($0, start, start + length), "\(bad) outside \(length)@\(start)") }
                    bytes[start + length] = UInt8(ascii: "a")
                    if start > 0 { bytes[start - 1] = UInt8(ascii: "a") }
                }
                for fine: UInt8 in [0x20, 0x7E, 0x80, 0xFF] {
                    bytes.replaceSubrange(start..<start + length, with: repeatElement(fine, count: length))
                    bytes.withUnsafeBytes { XCTAssertFalse(HTTP1Parser.hasControlByte($0, start, start + length), "\(fine) in \(length)@\(start)") }
                }
            }
        }
    }

    /// Field names are compared a word at a time: every known name is recognised in any
    /// case, and a name differing from it in any one byte is not.
    func testKnownFieldNamesAreRecognisedInAnyCaseAndOnlyExactly() {
        let known: [(String, KnownHeader)] = [
            ("te", .te), ("host", .host), ("expect", .expect), ("trailer", .trailer), ("upgrade", .upgrade),
            ("connection", .connection), ("keep-alive", .keepAlive), ("content-length", .contentLength),
            ("x-forwarded-for", .xForwardedFor), ("x-client-verify", .xClientVerify), ("proxy-connection", .proxyConnection),
            ("x-forwarded-host", .xForwardedHost), ("transfer-encoding", .transferEncoding), ("x-forwarded-proto", .xForwardedProto),
            ("x-forwarded-client-cert", .xForwardedClientCert), ("strict-transport-security", .strictTransportSecurity),
        ]
        func classify(_ name: String) -> KnownHeader {
            let bytes = Array(("." + name + ".").utf8)  // not at offset 0 of the storage
            return bytes.withUnsafeBytes { KnownHeader.classify($0, 1..<bytes.count - 1) }
        }
        for (name, header) in known {
            XCTAssertEqual(classify(name), header, name)
            XCTAssertEqual(classify(name.uppercased()), header, name.uppercased())
            let mixed = String(name.enumerated().map { $0.offset % 2 == 0 ? Character($0.element.uppercased()) : $0.element })
            XCTAssertEqual(classify(mixed), header, mixed)
            for offset in 0..<name.count {
                var changed = Array(name.utf8)
                changed[offset] = changed[offset] == UInt8(ascii: "-") ? UInt8(ascii: "_") : changed[offset] ^ 0x01
                let near = String(decoding: changed, as: UTF8.self)
                XCTAssertEqual(classify(near), .other, near)
            }
        }
    }

    /// A Host as routes and server names compare it. The byte path for ASCII hosts gives
    /// what the Unicode path gives (the only one before), and the Unicode path still
    /// handles the rest.
    func testHostsNormaliseTheSameOnBothPaths() {
        let cases: [(String?, String)] = [
            (nil, ""), ("", ""), ("a.example.test", "a.example.test"), ("A.Example.TEST", "a.example.test"),
            ("a.example.test:8443", "a.example.test"), ("a.example.test.", "a.example.test"), ("A.example.test.:443", "a.example.test"),
            ("a.example.test..", "a.example.test."), ("[::1]:8443", "::1"), ("[::1]", "::1"), ("[FE80::1]", "fe80::1"), ("[::1", "[::1"),
            ("[]", ""), (":", ""), (".", ""), ("127.0.0.1:80", "127.0.0.1"), ("a:b:c", "a:b"), ("x@Y", "x@y"),
            ("\u{C9}COLE.example:443", "\u{E9}cole.example"), ("ex\u{C4}mple.", "ex\u{E4}mple"),
        ]
        for (raw, expected) in cases {
            XCTAssertEqual(Router.normalizedHost(raw), expected, "\(raw ?? "nil")")
            if let raw { XCTAssertEqual(Router.normalizedUnicodeHost(raw), expected, "the Unicode path: \(raw)") }
        }
        for byte in UInt8(0)..<0x80 {  // every ASCII character, in a host of its own
            let raw = "A" + String(UnicodeScalar(byte)) + "z"
            XCTAssertEqual(Router.normalizedHost(raw), Router.normalizedUnicodeHost(raw), raw.debugDescription)
        }
        // CR LF is one Character and two bytes; a tab is what a header value may hold.
        for raw in ["a\r\n", "a.\r\n", "A\t.:1", "[\r\n]", "[\r\n", "\r\n.", "x:\r\n", "[::1]\r\n:8"] {
            XCTAssertEqual(Router.normalizedHost(raw), Router.normalizedUnicodeHost(raw), raw.debugDescription)
        }
    }

    /// Route prefixes are compared as bytes (memcmp over both strings' UTF-8), as nginx
    /// compares a location: no Unicode equivalence, the query never part of the path.
    func testRoutePrefixesCompareBytes() {
        let router = Router(routes: [
            .init(host: nil, pathPrefix: "/api/", action: .redirect(Redirect(status: 301))),
            .init(host: nil, pathPrefix: "/caf\u{E9}/", action: .redirect(Redirect(status: 302))),
            .init(host: nil, pathPrefix: "", action: .redirect(Redirect(status: 307))),
        ])
        func status(_ uri: String) -> Int? {
            guard case .redirect(let r) = router.route(listener: "https", host: nil, uri: uri)?.action else { return nil }
            return r.status
        }
        XCTAssertEqual(status("/api/"), 301)
        XCTAssertEqual(status("/api/v1?x=1"), 301)
        XCTAssertEqual(status("/api"), 307)
        XCTAssertEqual(status("/apI/"), 307)
        XCTAssertEqual(status("/ap?/api/"), 307)
        XCTAssertEqual(status("/caf\u{E9}/menu"), 302)
        XCTAssertEqual(status("/cafe\u{301}/menu"), 307)  // the same text decomposed: other bytes
        XCTAssertEqual(status(""), 307)
        let long = String(repeating: "x", count: 40)
        XCTAssertTrue(Router.Route.hasBytePrefix(Substring("/" + long + "/y"), "/" + long))
        XCTAssertFalse(Router.Route.hasBytePrefix(Substring("/" + long), "/" + long + "/"))
        XCTAssertTrue(Router.Route.hasBytePrefix(("//" + long).dropFirst(), "/" + long))  // a slice not at offset 0
    }

    /// HTTP/2's `:status` is written digit by digit: the same text as `String(Int)` for every code.
    func testHTTP2StatusStringsMatchTheirNumbers() {
        for status in [0, 1, 99, 1000, 12345, -200] + Array(100...999) {
            XCTAssertEqual(HTTP2StreamBridge.statusString(status), String(status))
        }
    }

    /// Field names are scanned through a 256-entry table: every byte value, at the start,
    /// middle and end of a name, is accepted exactly when RFC 9110 makes it a `tchar`.
    func testFieldNamesAcceptExactlyTheTokenBytes() throws {
        let tchars = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for byte in 0...255 {
            let b = UInt8(byte)
            XCTAssertEqual(HTTP1Parser.isToken(b), tchars.contains(b), "isToken(\(byte))")
            XCTAssertEqual(HTTP1Parser.tokenTable.utf8Start[byte] & 1 != 0, tchars.contains(b), "tokenTable[\(byte)]")
            guard b != 0x0D, b != 0x0A else { continue }  // those end the line instead
            for name in [[b, 0x61, 0x62], [0x61, b, 0x62], [0x61, 0x62, b]] {
                var bytes = Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8)
                bytes += name + Array(": v\r\n\r\n".utf8)
                let parsed = try? HTTP1Parser.parseRequest(bytes)
                if tchars.contains(b) {
                    XCTAssertEqual(parsed?.fields.count, 2, "name \(name)")
                } else if b != 0x3A || name[0] == b {
                    XCTAssertNil(parsed, "name \(name) accepted")
                }
            }
        }
    }

    func testHeadEndIsFoundAcrossReads() {
        let text = Array("GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /next".utf8)  // bytes: "\r\n" is one Character
        for split in 1..<text.count {
            var buffer = ByteBuffer(bytes: text.prefix(split))
            if let first = HTTP1Parser.headEnd(in: buffer, from: 0) {
                XCTAssertEqual(first, 27)
                XCTAssertGreaterThanOrEqual(split, 27, "found only once complete")
                continue
            }
            // The next search resumes where the last one stopped, as the proxy does.
            buffer.writeBytes(text.dropFirst(split))
            XCTAssertEqual(HTTP1Parser.headEnd(in: buffer, from: max(0, split - 3)), 27, "split at \(split)")
        }
    }

    /// Feeds `body` in pieces of `step` bytes; returns the data and what is left after the end.
    func frame(_ framer: BodyFramer, _ body: String, step: Int) throws -> (data: String, ended: Bool, rest: String) {
        let result = try frameWithTrailers(framer, body, step: step)
        return (result.data, result.ended, result.rest)
    }

    /// `frame`, with the trailer field lines the end handed out.
    func frameWithTrailers(_ framer: BodyFramer, _ body: String, step: Int) throws -> (data: String, ended: Bool, rest: String, trailers: String) {
        var framer = framer
        var buffer = ByteBuffer()
        var data = ""
        var ended = false
        var trailers = ""
        var input = Array(body.utf8)[...]
        while !ended {
            if input.isEmpty && buffer.readableBytes == 0 { break }
            let piece = input.prefix(step)
            input = input.dropFirst(step)
            buffer.writeBytes(piece)
            while let next = try framer.next(from: &buffer) {
                switch next {
                case .data(let bytes): data += String(buffer: bytes)
                case .end(let section):
                    ended = true
                    trailers = String(decoding: section, as: UTF8.self)
                }
                if ended { break }
            }
            if input.isEmpty && !ended { break }
        }
        return (data, ended, String(buffer: buffer) + String(decoding: input, as: UTF8.self), trailers)
    }

    func testChunkedBodiesDecodeAtAnySplitAndStopAtTheirEnd() throws {
        let body = "5;ext=1\r\nhello\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nGET /next"
        for step in [1, 2, 3, 7, 100] {
            let result = try frame(.chunked, body, step: step)
            XCTAssertEqual(result.data, "hello0123456789", "step \(step)")
            XCTAssertTrue(result.ended)
            XCTAssertEqual(result.rest, "GET /next", "bytes after the body belong to the next request")
        }
        let length = try frame(BodyFramer(length: 5), "helloGET", step: 2)
        XCTAssertEqual(length.data, "hello")
        XCTAssertTrue(length.ended)
        XCTAssertEqual(length.rest, "GET")
    }

    /// A chunked body's trailer section is handed out with its end, field lines as
    /// received, at any split; a field that must not be a trailer, a malformed line or a
    /// section over 16 KiB makes the body malformed.
    func testTrailersComeWithTheEndAndAreChecked() throws {
        let body = "5\r\nhello\r\n0\r\ngrpc-status: 0\r\nGrpc-Message: all%20good \r\nx-sum:\tab\r\n\r\nGET /next"
        for step in [1, 2, 5, 100] {
            let result = try frameWithTrailers(.chunked, body, step: step)
            XCTAssertEqual(result.data, "hello", "step \(step)")
            XCTAssertEqual(result.trailers, "grpc-status: 0\r\nGrpc-Message: all%20good \r\nx-sum:\tab\r\n", "step \(step)")
            XCTAssertEqual(result.rest, "GET /next")
        }
        XCTAssertEqual(try frameWithTrailers(.chunked, "0\r\n\r\n", step: 1).trailers, "", "no trailers")
        XCTAssertEqual(TrailerSection.lastChunk([]), Chunked.lastChunk)
        XCTAssertEqual(String(buffer: TrailerSection.lastChunk(Array("a: 1\r\n".utf8))), "0\r\na: 1\r\n\r\n")
        for field in ["content-length: 5", "Transfer-Encoding: chunked", "host: evil", "connection: close", "te: trailers",
                      "trailer: x", "upgrade: h2c", "keep-alive: 1", "proxy-connection: x", "expect: 100-continue"] {
            XCTAssertThrowsError(try frame(.chunked, "0\r\n\(field)\r\n\r\n", step: 100), "\(field) must not be a trailer")
        }
        // What the gateway writes about the client is never taken from a client's trailers
        // (an upstream merging trailers into the head would believe them).
        for field in ["X-Forwarded-For: 10.0.0.1", "x-forwarded-proto: https", "X-Forwarded-Host: admin", "Forwarded: for=10.0.0.1",
                      "X-Client-Verify: SUCCESS", "X-Forwarded-Client-Cert: Hash=x;Subject=\"CN=admin\""] {
            XCTAssertThrowsError(try frame(.chunked, "0\r\n\(field)\r\n\r\n", step: 100), "\(field) is the gateway's to write")
        }
        for bad in [" folded: x", "no colon", ": empty name", "bad name: x", "x: a\u{1}b", "x: a\u{7F}", "x: a\rb", "x: a\nb: c",
                    "Content-Length : 5"] {
            XCTAssertThrowsError(try frame(.chunked, "0\r\n\(bad)\r\n\r\n", step: 100), bad.debugDescription)
        }
        let many = String(repeating: "x-pad: " + String(repeating: "a", count: 1000) + "\r\n", count: 17)
        XCTAssertThrowsError(try frame(.chunked, "0\r\n\(many)\r\n", step: 4096), "a section over 16 KiB")
        // One line may be longer than a chunk line (gRPC's status details), up to the section's limit.
        let details = "grpc-status-details-bin: " + String(repeating: "A", count: 9000) + "\r\n"
        XCTAssertEqual(try frameWithTrailers(.chunked, "0\r\n\(details)\r\n", step: 4096).trailers, details)
        let tooLong = "x-big: " + String(repeating: "A", count: 17000) + "\r\n"
        XCTAssertThrowsError(try frame(.chunked, "0\r\n\(tooLong)\r\n", step: 4096), "one line over 16 KiB")
    }

    func testMalformedChunkedBodiesAreRejected() {
        for bad in ["x\r\n", "-1\r\n", "5\r\nhelloXX", "1000000000000000\r\n", "5 x\r\nhello\r\n", "\r\n"] {
            XCTAssertThrowsError(try frame(.chunked, bad, step: 100), bad.debugDescription)
        }
        XCTAssertThrowsError(try frame(.chunked, String(repeating: "0", count: 5000), step: 100), "an endless size line is cut off")
    }

    func testResponseHeadsAndTheirFraming() throws {
        let chunked = try HTTP1Parser.parseResponse(Array("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".utf8))
        XCTAssertEqual(chunked.status, 200)
        XCTAssertTrue(chunked.chunked)
        XCTAssertNil(chunked.contentLength)
        // Framing a client could read differently is refused, not repaired (#29): 502 upstream of here.
        for head in ["HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
                     "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"] {
            XCTAssertThrowsError(try HTTP1Parser.parseResponse(Array(head.utf8)), head)
        }
        let bare = try HTTP1Parser.parseResponse(Array("HTTP/1.0 204\r\n\r\n".utf8))
        XCTAssertEqual(bare.status, 204)
        XCTAssertFalse(bare.keepAlive)
        XCTAssertThrowsError(try HTTP1Parser.parseResponse(Array("HTTP/1.1 2x0 OK\r\n\r\n".utf8)))
        XCTAssertThrowsError(try HTTP1Parser.parseResponse(Array("HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".utf8)))
    }

    /// Heads parsed one after another in the same storage (as the proxy does) carry
    /// nothing over from the previous head, and read exactly their own bytes.
    func testRefilledHeadsKeepNothingOfThePreviousOne() throws {
        var buffer = ByteBuffer(string:
            "HEAD /first HTTP/1.0\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, X-Hop\r\nExpect: 100-continue\r\nX-Hop: 1\r\n\r\n"
            + "GET /second HTTP/1.1\r\nHost: b.test\r\n\r\nNEXT")
        var head = HTTPHead(bytes: [])
        head.refill(reading: HTTP1Parser.headEnd(in: buffer, from: 0)!, from: &buffer)
        XCTAssertThrowsError(try HTTP1Parser.parseRequest(&head), "chunked in HTTP/1.0 is refused")
        XCTAssertTrue(head.chunked)
        XCTAssertEqual(head.connectionNames, ["x-hop"])
        let capacity = head.bytes.capacity
        head.refill(reading: HTTP1Parser.headEnd(in: buffer, from: 0)!, from: &buffer)
        try HTTP1Parser.parseRequest(&head)
        XCTAssertEqual(buffer.readableBytes, 4, "only the head's bytes are taken")
        XCTAssertEqual(head.bytes.capacity, capacity, "the storage is reused")
        XCTAssertEqual(head.method, "GET")
        XCTAssertEqual(head.target, "/second")
        XCTAssertFalse(head.isHeadMethod)
        XCTAssertEqual(head.minorVersion, 1)
        XCTAssertFalse(head.chunked)
        XCTAssertFalse(head.otherTransferCoding)
        XCTAssertFalse(head.connectionKeepAlive)
        XCTAssertFalse(head.expectContinue)
        XCTAssertEqual(head.connectionNames, [])
        XCTAssertEqual(head.fields.count, 1)
        XCTAssertEqual(head.first(.host), "b.test")

        var response = ByteBuffer(string: "HTTP/1.1 200 Fine\r\nContent-Length: 3\r\n\r\nHTTP/1.1 204\r\n\r\n")
        var status = HTTPHead(bytes: [])
        status.refill(reading: HTTP1Parser.headEnd(in: response, from: 0)!, from: &response)
        try HTTP1Parser.parseResponse(&status)
        XCTAssertEqual(status.string(status.reason), "Fine")
        XCTAssertEqual(status.contentLength, 3)
        status.refill(reading: HTTP1Parser.headEnd(in: response, from: 0)!, from: &response)
        try HTTP1Parser.parseResponse(&status)
        XCTAssertEqual(status.status, 204)
        XCTAssertEqual(status.reason, 0..<0, "no reason phrase this time")
        XCTAssertNil(status.contentLength)
        XCTAssertEqual(response.readableBytes, 0)
    }
}

final class DownstreamInfoTests: XCTestCase {
    /// The client address as the gateway formats it (X-Forwarded-For, the access log)
    /// reads as NIO's (inet_ntop's) text.
    func testIPv4ClientAddressTextMatchesNIOs() throws {
        var addresses = ["0.0.0.0", "255.255.255.255", "127.0.0.1", "10.0.0.1", "1.2.3.4", "100.10.0.9", "9.99.199.200", "192.168.1.254"]
        for _ in 0..<500 { addresses.append((0..<4).map { _ in String(Int.random(in: 0...255)) }.joined(separator: ".")) }
        for text in addresses {
            let address = try SocketAddress(ipAddress: text, port: 443)
            XCTAssertEqual(DownstreamInfo.text(address), address.ipAddress, text)
        }
        let v6 = try SocketAddress(ipAddress: "::1", port: 443)
        XCTAssertEqual(DownstreamInfo.text(v6), "::1")
        XCTAssertNil(DownstreamInfo.text(nil))
    }

    /// Log lines name the client as `hostPort` does, from the text and port kept.
    func testPeerIsTheClientsHostAndPort() throws {
        for (ip, port) in [("127.0.0.1", 50123), ("10.1.2.3", 1), ("::1", 443), ("2001:db8::7", 65535)] {
            let address = try SocketAddress(ipAddress: ip, port: port)
            XCTAssertEqual(DownstreamInfo(remoteAddress: address).peer, address.hostPort)
        }
        XCTAssertEqual(DownstreamInfo(remoteAddress: nil).peer, "?")
    }
}

/// RFC 3986 normal form of request paths (`PathNormalization`), without sockets.
final class PathNormalizationUnitTests: XCTestCase {
    func normal(_ path: String) -> String? {
        switch PathNormalization.normalize(Array(path.utf8)) {
        case .unchanged: return path
        case .normalized(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .malformed, .ambiguous: return nil
        }
    }

    func testDotSegmentsAndUnreservedEncodings() {
        let cases: [(String, String?)] = [
            ("/", "/"), ("/a/b", "/a/b"), ("/a/./b", "/a/b"), ("/a/../b", "/b"), ("/..", "/"), ("/../..", "/"),
            ("/a/b/.", "/a/b/"), ("/a/b/..", "/a/"), ("/a/.", "/a/"), ("/.", "/"), ("/a//../b", "/a/b"), ("/a//b", "/a//b"),
            ("/%2e%2e/x", "/x"), ("/a/%2E/b", "/a/b"), ("/.%2e/x", "/x"), ("/%7euser", "/~user"), ("/%41%5a", "/AZ"),
            ("/a%2fb", "/a%2Fb"), ("/a%2Fb/../c", "/c"), ("/a%2F../c", nil), ("/%00", "/%00"), ("/%25", "/%25"),
            ("/.hidden/x", "/.hidden/x"), ("/..a/b", "/..a/b"), ("/a/...", "/a/..."),
            ("/%", nil), ("/%2", nil), ("/%zz", nil), ("/%2g", nil),
            ("/a;jsessionid=1", "/a;jsessionid=1"), ("/a%2Fb", "/a%2Fb"), ("/a\\b", "/a\\b"),
        ]
        for (input, expected) in cases {
            XCTAssertEqual(normal(input), expected, input)
            if let expected { XCTAssertEqual(normal(expected), expected, "idempotent: \(input)") }
        }
    }

    /// Dot segments other backends find behind separators RFC 3986 does not have.
    func testDotSegmentsBehindOtherSeparatorsAreAmbiguous() {
        for path in ["/public/..%2Finternal", "/public/..%2finternal", "/public/..%5Cinternal", "/public/..\\internal",
                     "/public/..;/internal", "/public/.;x/internal", "/a%2F..", "/a\\.", "/..;"] {
            XCTAssertEqual(PathNormalization.normalize(Array(path.utf8)), .ambiguous, path)
        }
        for path in ["/a%2F.b", "/a;..", "/a\\..b", "/%2F", "/a;b=..c"] {
            XCTAssertNotEqual(PathNormalization.normalize(Array(path.utf8)), .ambiguous, path)
        }
    }

    func testTheParserRoutesTheNormalFormAndKeepsTheQuery() throws {
        let head = try HTTP1Parser.parseRequest(Array("GET /a/../b%2fc?q=/../x HTTP/1.1\r\nHost: h\r\n\r\n".utf8))
        XCTAssertEqual(head.target, "/b%2Fc?q=/../x")
        XCTAssertEqual(head.first(.host), "h")
        let absolute = try HTTP1Parser.parseRequest(Array("GET http://x.test/a/./b HTTP/1.1\r\nHost: h\r\n\r\n".utf8))
        XCTAssertEqual(absolute.target, "/a/b")
        XCTAssertEqual(absolute.first(.host), "x.test")
        XCTAssertThrowsError(try HTTP1Parser.parseRequest(Array("GET /%zz HTTP/1.1\r\nHost: h\r\n\r\n".utf8)))
    }
}
