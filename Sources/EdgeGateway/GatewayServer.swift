import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix

/// One upstream pool per event loop, built once at start and never mutated:
/// each pool is only touched on its own loop.
final class PoolRegistry: @unchecked Sendable {
    // Immutable after init; each UpstreamPool is confined to its event loop.
    private let pools: [ObjectIdentifier: UpstreamPool]

    init(group: EventLoopGroup) {
        var pools: [ObjectIdentifier: UpstreamPool] = [:]
        for loop in group.makeIterator() {
            pools[ObjectIdentifier(loop)] = UpstreamPool(eventLoop: loop)
        }
        self.pools = pools
    }

    func pool(for loop: EventLoop) -> UpstreamPool {
        loop.assertInEventLoop()
        return self.pools[ObjectIdentifier(loop)]!
    }
}

extension Gateway {
    /// Binds every listener and the admin endpoint. Throws with the listener's name on a bind failure.
    public func start(group: EventLoopGroup) async throws {
        let pools = PoolRegistry(group: group)
        let watch = self.config.certificates?.watch ?? WatchConfig()
        for store in self.stores {
            do {
                let watcher = try CertificateWatcher(
                    store: store,
                    configuration: WatcherConfiguration(
                        debounceMilliseconds: Int(watch.debounce.nanoseconds / 1_000_000),
                        rescanMilliseconds: max(100, Int(watch.rescanInterval.nanoseconds / 1_000_000))
                    ),
                    logger: self.logger
                )
                watcher.start()
                self.state.withLockedValue { $0.watchers.append(watcher) }
            } catch {
                self.logger.error("certificate watching unavailable; periodic reload by SIGHUP only", metadata: ["error": "\(error)"])
            }
        }
        let checker = HealthChecker(groups: self.groups, eventLoopGroup: group, logger: self.logger)
        checker.start()
        self.state.withLockedValue { $0.healthChecker = checker }
        for listener in self.listeners {
            // One helper per listener: a helper tracks the children of one server channel.
            let quiescing = ServerQuiescingHelper(group: group)
            self.state.withLockedValue { $0.quiescing.append(quiescing) }
            let channel: Channel
            do {
                channel = try await self.bind(listener, group: group, quiescing: quiescing, pools: pools)
            } catch {
                throw ConfigError(path: "listener '\(listener.name)'", message: "cannot bind \(listener.host):\(listener.port): \(error)")
            }
            self.state.withLockedValue { $0.serverChannels[listener.name] = channel }
            self.logger.info("listening", metadata: [
                "listener": "\(listener.name)", "address": "\(channel.localAddress?.hostPort ?? "?")",
                "tls": "\(listener.tlsContext != nil)",
            ])
        }
        let admin: Channel
        do {
            admin = try await self.bindAdmin(group: group)
        } catch {
            throw ConfigError(path: "admin.address", message: "cannot bind \(self.config.admin.address): \(error)")
        }
        self.state.withLockedValue {
            $0.adminChannel = admin
            $0.ready = true
        }
        self.logger.info("admin endpoint listening", metadata: ["address": "\(admin.localAddress?.hostPort ?? "?")"])
    }

    /// The bound port of a listener (useful with port 0).
    public func boundPort(listener: String) -> Int? {
        self.state.withLockedValue { $0.serverChannels[listener]?.localAddress?.port }
    }

    public var adminPort: Int? {
        self.state.withLockedValue { $0.adminChannel?.localAddress?.port }
    }

    public var isReady: Bool { self.state.withLockedValue { $0.ready } }

    /// Stops accepting, lets in-flight requests finish for up to `grace`, then closes what is left.
    public func shutdown(grace: TimeAmount) async {
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
        guard let loop = admin?.eventLoop else { return }
        self.logger.info("draining", metadata: ["grace_period": "\(grace)"])
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
            self.logger.info("drained: every connection finished")
        } catch {
            self.logger.warning("grace period over; closing remaining connections")
        }
        timeout.cancel()
        try? await admin?.close()
    }

    private func bind(_ listener: ListenerPlan, group: EventLoopGroup, quiescing: ServerQuiescingHelper, pools: PoolRegistry) async throws -> Channel {
        let router = self.router
        let logger = self.logger
        let metrics = self.metrics
        var handshake = TLSHandlerConfiguration()
        handshake.handshakeTimeout = listener.handshakeTimeout
        let tlsConfiguration = handshake
        let plan = listener
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_keepalive), value: 1)
            .childChannelInitializer { channel in
                metrics.connectionOpened(listener: plan.name)
                channel.closeFuture.whenComplete { _ in metrics.connectionClosed(listener: plan.name) }
                return channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let context = plan.tlsContext {
                        try sync.addHandler(OpenSSLHandler(serverContext: context, configuration: tlsConfiguration))
                    }
                    var encoder = HTTPResponseEncoder.Configuration()
                    encoder.automaticallySetFramingHeaders = false
                    var limits = NIOHTTPDecoderLimitConfiguration()
                    limits.maxHeaderListSize = plan.maxHeadBytes
                    limits.maxHeaderFieldSize = plan.maxHeadBytes
                    try sync.addHandler(HTTPResponseEncoder(configuration: encoder))
                    try sync.addHandler(ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop, limitConfiguration: limits)))
                    try sync.addHandler(ProtocolErrorHandler())
                    try sync.addHandler(RequestHeadTimeoutHandler(headerTimeout: plan.headerTimeout, idleTimeout: plan.idleTimeout))
                    try sync.addHandler(HTTPServerPipelineHandler())
                    let info = DownstreamInfo(scheme: plan.tlsContext == nil ? "http" : "https", remoteAddress: channel.remoteAddress, listenerName: plan.name)
                    try sync.addHandler(ProxyHandler(router: router, pool: pools.pool(for: channel.eventLoop), info: info, logger: logger, observer: metrics))
                }
            }
        return try await bootstrap.bind(to: listener.address).get()
    }
}
