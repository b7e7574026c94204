@testable import EdgeProxy
import NIOCore
import XCTest

/// The own engine's connection state (RFC 9113 §5.1, §6.9), frame by frame, without sockets.
final class HTTP2ServerConnectionStateTests: XCTestCase {
    private let block = ByteBuffer(bytes: [0x82])

    private func headers(_ id: UInt32, end: Bool = false) -> HTTP2WireFrame { .headers(stream: id, block: self.block, endStream: end, priority: nil) }
    private func data(_ id: UInt32, _ count: Int, end: Bool = false) -> HTTP2WireFrame {
        .data(stream: id, data: ByteBuffer(repeating: 0x61, count: count), endStream: end, flowControlled: count)
    }

    private func code(_ state: inout HTTP2ServerConnectionState, _ frame: HTTP2WireFrame) -> HTTP2WireError.Code? {
        do {
            _ = try state.received(frame)
            return nil
        } catch {
            return error.code
        }
    }

    func testARequestWithABodyAndItsResponseCloseTheStream() throws {
        var state = HTTP2ServerConnectionState()
        XCTAssertEqual(state.settings.first, HTTP2WireSetting(identifier: HTTP2WireSetting.maxConcurrentStreams, value: 100))
        XCTAssertEqual(try state.received(.settings([])), .acknowledgeSettings)
        XCTAssertEqual(try state.received(self.headers(1)), .opened(stream: 1, block: self.block, endStream: false))
        XCTAssertEqual(try state.received(self.data(1, 1_000)), .data(stream: 1, data: ByteBuffer(repeating: 0x61, count: 1_000), endStream: false, flowControlled: 1_000))
        XCTAssertEqual(state.connectionReceiveWindow, 64_535)
        XCTAssertEqual(state.stream(1)?.receiveWindow, 64_535)
        state.windowGiven(on: 1, increment: 1_000)
        state.windowGiven(on: nil, increment: 1_000)
        XCTAssertEqual(state.stream(1)?.receiveWindow, 65_535)
        XCTAssertEqual(state.connectionReceiveWindow, 65_535)
        XCTAssertEqual(try state.received(self.data(1, 0, end: true)), .data(stream: 1, data: ByteBuffer(), endStream: true, flowControlled: 0))
        XCTAssertEqual(state.stream(1)?.state, .halfClosedRemote)

        XCTAssertTrue(state.sentHeaders(on: 1, endStream: false))
        XCTAssertEqual(state.sendable(on: 1), 16_384, "one frame of the client's SETTINGS_MAX_FRAME_SIZE")
        state.sentData(on: 1, length: 16_384, endStream: false)
        state.sentData(on: 1, length: 16_384, endStream: false)
        state.sentData(on: 1, length: 16_384, endStream: false)
        XCTAssertEqual(state.sendable(on: 1), 16_383, "the rest of the 65,535-byte windows")
        state.sentData(on: 1, length: 16_383, endStream: false)
        XCTAssertEqual(state.sendable(on: 1), 0)
        XCTAssertEqual(try state.received(.windowUpdate(stream: 1, increment: 10)), .windowOpened(stream: 1, increment: 10))
        XCTAssertEqual(state.sendable(on: 1), 0, "the connection's window is still closed")
        XCTAssertEqual(try state.received(.windowUpdate(stream: 0, increment: 100)), .windowOpened(stream: nil, increment: 100))
        XCTAssertEqual(state.sendable(on: 1), 10)
        state.sentData(on: 1, length: 10, endStream: true)
        XCTAssertNil(state.stream(1), "closed both ways: gone")
        XCTAssertEqual(try state.received(self.data(1, 5)), .nothing, "DATA on a closed stream is dropped...")
        XCTAssertEqual(state.connectionReceiveWindow, 65_530, "...and counted against the connection's window")
        XCTAssertEqual(try state.received(.resetStream(stream: 1, code: 8)), .nothing)
        XCTAssertEqual(try state.received(.windowUpdate(stream: 1, increment: 1)), .nothing)
    }

    func testTrailersEndARequestAndOtherSecondBlocksAreRefused() throws {
        var state = HTTP2ServerConnectionState()
        _ = try state.received(self.headers(1))
        XCTAssertEqual(try state.received(self.headers(1, end: true)), .trailers(stream: 1, block: self.block))
        XCTAssertEqual(try state.received(self.headers(1, end: true)), .refuseFieldBlock(self.block, stream: 1, code: .streamClosed), "after END_STREAM")
        XCTAssertNil(state.stream(1))
        _ = try state.received(self.headers(3))
        XCTAssertEqual(try state.received(self.headers(3)), .refuseFieldBlock(self.block, stream: 3, code: .protocolError), "trailers that do not end the stream")
        _ = try state.received(self.headers(5, end: true))
        XCTAssertEqual(try state.received(self.data(5, 1)), .resetStream(stream: 5, code: .streamClosed, reason: "DATA after the request ended"))
        XCTAssertEqual(try state.received(self.headers(5, end: true)), .discardFieldBlock(self.block), "a closed stream's block is decoded and dropped")
    }

    func testStreamIDsAndTheStreamLimit() throws {
        var state = HTTP2ServerConnectionState(limits: .init(maxConcurrentStreams: 2))
        _ = try state.received(self.headers(1))
        _ = try state.received(self.headers(5))
        XCTAssertEqual(try state.received(self.headers(7)), .refuseFieldBlock(self.block, stream: 7, code: .refusedStream))
        XCTAssertEqual(try state.received(self.headers(3)), .discardFieldBlock(self.block), "3 was skipped: closed")
        XCTAssertEqual(self.code(&state, self.headers(8)), .protocolError, "an even stream from a client")
        var idle = HTTP2ServerConnectionState()
        XCTAssertEqual(self.code(&idle, self.data(1, 1)), .protocolError, "DATA on a stream never opened")
        XCTAssertEqual(self.code(&idle, .resetStream(stream: 9, code: 0)), .protocolError)
        XCTAssertEqual(self.code(&idle, .windowUpdate(stream: 9, increment: 1)), .protocolError)
        XCTAssertEqual(try idle.received(.priority(stream: 9, HTTP2WirePriority(exclusive: false, dependency: 0, weight: 1))), .nothing, "PRIORITY may name an idle stream")
        XCTAssertEqual(self.code(&idle, .pushPromise(stream: 1, promised: 2, block: self.block)), .protocolError)
        XCTAssertEqual(try idle.received(.ping(7, ack: false)), .pong(7))
        XCTAssertEqual(try idle.received(.ping(7, ack: true)), .nothing)
    }

    func testFlowControlErrorsOfTheStreamAndOfTheConnection() throws {
        var state = HTTP2ServerConnectionState()
        _ = try state.received(self.headers(1))
        _ = try state.received(self.headers(3))
        XCTAssertEqual(try state.received(self.data(1, 65_535)), .data(stream: 1, data: ByteBuffer(repeating: 0x61, count: 65_535), endStream: false, flowControlled: 65_535))
        state.windowGiven(on: nil, increment: 100_000)
        XCTAssertEqual(try state.received(self.data(1, 1)), .resetStream(stream: 1, code: .flowControlError, reason: "DATA beyond the stream's flow-control window"))
        XCTAssertEqual(try state.received(.windowUpdate(stream: 3, increment: 0x7FFF_FFFF)),
                       .resetStream(stream: 3, code: .flowControlError, reason: "the stream's send window over 2^31-1"))
        XCTAssertEqual(self.code(&state, .windowUpdate(stream: 0, increment: 0x7FFF_FFFF)), .flowControlError)
        var full = HTTP2ServerConnectionState()
        _ = try full.received(self.headers(1))
        _ = try full.received(self.headers(3))
        _ = try full.received(self.data(1, 40_000))
        XCTAssertEqual(self.code(&full, self.data(3, 30_000)), .flowControlError, "the connection's 65,535 bytes")
    }

    /// §6.9.2: the client's new SETTINGS_INITIAL_WINDOW_SIZE moves open streams' send
    /// windows (below 0 too); ours is in force from the client's acknowledgement.
    func testInitialWindowSizesMoveOpenStreams() throws {
        var state = HTTP2ServerConnectionState(limits: .init(initialWindowSize: 1 << 20))
        XCTAssertTrue(state.settings.contains(HTTP2WireSetting(identifier: HTTP2WireSetting.initialWindowSize, value: 1 << 20)))
        _ = try state.received(self.headers(1))
        XCTAssertEqual(state.stream(1)?.receiveWindow, 65_535, "not acknowledged yet")
        _ = try state.received(.settingsAck)
        XCTAssertEqual(state.stream(1)?.receiveWindow, 1 << 20)
        _ = try state.received(self.headers(3))
        XCTAssertEqual(state.stream(3)?.receiveWindow, 1 << 20)

        XCTAssertTrue(state.sentHeaders(on: 1, endStream: false))
        state.sentData(on: 1, length: 16_384, endStream: false)
        XCTAssertEqual(try state.received(.settings([HTTP2WireSetting(identifier: HTTP2WireSetting.initialWindowSize, value: 1_000),
                                                     HTTP2WireSetting(identifier: HTTP2WireSetting.headerTableSize, value: 0),
                                                     HTTP2WireSetting(identifier: HTTP2WireSetting.headerTableSize, value: 2_048),
                                                     HTTP2WireSetting(identifier: HTTP2WireSetting.maxFrameSize, value: 20_000)])),
                       .acknowledgeSettings)
        XCTAssertEqual(state.stream(1)?.sendWindow, 1_000 - 16_384)
        XCTAssertEqual(state.sendable(on: 1), 0)
        XCTAssertEqual(state.stream(3)?.sendWindow, 1_000)
        XCTAssertEqual(state.peerMaxFrameSize, 20_000)
        _ = try state.received(.windowUpdate(stream: 0, increment: 1_000_000))
        _ = try state.received(self.headers(5))
        _ = try state.received(.settings([HTTP2WireSetting(identifier: HTTP2WireSetting.initialWindowSize, value: 100_000)]))
        XCTAssertEqual(state.sendable(on: 5), 20_000, "the client's frame size bounds it")
        _ = try state.received(.windowUpdate(stream: 3, increment: 1))
        XCTAssertEqual(self.code(&state, .settings([HTTP2WireSetting(identifier: HTTP2WireSetting.initialWindowSize, value: 0x7FFF_FFFF)])), .flowControlError,
                       "stream 3's window over 2^31-1")
    }

    func testTheDrainsGoAwayAndTheGlitchLimit() throws {
        var state = HTTP2ServerConnectionState(limits: .init(maxGlitches: 3))
        _ = try state.received(self.headers(1))
        state.sentGoAway(lastStream: 0x7FFF_FFFF)
        _ = try state.received(self.headers(3))
        state.sentGoAway(lastStream: 3)
        state.sentGoAway(lastStream: 0x7FFF_FFFF)
        XCTAssertEqual(state.goAwayLastStream, 3, "a later GOAWAY never raises it")
        XCTAssertEqual(try state.received(self.headers(5)), .discardFieldBlock(self.block), "past the GOAWAY: not served, not answered")
        XCTAssertEqual(try state.received(.goAway(lastStream: 0, code: 0, debug: ByteBuffer())), .goingAway(lastStream: 0, code: 0))
        XCTAssertEqual(try state.received(self.data(5, 10)), .nothing, "DATA of a stream past the GOAWAY: no glitch, the client sent it before it knew")
        XCTAssertEqual(state.glitches, 0)
        for _ in 0..<10 { XCTAssertEqual(try state.received(.ignored(type: 0x20)), .nothing) }
        XCTAssertEqual(state.glitches, 0, "frames of unknown types are ignored (RFC 9113 5.5), not glitches")
        XCTAssertEqual(try state.received(self.data(1, 0)), .data(stream: 1, data: ByteBuffer(), endStream: false, flowControlled: 0))
        XCTAssertEqual(try state.received(.invalid(stream: 3, type: .priority, code: .frameSizeError, reason: "short")), .resetStream(stream: 3, code: .frameSizeError, reason: "short"))
        XCTAssertEqual(try state.received(self.data(1, 0)), .data(stream: 1, data: ByteBuffer(), endStream: false, flowControlled: 0))
        XCTAssertEqual(state.glitches, 3)
        XCTAssertEqual(self.code(&state, self.data(1, 0)), .enhanceYourCalm)
    }

    /// RFC 9113 §8.1.1: DATA must add up to the content-length; §5.3.1: a stream may not
    /// depend on itself; §5.1: only PRIORITY may name an idle stream.
    func testContentLengthSelfDependencyAndIdleStreams() throws {
        var state = HTTP2ServerConnectionState()
        _ = try state.received(self.headers(1))
        XCTAssertTrue(state.expectBody(on: 1, length: 3))
        _ = try state.received(self.data(1, 2))
        XCTAssertEqual(try state.received(self.data(1, 2)), .resetStream(stream: 1, code: .protocolError, reason: "a request body of another length than its content-length"))
        _ = try state.received(self.headers(3))
        XCTAssertTrue(state.expectBody(on: 3, length: 3))
        XCTAssertEqual(try state.received(self.data(3, 2, end: true)), .resetStream(stream: 3, code: .protocolError, reason: "a request body of another length than its content-length"))
        _ = try state.received(self.headers(5))
        XCTAssertTrue(state.expectBody(on: 5, length: 3))
        XCTAssertEqual(try state.received(self.headers(5, end: true)), .refuseFieldBlock(self.block, stream: 5, code: .protocolError), "trailers before the whole body")
        _ = try state.received(self.headers(7, end: true))
        XCTAssertFalse(state.expectBody(on: 7, length: 3), "ended with no DATA")
        XCTAssertTrue(state.expectBody(on: 7, length: 0))
        _ = try state.received(self.headers(9))
        XCTAssertTrue(state.expectBody(on: 9, length: 2))
        XCTAssertEqual(try state.received(self.data(9, 2, end: true)), .data(stream: 9, data: ByteBuffer(repeating: 0x61, count: 2), endStream: true, flowControlled: 2))

        XCTAssertEqual(try state.received(.headers(stream: 11, block: self.block, endStream: true, priority: HTTP2WirePriority(exclusive: false, dependency: 11, weight: 1))),
                       .refuseFieldBlock(self.block, stream: 11, code: .protocolError))
        XCTAssertNil(state.stream(11))
        XCTAssertEqual(state.lastStreamID, 11)
        XCTAssertEqual(try state.received(.invalid(stream: 13, type: .priority, code: .frameSizeError, reason: "short")), .nothing, "PRIORITY on an idle stream: dropped")
        XCTAssertEqual(self.code(&state, .invalid(stream: 13, type: .windowUpdate, code: .protocolError, reason: "0")), .protocolError,
                       "WINDOW_UPDATE on an idle stream: a connection error")
    }

    /// DATA the client sent before it saw the gateway's reset (an upload answered early
    /// and reset with NO_ERROR, RFC 9113 §8.1) is no glitch; DATA on streams that ended
    /// both ways is.
    func testDataInFlightOnAStreamTheGatewayResetIsNoGlitch() throws {
        var state = HTTP2ServerConnectionState(limits: .init(maxConcurrentStreams: 40, maxGlitches: 5))
        for id in stride(from: UInt32(1), through: 79, by: 2) {
            _ = try state.received(self.headers(id))
            XCTAssertTrue(state.sentHeaders(on: id, endStream: true))
            state.sentReset(on: id)
        }
        for id in stride(from: UInt32(79), through: 17, by: -2) {
            XCTAssertEqual(try state.received(self.data(id, 100)), .nothing)
        }
        XCTAssertEqual(state.glitches, 0, "the last 32 streams reset")
        XCTAssertEqual(try state.received(self.data(15, 100)), .nothing)
        XCTAssertEqual(state.glitches, 1, "an older one")
        _ = try state.received(self.headers(81, end: true))
        XCTAssertTrue(state.sentHeaders(on: 81, endStream: true))
        XCTAssertEqual(try state.received(self.data(81, 1)), .nothing)
        XCTAssertEqual(state.glitches, 2, "a stream closed both ways")
    }
}
