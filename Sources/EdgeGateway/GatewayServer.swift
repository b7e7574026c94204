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

/// One upstream pool per event loop, built once at start and never mutated:
/// each pool is only touched on its own loop.
final class PoolRegistry: @unchecked Sendable {
    // Immutable after init; each UpstreamPool is confined to its event loop.
    private let pools: [ObjectIdentifier: UpstreamPool]

    init(group: EventLoopGroup, accessLog: AccessLogFile?) {
        var pools: [ObjectIdentifier: UpstreamPool] = [:]
        for loop in group.makeIterator() {
            pools[ObjectIdentifier(loop)] = UpstreamPool(eventLoop: loop, accessLog: accessLog)
        }
        self.pools = pools
    }

    /// One value per event loop made with that loop's pool (a listener's `ProxyListener`s).
    /// Each is used only on its own loop, as the pool is.
    func perLoop<Value>(_ make: (UpstreamPool) -> Value) -> PerLoop<Value> {
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
        let watch = self.config.certificates?.watch ?? WatchConfig()
        for store in self.stores {
            do {
                let watcher = try CertificateWatcher(
                    store: store,
                    configuration: WatcherConfiguration(
                        debounceMilliseconds: Int(watch.debounce.nanoseconds / 1_000_000),
                        rescanMilliseconds: max(100, Int(watch.rescanInterval.nanoseconds / 1_000_000)),
                        immediate: watch.immediate
                    ),
                    logger: self.logger
                )
                watcher.start()
                self.state.withLockedValue { $0.watchers.append(watcher) }
            } catch {
                self.logger.error("certificate watching unavailable: renewed certificates are served only after SIGHUP or POST /reload",
                                  metadata: ["error": "\(error)"])
            }
        }
        self.startTicketKeyRotation(on: group.next())
        self.startClientCAWatch(on: group.next())
        if self.config.memoryTrimming { self.startHeapTrimming(on: group.next()) }
        let checker = HealthChecker(groups: self.groups, eventLoopGroup: group, logger: self.logger)
        checker.start()
        self.state.withLockedValue { $0.healthChecker = checker }
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
            self.state.withLockedValue { $0.quiescing.append(quiescing) }
            let channel: Channel
            let addressText = "\(listener.host):\(listener.port)"
            do {
                let fd = try listeningSocket(name: listener.name, address: addressText, resolved: listener.address)
                channel = try await self.bind(listener, fd: fd, group: group, quiescing: quiescing, pools: pools)
                self.state.withLockedValue { $0.listenerSockets[listener.name] = (addressText, fd) }
            } catch {
                throw ConfigError(path: "listener '\(listener.name)'", message: "cannot bind \(listener.host):\(listener.port): \(error)")
            }
            self.state.withLockedValue { $0.serverChannels[listener.name] = channel }
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
            admin = try await self.bindAdmin(group: group, fd: fd)
            self.state.withLockedValue { $0.listenerSockets["admin"] = (self.config.admin.address, fd) }
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
                drain: { kill(getpid(), SIGTERM) },
                logger: self.logger
            )
            self.state.withLockedValue { $0.handoffServer = server }
        }
        self.state.withLockedValue {
            $0.adminChannel = admin
            $0.ready = true
        }
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

    /// Rotates session-ticket keys on schedule, or follows the shared key file (checked every second).
    private func startTicketKeyRotation(on loop: EventLoop) {
        let settings = self.sessionTickets
        let logger = self.logger
        let task: RepeatedTask
        if let file = settings.keyFile {
            let stamp = NIOLockedValueBox(fileStamp(file))
            task = loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
                let now = fileStamp(file)
                guard now != nil, stamp.withLockedValue({ $0 != now }) else { return }
                stamp.withLockedValue { $0 = now }
                do {
                    let keys = try TicketKeyRing.parse(keyFile: try readTextFile(file))
                    TicketKeyRing.shared.install(keys)
                    logger.notice("session ticket keys reloaded", metadata: ["file": "\(file)", "keys": "\(keys.count)", "encrypting_key_name": "\(keys[0].nameHex)"])
                } catch {
                    logger.error("session ticket key file rejected; keeping the current keys", metadata: ["file": "\(file)", "error": "\(Self.reason(error))"])
                }
            }
        } else {
            let every = settings.rotateEvery.timeAmount
            task = loop.scheduleRepeatedTask(initialDelay: every, delay: every) { _ in
                TicketKeyRing.shared.rotate(keep: 2)
                logger.info("session ticket key rotated", metadata: ["encrypting_key_name": "\(TicketKeyRing.shared.current[0].nameHex)"])
            }
        }
        self.state.withLockedValue { $0.ticketTask = task }
    }

    /// Rebuilds the contexts of every store whose policies name a client CA bundle when
    /// that file changes (checked every second), so a new client CA applies to new handshakes.
    /// The loop only compares the file's stamp; the bundle is read and the contexts built on
    /// a thread of the pool, so no event loop reads a file or waits for the store's reload
    /// lock, which a reload holds while it reads certificate files.
    private func startClientCAWatch(on loop: EventLoop) {
        var found: [String: [CertificateStore]] = [:]
        for store in self.stores {
            for file in Set(store.configuration.policies.compactMap(\.clientCAFile)) { found[file, default: []].append(store) }
        }
        let files = found
        guard !files.isEmpty else { return }
        let stamps = NIOLockedValueBox(files.keys.reduce(into: [String: String?]()) { $0[$1] = fileStamp($1) })
        let task = loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            for (file, stores) in files {
                let now = fileStamp(file)
                guard now != nil, stamps.withLockedValue({ $0[file] != now }) else { continue }
                stamps.withLockedValue { $0[file] = now }
                NIOThreadPool.singleton.submit { _ in
                    for store in stores { store.rebuildContexts(reason: "client CA bundle \(file) changed") }
                }
            }
        }
        self.state.withLockedValue { $0.caWatchTask = task }
    }

    /// Checks once a second whether a burst of connections has ended (`HeapTrimmer`).
    private func startHeapTrimming(on loop: EventLoop) {
        let logger = self.logger, metrics = self.metrics
        let task = loop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            HeapTrimmer.shared.tick(logger: logger) { metrics.heapTrimmed(bytes: $0) }
        }
        self.state.withLockedValue { $0.trimTask = task }
    }

    /// The bound port of a listener (useful with port 0).
    package func boundPort(listener: String) -> Int? {
        self.state.withLockedValue { $0.serverChannels[listener]?.localAddress?.port }
    }

    package var adminPort: Int? {
        self.state.withLockedValue { $0.adminChannel?.localAddress?.port }
    }

    package var isReady: Bool { self.state.withLockedValue { $0.ready } }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then closes what is left.
    /// `quietly`: a replaced configuration generation draining after a reload.
    package func shutdown(grace: TimeAmount, quietly: Bool = false) async {
        let (helpers, admin, watchers, checker) = self.state.withLockedValue { state -> ([ServerQuiescingHelper], Channel?, [CertificateWatcher], HealthChecker?) in
            state.ready = false
            defer {
                state.quiescing = []
                state.watchers = []
                state.healthChecker = nil
            }
            return (state.quiescing, state.adminChannel, state.watchers, state.healthChecker)
        }
        for watcher in watchers { watcher.stop() }
        checker?.stop()
        self.state.withLockedValue { $0.handoffServer?.stop() }
        self.state.withLockedValue {
            $0.ticketTask?.cancel()
            $0.caWatchTask?.cancel()
            $0.trimTask?.cancel()
        }
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
        try? await admin?.close()
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
        let proxies = pools.perLoop { pool in
            ProxyListener(name: plan.name, scheme: plan.tlsContext == nil ? "http" : "https", mutualTLS: plan.mutualTLS,
                          serverNames: plan.serverNames, router: router, pool: pool, limits: limits, logger: logger, observer: metrics)
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
                try sync.addHandler(ProtocolSwitch(plan: plan, info: info, proxy: proxy), name: "protocol-switch")
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

extension EventLoop {
    /// Runs a channel initializer's synchronous set-up and returns the loop's cached
    /// succeeded future (or a failed one): `makeCompletedFuture` made a new future, a
    /// Result and a closure for every accepted connection and every HTTP/2 stream.
    func initialized(_ setUp: () throws -> Void) -> EventLoopFuture<Void> {
        do {
            try setUp()
            return self.makeSucceededVoidFuture()
        } catch {
            return self.makeFailedFuture(error)
        }
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
        return limits
    }
}

/// Waits for the TLS handshake on an `h2: true` listener, then installs HTTP/2
/// (each stream proxied by its own `ProxyHandler` over the HTTP/1.1 upstream pool)
/// or HTTP/1.1, as ALPN decided, and steps aside.
final class ProtocolSwitch: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let plan: ListenerPlan
    private let info: DownstreamInfo
    private let proxy: ProxyListener
    /// The gateway began draining during the handshake: the protocol's handlers drain
    /// as soon as they are installed.
    private var drainRequested = false

    init(plan: ListenerPlan, info: DownstreamInfo, proxy: ProxyListener) {
        self.plan = plan
        self.info = info
        self.proxy = proxy
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Draining before the handshake is done. Closing now would fail the request
            // this client is about to send (it connected to be served, and a client that
            // does not retry would see an error); the handshake finishes (within its
            // timeout), then the chosen protocol drains: HTTP/1.1 answers one request
            // with `connection: close`, HTTP/2 sends GOAWAY. A connection that has sent
            // nothing at all closes if it stays silent for the quiet period.
            self.drainRequested = true
            let tls = try? context.pipeline.syncOperations.handler(type: OpenSSLHandler.self)
            if let tls, !tls.hasReceivedBytes {
                context.eventLoop.assumeIsolated().scheduleTask(in: self.plan.drainQuietPeriod) {
                    if !tls.hasReceivedBytes { context.close(promise: nil) }
                }
            }
            return
        }
        guard let tls = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = tls else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        let sync = context.pipeline.syncOperations
        do {
            if negotiated == "h2" {
                self.proxy.observer?.handshake(result: "ok")
                var info = self.info
                let tls = try? sync.handler(type: OpenSSLHandler.self)
                if self.proxy.mutualTLS { info.clientIdentity = ClientIdentity(tls: tls) }
                if self.proxy.serverNames != nil { info.serverName = tls?.serverName?.lowercased() }
                tls?.coalesceFlushes()
                tls?.compactReads()
                try self.addHTTP2Handlers(sync, channel: context.channel, info: info)
            } else {
                try sync.addHandler(ProxyHandler(listener: self.proxy, info: self.info), name: "proxy")
            }
        } catch {
            self.proxy.logger.error("cannot set up the connection's protocol handlers", metadata: ["error": "\(error)"])
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
        if self.drainRequested { context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        sync.removeHandler(context: context, promise: nil)
    }

    private func addHTTP2Handlers(_ sync: ChannelPipeline.SynchronousOperations, channel: Channel, info: DownstreamInfo) throws {
        var connection = NIOHTTP2Handler.ConnectionConfiguration()
        connection.initialSettings = [
            HTTP2Setting(parameter: .maxConcurrentStreams, value: self.plan.http2.maxConcurrentStreams),
            HTTP2Setting(parameter: .maxHeaderListSize, value: self.plan.maxHeadBytes),
            HTTP2Setting(parameter: .initialWindowSize, value: 65_535),
        ]
        // Request header blocks are checked by HTTP2StreamBridge (HTTP2RequestCheck) and
        // response heads by the HTTP/1.1 parser: NIO's second pass over both is off.
        connection.headerBlockValidation = .disabled
        var stream = NIOHTTP2Handler.StreamConfiguration()
        // Rapid reset (CVE-2023-44487): a client resetting streams faster than this is disconnected.
        stream.streamResetFrameRateLimit.maximumCount = self.plan.http2.maxResetsPer30s
        stream.streamResetFrameRateLimit.windowLength = .seconds(30)
        let strictTransportSecurity = self.plan.strictTransportSecurity
        // Streams are child channels on the connection's loop: the loop's proxy (and pool) serves them.
        let proxy = NIOLoopBound(self.proxy, eventLoop: channel.eventLoop)
        let idle = HTTP2IdleTimeout(timeout: self.plan.idleTimeout)
        _ = try sync.configureHTTP2Pipeline(mode: .server, connectionConfiguration: connection, streamConfiguration: stream,
                                            streamDelegate: idle.delegate(eventLoop: channel.eventLoop)) { streamChannel in
            streamChannel.eventLoop.initialized {
                let streamSync = streamChannel.pipeline.syncOperations
                let bridge = HTTP2StreamBridge(strictTransportSecurity: strictTransportSecurity)
                // The stream's only handler; named, as the connection's handlers are.
                try streamSync.addHandler(ProxyHandler(stream: bridge, listener: proxy.value, info: info), name: "proxy")
            }
        }
        try sync.addHandler(idle, name: "http2-idle-timeout")
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let tls = error as? TLSError {
            reportClientTLSError(tls, info: self.info, listener: self.proxy)
        }
        context.close(promise: nil)
    }
}

/// Closes an HTTP/2 connection that has had no open stream for the listener's idle
/// timeout (nginx's `keepalive_timeout` for HTTP/2): GOAWAY with NO_ERROR, then close.
/// Streams in flight keep the connection open however long they take; their own
/// timeouts are the proxy's. Sits after the HTTP/2 handler, which reports streams
/// opening and closing through `delegate(eventLoop:)`.
///
/// It also drains the connection when the gateway does (shutdown, a restart's handoff,
/// a reload): GOAWAY in two steps, as RFC 9113 §6.8 describes. The first names the
/// largest stream ID, so the client stops opening streams without losing one it is
/// sending at that moment; a PING follows, and once its ACK is back (a round trip, at
/// most a second) a second GOAWAY names the last stream that will be answered. The
/// connection closes when that stream and those before it are done. A single GOAWAY
/// with the last stream seen so far refused the streams already on their way, which a
/// client that does not retry counts as failed.
///
/// And it closes a connection the HTTP/2 handler refused for abuse (rapid reset, a
/// CONTINUATION flood): the handler sends GOAWAY but would otherwise keep reading, and
/// answer every further frame with another GOAWAY.
final class HTTP2IdleTimeout: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTP2Frame
    typealias OutboundOut = HTTP2Frame

    private let timeout: TimeAmount
    private var context: ChannelHandlerContext?
    private var openStreams = 0
    private var lastStream = HTTP2StreamID(0)
    /// When the connection is idle long enough; nil while a stream is open.
    private var deadline: NIODeadline?
    private var timer: Scheduled<Void>?
    /// Where a drain is (`ChannelShouldQuiesceEvent`).
    private enum Drain {
        case serving
        /// The first GOAWAY (largest stream ID) and a PING went out; waiting for the ACK.
        case announced(ping: HTTP2PingData, timer: Scheduled<Void>?)
        /// The final GOAWAY went out: the connection closes with its last stream.
        case final
    }
    private var drain = Drain.serving
    private var draining: Bool {
        if case .serving = self.drain { return false }
        return true
    }

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    /// A class, not a struct around `NIOLoopBound`: the HTTP/2 handler copies its
    /// multiplexer, delegate included, some twenty times a stream, and a class reference
    /// copies with a retain where the struct (too big for an existential's inline
    /// buffer) cost 1.6k instructions a stream. NIO calls it on the connection's event
    /// loop only (checked in debug builds), so the unchecked Sendable holds.
    final class Delegate: NIOHTTP2StreamDelegate, @unchecked Sendable {
        private let handler: HTTP2IdleTimeout
        private let eventLoop: any EventLoop

        init(handler: HTTP2IdleTimeout, eventLoop: any EventLoop) {
            self.handler = handler
            self.eventLoop = eventLoop
        }

        func streamCreated(_ id: HTTP2StreamID, channel: any Channel) {
            self.eventLoop.assertInEventLoop()
            self.handler.streamOpened(id)
        }

        func streamClosed(_ id: HTTP2StreamID, channel: any Channel) {
            self.eventLoop.assertInEventLoop()
            self.handler.streamClosed()
        }
    }

    func delegate(eventLoop: any EventLoop) -> Delegate {
        Delegate(handler: self, eventLoop: eventLoop)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.arm()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.timer?.cancel()
        self.timer = nil
        if case .announced(_, let timer) = self.drain { timer?.cancel() }
        self.context = nil
    }

    private func streamOpened(_ id: HTTP2StreamID) {
        self.openStreams += 1
        self.lastStream = max(self.lastStream, id)
        self.deadline = nil  // the timer, if any, finds nothing to do and lapses
    }

    private func streamClosed() {
        self.openStreams = max(0, self.openStreams - 1)
        guard self.openStreams == 0 else { return }
        switch self.drain {
        case .serving: self.arm()
        case .announced: break  // streams may still come until the final GOAWAY
        case .final: self.closeWhenDrained()
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent, !self.draining {
            // The HTTP/2 handler has passed the event to every stream: each finishes the
            // exchange in flight (the proxy's quiescing).
            let ping = HTTP2PingData(withInteger: UInt64.random(in: .min ... .max))
            let timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: Self.pingWait) {
                self.finalGoAway()
            }
            self.drain = .announced(ping: ping, timer: timer)
            self.deadline = nil  // the idle timer, if armed, finds nothing to do
            self.announceDrain(context)
            context.writeAndFlush(NIOAny(HTTP2Frame(streamID: .rootStream, payload: .ping(ping, ack: false))), promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .announced(let ping, _) = self.drain {
            let frame = self.unwrapInboundIn(data)
            if case .ping(let data, ack: true) = frame.payload, data == ping { self.finalGoAway() }
        }
        context.fireChannelRead(data)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if Self.isAbuse(error) {
            // The HTTP/2 handler has sent GOAWAY for it; nothing more is read.
            context.close(promise: nil)
        }
        context.fireErrorCaught(error)
    }

    /// The errors for which NIO's HTTP/2 handler refuses the connection as a misbehaving peer.
    private static func isAbuse(_ error: any Error) -> Bool {
        error is NIOHTTP2Errors.ExcessiveRSTFrames || error is NIOHTTP2Errors.ExcessiveContinuationFrames
            || error is NIOHTTP2Errors.ExcessiveControlFrames || error is NIOHTTP2Errors.ExcessiveStreamErrors
            || error is NIOHTTP2Errors.ExcessiveEmptyDataFrames || error is NIOHTTP2Errors.ExcessiveNumberOfGlitches
            || error is NIOHTTP2Errors.ExcessiveOutboundFrameBuffering || error is NIOHTTP2Errors.ExcessivelyLargeHeaderBlock
    }

    /// The first GOAWAY of a drain (largest stream ID, NO_ERROR), written as bytes below
    /// the HTTP/2 handler. Through it, NIO's connection state machine would count the
    /// connection as quiesced and, with no stream open at that moment, refuse every
    /// stream that arrives afterwards (REFUSED_STREAM) although the frame promised to
    /// process them: the very race the first step exists to avoid. The final GOAWAY
    /// goes through NIO, which then refuses only streams above the last one.
    private func announceDrain(_ context: ChannelHandlerContext) {
        guard let http2 = try? context.pipeline.syncOperations.context(handlerType: NIOHTTP2Handler.self) else { return }
        var frame = context.channel.allocator.buffer(capacity: 17)
        frame.writeBytes([0, 0, 8, 7, 0, 0, 0, 0, 0])  // length 8, type GOAWAY, no flags, stream 0
        frame.writeInteger(UInt32(Int32.max))  // last-stream-id 2^31-1
        frame.writeInteger(UInt32(0))  // NO_ERROR
        http2.write(NIOAny(frame), promise: nil)
    }

    /// How long a drain waits for its PING's ACK before the final GOAWAY.
    private static let pingWait = TimeAmount.seconds(1)

    /// The second GOAWAY of a drain: names the last stream that will be answered.
    private func finalGoAway() {
        guard case .announced(_, let timer) = self.drain, let context = self.context else { return }
        timer?.cancel()
        self.drain = .final
        let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: self.lastStream, errorCode: .noError, opaqueData: nil))
        context.writeAndFlush(NIOAny(goAway), promise: nil)
        if self.openStreams == 0 { self.closeWhenDrained() }
    }

    /// Closes the drained connection on the loop's next turn, outside the HTTP/2
    /// handler's stream bookkeeping that reported the last stream closed; the TLS
    /// handler sends what is still buffered, then close_notify.
    private func closeWhenDrained() {
        guard let context = self.context else { return }
        context.eventLoop.assumeIsolatedUnsafeUnchecked().execute {
            context.close(promise: nil)
        }
    }

    private func arm() {
        self.deadline = .now() + self.timeout
        if self.timer == nil { self.schedule() }
    }

    private func schedule() {
        guard let context = self.context, let deadline = self.deadline else { return }
        self.timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(deadline: deadline) {
            self.timer = nil
            guard let deadline = self.deadline, self.openStreams == 0 else { return }
            if NIODeadline.now() < deadline {
                self.schedule()
                return
            }
            let goAway = HTTP2Frame(streamID: .rootStream, payload: .goAway(lastStreamID: self.lastStream, errorCode: .noError, opaqueData: nil))
            context.writeAndFlush(NIOAny(goAway)).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }
}

@available(*, unavailable)
extension HTTP2IdleTimeout: Sendable {}
