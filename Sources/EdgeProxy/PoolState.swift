import NIOCore

/// The keep-alive pool of one event loop as a state machine: which connections idle,
/// for which key (backend entry and client-certificate generation), in which order,
/// until when. Its events return what to do; `UpstreamPool` does it (closing
/// connections, arming the loop's one idle timer, counting). No I/O, no clock: tests
/// drive it with connections that are plain objects and deadlines they choose.
///
/// Idle connections of one key form a stack, most recently used last: a request takes
/// the warmest connection (its TLS record buffers and the backend's keep-alive timer are
/// the freshest), the coldest ages out or is evicted first. All connections of a key
/// share one idle timeout (one key is one group's backend entry), so a stack is also
/// ordered by deadline and the earliest deadline of the pool is the first entry of one
/// of its stacks: one timer per loop, armed at that deadline, replaces a timer per
/// connection.
///
/// A key's stack is found once and named by a `Slot` that a connection keeps, so
/// releasing it again needs no hashing. `removeAll` (the configuration generation
/// ended) starts a new epoch: slots of the old one are stale and looked up afresh.
///
/// An HTTP/2 upstream connection will hold many exchanges at once; it idles here only
/// when it has none, so the machine stays the same and the exchanges are counted on
/// the connection (#32).
struct PoolState<Key: Hashable, Connection: AnyObject> {
    /// Names a key's stack in one epoch.
    struct Slot: Equatable {
        fileprivate let index: Int
        fileprivate let epoch: Int
    }

    private struct Entry {
        let connection: Connection
        let deadline: NIODeadline
    }

    /// A key's idle connections, least recently used first. Emptied stacks keep their
    /// place and capacity until the epoch ends: the keys are the configured backends
    /// times the client certificates rotated during one configuration generation.
    private var stacks: [[Entry]] = []
    private var slots: [Key: Int] = [:]
    private var epoch = 0
    /// When the idle timer is due, if armed.
    private(set) var wakeup: NIODeadline?

    init() {}

    /// Idle connections in all stacks.
    var idleCount: Int { self.stacks.reduce(0) { $0 + $1.count } }

    /// The idle connections of `key`, most recently used last (for tests and status).
    func idle(for key: Key) -> [Connection] {
        guard let index = self.slots[key] else { return [] }
        return self.stacks[index].map(\.connection)
    }

    /// The slot of `key`'s stack, if the key has one in this epoch.
    func slot(for key: Key) -> Slot? {
        self.slots[key].map { Slot(index: $0, epoch: self.epoch) }
    }

    /// Whether `slot` still names a stack (its epoch has not ended).
    func isCurrent(_ slot: Slot) -> Bool { slot.epoch == self.epoch }

    // MARK: events

    /// A request wants a connection for the key of `slot`: the most recently used one,
    /// which leaves the pool. Nil when none idles (or the slot is stale). The caller
    /// checks that it is still open; one that closed unnoticed is simply dropped.
    mutating func take(from slot: Slot) -> Connection? {
        guard slot.epoch == self.epoch else { return nil }
        return self.stacks[slot.index].popLast()?.connection
    }

    enum ReleaseAction {
        /// The key keeps no idle connections (`max_idle_per_backend: 0`): close it.
        case close
        /// Pooled in `slot`. `evicted` is the key's least recently used connection, pushed
        /// out by the cap: close it. With `wakeup`, arm (or move) the idle timer there.
        case pooled(slot: Slot, evicted: Connection?, wakeup: NIODeadline?)
    }

    /// An exchange ended cleanly on `connection` at `now`: it idles for `idleTimeout`,
    /// at most `maxIdle` per key. `known` is the slot the connection was pooled in
    /// before; a stale or missing one is looked up by `key`.
    mutating func release(_ connection: Connection, key: Key, known: Slot?, now: NIODeadline,
                          idleTimeout: TimeAmount, maxIdle: Int) -> ReleaseAction {
        guard maxIdle > 0 else { return .close }
        let index: Int
        if let known, known.epoch == self.epoch {
            index = known.index
        } else if let existing = self.slots[key] {
            index = existing
        } else {
            index = self.stacks.count
            self.stacks.append([])
            self.slots[key] = index
        }
        var evicted: Connection?
        if self.stacks[index].count >= maxIdle {
            evicted = self.stacks[index].removeFirst().connection
        }
        let deadline = now + idleTimeout
        self.stacks[index].append(Entry(connection: connection, deadline: deadline))
        var wakeup: NIODeadline?
        if self.wakeup.map({ deadline < $0 }) ?? true {
            self.wakeup = deadline
            wakeup = deadline
        }
        return .pooled(slot: Slot(index: index, epoch: self.epoch), evicted: evicted, wakeup: wakeup)
    }

    /// An idle connection closed (the backend ended it, or it broke): it leaves the
    /// pool. False when it was not idle here (taken already, or the epoch ended).
    mutating func closed(_ connection: Connection, in slot: Slot) -> Bool {
        guard slot.epoch == self.epoch,
              let position = self.stacks[slot.index].firstIndex(where: { $0.connection === connection }) else { return false }
        self.stacks[slot.index].remove(at: position)
        return true
    }

    /// The idle timer fired at `now`: the connections idle past their deadline leave
    /// the pool (close them), and `wakeup` is when the timer is due next, if at all.
    mutating func timerFired(now: NIODeadline) -> (expired: [Connection], wakeup: NIODeadline?) {
        var expired: [Connection] = []
        var next: NIODeadline?
        for index in self.stacks.indices {
            let due = self.stacks[index].prefix { $0.deadline <= now }.count
            if due > 0 {
                expired.append(contentsOf: self.stacks[index].prefix(due).map(\.connection))
                self.stacks[index].removeFirst(due)
            }
            if let first = self.stacks[index].first, next.map({ first.deadline < $0 }) ?? true {
                next = first.deadline
            }
        }
        self.wakeup = next
        return (expired, next)
    }

    /// The pool's configuration generation ended: every idle connection leaves (close
    /// them), every slot goes stale, the timer is no longer needed.
    mutating func removeAll() -> [Connection] {
        let all = self.stacks.flatMap { $0.map(\.connection) }
        self.stacks = []
        self.slots = [:]
        self.epoch += 1
        self.wakeup = nil
        return all
    }
}
