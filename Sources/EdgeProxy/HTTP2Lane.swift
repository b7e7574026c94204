/// What a multiplexed HTTP/2 connection tells the pool about its room for streams.
protocol StreamRoom: AnyObject {
    /// Streams it may still lease now (0 when retired or closed).
    var freeStreams: Int { get }
    /// Streams it takes at most once the upstream's SETTINGS came (its
    /// SETTINGS_MAX_CONCURRENT_STREAMS, under the group's limit); nil before.
    var capacity: Int? { get }
}

/// One backend's HTTP/2 connections on one event loop, as a pure state machine: the
/// connections that lease streams, the connects under way, and the requests waiting for
/// a stream. Events return actions (lease a stream to a waiter, open a connection, fail
/// a waiter) that `UpstreamPool` performs; tested without sockets.
///
/// Why waiters at all: fifty requests that arrive together for a backend with no
/// connection yet would otherwise open fifty connections, one stream each, where an
/// HTTP/2 upstream wants one connection with many streams. A request waits for the
/// connects already under way when they can carry it (by the streams a connection of
/// this backend took last, or the group's limit), and more connections open only for
/// the requests they cannot, up to `max_connections_per_backend`. Before a new
/// connection's SETTINGS arrive, it is assumed to take what the last one did: a backend
/// that allows two streams is not sent a hundred to queue.
struct HTTP2Lane<Session: StreamRoom, Waiter: AnyObject> {
    enum Action {
        case lease(Session, to: Waiter)
        /// Open one more connection; its completion is `connected` or `connectFailed`.
        case connect
        case fail(Waiter)
    }

    private(set) var sessions: [Session] = []
    private(set) var connecting = 0
    private(set) var waiters: [Waiter] = []
    /// Streams a connection of this backend took last (what its SETTINGS allowed).
    private(set) var expectedCapacity: Int?
    /// Streams a connection of this backend was let to finish before a GOAWAY refused the
    /// rest: new connections take no more (and more connections open instead). Learned
    /// only when two GOAWAYs in a row said the same (a backend's limit, not a one-off
    /// reload), and forgotten after `learnedLimitConnections` connections, to be learned
    /// again if the backend still does it: a limit the backend dropped is not kept forever.
    private(set) var requestLimit: Int?
    private var limitSeen: Int?
    /// `connections` when the last GOAWAY count came: the next must come from a
    /// connection made after it (one reload's GOAWAYs on two connections are one event).
    private var limitSeenAfter = 0
    private var connectionsUnderLimit = 0
    /// Connections made so far (each gets its number, `HTTP2UpstreamSession.laneOrdinal`).
    private(set) var connections = 0
    static var learnedLimitConnections: Int { 64 }
    /// The group's `max_streams_per_connection`, the guess before any SETTINGS.
    let maxStreams: Int
    /// The group's `max_connections_per_backend` (0: no limit).
    let maxConnections: Int

    init(maxStreams: Int, maxConnections: Int) {
        self.maxStreams = max(1, maxStreams)
        self.maxConnections = max(0, maxConnections)
    }

    var isEmpty: Bool { self.sessions.isEmpty && self.connecting == 0 && self.waiters.isEmpty }

    /// A request wants a stream (no connection had one free when it looked).
    mutating func wait(_ waiter: Waiter) -> [Action] {
        self.waiters.append(waiter)
        return self.balance()
    }

    /// A connect finished with an HTTP/2 connection (counted as under way unless `opened`
    /// elsewhere, as an `auto` group's first connection is).
    mutating func connected(_ session: Session, viaLane: Bool = true) -> [Action] {
        if viaLane { self.connecting = max(0, self.connecting - 1) }
        self.connections += 1
        if self.requestLimit != nil {
            self.connectionsUnderLimit += 1
            if self.connectionsUnderLimit >= Self.learnedLimitConnections {
                (self.requestLimit, self.limitSeen, self.connectionsUnderLimit) = (nil, nil, 0)
            }
        }
        self.sessions.append(session)
        if let capacity = session.capacity { self.expectedCapacity = capacity }
        return self.balance()
    }

    /// A connect failed. No connect replaces it (a backend that refuses connections would
    /// get a storm of them): the waiters keep waiting for the connects still under way or
    /// for a stream of the connections there are; with neither, they fail with it (each
    /// request then tries another backend).
    mutating func connectFailed() -> [Action] {
        self.connecting = max(0, self.connecting - 1)
        guard self.connecting == 0, self.sessions.isEmpty else { return [] }
        let failed = self.waiters.map { Action.fail($0) }
        self.waiters.removeAll()
        return failed
    }

    /// A connect gave a connection that leases no streams (an `auto` group's backend chose
    /// http/1.1): it is no longer under way. The first waiter takes that connection
    /// (`served`). The others keep waiting while HTTP/2 connections or other connects
    /// may still carry them (`actions`); with neither, they leave the lane (`released`),
    /// to be served as HTTP/1.1 requests are.
    mutating func connectGaveNoStreams() -> (served: Waiter?, released: [Waiter], actions: [Action]) {
        self.connecting = max(0, self.connecting - 1)
        guard !self.waiters.isEmpty else { return (nil, [], []) }
        let served = self.waiters.removeFirst()
        guard self.sessions.isEmpty, self.connecting == 0 else { return (served, [], self.balance()) }
        let released = self.waiters
        self.waiters.removeAll()
        return (served, released, [])
    }

    /// A connection's room changed: a stream ended, or its SETTINGS came.
    mutating func roomChanged(_ session: Session) -> [Action] {
        if let capacity = session.capacity, self.sessions.contains(where: { $0 === session }) { self.expectedCapacity = capacity }
        return self.balance()
    }

    /// A connection takes no more streams (GOAWAY, closed, retired).
    mutating func removed(_ session: Session) -> [Action] {
        guard let index = self.sessions.firstIndex(where: { $0 === session }) else { return [] }
        self.sessions.remove(at: index)
        return self.balance()
    }

    /// A GOAWAY (NO_ERROR) refused streams after connection number `connection` had
    /// `processed`.
    mutating func learnRequestLimit(_ processed: Int, connection: Int) {
        guard processed == self.limitSeen else {
            // A new count: the reference from which a second one must come.
            (self.limitSeen, self.limitSeenAfter) = (processed, self.connections)
            return
        }
        // The same count from a connection made before the first came: one event (a
        // reload) seen twice; the reference stays (overlapping connections kept moving
        // it, and nothing was ever learned).
        guard connection > self.limitSeenAfter, processed >= 2, processed < self.requestLimit ?? Int.max else { return }
        self.requestLimit = processed
        self.connectionsUnderLimit = 0
    }

    /// Waiters handed a stream that was gone by the time they got it (a connection that
    /// closed or retired meanwhile) wait again, first in line.
    mutating func requeue(_ waiters: [Waiter]) -> [Action] {
        self.waiters.insert(contentsOf: waiters, at: 0)
        return self.balance()
    }

    /// A waiter gave up (its timeout); false if it was served or failed already.
    mutating func timedOut(_ waiter: Waiter) -> Bool {
        guard let index = self.waiters.firstIndex(where: { $0 === waiter }) else { return false }
        self.waiters.remove(at: index)
        return true
    }

    /// Waiters take the free streams, oldest waiter first and oldest connection first;
    /// connects open for the waiters left over that those under way will not carry.
    private mutating func balance() -> [Action] {
        var actions: [Action] = []
        var served = 0
        for session in self.sessions where served < self.waiters.count {
            let take = min(session.freeStreams, self.waiters.count - served)
            for k in 0..<max(0, take) { actions.append(.lease(session, to: self.waiters[served + k])) }
            served += max(0, take)
        }
        self.waiters.removeFirst(served)
        // A connection whose SETTINGS have not come yet counts as one under way: it will
        // carry what a connection of this backend carries once they do.
        let perConnection = max(1, min(self.expectedCapacity ?? self.maxStreams, self.maxStreams, self.requestLimit ?? Int.max))
        let unsettled = self.sessions.reduce(0) { $0 + ($1.capacity == nil ? 1 : 0) }
        while self.waiters.count > (self.connecting + unsettled) * perConnection,
              self.maxConnections == 0 || self.sessions.count + self.connecting < self.maxConnections {
            self.connecting += 1
            actions.append(.connect)
        }
        return actions
    }
}
