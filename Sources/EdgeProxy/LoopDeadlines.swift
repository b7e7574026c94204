import NIOCore

/// Something that waits for a deadline in its loop's `LoopDeadlines`.
protocol DeadlineOwner: AnyObject {
    /// The owner's place in the queue, -1 when it is not queued. Only the queue sets it.
    var deadlineSlot: Int { get set }
    /// The deadline it was queued with has passed; it is no longer queued.
    func deadlineReached(now: NIODeadline)
}

/// The header and idle deadlines of one event loop's client connections: one binary
/// heap under one NIO timer, instead of a NIO scheduled task per connection.
///
/// A scheduled task is a promise, a future, two closure contexts and a heap entry in
/// NIO's queue: about 0.3 KiB that every idle connection held (nginx keeps its timers
/// in a red-black tree threaded through its connection structs). Here a connection
/// costs one 24-byte heap entry while it waits. Like the per-connection timers before
/// it, an owner moves its deadline later without touching the queue and re-queues
/// itself when the old deadline is reached first, so a request costs a clock read.
final class LoopDeadlines {
    private struct Entry {
        var deadline: NIODeadline
        var owner: any DeadlineOwner
    }

    private let eventLoop: EventLoop
    private var heap: [Entry] = []
    /// The NIO timer for the earliest deadline, and when it fires.
    private var timer: Scheduled<Void>?
    private var timerDeadline: NIODeadline?

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    /// How many owners are waiting.
    var count: Int { self.heap.count }

    /// Makes sure `owner` is reached no later than `deadline`: queues it, or moves its
    /// entry earlier. An entry due sooner stays as it is (the owner, reached early,
    /// re-queues itself for its later deadline), so moving a deadline later is free.
    func schedule(_ owner: any DeadlineOwner, at deadline: NIODeadline) {
        self.eventLoop.assertInEventLoop()
        let slot = owner.deadlineSlot
        if slot >= 0 {
            guard deadline < self.heap[slot].deadline else { return }
            self.heap[slot].deadline = deadline
            self.siftUp(slot)
        } else {
            self.heap.append(Entry(deadline: deadline, owner: owner))
            owner.deadlineSlot = self.heap.count - 1
            self.siftUp(self.heap.count - 1)
        }
        self.armTimer()
    }

    /// Takes `owner` out of the queue, if it is in it.
    func cancel(_ owner: any DeadlineOwner) {
        let slot = owner.deadlineSlot
        guard slot >= 0 else { return }
        self.remove(at: slot)
        if self.heap.isEmpty {
            self.timer?.cancel()
            self.timer = nil
            self.timerDeadline = nil
        }
        // Otherwise the timer may fire early for the new first entry; it re-arms then.
    }

    private func remove(at slot: Int) {
        self.heap[slot].owner.deadlineSlot = -1
        let last = self.heap.removeLast()
        guard slot < self.heap.count else { return }
        self.heap[slot] = last
        last.owner.deadlineSlot = slot
        self.siftDown(slot)
        self.siftUp(slot)
    }

    private func armTimer() {
        guard let first = self.heap.first?.deadline else { return }
        if let armed = self.timerDeadline, armed <= first { return }  // fires in time and re-arms
        self.timer?.cancel()
        self.timerDeadline = first
        self.timer = self.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: first) {
            self.fire()
        }
    }

    private func fire() {
        self.timer = nil
        self.timerDeadline = nil
        let now = self.eventLoop.now  // the system's clock, except on a test's embedded loop
        while let first = self.heap.first, first.deadline <= now {
            self.remove(at: 0)
            first.owner.deadlineReached(now: now)
        }
        self.armTimer()
    }

    private func siftUp(_ start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            guard self.heap[child].deadline < self.heap[parent].deadline else { return }
            self.swapAt(child, parent)
            child = parent
        }
    }

    private func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1
            guard left < self.heap.count else { return }
            let right = left + 1
            let child = right < self.heap.count && self.heap[right].deadline < self.heap[left].deadline ? right : left
            guard self.heap[child].deadline < self.heap[parent].deadline else { return }
            self.swapAt(child, parent)
            parent = child
        }
    }

    private func swapAt(_ a: Int, _ b: Int) {
        self.heap.swapAt(a, b)
        self.heap[a].owner.deadlineSlot = a
        self.heap[b].owner.deadlineSlot = b
    }
}
