import EdgeTLS
import NIOCore

/// What every connection on one event loop shares, whatever its listener: the upstream
/// pool, the deadlines of client connections, the access log buffer, and the buffers
/// message heads are built and parsed in. Confined to its loop, so no locks; one per
/// loop and configuration generation.
package final class LoopContext {
    package let eventLoop: EventLoop
    let pool: UpstreamPool
    /// The header and idle deadlines of the loop's client connections.
    let deadlines: LoopDeadlines
    /// The loop's access log lines; nil without `access_log`.
    package let accessLog: AccessLogBuffer?
    /// Buffers the loop's proxy handlers build message heads in, one at a time:
    /// reused once the head was written, never held by an idle connection.
    var requestHeads = ReusableBuffer(maximumKeptCapacity: 16 * 1_024)
    var responseHeads = ReusableBuffer(maximumKeptCapacity: 16 * 1_024)
    /// Parsed request heads of finished exchanges, whose storage the loop's next
    /// requests parse into (`HTTPHead.refill`): two allocations fewer a request.
    /// Bounded in number and size; an idle connection holds none.
    private var spareRequestHeads: [HTTPHead] = []

    package init(eventLoop: EventLoop, accessLog: AccessLogFile? = nil) {
        self.eventLoop = eventLoop
        self.pool = UpstreamPool(eventLoop: eventLoop, recordBuffers: RecordBufferSweep(eventLoop: eventLoop))
        self.deadlines = LoopDeadlines(eventLoop: eventLoop)
        self.accessLog = accessLog.map { AccessLogBuffer(file: $0, eventLoop: eventLoop) }
    }

    func takeSpareRequestHead() -> HTTPHead {
        self.spareRequestHeads.popLast() ?? HTTPHead(bytes: [])
    }

    func recycle(_ head: consuming HTTPHead) {
        guard self.spareRequestHeads.count < 64, head.bytes.capacity <= 4_096, head.fields.capacity <= 64 else { return }
        self.spareRequestHeads.append(head)
    }

    /// Closes the pool's idle connections (the loop's configuration generation ended).
    package func closeIdle() {
        self.pool.closeIdle()
    }
}

@available(*, unavailable)
extension LoopContext: Sendable {}
