import NIOCore

/// A request waiting for a stream of an HTTP/2 connection (`HTTP2Lane`).
final class StreamWaiter {
    let promise: EventLoopPromise<UpstreamConnection>
    var timer: Scheduled<Void>?

    init(promise: EventLoopPromise<UpstreamConnection>) {
        self.promise = promise
    }
}

/// One key's HTTP/2 lane and what its connects need: the group and backend.
final class LaneEntry {
    var lane: HTTP2Lane<HTTP2UpstreamSession, StreamWaiter>
    let group: UpstreamGroup
    let index: Int
    let key: PoolKey
    /// An `auto` group's backend: whether its last connection agreed on h2 (nil: none
    /// yet). Its requests wait in the lane unless it last chose http/1.1.
    var choseHTTP2: Bool?

    init(group: UpstreamGroup, index: Int, key: PoolKey) {
        self.lane = HTTP2Lane(maxStreams: group.maxStreamsPerConnection, maxConnections: group.maxConnectionsPerBackend)
        self.group = group
        self.index = index
        self.key = key
    }
}

@available(*, unavailable)
extension StreamWaiter: Sendable {}

@available(*, unavailable)
extension LaneEntry: Sendable {}

/// The pool's HTTP/2 side: performs what each key's `HTTP2Lane` decides (leases streams
/// to waiting requests, opens connections, fails waiters) and keeps the connections'
/// idle counts.
extension UpstreamPool {
    private func entry(group: UpstreamGroup, backend index: Int, key: PoolKey) -> LaneEntry {
        if let entry = self.lanes[key] { return entry }
        let entry = LaneEntry(group: group, index: index, key: key)
        self.lanes[key] = entry
        return entry
    }

    /// The request gets a stream once a connection has one for it, or fails after the
    /// group's total connection timeout (every connection busy and no more allowed).
    func waitForStream(group: UpstreamGroup, backend index: Int, key: PoolKey) -> EventLoopFuture<UpstreamConnection> {
        let entry = self.entry(group: group, backend: index, key: key)
        let waiter = StreamWaiter(promise: self.eventLoop.makePromise(of: UpstreamConnection.self))
        // Past any connect under way for it (which fails by itself, and the waiter with
        // it): this is the wait for a stream of busy connections.
        let timeout = group.timeouts.totalConnection + group.timeouts.connect
        waiter.timer = self.eventLoop.assumeIsolated().scheduleTask(in: timeout) {
            guard entry.lane.timedOut(waiter) else { return }
            let limit = group.maxConnectionsPerBackend
            waiter.promise.fail(UpstreamError(kind: .streamsExhausted, backend: group.backends[index].description,
                                              reason: "no HTTP/2 stream free within \(timeout.nanoseconds / 1_000_000) ms"
                                                  + (limit > 0 ? " (max_connections_per_backend: \(limit))" : "")))
        }
        self.perform(entry.lane.wait(waiter), on: entry)
        return waiter.promise.futureResult
    }

    /// A new HTTP/2 connection leases streams from now on (opened for the lane's waiters,
    /// or by an auto group's request that found it speaks h2).
    func added(_ session: HTTP2UpstreamSession, group: UpstreamGroup, backend index: Int, viaLane: Bool) {
        let entry = self.entry(group: group, backend: index, key: session.key)
        entry.choseHTTP2 = true
        guard !session.retired else { return }  // it served its limit with the stream just leased
        session.laneOrdinal = entry.lane.connections + 1
        self.perform(entry.lane.connected(session, viaLane: viaLane), on: entry)
        session.idleIfUnused()
    }

    /// Performs the lane's plan. A promise completed here runs its exchange at once, which
    /// may end or retire a connection the plan leased from: each lease checks its room
    /// again, and a waiter it no longer fits waits again. Of the waiters a failed connect
    /// fails, the first counts the failure against the backend, the others only move on.
    private func perform(_ actions: [HTTP2Lane<HTTP2UpstreamSession, StreamWaiter>.Action], on entry: LaneEntry, failure: Error? = nil) {
        var again: [StreamWaiter] = []
        var failed = 0
        for action in actions {
            switch action {
            case .lease(let session, let waiter):
                guard session.freeStreams > 0 else {
                    again.append(waiter)
                    continue
                }
                waiter.timer?.cancel()
                waiter.promise.succeed(session.lease())
            case .connect:
                self.connectForLane(entry)
            case .fail(let waiter):
                waiter.timer?.cancel()
                var error = failure ?? UpstreamError(kind: .connectFailed, backend: entry.group.backends[entry.index].description,
                                                     reason: "no HTTP/2 connection")
                if failed > 0, var upstream = error as? UpstreamError {
                    upstream.countsAgainstBackend = false
                    error = upstream
                }
                failed += 1
                waiter.promise.fail(error)
            }
        }
        if !again.isEmpty { self.perform(entry.lane.requeue(again), on: entry) }
    }

    private func connectForLane(_ entry: LaneEntry) {
        self.connect(group: entry.group, backend: entry.index, key: entry.key, http1Only: false).assumeIsolated().whenComplete { result in
            switch result {
            case .success(.http2(let session)):
                entry.choseHTTP2 = true
                guard !session.retired else {
                    // It failed before it could lease (closed in its first turn).
                    self.perform(entry.lane.connectFailed(), on: entry)
                    return
                }
                session.laneOrdinal = entry.lane.connections + 1
                self.perform(entry.lane.connected(session), on: entry)
                session.idleIfUnused()
            case .success(.http1(let connection)) where entry.group.upstreamProtocol == .auto:
                // An auto group's backend chose http/1.1: the connection serves the first
                // waiter, and the others leave the lane for a connection each, as HTTP/1.1
                // requests get; later requests do not wait here until it agrees on h2 again.
                entry.choseHTTP2 = false
                let (served, released, actions) = entry.lane.connectGaveNoStreams()
                guard let served else {
                    self.release(connection, group: entry.group)  // its waiters gave up meanwhile
                    return
                }
                served.timer?.cancel()
                served.promise.succeed(connection)
                for waiter in released {
                    waiter.timer?.cancel()
                    self.openUnpooled(group: entry.group, backend: entry.index, key: entry.key, http1Only: false).cascade(to: waiter.promise)
                }
                self.perform(actions, on: entry)
            case .success(.http1(let connection)):
                // h2 and h2c groups' connections speak HTTP/2.
                connection.close()
                self.perform(entry.lane.connectFailed(), on: entry)
            case .failure(let error):
                self.perform(entry.lane.connectFailed(), on: entry, failure: error)
            }
        }
    }

    /// The configuration generation ended: its lanes retire their connections, and those
    /// with nothing left (no connection, connect or waiter) are forgotten. A lane is kept
    /// meanwhile, even empty: what it learned of its backend (SETTINGS, GOAWAYs) holds
    /// for the next connection.
    func retireLanes() {
        for session in self.lanes.values.flatMap(\.lane.sessions) { session.retire("the configuration generation ended") }
        self.lanes = self.lanes.filter { !$0.value.lane.isEmpty }
    }

    // MARK: what the connections report

    /// A session's first stream was leased: it is no longer idle.
    func sessionBusy(_ session: HTTP2UpstreamSession) {
        guard session.countedIdle else { return }
        session.countedIdle = false
        session.key.backend.idleConnectionsChanged(by: -1)
    }

    /// A session's last stream ended: it idles, counted as the backend's idle connection.
    func sessionIdle(_ session: HTTP2UpstreamSession) {
        guard !session.countedIdle else { return }
        session.countedIdle = true
        session.key.backend.idleConnectionsChanged(by: 1)
    }

    /// A stream ended or the upstream's SETTINGS came: waiting requests may take streams.
    func sessionHasRoom(_ session: HTTP2UpstreamSession) {
        guard let entry = self.lanes[session.key], !entry.lane.waiters.isEmpty || entry.lane.expectedCapacity != session.capacity else { return }
        self.perform(entry.lane.roomChanged(session), on: entry)
    }

    /// A GOAWAY refused streams after `processed` of them: later connections to the
    /// backend take no more than that.
    func sessionRefusedStreams(_ session: HTTP2UpstreamSession, processed: Int, ordinal: Int) {
        self.lanes[session.key]?.lane.learnRequestLimit(processed, connection: ordinal)
    }

    /// A session takes no new stream: it leaves its lane, and is no idle connection of
    /// its backend any more (over TLS, closing may take a while).
    func sessionRetired(_ session: HTTP2UpstreamSession) {
        self.sessionBusy(session)
        guard let entry = self.lanes[session.key] else { return }
        self.perform(entry.lane.removed(session), on: entry)
    }

    func sessionClosed(_ session: HTTP2UpstreamSession) {
        self.sessionRetired(session)
        session.pool = nil
    }
}
