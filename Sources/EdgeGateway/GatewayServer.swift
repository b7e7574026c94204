import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOHTTP2
import NIOPosix
import NIOTLS

/// One `LoopContext` (upstream pool, deadlines, access log buffer) per event loop,
/// built once at start and never mutated: each is only touched on its own loop.
final class PoolRegistry: @unchecked Sendable {
    // Immutable after init; each LoopContext is confined to its event loop.
    private let pools: [ObjectIdentifier: LoopContext]

    init(group: EventLoopGroup, accessLog: AccessLogFile?) {
        var pools: [ObjectIdentifier: LoopContext] = [:]
        for loop in group.makeIterator() {
            pools[ObjectIdentifier(loop)] = LoopContext(eventLoop: loop, accessLog: accessLog)
        }
        self.pools = pools
    }

    /// One value per event loop made with that loop's context (a listener's `ProxyListener`s).
    /// Each is used only on its own loop, as the context is.
    func perLoop<Value>(_ make: (LoopContext) -> Value) -> PerLoop<Value> {
        PerLoop(values: self.pools.mapValues(make))
    }

    /// Closes every idle pooled connection, each on its own loop (a drained generation's pools).
    func closeIdle(group: EventLoopGroup) {
        for loop in group.makeIterator() {
            let id = ObjectIdentifier(loop)
            loop.execute { self.pools[id]?.closeIdle() }
        }
    }

    /// Writes out every loop's buffered access log lines, each on its own loop.
    func flushAccessLogs(group: EventLoopGroup) async {
        for loop in group.makeIterator() {
            let id = ObjectIdentifier(loop)
            try? await loop.submit { self.pools[id]?.accessLog?.flush() }.get()
        }
    }
}

/// Values confined to their event loops, looked up by the loop a channel is on.
final class PerLoop<Value>: @unchecked Sendable {
    // Immutable after init; each value is used only on its own loop.
    private let values: [ObjectIdentifier: Value]

    fileprivate init(values: [ObjectIdentifier: Value]) {
        self.values = values
    }

    func value(for loop: EventLoop) -> Value {
        loop.assertInEventLoop()
        return self.values[ObjectIdentifier(loop)]!
    }
}

extension Gateway {
    /// Binds every listener and the admin endpoint. Throws with the listener's name on a bind failure.
    /// `previous`: a running gateway whose configuration this one replaces. It stops
    /// accepting, and this one serves on duplicates of its listening sockets (matched by
    /// address) before the caller shuts it down, so no connection is refused in between.
    package func start(group: EventLoopGroup, replacing previous: Gateway? = nil) async throws {
        let lifecycle = self.state.withLockedValue { state -> Lifecycle in
            defer {
                if state.lifecycle == .prepared {
                    state.lifecycle = .starting
                    state.binding = true
                }
            }
            return state.lifecycle
        }
        // A generation's sockets, helpers and jobs are its own: a second start would
        // leave the first's running with nothing to stop them.
        guard lifecycle == .prepared else {
            throw ConfigError(path: "", message: "cannot start: this configuration generation is \(lifecycle.rawValue) (a generation starts once)")
        }
        defer {
            let waiting = self.state.withLockedValue { state in
                defer {
                    state.binding = false
                    state.awaitingStart = []
                }
                return state.awaitingStart
            }
            for shutdown in waiting { shutdown.resume() }
        }
        // What fails `check` is served around: logged here, so that `check` says it once.
        for failure in self.checkFailures { self.logger.error("upstream client certificate unusable: \(failure)") }
        // Applying the plan: the access log is opened now, not when the file was validated.
        var accessLog: AccessLogFile?
        if let plan = self.accessLogPlan {
            do {
                accessLog = try AccessLogFile(path: plan.path, format: plan.format, logger: self.logger)
            } catch {
                throw ConfigError(path: "access_log.path", message: "\(error)")
            }
        }
        let pools = PoolRegistry(group: group, accessLog: accessLog)
        self.state.withLockedValue {
            $0.pools = (pools, group)
            $0.accessLog = accessLog
        }
        let jobs = BackgroundJobs(self.backgroundJobs(group: group), logger: self.logger)
        self.state.withLockedValue { $0.jobs = jobs }
        // The sockets of the configuration being replaced, or of a gateway process already
        // running with the same handoff socket; keyed by configured address.
        var handoff: SocketHandoff.Inherited?
        var available: [String: CInt] = [:]
        if let previous {
            previous.setAccepting(false)
            for socket in previous.state.withLockedValue({ Array($0.listenerSockets.values) }) {
                available[socket.address] = dup(socket.fd)
            }
        } else if let path = self.handoffSocket, let taken = SocketHandoff.takeOver(path: path, logger: self.logger) {
            handoff = taken
            for socket in taken.sockets.values { available[socket.address] = socket.fd }
        }
        defer { for unused in available.values { close(unused) } }
        func listeningSocket(name: String, address: String, resolved: SocketAddress) throws -> CInt {
            if let fd = available.removeValue(forKey: address) { return fd }
            return try makeListeningSocket(resolved)
        }
        for listener in self.listeners {
            // One helper per listener: a helper tracks the children of one server channel.
            let quiescing = ServerQuiescingHelper(group: group)
            let channel: Channel
            let addressText = "\(listener.host):\(listener.port)"
            do {
                let fd = try listeningSocket(name: listener.name, address: addressText, resolved: listener.address)
                channel = try await self.bind(listener, fd: fd, group: group, quiescing: quiescing, pools: pools)
                self.state.withLockedValue { $0.listenerSockets[listener.name] = (addressText, fd) }
            } catch {
                throw ConfigError(path: "listener '\(listener.name)'", message: "cannot bind \(listener.host):\(listener.port): \(error)")
            }
            // Kept only once bound: an unused helper fails its own promise as it goes away,
            // from whatever thread lets it go, and a drain that had asked it to shut down
            // would be answered on a loop that may have stopped by then (NIO's "Cannot
            // schedule tasks on an EventLoop that has already shut down").
            self.state.withLockedValue {
                $0.serverChannels[listener.name] = channel
                $0.quiescing.append(quiescing)
            }
            var metadata: Logger.Metadata = [
                "listener": "\(listener.name)", "address": "\(channel.localAddress?.hostPort ?? "?")",
                "tls": "\(listener.tlsContext != nil)",
            ]
            if listener.proxyProtocol { metadata["proxy_protocol"] = "true" }  // every connection must send the header
            if let from = listener.proxyProtocolFrom { metadata["proxy_protocol_from"] = "\(from.map(\.description).joined(separator: ","))" }
            self.logger.info("listening", metadata: metadata)
        }
        let admin: Channel
        do {
            let fd = try listeningSocket(name: "admin", address: self.config.admin.address, resolved: self.adminAddress)
            let quiescing = ServerQuiescingHelper(group: group)
            admin = try await self.bindAdmin(group: group, fd: fd, quiescing: quiescing)
            // Recorded at once: a start that fails after this point leaves a channel the
            // shutdown must close.
            self.state.withLockedValue {
                $0.listenerSockets["admin"] = (self.config.admin.address, fd)
                $0.adminChannel = admin
                $0.adminQuiescing = quiescing
            }
        } catch {
            throw ConfigError(path: "admin.address", message: "cannot bind \(self.config.admin.address): \(error)")
        }
        if let handoff { SocketHandoff.releasePrevious(handoff) }
        if let path = self.handoffSocket {
            let server = try SocketHandoff.Server(
                path: path,
                sockets: { [weak self] in
                    (self?.state.withLockedValue { $0.listenerSockets } ?? [:]).sorted { $0.key < $1.key }.map { ($0.key, $0.value.address, $0.value.fd) }
                },
                pause: { [weak self] in self?.setAccepting(false) },
                resume: { [weak self] in self?.setAccepting(true) },
                drain: { [weak self] in
                    self?.state.withLockedValue { $0.handedOver = true }
                    kill(getpid(), SIGTERM)
                },
                logger: self.logger
            )
            self.state.withLockedValue { $0.handoffServer = server }
        }
        self.state.withLockedValue { $0.lifecycle = .running }
        // The generation this one replaces stops checking: its listeners no longer accept,
        // and its handshakes would reach this one's.
        previous?.servedProof.stop()
        // Stapling too: until now the previous generation's stapler went on (this start
        // could still fail), and from now on this one does, with what that one knew.
        self.ocspStapler.start()
        self.servedProof.start(targets: self.listeners.compactMap { listener in
            guard let store = listener.certificateStore, let port = self.boundPort(listener: listener.name) else { return nil }
            return ServedProof.Target(listener: listener.name, host: ServedProof.loopbackHost(for: listener.address), port: port,
                                      proxyHeader: listener.proxyProtocol, store: store)
        })
        // Nothing can fail any more: the new generation's ticket keys take over (the
        // previous generation's tickets stay accepted as long as the key file lists their keys).
        if let keys = self.ticketKeys { TicketKeyRing.shared.install(keys) }
        self.logger.info("admin endpoint listening", metadata: ["address": "\(admin.localAddress?.hostPort ?? "?")"])
    }

    /// Stops or resumes accepting on every listener and the admin endpoint (the sockets stay
    /// open). Blocks until done; called from the handoff thread, never from an event loop.
    func setAccepting(_ accepting: Bool) {
        let channels = self.state.withLockedValue { Array($0.serverChannels.values) + ($0.adminChannel.map { [$0] } ?? []) }
        for channel in channels {
            try? channel.eventLoop.submit {
                if let pacing = try? channel.pipeline.syncOperations.handler(type: AcceptPacing.self) {
                    pacing.setAccepting(accepting, channel: channel)
                } else {
                    try channel.syncOptions?.setOption(.autoRead, value: accepting)
                }
            }.wait()
        }
    }

    /// The bound port of a listener (useful with port 0).
    package func boundPort(listener: String) -> Int? {
        self.state.withLockedValue { $0.serverChannels[listener]?.localAddress?.port }
    }

    package var adminPort: Int? {
        self.state.withLockedValue { $0.adminChannel?.localAddress?.port }
    }

    package var lifecycle: Lifecycle { self.state.withLockedValue { $0.lifecycle } }

    package var isReady: Bool { self.lifecycle == .running }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then closes what is left.
    /// `quietly`: a replaced configuration generation draining after a reload.
    /// A later call (the process's exit waiting for a generation a reload replaced) waits
    /// for the first one's drain, with the first one's grace, instead of reporting
    /// "drained" at once and closing the access log under connections still writing.
    package func shutdown(grace: TimeAmount, quietly: Bool = false) async {
        let draining = self.state.withLockedValue { state -> Task<Void, Never> in
            if let running = state.shutdown { return running }
            let task = Task { await self.drainAndStop(grace: grace, quietly: quietly) }
            state.shutdown = task
            return task
        }
        await draining.value
    }

    private func drainAndStop(grace: TimeAmount, quietly: Bool) async {
        defer { self.state.withLockedValue { $0.lifecycle = .stopped } }
        // A start still binding finishes first: what it binds after this point would be
        // missed by the drain and keep accepting.
        await withCheckedContinuation { (started: CheckedContinuation<Void, Never>) in
            let binding = self.state.withLockedValue { state -> Bool in
                guard state.binding else {
                    // Decided under the lock that `start` checks: a start that comes after
                    // this finds the generation draining and binds nothing.
                    state.lifecycle = .draining
                    return false
                }
                state.awaitingStart.append(started)
                return true
            }
            if !binding { started.resume() }
        }
        let (helpers, admin, adminQuiescing, jobs, handedOver) = self.state.withLockedValue { state in
            state.lifecycle = .draining
            defer {
                state.quiescing = []
                state.adminQuiescing = nil
                state.jobs = nil
            }
            return (state.quiescing, state.adminChannel, state.adminQuiescing, state.jobs, state.handedOver)
        }
        // Replaced by a reload or a new process: the admin connections kept alive close now
        // (after an answer in progress), and their next requests reach the configuration
        // that serves. A stopping process answers (/readyz: draining) until its drain ends.
        let replaced = quietly || handedOver
        if replaced { adminQuiescing?.initiateShutdown(promise: nil) }
        await jobs?.stop()
        self.servedProof.stop()
        self.state.withLockedValue { $0.handoffServer?.stop() }
        // A generation whose start failed has no admin channel yet, but may have listeners
        // bound on shared sockets: they are shut down all the same, or they would go on
        // accepting beside the generation that stays.
        let group = self.state.withLockedValue { $0.pools?.1 }
        guard let loop = admin?.eventLoop ?? group?.next() else { return }
        self.logger.info(quietly ? "previous configuration draining its connections" : "draining", metadata: ["grace_period": "\(grace)"])
        let futures = helpers.map { helper -> EventLoopFuture<Void> in
            let promise = loop.makePromise(of: Void.self)
            helper.initiateShutdown(promise: promise)
            return promise.futureResult
        }
        let drained = loop.makePromise(of: Void.self)
        EventLoopFuture.andAllComplete(futures, on: loop).cascade(to: drained)
        let timeout = loop.scheduleTask(in: grace) {
            drained.fail(ChannelError.ioOnClosedChannel)
        }
        do {
            try await drained.futureResult.get()
            self.logger.info(quietly ? "previous configuration drained" : "drained: every connection finished")
        } catch {
            // Nothing is closed here: a reload's old connections end on their own timeouts,
            // and at shutdown the process exits with them.
            self.logger.warning(quietly ? "grace period over; the previous configuration's remaining connections end on their own timeouts"
                                        : "grace period over; exiting with connections still open")
        }
        timeout.cancel()
        if !replaced { adminQuiescing?.initiateShutdown(promise: nil) }
        // Closed when this returns, as the channel's own close would have been (the helper
        // closes it; recorded together with it, so never one without the other).
        if adminQuiescing != nil { try? await admin?.closeFuture.get() }
        if let (pools, group) = self.state.withLockedValue({ $0.pools }) {
            pools.closeIdle(group: group)
            await pools.flushAccessLogs(group: group)
        }
        self.state.withLockedValue { $0.accessLog }?.close()
    }

    private func bind(_ listener: ListenerPlan, fd: CInt, group: EventLoopGroup, quiescing: ServerQuiescingHelper, pools: PoolRegistry) async throws -> Channel {
        let metrics = self.metrics.listener(listener.name, tls: listener.tlsContext != nil)
        var handshake = TLSHandlerConfiguration()
        handshake.handshakeTimeout = listener.handshakeTimeout
        handshake.closeObserver = metrics
        let tlsConfiguration = handshake
        let plan = listener
        // What the listener's connections share, one for each event loop.
        let (router, logger, limits) = (self.router, self.logger, listener.proxyLimits)
        let proxies = pools.perLoop { loop in
            ProxyListener(name: plan.name, scheme: plan.tlsContext == nil ? "http" : "https", mutualTLS: plan.mutualTLS,
                          serverNames: plan.serverNames, router: router, loop: loop, limits: limits, logger: logger, observer: metrics)
        }
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPacing(listener: plan.name, logger: logger) { metrics.acceptFailed() })
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.initialized {
                    // Set here, synchronously: as `childChannelOption`s NIO applies them
                    // through a chain of futures, ~4 % of a full handshake's instructions.
                    var holdsFirstRead = false
                    if let options = channel.syncOptions {
                        try options.setOption(.tcpOption(.tcp_nodelay), value: 1)
                        try options.setOption(.socketOption(.so_keepalive), value: 1)
                        // An idle connection keeps 64 bytes of receive buffer, not its largest read:
                        // the first handler holds the first read (see `ReceiveBuffers`).
                        try ReceiveBuffers.configure(options)
                        holdsFirstRead = true
                    }
                    let proxy = proxies.value(for: channel.eventLoop)
                    if let max = plan.maxConnections {
                        // Established connections are never touched: the new one is closed
                        // as it is accepted, before a byte is read (Envoy's listener
                        // connection limit; HAProxy's `maxconn` leaves it in the backlog).
                        guard metrics.admit(max: max) else {
                            proxy.refusedConnection(peer: channel.remoteAddress, reason: "the listener has max_connections (\(max)) open")
                            try channel.pipeline.syncOperations.addHandler(CloseOnActive())
                            return
                        }
                        channel.closeFuture.whenComplete { _ in metrics.release() }
                    }
                    if plan.proxyProtocol {
                        // The client is known once the PROXY header is read: the decoder, first
                        // in the pipeline (and holding the first read), adds the rest then.
                        let decoder = ProxyProtocolDecoder(listener: proxy, timeout: plan.handshakeTimeout, trusted: plan.proxyProtocolFrom,
                                                           holdsFirstRead: holdsFirstRead) {
                            try Self.addConnectionHandlers($0, info: $1, plan: plan, tls: tlsConfiguration, proxy: proxy, metrics: metrics, holdsFirstRead: false)
                        }
                        try channel.pipeline.syncOperations.addHandler(decoder, name: "proxy-protocol")
                    } else {
                        try Self.addConnectionHandlers(channel, info: DownstreamInfo(remoteAddress: channel.remoteAddress), plan: plan, tls: tlsConfiguration,
                                                       proxy: proxy, metrics: metrics, holdsFirstRead: holdsFirstRead)
                    }
                }
            }
        let channel = try await bootstrap.withBoundSocket(fd).get()
        // NIO listens again with its default backlog (128) on a socket it is handed,
        // whatever `.backlog` says: a burst of 2,000 connects left 244 unaccepted after
        // 20 s. Listening once more sets the queue the listener was configured with.
        if listen(fd, Int32(plan.backlog)) != 0 {
            self.logger.warning("cannot set the listen backlog", metadata: ["listener": "\(plan.name)", "error": "\(SocketCallError(call: "listen", code: errno))"])
        }
        return channel
    }

    /// A client connection's handlers: TLS and HTTP (or the protocol switch of an `h2`
    /// listener), for the client `info` names.
    private static func addConnectionHandlers(_ channel: Channel, info: DownstreamInfo, plan: ListenerPlan, tls configuration: TLSHandlerConfiguration,
                                              proxy: ProxyListener, metrics: ListenerMetrics, holdsFirstRead: Bool) throws {
        let sync = channel.pipeline.syncOperations
        // The connection's first TLS or HTTP handler reports its close: it is counted as
        // open once that handler is in.
        if let context = plan.tlsContext {
            var tls = configuration
            tls.holdsFirstRead = holdsFirstRead
            // Handlers are named here and below: without a name NIO formats one
            // ("handler" and a counter) for each handler of each connection.
            try sync.addHandler(OpenSSLHandler(serverContext: context, configuration: tls), name: "tls")
            metrics.connectionOpened()
            if plan.h2 {
                // The protocol is known once ALPN has run: HTTP/2 or HTTP/1.1 handlers are added then.
                try sync.addHandler(ProtocolSwitch(info: info, proxy: proxy), name: "protocol-switch")
            } else {
                try sync.addHandler(ProxyHandler(listener: proxy, info: info), name: "proxy")
            }
        } else {
            try sync.addHandler(ProxyHandler(listener: proxy, info: info, holdsFirstRead: holdsFirstRead, reportsClose: true), name: "proxy")
            metrics.connectionOpened()
        }
    }
}

/// Closes a connection the listener refused as soon as it is active.
private final class CloseOnActive: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        context.close(promise: nil)
    }
}

extension ListenerPlan {
    var proxyLimits: ProxyLimits {
        var limits = ProxyLimits()
        limits.maxHeadBytes = self.maxHeadBytes
        limits.maxBodyBytes = self.maxBodyBytes
        limits.headerTimeout = self.headerTimeout
        limits.idleTimeout = self.idleTimeout
        limits.bodyTimeout = self.bodyTimeout
        limits.drainQuietPeriod = self.drainQuietPeriod
        limits.strictTransportSecurity = self.strictTransportSecurity
        limits.http2MaxConcurrentStreams = self.http2.maxConcurrentStreams
        limits.http2MaxResetsPer30s = self.http2.maxResetsPer30s
        return limits
    }
}
