@testable import EdgeProxy
import EdgeTestSupport
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHPACK
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// The frame layer of the gateway's own HTTP/2 engine (`HTTP2FrameReader`,
/// `HTTP2FrameWriter`): every frame both ways, byte by byte, each check of RFC 9113 §4-6
/// it makes on a frame alone, and a real client (nghttp) talking to it.
final class HTTP2FramesTests: XCTestCase {
    /// A frame's bytes, written by hand (not by the writer under test).
    private func frame(_ type: UInt8, flags: UInt8 = 0, stream: UInt32 = 0, _ payload: [UInt8] = []) -> [UInt8] {
        let n = payload.count
        return [UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF), type, flags,
                UInt8(stream >> 24), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)] + payload
    }

    private let settings: [UInt8] = [0, 0, 0, 4, 0, 0, 0, 0, 0]  // an empty SETTINGS frame

    /// Every frame `bytes` gives, fed `step` bytes at a time, or the connection error.
    private func read(_ bytes: [UInt8], step: Int = .max, preface: Bool = true, maxFieldBlockBytes: Int = 65_536) -> Result<[HTTP2WireFrame], HTTP2WireError> {
        var reader = HTTP2FrameReader(expectsClientPreface: preface, maxFieldBlockBytes: maxFieldBlockBytes)
        var buffer = ByteBuffer()
        var frames: [HTTP2WireFrame] = []
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + step)
            buffer.writeBytes(bytes[offset..<end])
            offset = end
            do {
                while let frame = try reader.next(from: &buffer) { frames.append(frame) }
            } catch {
                return .failure(error)
            }
        }
        XCTAssertEqual(buffer.readableBytes, 0, "bytes left over")
        return .success(frames)
    }

    private func error(_ bytes: [UInt8], maxFieldBlockBytes: Int = 65_536) -> HTTP2WireError.Code? {
        guard case .failure(let error) = self.read(http2ClientPreface + self.settings + bytes, maxFieldBlockBytes: maxFieldBlockBytes) else { return nil }
        return error.code
    }

    func testEveryFrameWrittenIsReadBackWholeOrByteByByte() throws {
        var out = ByteBuffer(bytes: http2ClientPreface)
        HTTP2FrameWriter.settings([HTTP2WireSetting(identifier: HTTP2WireSetting.initialWindowSize, value: 1 << 20),
                                   HTTP2WireSetting(identifier: HTTP2WireSetting.maxConcurrentStreams, value: 100)], into: &out)
        HTTP2FrameWriter.settingsAck(into: &out)
        let block = ByteBuffer(bytes: (0..<40_000).map { UInt8(truncatingIfNeeded: $0) })
        HTTP2FrameWriter.headers(stream: 1, block: block, endStream: false, maxFrameSize: 16_384, into: &out)  // HEADERS and two CONTINUATION
        HTTP2FrameWriter.headers(stream: 3, block: ByteBuffer(), endStream: true, maxFrameSize: 16_384, into: &out)
        HTTP2FrameWriter.dataHeader(stream: 1, length: 5, endStream: true, into: &out)
        out.writeString("hello")
        HTTP2FrameWriter.ping(0x0102_0304_0506_0708, ack: true, into: &out)
        HTTP2FrameWriter.windowUpdate(stream: 0, increment: 1 << 20, into: &out)
        HTTP2FrameWriter.resetStream(stream: 3, code: .cancel, into: &out)
        HTTP2FrameWriter.goAway(lastStream: 3, code: .noError, debug: "bye", into: &out)
        let expected: [HTTP2WireFrame] = [
            .settings([HTTP2WireSetting(identifier: 4, value: 1 << 20), HTTP2WireSetting(identifier: 3, value: 100)]),
            .settingsAck,
            .headers(stream: 1, block: block, endStream: false, priority: nil),
            .headers(stream: 3, block: ByteBuffer(), endStream: true, priority: nil),
            .data(stream: 1, data: ByteBuffer(string: "hello"), endStream: true, flowControlled: 5),
            .ping(0x0102_0304_0506_0708, ack: true),
            .windowUpdate(stream: 0, increment: 1 << 20),
            .resetStream(stream: 3, code: HTTP2WireError.Code.cancel.rawValue),
            .goAway(lastStream: 3, code: 0, debug: ByteBuffer(string: "bye")),
        ]
        let bytes = Array(out.readableBytesView)
        // The 40,000-byte block: HEADERS (no END_HEADERS), CONTINUATION, CONTINUATION (END_HEADERS).
        let first = http2ClientPreface.count + 9 + 12 + 9
        XCTAssertEqual(Array(bytes[first..<first + 5]), [0, 0x40, 0, 0x1, 0], "HEADERS of 16,384 bytes, no flags")
        XCTAssertEqual(Array(bytes[first + 9 + 16_384..<first + 9 + 16_384 + 5]), [0, 0x40, 0, 0x9, 0])
        XCTAssertEqual(Array(bytes[first + 2 * (9 + 16_384)..<first + 2 * (9 + 16_384) + 5]), [0, 0x1C, 0x40, 0x9, 0x4], "7,232 bytes, END_HEADERS")
        var ended = ByteBuffer()
        HTTP2FrameWriter.headers(stream: 5, block: ByteBuffer(repeating: 0x82, count: 20_000), endStream: true, maxFrameSize: 16_384, into: &ended)
        XCTAssertEqual(ended.getInteger(at: 4, as: UInt8.self), 0x1, "END_STREAM on the HEADERS frame...")
        XCTAssertEqual(ended.getInteger(at: 9 + 16_384 + 4, as: UInt8.self), 0x4, "...and only END_HEADERS on its CONTINUATION")
        XCTAssertEqual(try self.read(bytes).get(), expected)
        XCTAssertEqual(try self.read(bytes, step: 1).get(), expected, "byte by byte")
        XCTAssertEqual(try self.read(bytes, step: 7).get(), expected)
    }

    /// Padding, priority fields and unknown frame types, as a client may send them.
    func testPaddingPriorityAndUnknownFramesAreTakenApart() throws {
        let frames = try self.read(http2ClientPreface + self.settings
            + frame(0x1, flags: 0x4 | 0x8 | 0x20, stream: 1, [2, 0x80, 0, 0, 0, 15, 0x82, 0, 0])  // padded, exclusive on 0, weight 15
            + frame(0x0, flags: 0x8 | 0x1, stream: 1, [3, 0x61, 0x62, 0, 0, 0])  // "ab" and 3 bytes of padding
            + frame(0x2, stream: 3, [0, 0, 0, 1, 200])
            + frame(0x20, stream: 5, [1, 2, 3])
            + frame(0x4, [0, 0x99, 0, 0, 0, 1])  // an unknown SETTINGS parameter: kept, for the connection to ignore
            + frame(0x0, flags: 0x8, stream: 0x8000_0003, [2, 0, 0])  // the reserved bit set; padding of all but the pad length
            + frame(0x8, stream: 0x8000_0003, [0x80, 0, 0, 1])).get()
        XCTAssertEqual(frames, [
            .settings([]),
            .headers(stream: 1, block: ByteBuffer(bytes: [0x82]), endStream: false, priority: HTTP2WirePriority(exclusive: true, dependency: 0, weight: 15)),
            .data(stream: 1, data: ByteBuffer(string: "ab"), endStream: true, flowControlled: 6),
            .priority(stream: 3, HTTP2WirePriority(exclusive: false, dependency: 1, weight: 200)),
            .ignored(type: 0x20),
            .settings([HTTP2WireSetting(identifier: 0x99, value: 1)]),
            .data(stream: 3, data: ByteBuffer(), endStream: false, flowControlled: 3),
            .windowUpdate(stream: 3, increment: 1),
        ])
    }

    /// Each check of a frame on its own, with the code RFC 9113 gives it.
    func testMalformedFramesAreConnectionOrStreamErrorsWithTheirCodes() {
        XCTAssertEqual(self.read(Array("GET / HTTP/1.1\r\n".utf8)).failureCode, .protocolError, "HTTP/1.1, not a preface")
        XCTAssertEqual(self.read(Array("PRI * HTTP/1.1".utf8), step: 3).failureCode, .protocolError, "refused at the first byte that differs")
        XCTAssertEqual(self.read(http2ClientPreface + frame(0x6, [UInt8](repeating: 0, count: 8))).failureCode, .protocolError, "PING before SETTINGS")
        XCTAssertEqual(self.read(http2ClientPreface + frame(0x4, flags: 1)).failureCode, .protocolError, "a SETTINGS ack first")
        XCTAssertEqual(self.error([0, 0x40, 0x01, 0, 0, 0, 0, 0, 1]), .frameSizeError, "16,385 bytes announced: refused before they come")
        XCTAssertEqual(self.error(frame(0x0, [1])), .protocolError, "DATA on stream 0")
        XCTAssertEqual(self.error(frame(0x0, flags: 0x8, stream: 1, [5, 1, 2, 3, 4])), .protocolError, "padding longer than the payload")
        XCTAssertEqual(self.error(frame(0x0, flags: 0x8, stream: 1, [])), .protocolError, "PADDED with no pad length")
        XCTAssertEqual(self.error(frame(0x1, flags: 0x4 | 0x20, stream: 1, [0, 0, 0])), .frameSizeError, "priority fields cut short")
        XCTAssertEqual(self.error(frame(0x1, flags: 0x4)), .protocolError, "HEADERS on stream 0")
        XCTAssertEqual(self.error(frame(0x3, stream: 1, [0, 0, 8])), .frameSizeError, "RST_STREAM of 3 bytes")
        XCTAssertEqual(self.error(frame(0x3, [0, 0, 0, 8])), .protocolError, "RST_STREAM on stream 0")
        XCTAssertEqual(self.error(frame(0x4, stream: 1)), .protocolError, "SETTINGS on a stream")
        XCTAssertEqual(self.error(frame(0x4, flags: 1, [0, 1, 0, 0, 0, 0])), .frameSizeError, "an ack with a payload")
        XCTAssertEqual(self.error(frame(0x4, [0, 1, 0, 0, 0, 0, 0])), .frameSizeError, "7 bytes of SETTINGS")
        XCTAssertEqual(self.error(frame(0x4, [0, 2, 0, 0, 0, 2])), .protocolError, "SETTINGS_ENABLE_PUSH 2")
        XCTAssertEqual(self.error(frame(0x4, [0, 4, 0x80, 0, 0, 0])), .flowControlError, "a window of 2^31")
        XCTAssertEqual(self.error(frame(0x4, [0, 5, 0, 0, 0x3F, 0xFF])), .protocolError, "SETTINGS_MAX_FRAME_SIZE 16,383")
        XCTAssertEqual(self.error(frame(0x4, [0, 5, 0x01, 0, 0, 0])), .protocolError, "SETTINGS_MAX_FRAME_SIZE 2^24")
        XCTAssertEqual(self.error(frame(0x4, [0, 8, 0, 0, 0, 2])), .protocolError, "SETTINGS_ENABLE_CONNECT_PROTOCOL 2")
        XCTAssertEqual(self.error(frame(0x4, [0, 9, 0, 0, 0, 2])), .protocolError, "SETTINGS_NO_RFC7540_PRIORITIES 2")
        XCTAssertEqual(self.read(frame(0x4, [0, 2, 0, 0, 0, 1]), preface: false).failureCode, .protocolError, "a server's SETTINGS_ENABLE_PUSH 1")
        XCTAssertEqual(self.error(frame(0x5, flags: 0x4, stream: 1, [0, 0, 0, 2])), .protocolError, "PUSH_PROMISE from a client")
        XCTAssertEqual(self.error([0, 0, 4, 0x5, 0x4, 0, 0, 0, 1]), .protocolError, "...refused at its frame header")
        XCTAssertEqual(self.error(frame(0x7, stream: 1, [UInt8](repeating: 0, count: 8))), .protocolError, "GOAWAY on a stream")
        XCTAssertEqual(self.error(frame(0x2, [0, 0, 0, 1, 1])), .protocolError, "PRIORITY on stream 0")
        XCTAssertEqual(self.error(frame(0x1, flags: 0x4 | 0x8 | 0x20, stream: 1, [1, 0, 0, 0, 0, 9])), .protocolError, "padding into the priority fields")
        XCTAssertEqual(self.error(frame(0x1, flags: 0x4 | 0x8, stream: 1, [2, 0x82])), .protocolError, "HEADERS padding past its end")
        XCTAssertEqual(self.read(http2ClientPreface + [0, 0x40, 0x01, 0x6, 0, 0, 0, 0, 0]).failureCode, .protocolError,
                       "a first frame that is not SETTINGS is refused at its header, whatever its size")
        XCTAssertEqual(self.error(frame(0x6, [UInt8](repeating: 0, count: 7))), .frameSizeError, "PING of 7 bytes")
        XCTAssertEqual(self.error(frame(0x6, stream: 1, [UInt8](repeating: 0, count: 8))), .protocolError, "PING on a stream")
        XCTAssertEqual(self.error(frame(0x7, [0, 0, 0, 0, 0, 0, 0])), .frameSizeError, "GOAWAY of 7 bytes")
        XCTAssertEqual(self.error(frame(0x8, [0, 0, 0, 0])), .protocolError, "a connection WINDOW_UPDATE of 0")
        XCTAssertEqual(self.error(frame(0x8, stream: 1, [0, 0, 1])), .frameSizeError, "WINDOW_UPDATE of 3 bytes")
        XCTAssertEqual(self.error(frame(0x9, flags: 0x4, stream: 1)), .protocolError, "CONTINUATION with no field block")
        XCTAssertEqual(self.error(frame(0x1, stream: 1, [0x82]) + frame(0x0, stream: 1, [1])), .protocolError, "DATA inside a field block")
        XCTAssertEqual(self.error(frame(0x1, stream: 1, [0x82]) + frame(0x9, flags: 0x4, stream: 3)), .protocolError, "CONTINUATION of another stream")
        XCTAssertEqual(self.error(frame(0x1, stream: 1, [0x82]) + frame(0x20, stream: 1)), .protocolError, "an unknown frame inside a field block")
        XCTAssertEqual(self.error(frame(0x1, stream: 1) + (0..<17).flatMap { _ in frame(0x9, stream: 1) }), .enhanceYourCalm, "17 empty CONTINUATION frames")
        XCTAssertEqual(self.error(frame(0x1, stream: 1, [UInt8](repeating: 0x82, count: 60)) + frame(0x9, flags: 0x4, stream: 1, [UInt8](repeating: 0x82, count: 60)),
                                  maxFieldBlockBytes: 100), .enhanceYourCalm, "a field block over its bound")
        XCTAssertNil(self.error(frame(0x1, stream: 1) + (0..<15).flatMap { _ in frame(0x9, stream: 1) } + frame(0x9, flags: 0x4, stream: 1)),
                     "16 CONTINUATION frames, the last one ending the block, pass")
    }

    /// Stream errors are frames, and the connection goes on after them.
    func testStreamErrorsAreReportedAndReadingGoesOn() throws {
        let frames = try self.read(http2ClientPreface + self.settings
            + frame(0x2, stream: 3, [0, 0, 0, 1]) + frame(0x2, stream: 5, [0, 0, 0, 5, 16]) + frame(0x8, stream: 7, [0, 0, 0, 0])
            + frame(0x6, [UInt8](repeating: 9, count: 8))).get()
        XCTAssertEqual(frames, [
            .settings([]),
            .invalid(stream: 3, type: .priority, code: .frameSizeError, reason: "a PRIORITY frame of 4 bytes, not 5"),
            .invalid(stream: 5, type: .priority, code: .protocolError, reason: "stream 5 made dependent on itself"),
            .invalid(stream: 7, type: .windowUpdate, code: .protocolError, reason: "a WINDOW_UPDATE of 0"),
            .ping(0x0909_0909_0909_0909, ack: false),
        ])
    }

    /// A real client against a toy server made of the frame layer and NIOHPACK alone:
    /// nghttp's preface, SETTINGS, HEADERS (with priority fields), WINDOW_UPDATE, the
    /// acknowledgements and its GOAWAY are read, and the answers written (HEADERS, DATA in
    /// frames of at most 16,384 bytes) are what nghttp prints.
    func testNghttpGetsItsAnswersFromTheFrameLayer() throws {
        let port = freePort()
        let listener = listeningSocket(port: port)
        XCTAssertGreaterThanOrEqual(listener, 0)
        defer { close(listener) }
        let seen = NIOLockedValueBox<[String]>([])
        let done = DispatchSemaphore(value: 0)
        Thread.detachNewThread {
            defer { done.signal() }
            var poll = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
            guard Glibc.poll(&poll, 1, 20_000) == 1 else { return seen.withLockedValue { $0.append("no connection") } }
            let fd = accept(listener, nil, nil)
            defer { close(fd) }
            let frames = FrameLayerServer.serve(fd)
            seen.withLockedValue { $0 += frames }
        }
        let result = try Shell.run(["nghttp", "--no-content-length", "http://127.0.0.1:\(port)/alpha", "http://127.0.0.1:\(port)/beta"], timeout: 30)
        XCTAssertEqual(done.wait(timeout: .now() + 30), .success, "the toy server did not finish")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stdout.count, 2 * FrameLayerServer.bodyBytes, result.stderr)
        XCTAssertEqual(result.stdout.components(separatedBy: "/alpha").count - 1, FrameLayerServer.bodyBytes / 6, "/alpha's body")
        XCTAssertEqual(result.stdout.components(separatedBy: "/beta").count - 1, FrameLayerServer.bodyBytes / 5, "/beta's body")
        let frames = seen.withLockedValue { $0 }
        // (nghttp opens its requests after streams it only names in PRIORITY frames)
        XCTAssertEqual(frames.filter { $0.hasPrefix("headers ") }.map { $0.split(separator: " ").dropFirst(2).joined(separator: " ") }, ["GET /alpha", "GET /beta"], "\(frames)")
        XCTAssertTrue(frames.contains("settings-ack"), "\(frames)")
        XCTAssertTrue(frames.contains("goaway 0"), "\(frames)")
        XCTAssertFalse(frames.contains { $0.hasPrefix("error") }, "\(frames)")
    }
}

extension Result where Failure == HTTP2WireError {
    fileprivate var failureCode: HTTP2WireError.Code? {
        if case .failure(let error) = self { return error.code }
        return nil
    }
}

/// One HTTP/2 connection served on a blocking socket by the frame layer: each request is
/// answered 200 with its path repeated to `bodyBytes`; says which frames came.
enum FrameLayerServer {
    static let bodyBytes = 30_000  // two of them fit in a client's first 65,535-byte window

    static func serve(_ fd: CInt) -> [String] {
        var timeout = timeval(tv_sec: 10, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var reader = HTTP2FrameReader(expectsClientPreface: true)
        var decoder = HPACKDecoder(allocator: ByteBufferAllocator())
        var encoder = HPACKEncoder(allocator: ByteBufferAllocator())
        var seen: [String] = []
        var input = ByteBuffer()
        var out = ByteBuffer()
        HTTP2FrameWriter.settings([HTTP2WireSetting(identifier: HTTP2WireSetting.maxConcurrentStreams, value: 100)], into: &out)
        var chunk = [UInt8](repeating: 0, count: 16_384)
        while true {
            if out.readableBytes > 0 {
                let bytes = Array(out.readableBytesView)
                out.clear()
                guard bytes.withUnsafeBytes({ send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }) == bytes.count else { return seen + ["error: send"] }
            }
            let n = recv(fd, &chunk, chunk.count, 0)
            guard n > 0 else { return seen }
            input.writeBytes(chunk[0..<n])
            do {
                while let frame = try reader.next(from: &input) {
                    switch frame {
                    case .settings:
                        HTTP2FrameWriter.settingsAck(into: &out)
                    case .settingsAck:
                        seen.append("settings-ack")
                    case .headers(let stream, var block, _, _):
                        let headers = try decoder.decodeHeaders(from: &block)
                        let path = headers.first(name: ":path") ?? "?"
                        seen.append("headers \(stream) \(headers.first(name: ":method") ?? "?") \(path)")
                        var response = HPACKHeaders([(":status", "200"), ("content-type", "text/plain")])
                        response.add(name: "x-stream", value: "\(stream)")
                        try encoder.beginEncoding(allocator: ByteBufferAllocator())
                        try encoder.append(headers: response)
                        HTTP2FrameWriter.headers(stream: stream, block: try encoder.endEncoding(), endStream: false, maxFrameSize: 16_384, into: &out)
                        var body = ByteBuffer(string: String(String(repeating: path, count: bodyBytes / path.count + 1).prefix(bodyBytes)))
                        while body.readableBytes > 0 {
                            var piece = body.readSlice(length: min(body.readableBytes, 16_384))!
                            HTTP2FrameWriter.dataHeader(stream: stream, length: piece.readableBytes, endStream: body.readableBytes == 0, into: &out)
                            out.writeBuffer(&piece)
                        }
                    case .ping(let data, ack: false):
                        HTTP2FrameWriter.ping(data, ack: true, into: &out)
                    case .goAway(_, let code, _):
                        seen.append("goaway \(code)")
                    case .invalid(let stream, _, let code, let reason):
                        seen.append("error: stream \(stream) \(code) \(reason)")
                    default:
                        break
                    }
                }
            } catch {
                return seen + ["error: \(error)"]
            }
        }
    }
}
