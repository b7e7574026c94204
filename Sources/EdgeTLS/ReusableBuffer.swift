import NIOCore
import NIOPosix

/// A buffer that is filled, handed to a channel, and filled again once the
/// channel let go of it, without a new allocation each time.
///
/// `take` moves the buffer out (so it is uniquely referenced if nobody else
/// still holds it) and clears it; `keep` stores what was handed out. When the
/// previous contents are still queued somewhere, `clear` copies on write and
/// the old storage is freed with the last write: never worse than allocating.
package struct ReusableBuffer {
    private var buffer = ByteBuffer()
    /// Larger buffers (a 16 KiB record, a big handshake flight) are not kept.
    private let maximumKeptCapacity: Int

    package init(maximumKeptCapacity: Int) {
        self.maximumKeptCapacity = maximumKeptCapacity
    }

    package mutating func take(minimumCapacity: Int) -> ByteBuffer {
        var taken = ByteBuffer()
        swap(&taken, &self.buffer)
        taken.clear(minimumCapacity: minimumCapacity)
        return taken
    }

    package mutating func keep(_ buffer: ByteBuffer) {
        if buffer.capacity <= self.maximumKeptCapacity { self.buffer = buffer }
    }
}

/// Buffers that the TLS connections of one event-loop thread share.
///
/// Per connection they would be held by every idle keep-alive connection (a few
/// KiB each, multiplied by 10,000 connections); per thread, the handlers of a
/// loop take turns with them, since they run one at a time.
final class TLSThreadBuffers {
    /// Plaintext of the last SSL_read on this thread.
    var plaintext = ReusableBuffer(maximumKeptCapacity: 16_384 + 1_024)
    /// Ciphertext being collected for the network.
    var ciphertext = ReusableBuffer(maximumKeptCapacity: 64 * 1_024)

    /// A thread-specific variable rather than a global: freed with its thread.
    nonisolated(unsafe) private static let perThread = ThreadSpecificVariable<TLSThreadBuffers>()

    static var current: TLSThreadBuffers {
        if let buffers = perThread.currentValue { return buffers }
        let buffers = TLSThreadBuffers()
        perThread.currentValue = buffers
        return buffers
    }
}
