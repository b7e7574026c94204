@testable import EdgeTLS
import NIOCore
import XCTest

final class ReceiveBuffersTests: XCTestCase {
    /// The allocator keeps NIO's adaptive rule, in place in the channel's existential.
    func testAllocatorSizesReadsAsNIOsAdaptiveAllocatorAfterA64ByteFirstRead() {
        XCTAssertLessThanOrEqual(MemoryLayout<ReceiveBuffers.Allocator>.size, 3 * MemoryLayout<Int>.size, "fits an existential's inline buffer")
        var generator = SystemRandomNumberGenerator()
        for round in 0..<200 {
            var ours = ReceiveBuffers.Allocator()
            XCTAssertEqual(ours.nextBufferSize(), ReceiveBuffers.firstReadBytes)
            XCTAssertEqual(ours.buffer(allocator: ByteBufferAllocator()).capacity, ReceiveBuffers.firstReadBytes)
            XCTAssertTrue(ours.record(actualReadBytes: ReceiveBuffers.firstReadBytes))
            var nio = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 2_048, maximum: 65_536)
            for step in 0..<400 {
                XCTAssertEqual(ours.nextBufferSize(), nio.nextBufferSize(), "round \(round), step \(step)")
                let size = nio.nextBufferSize()!
                // Full reads, small reads, reads just around the thresholds, and anything.
                let read: Int
                switch Int.random(in: 0..<5, using: &generator) {
                case 0: read = size
                case 1: read = Int.random(in: 0...(size / 2), using: &generator)
                case 2: read = size / 2 + Int.random(in: -1...1, using: &generator)
                case 3: read = Int.random(in: 1...16, using: &generator)
                default: read = Int.random(in: 0...size, using: &generator)
                }
                XCTAssertEqual(ours.record(actualReadBytes: read), nio.record(actualReadBytes: read), "round \(round), step \(step), read \(read)")
            }
        }
    }
}
