import NIOCore
import NIOHTTP2
import NIOPosix
import EdgeTLS

/// Keep-alive connections of one event loop: the I/O around `PoolState`. It opens
/// connections (TCP, then TLS with the group's peer options), and performs what the
/// state machine decides: closing evicted and expired connections, arming the loop's
/// one idle timer, counting idle connections per backend. Only touched on its loop,
/// so no locks: each downstream connection uses the pool of its own loop.
package final class UpstreamPool {
    typealias Slot = PoolState<PoolKey, UpstreamConnection>.Slot

    let eventLoop: EventLoop
    private var state = PoolState<PoolKey, UpstreamConnection>()
    private var idleTimer: Scheduled<Void>?
    /// Counts the idle timers armed (and cancelled): a timer runs only if it is the last.
    private var idleTimerArmings = 0
    private let recordBuffers: RecordBufferSweep
    /// The slots of the group this loop took a connection for last, by backend index,
    /// and the client certificate generation they were for: most requests go where the
    /// one before went, and this finds their slot without building and hashing a key
    /// (2.6 % of a keep-alive request's instructions). Holds the group, so its identity
    /// cannot be reused by a newer group.
    private var recentGroup: UpstreamGroup?
    private var recentGeneration = 0
    private var recentSlots: [Slot?] = []
    /// HTTP/2 connections by key (`HTTP2Lane`): each leases streams while it has room,
    /// idle or not, and requests wait there for a stream.
    var lanes: [PoolKey: LaneEntry] = [:]

    init(eventLoop: EventLoop, recordBuffers: RecordBufferSweep) {
        self.eventLoop = eventLoop
        self.recordBuffers = recordBuffers
    }

    /// Idle connections of backend `index` of `group`, most recently used last (tests).
    func idle(group: UpstreamGroup, backend index: Int) -> [UpstreamConnection] {
        self.state.idle(for: self.key(group: group, backend: index))
    }

    private func key(group: UpstreamGroup, backend: Int, generation: Int? = nil) -> PoolKey {
        PoolKey(backend: group.states[backend], address: group.backends[backend].address,
                generation: generation ?? group.tls?.generation ?? 0)
    }

    /// The slot of backend `index`, from `recentSlots` when the group is the recent
    /// one, otherwise from the state machine (and remembered).
    private func slot(group: UpstreamGroup, backend index: Int) -> Slot? {
        let generation = group.tls?.generation ?? 0
        let recent = group === self.recentGroup && generation == self.recentGeneration
        if recent, let slot = self.recentSlots[index], self.state.isCurrent(slot) { return slot }
        guard let slot = self.state.slot(for: self.key(group: group, backend: index, generation: generation)) else { return nil }
        if !recent {
            self.recentGroup = group
            self.recentGeneration = generation
            self.recentSlots.removeAll(keepingCapacity: true)
            self.recentSlots.append(contentsOf: repeatElement(nil, count: group.backends.count))
        }
        self.recentSlots[index] = slot
        return slot
    }

    /// A new connection to backend `index`, ready once TCP (and TLS) are up. With
    /// `http1Only`, an `auto` group's handshake offers http/1.1 alone: a WebSocket
    /// handshake needs HTTP/1.1's upgrade, which HTTP/2 cannot carry.
    /// An h2 or h2c group's request waits for a stream of a connection under way or to
    /// be opened (`HTTP2Lane`), rather than opening one connection per request; so does
    /// an auto group's, unless its backend chose http/1.1 last time or the request needs
    /// a connection of its own (`fresh`: a retry after a stale reused one).
    func open(group: UpstreamGroup, backend index: Int, http1Only: Bool = false, fresh: Bool = false) -> EventLoopFuture<UpstreamConnection> {
        let key = self.key(group: group, backend: index)
        switch group.upstreamProtocol {
        case .h2, .h2c:
            return self.waitForStream(group: group, backend: index, key: key)
        case .auto where !http1Only && !fresh && self.lanes[key]?.choseHTTP2 != false:
            return self.waitForStream(group: group, backend: index, key: key)
        case .auto, .http1:
            return self.openUnpooled(group: group, backend: index, key: key, http1Only: http1Only)
        }
    }

    /// A connection of the request's own: HTTP/1.1, or an auto group's that agreed on h2
    /// (its first stream the request's, the others leased from the lane).
    func openUnpooled(group: UpstreamGroup, backend index: Int, key: PoolKey, http1Only: Bool) -> EventLoopFuture<UpstreamConnection> {
        self.connect(group: group, backend: index, key: key, http1Only: http1Only).assumeIsolated().map { opened -> UpstreamConnection in
            switch opened {
            case .http1(let connection):
                return connection
            case .http2(let session):
                // An auto group's backend agreed to h2: this request's stream first, then
                // the connection leases to others.
                let lease = session.lease()
                self.added(session, group: group, backend: index, viaLane: false)
                return lease
            }
        }.nonisolated()
    }

    /// The most recently used idle connection to backend `index`, if one is alive; on a
    /// group that may speak HTTP/2, first a stream of an HTTP/2 connection with room
    /// (unless requests already wait for one: they go first).
    func takeIdle(group: UpstreamGroup, backend index: Int) -> UpstreamConnection? {
        self.eventLoop.assertInEventLoop()
        if group.upstreamProtocol.mayBeHTTP2, let entry = self.lanes[self.key(group: group, backend: index)], entry.lane.waiters.isEmpty,
           let session = entry.lane.sessions.first(where: { $0.freeStreams > 0 }) {
            return session.lease()
        }
        guard let slot = self.slot(group: group, backend: index) else { return nil }
        while let connection = self.state.take(from: slot) {
            connection.key.backend.idleConnectionsChanged(by: -1)
            connection.handler.owner = .none
            if connection.channel.isActive { return connection }
            connection.close()  // closed, and the news not yet through the pipeline
        }
        return nil
    }

    /// Takes back a connection whose exchange finished cleanly, to idle (or to close,
    /// when its backend keeps no idle connections, or it served its
    /// `max_requests_per_connection`); a stream goes back to its HTTP/2 connection.
    func release(_ connection: UpstreamConnection, group: UpstreamGroup) {
        self.eventLoop.assertInEventLoop()
        if let stream = connection.stream {
            stream.session.end(stream)
            return
        }
        connection.handler.owner = .none
        guard connection.channel.isActive else { return }
        if group.maxRequestsPerConnection > 0, connection.uses >= group.maxRequestsPerConnection {
            connection.close()  // served its max_requests_per_connection
            return
        }
        switch self.state.release(connection, key: connection.key, known: connection.slot, now: .now(),
                                  idleTimeout: group.timeouts.idle, maxIdle: group.maxIdlePerBackend) {
        case .close:
            connection.close()
        case .pooled(let slot, let evicted, let wakeup):
            connection.slot = slot
            connection.handler.owner = .pool(self)
            connection.key.backend.idleConnectionsChanged(by: 1)
            if let evicted { self.drop(evicted) }
            if let wakeup { self.armIdleTimer(at: wakeup) }
        }
    }

    /// An idle connection closed (`UpstreamHandler.channelInactive`): it leaves the pool.
    func closed(_ connection: UpstreamConnection) {
        if let slot = connection.slot, self.state.closed(connection, in: slot) {
            connection.key.backend.idleConnectionsChanged(by: -1)
        }
    }

    /// Closes every idle connection (the pool's configuration generation has ended).
    package func closeIdle() {
        self.eventLoop.assertInEventLoop()
        // HTTP/2 connections lease no more streams; busy ones close after their last.
        self.retireLanes()
        self.idleTimer?.cancel()
        self.idleTimer = nil
        self.idleTimerArmings &+= 1
        self.recentGroup = nil
        self.recentSlots = []
        for connection in self.state.removeAll() { self.drop(connection) }
    }

    /// Closes a connection the state machine let go of while it idled.
    private func drop(_ connection: UpstreamConnection) {
        connection.handler.owner = .none
        connection.key.backend.idleConnectionsChanged(by: -1)
        connection.close()
    }

    /// One timer for the loop's idle connections, due at the earliest idle deadline.
    private func armIdleTimer(at deadline: NIODeadline) {
        self.idleTimer?.cancel()
        self.idleTimerArmings &+= 1
        let arming = self.idleTimerArmings
        self.idleTimer = self.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: deadline) {
            // A timer cancelled once NIO had taken it up to run in this pass runs anyway:
            // only the last one armed acts, or two timers would live on.
            guard arming == self.idleTimerArmings else { return }
            self.idleTimer = nil
            let (expired, next) = self.state.timerFired(now: .now())
            for connection in expired { self.drop(connection) }
            if let next { self.armIdleTimer(at: next) }
        }
    }

    /// What a connect opened: an HTTP/1.1 connection, or an HTTP/2 one whose streams are leased.
    enum Opened {
        case http1(UpstreamConnection)
        case http2(HTTP2UpstreamSession)
    }

    func connect(group: UpstreamGroup, backend index: Int, key: PoolKey, http1Only: Bool) -> EventLoopFuture<Opened> {
        let backend = group.backends[index]
        let ready = self.eventLoop.makePromise(of: Void.self)
        let result = self.eventLoop.makePromise(of: Opened.self)
        let handler = UpstreamHandler(ready: ready, needsHandshake: group.tls != nil, backend: backend.description,
                                      maxHeadBytes: group.maxResponseHeadBytes, requiredALPN: group.upstreamProtocol.requiredALPN,
                                      http2: group.upstreamProtocol.mayBeHTTP2)
        let alpn = http1Only && group.upstreamProtocol == .auto ? ["http/1.1"] : nil
        // The initializer runs on this pool's loop, the only place the handler is touched.
        let boundHandler = NIOLoopBound(handler, eventLoop: self.eventLoop)
        let tls = group.tls
        let tlsHandler: NIOLoopBound<OpenSSLHandler>?
        do {
            if let tls {
                // One session per backend entry (entries on one address may have other
                // names) and context generation, read with the context itself.
                let current = tls.currentContext
                let slot = tls.sessionSlot(for: "\(index)#\(current.generation)")
                var configuration = TLSHandlerConfiguration()
                configuration.holdsFirstRead = true
                tlsHandler = NIOLoopBound(try OpenSSLHandler(clientContext: current.context, serverName: tls.serverName(for: backend),
                                                             verifyHostnames: tls.verifyNames(for: backend), allowCommonName: tls.allowCommonName,
                                                             sessionSlot: slot, alpn: alpn, configuration: configuration), eventLoop: self.eventLoop)
            } else {
                tlsHandler = nil
            }
        } catch {
            return self.eventLoop.makeFailedFuture(UpstreamError(kind: .tlsFailed, backend: backend.description, reason: "\(error)"))
        }
        let timeouts = group.timeouts
        let bootstrap = ClientBootstrap(group: self.eventLoop)
            .connectTimeout(timeouts.connect)
            .channelOption(.socketOption(.so_keepalive), value: group.tcpKeepalive ? 1 : 0)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    // Idle pooled connections keep 64 bytes of receive buffer, not their
                    // largest response read; the first handler holds the first read.
                    if let options = channel.syncOptions { try ReceiveBuffers.configure(options) }
                    let sync = channel.pipeline.syncOperations
                    // Named: without a name NIO formats one for each handler of each connection.
                    if let tlsHandler { try sync.addHandler(tlsHandler.value, name: "tls") }
                    try sync.addHandler(boundHandler.value, name: "upstream")
                }
            }
        let backendName = backend.description
        let started = NIODeadline.now()
        bootstrap.connect(to: backend.address).assumeIsolated().whenComplete { connected in
            switch connected {
            case .failure(let error):
                let kind: UpstreamError.Kind
                if case ChannelError.connectTimeout = error {
                    kind = .connectTimeout
                } else if isLocalResourceError(error) {
                    kind = .localResources
                } else {
                    kind = .connectFailed
                }
                let failure = UpstreamError(kind: kind, backend: backendName, reason: "connect failed: \(connectFailureReason(error))")
                ready.fail(failure)  // the channel never became active: nothing else completes it
                result.fail(failure)
            case .success(let channel):
                // TCP and TLS together stay within the total connection budget.
                let timer = self.eventLoop.assumeIsolated().scheduleTask(deadline: started + timeouts.totalConnection) {
                    ready.fail(UpstreamError(kind: .connectTimeout, backend: backendName, reason: "TLS handshake not done within the total connection timeout",
                                             tlsFailure: tlsHandler == nil ? nil : .timeout))
                    channel.close(promise: nil)
                }
                ready.futureResult.assumeIsolated().whenComplete { handshake in
                    timer.cancel()
                    switch handshake {
                    case .success:
                        group.connectSucceeded(index)
                        if let tlsHandler { self.recordBuffers.track(channel, tls: tlsHandler.value) }
                        if let tlsHandler, tlsHandler.value.sessionReused {
                            group.sessionResumed(on: index)
                        }
                        guard group.upstreamProtocol.speaksHTTP2(negotiated: handler.negotiatedALPN) else {
                            let connection = UpstreamConnection(channel: channel, key: key, handler: handler, backendIndex: index)
                            handler.connection = connection
                            result.assumeIsolated().succeed(.http1(connection))
                            return
                        }
                        group.states[index].http2ConnectionsOpened.wrappingIncrement(ordering: .relaxed)
                        let session: HTTP2UpstreamSession
                        do {
                            session = try Self.addHTTP2(to: channel, group: group, backend: index, key: key, before: handler)
                        } catch {
                            channel.close(promise: nil)
                            result.fail(UpstreamError(kind: .protocolError, backend: backendName, reason: "cannot start HTTP/2: \(error)"))
                            return
                        }
                        session.pool = self
                        session.assumedCapacity = self.lanes[key]?.lane.expectedCapacity ?? 1
                        let limits = [group.maxRequestsPerConnection, self.lanes[key]?.lane.requestLimit ?? 0].filter { $0 > 0 }
                        session.maxRequests = limits.min()
                        result.assumeIsolated().succeed(.http2(session))
                    case .failure(let error):
                        channel.close(promise: nil)
                        result.fail(error)
                    }
                }
            }
        }
        return result.futureResult
    }

    /// An h2 or h2c group's connection, or an auto group's that agreed on h2, speaks
    /// HTTP/2 from here on (after the TLS handshake): NIO's connection handler sends the
    /// preface and SETTINGS, and the session leases its streams.
    static func addHTTP2(to channel: Channel, group: UpstreamGroup, backend index: Int, key: PoolKey, before handler: UpstreamHandler) throws -> HTTP2UpstreamSession {
        let backend = group.backends[index]
        let settings: HTTP2Settings = [
            HTTP2Setting(parameter: .enablePush, value: 0),
            HTTP2Setting(parameter: .maxHeaderListSize, value: group.maxResponseHeadBytes),
        ]
        let session = HTTP2UpstreamSession(channel: channel, key: key, backendIndex: index, handler: handler, backend: backend.description,
                                           scheme: group.tls == nil ? "http" : "https", authority: backend.description,
                                           maxHeadBytes: group.maxResponseHeadBytes, maxStreams: group.maxStreamsPerConnection,
                                           idleTimeout: group.timeouts.idle, ping: group.ping)
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(HTTP2UpstreamSession.connectionHandler(settings: settings, session: session), name: "h2", position: .before(handler))
        try sync.addHandler(session, name: "h2-session", position: .before(handler))
        session.start()
        return session
    }
}

@available(*, unavailable)
extension UpstreamPool: Sendable {}
