import NIOCore
import NIOPosix

/// Receive buffers that an idle connection does not keep.
///
/// NIO reads a channel into a buffer that it keeps for the channel's next read and
/// reuses while nothing else holds it. That buffer only grows, so every idle connection
/// kept the largest read it ever made: 1 KiB after a typical ClientHello, up to 64 KiB
/// after an upload, and several such buffers (up to `maxMessagesPerRead`) when a partial
/// TLS record was still held at the next read (84 KiB per idle TLS connection after a
/// 256 KiB upload). nginx frees a connection's buffers when it goes idle; with 10,000
/// keep-alive clients the difference is hundreds of megabytes.
///
/// A channel configured here makes its first read into 64 bytes, and its first handler
/// holds that buffer for the channel's life (`ReceiveBufferPin`). NIO never reuses a
/// buffer someone else holds, so every later read gets a new buffer, sized by NIO's
/// adaptive allocator and freed as soon as the read is processed: an idle connection
/// holds 64 bytes. The cost is an allocation per read (a thread-cache hit in malloc)
/// and one more read in a handshake. One read per wakeup: with more, NIO keeps a list
/// of buffers and reuses those instead.
package enum ReceiveBuffers {
    /// The first read's size, which is what an idle connection keeps.
    package static let firstReadBytes = 64

    /// Sets a channel's read options; its first handler must hold the first read
    /// (`ReceiveBufferPin`), or NIO grows and keeps that buffer as before.
    package static func configure(_ options: NIOSynchronousChannelOptions) throws {
        try options.setOption(.maxMessagesPerRead, value: 1)
        // The thread's spare is looked up once per channel (a thread-specific variable
        // costs about a hundred instructions): the channel reads on this thread only.
        try options.setOption(.recvAllocator, value: Allocator(spare: SpareReadBuffer.current))
    }

    /// 64 bytes first, then NIO's adaptive sizes (from 2 KiB, so a large ClientHello's
    /// remainder arrives in one read; 64 bytes to 64 KiB): the rule of NIO's
    /// `AdaptiveRecvByteBufferAllocator` (halve after two small reads in a row, double
    /// after a full one), kept in six bytes. NIO stores the allocator in an existential,
    /// which holds up to three words in place: wrapping NIO's own (three limits, a size
    /// and a flag) put a 64-byte box on the heap of every connection.
    ///
    /// `@unchecked Sendable` (NIO asks allocators to be): it holds its channel's thread's
    /// spare read buffer, which only that thread touches: the channel calls it there, and
    /// `configure` gives each channel its own copy (never set it as a bootstrap-wide
    /// option for several loops). `SpareReadBuffer` asserts this in debug builds.
    struct Allocator: RecvByteBufferAllocator, @unchecked Sendable {
        static let initial: UInt32 = 2_048
        static let minimum: UInt32 = 64
        static let maximum: UInt32 = 65_536

        private var size = UInt32(ReceiveBuffers.firstReadBytes)
        private var first = true
        private var decreaseNow = false
        /// This channel's thread's spare read buffer (`ReceiveBuffers.recycle`).
        private let spare: SpareReadBuffer

        init(spare: SpareReadBuffer) {
            self.spare = spare
        }

        func buffer(allocator: ByteBufferAllocator) -> ByteBuffer {
            // The first read's 64 bytes are the channel's for its life (`ReceiveBufferPin`).
            self.first ? allocator.buffer(capacity: Int(self.size)) : self.spare.take(capacity: Int(self.size), allocator: allocator)
        }

        func nextBufferSize() -> Int? {
            Int(self.size)
        }

        mutating func record(actualReadBytes: Int) -> Bool {
            if self.first {
                self.first = false
                self.size = Self.initial
                return true
            }
            let lower = self.size >> 1, upper = self.size << 1
            if actualReadBytes <= Int(lower) && lower >= Self.minimum {
                if self.decreaseNow { self.size = lower }
                self.decreaseNow.toggle()
                return false
            }
            self.decreaseNow = false
            if actualReadBytes >= Int(self.size) && upper <= Self.maximum {
                self.size = upper
                return true
            }
            return false
        }
    }
}

extension ReceiveBuffers {
    /// Hands a read's buffer, once its handler is done with it, to the next read on this
    /// event-loop thread (of any of its channels): a keep-alive request makes two reads
    /// (the client's request, the upstream's response), and allocating and freeing a
    /// buffer for each was 1.4 % of its instructions. Call it last in `channelRead`.
    ///
    /// The spare is taken for a read only when nothing else holds it any more (a TLS
    /// connection keeps a partial record in it, a body piece may still be queued): the
    /// check happens at the next read, after NIO and the handler let go of it, and a held
    /// spare is dropped rather than reused. So no storage is ever read into while someone
    /// holds it. A holder that writes to its bytes before that next read (none does today:
    /// reads are what append) copies them once, as if they were a new read's: never worse
    /// than allocating every read.
    ///
    /// `ReceiveBufferPin.recycle` calls it with the thread's spare that it looked up once.
    @inline(__always)
    static func recycle(_ buffer: ByteBuffer, into spare: SpareReadBuffer) {
        guard buffer.capacity >= Int(Allocator.initial), buffer.capacity <= Int(Allocator.maximum) else { return }
        spare.keep(buffer)
    }
}

/// The read buffer an event-loop thread's last read left behind (`ReceiveBuffers.recycle`).
final class SpareReadBuffer {
    private(set) var buffer: ByteBuffer?

    /// A buffer of at least `capacity` bytes for a read: the spare when nobody else
    /// holds it and it is of the read's size class (at most twice the size asked, or
    /// NIO's initial 2 KiB), else a new one. Some connections keep their last read while
    /// they wait (a partial head, a tunnel's upstream buffer): a 64 KiB spare left by an
    /// upload on the same thread must not become what each of them keeps.
    func take(capacity: Int, allocator: ByteBufferAllocator) -> ByteBuffer {
        assert(SpareReadBuffer.current === self, "a spare read buffer is its thread's only")
        if var buffer = self.buffer.take(), buffer.capacity >= capacity,
           buffer.capacity <= max(2 * capacity, Int(ReceiveBuffers.Allocator.initial)),
           buffer.modifyIfUniquelyOwned({ $0.clear() }) != nil {
            return buffer
        }
        return allocator.buffer(capacity: capacity)
    }

    fileprivate func keep(_ buffer: ByteBuffer) {
        assert(SpareReadBuffer.current === self, "a spare read buffer is its thread's only")
        self.buffer = buffer
    }

    /// A thread-specific variable rather than a global: freed with its thread.
    nonisolated(unsafe) private static let perThread = ThreadSpecificVariable<SpareReadBuffer>()

    static var current: SpareReadBuffer {
        if let spare = perThread.currentValue { return spare }
        let spare = SpareReadBuffer()
        perThread.currentValue = spare
        return spare
    }
}

/// Kept by the first handler of a channel set up with `ReceiveBuffers.configure`:
/// holds the channel's first read buffer so that NIO never reuses (and grows) it.
package struct ReceiveBufferPin {
    private var first: ByteBuffer?
    /// One word, as the flag it replaced was with its padding: an idle connection's
    /// handlers hold a pin each.
    private var mode: Mode

    private enum Mode {
        /// Not the first handler: what it reads is not a read's buffer.
        case off
        /// The first handler, before its first read.
        case waiting
        /// Holding the first read; the thread's spare read buffer was looked up with it
        /// (on the channel's thread, where reads happen).
        case holding(SpareReadBuffer)
    }

    package init(enabled: Bool) {
        self.mode = enabled ? .waiting : .off
    }

    @inline(__always)
    package mutating func hold(_ buffer: ByteBuffer) {
        if case .waiting = self.mode {
            self.first = buffer
            self.mode = .holding(SpareReadBuffer.current)
        }
    }

    /// `ReceiveBuffers.recycle`, for the first handler only: what a later handler gets is
    /// not a read's buffer (a TLS connection's plaintext is the thread's own buffer).
    @inline(__always)
    package func recycle(_ buffer: ByteBuffer) {
        if case .holding(let spare) = self.mode { ReceiveBuffers.recycle(buffer, into: spare) }
    }
}
