@testable import EdgeTLS
import NIOCore
import XCTest

final class ReceiveBuffersTests: XCTestCase {
    /// The allocator keeps NIO's adaptive rule, in place in the channel's existential.
    func testAllocatorSizesReadsAsNIOsAdaptiveAllocatorAfterA64ByteFirstRead() {
        XCTAssertLessThanOrEqual(MemoryLayout<ReceiveBuffers.Allocator>.size, 3 * MemoryLayout<Int>.size, "fits an existential's inline buffer")
        XCTAssertLessThanOrEqual(MemoryLayout<ReceiveBufferPin>.stride, MemoryLayout<ByteBuffer?>.stride + MemoryLayout<Int>.size,
                                 "a pin is its buffer and one word")
        var generator = SystemRandomNumberGenerator()
        for round in 0..<200 {
            var ours = ReceiveBuffers.Allocator(spare: SpareReadBuffer())
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

    /// A read's buffer, once recycled, is the next read's only when nobody holds it any
    /// more: a read never goes into storage that a connection still keeps.
    func testSpareReadBufferIsReusedOnlyWhenNobodyElseHoldsIt() {
        let allocator = ByteBufferAllocator()
        let spare = SpareReadBuffer.current
        var pin = ReceiveBufferPin(enabled: true)
        pin.hold(allocator.buffer(capacity: ReceiveBuffers.firstReadBytes))  // the channel's first read
        func base(_ buffer: ByteBuffer) -> UnsafeRawPointer? { buffer.withVeryUnsafeBytes { $0.baseAddress } }

        var read = spare.take(capacity: 2_048, allocator: allocator)
        read.writeString("a partial record")
        pin.recycle(read)
        // Still held (as a TLS connection holds a partial record): the next read gets new storage.
        let held = read
        read = ByteBuffer()
        var next = spare.take(capacity: 2_048, allocator: allocator)
        XCTAssertNotEqual(base(next), base(held))
        next.writeString("the next read")
        XCTAssertEqual(held.getString(at: held.readerIndex, length: held.readableBytes), "a partial record")
        XCTAssertNil(spare.buffer, "a held spare is dropped, not kept for later")

        // Let go of: the read after it reuses its storage, emptied.
        let storage = base(next)
        pin.recycle(next)
        next = ByteBuffer()
        // Had the storage been freed, this allocation of its size would most likely get it.
        let blocker = allocator.buffer(capacity: 2_048)
        let reused = spare.take(capacity: 2_048, allocator: allocator)
        XCTAssertEqual(base(reused), storage)
        XCTAssertNotEqual(base(blocker), storage)
        XCTAssertEqual(reused.readableBytes, 0)
        XCTAssertGreaterThanOrEqual(reused.capacity, 2_048)

        // Too small for the read asked for: a new buffer.
        pin.recycle(reused)
        let larger = spare.take(capacity: 4 * reused.capacity, allocator: allocator)
        XCTAssertGreaterThanOrEqual(larger.capacity, 4 * reused.capacity)
        // Much larger than the read asked for (an upload's 64 KiB for a 2 KiB read): not
        // what a connection that keeps its last read should keep. Dropped, a new one.
        let big = allocator.buffer(capacity: 65_536)
        let bigStorage = base(big)
        pin.recycle(big)
        let small = spare.take(capacity: 2_048, allocator: allocator)
        XCTAssertNotEqual(base(small), bigStorage)
        XCTAssertLessThan(small.capacity, 65_536)
        XCTAssertNil(spare.buffer)
        // The first read's 64 bytes and reads beyond 64 KiB are never kept.
        pin.recycle(allocator.buffer(capacity: ReceiveBuffers.firstReadBytes))
        XCTAssertNil(spare.buffer)
        pin.recycle(allocator.buffer(capacity: 256 * 1_024))
        XCTAssertNil(spare.buffer)
        // A pin of a channel whose reads are not its own (a TLS connection's plaintext) never recycles.
        var later = ReceiveBufferPin(enabled: false)
        later.hold(allocator.buffer(capacity: ReceiveBuffers.firstReadBytes))
        later.recycle(allocator.buffer(capacity: 2_048))
        XCTAssertNil(spare.buffer)
    }
}
