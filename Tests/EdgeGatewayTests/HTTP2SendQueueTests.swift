@testable import EdgeProxy
import NIOCore
import XCTest

/// The own engine's send queue: windows, turns between streams, trailers behind DATA.
final class HTTP2SendQueueTests: XCTestCase {
    typealias Queue = HTTP2SendQueue<String, String>

    /// Each frame as "stream:kind:length-or-fields[:end][@completion]".
    private func drain(_ queue: inout Queue, _ state: inout HTTP2ServerConnectionState) -> [String] {
        var out: [String] = []
        while let frame = queue.next(&state) {
            switch frame {
            case .data(let stream, let data, let end, let completion):
                out.append("\(stream):data:\(data.readableBytes)\(end ? ":end" : "")\(completion.map { "@" + $0 } ?? "")")
            case .fields(let stream, let fields, let end, let completion):
                out.append("\(stream):fields:\(fields)\(end ? ":end" : "")\(completion.map { "@" + $0 } ?? "")")
            }
        }
        return out
    }

    private func openedState(_ streams: [UInt32]) throws -> HTTP2ServerConnectionState {
        var state = HTTP2ServerConnectionState()
        for id in streams {
            _ = try state.received(.headers(stream: id, block: ByteBuffer(), endStream: true, priority: nil))
            _ = state.sentHeaders(on: id, endStream: false)
        }
        return state
    }

    func testStreamsTakeTurnsWithinTheWindowsAndTrailersWaitBehindData() throws {
        var state = try self.openedState([1, 3])
        var queue = Queue()
        queue.append(.data(ByteBuffer(repeating: 1, count: 100_000), endStream: false), on: 1, completion: "big")
        queue.append(.data(ByteBuffer(repeating: 2, count: 10), endStream: false), on: 3, completion: "small")
        queue.append(.fields("trailers", endStream: true), on: 3, completion: "t")
        queue.append(.data(ByteBuffer(), endStream: true), on: 1, completion: "end")
        XCTAssertEqual(queue.queuedBytes(on: 1), 100_000)
        XCTAssertEqual(self.drain(&queue, &state), ["1:data:16384", "3:data:10@small", "1:data:16384", "3:fields:trailers:end@t", "1:data:16384", "1:data:16373"],
                       "one frame a turn, in the connection's 65,535 bytes")
        XCTAssertNil(state.stream(3), "stream 3 is done both ways")
        XCTAssertEqual(queue.queuedBytes(on: 1), 100_000 - 65_525)
        _ = try state.received(.windowUpdate(stream: 0, increment: 100_000))
        XCTAssertEqual(self.drain(&queue, &state), ["1:data:10"], "stream 1's own window is at 0 now")
        _ = try state.received(.windowUpdate(stream: 1, increment: 50_000))
        XCTAssertEqual(self.drain(&queue, &state), ["1:data:16384", "1:data:16384", "1:data:1697@big", "1:data:0:end@end"])
        XCTAssertTrue(queue.isEmpty)
        XCTAssertNil(state.stream(1))
    }

    func testAnEmptyEndPassesClosedWindowsAndADroppedStreamGivesBackItsCompletions() throws {
        var state = try self.openedState([1, 3])
        var queue = Queue()
        queue.append(.data(ByteBuffer(repeating: 1, count: 70_000), endStream: false), on: 1, completion: "a")
        queue.append(.fields("trailers", endStream: true), on: 1, completion: "b")
        XCTAssertEqual(self.drain(&queue, &state).count, 4)
        queue.append(.data(ByteBuffer(), endStream: true), on: 3, completion: "c")
        XCTAssertEqual(self.drain(&queue, &state), ["3:data:0:end@c"], "no window is needed to end a stream")
        XCTAssertTrue(queue.hasParts(on: 1))
        state.sentReset(on: 1)
        XCTAssertEqual(queue.drop(stream: 1), ["a", "b"])
        XCTAssertTrue(queue.isEmpty)
        XCTAssertEqual(queue.drop(stream: 1), [])
    }
}
