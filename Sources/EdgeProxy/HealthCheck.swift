import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOTLS

/// Active health check settings of an upstream group.
package struct HealthCheckSettings: Sendable, Hashable {
    package enum Kind: String, Sendable, Hashable, CaseIterable {
        /// A TCP connect.
        case tcp
        /// A TCP connect and a verified TLS handshake with the group's TLS options.
        case tls
        /// `GET path` (over the group's TLS when it has TLS), answered with an expected status.
        case http
    }

    package var kind: Kind = .http
    package var path = "/"
    /// Host header of HTTP probes; default: the group's host_header, SNI or the backend address.
    package var host: String?
    package var interval: TimeAmount = .seconds(5)
    package var timeout: TimeAmount = .seconds(2)
    /// Consecutive successes that bring a down backend back.
    package var healthyAfter = 2
    /// Consecutive failures that take a backend down.
    package var unhealthyAfter = 3
    package var expectedStatus: ClosedRange<Int> = 200...399

    package init() {}
}

/// Probes every backend of the groups that configure `health_check`, on a timer,
/// and flips their availability after the configured number of consecutive results.
package final class HealthChecker: Sendable {
    private let groups: [UpstreamGroup]
    private let eventLoopGroup: EventLoopGroup
    private let logger: Logger
    private let timers = NIOLockedValueBox<[RepeatedTask]>([])
    private let counters: [ObjectIdentifier: [ProbeCounter]]

    final class ProbeCounter: Sendable {
        let streak = NIOLockedValueBox<(successes: Int, failures: Int)>((0, 0))
    }

    package init(groups: [UpstreamGroup], eventLoopGroup: EventLoopGroup, logger: Logger) {
        self.groups = groups.filter { $0.healthCheck != nil }
        self.eventLoopGroup = eventLoopGroup
        self.logger = logger
        var counters: [ObjectIdentifier: [ProbeCounter]] = [:]
        for group in self.groups { counters[ObjectIdentifier(group)] = group.backends.map { _ in ProbeCounter() } }
        self.counters = counters
    }

    package func start() {
        for group in self.groups {
            guard let settings = group.healthCheck else { continue }
            for index in group.backends.indices {
                let loop = self.eventLoopGroup.next()
                let task = loop.scheduleRepeatedAsyncTask(initialDelay: .zero, delay: settings.interval) { task in
                    self.probe(group: group, index: index, settings: settings, on: loop).map { result in
                        self.record(result, group: group, index: index, settings: settings)
                    }
                }
                self.timers.withLockedValue { $0.append(task) }
            }
        }
    }

    package func stop() {
        let timers = self.timers.withLockedValue { timers in
            defer { timers = [] }
            return timers
        }
        for timer in timers { timer.cancel() }
    }

    private func record(_ result: Result<Void, Error>, group: UpstreamGroup, index: Int, settings: HealthCheckSettings) {
        guard let counter = self.counters[ObjectIdentifier(group)]?[index] else { return }
        let state = group.states[index]  // read here; changed through the group
        let backend = group.backends[index].description
        defer { group.healthChecked(index, passed: (try? result.get()) != nil) }
        counter.streak.withLockedValue { streak in
            switch result {
            case .success:
                streak = (streak.successes + 1, 0)
                if !state.isHealthyByCheck, streak.successes >= settings.healthyAfter {
                    group.checkedUp(index)
                    self.logger.notice("backend is up again", metadata: ["upstream": "\(group.name)", "backend": "\(backend)",
                                                                      "after": "\(streak.successes) successful \(settings.kind) checks"])
                }
            case .failure(let error):
                streak = (0, streak.failures + 1)
                group.recordError(index, reason: "health check: \(error)")
                if state.isHealthyByCheck, streak.failures >= settings.unhealthyAfter {
                    group.checkedDown(index)
                    self.logger.warning("backend is down", metadata: ["upstream": "\(group.name)", "backend": "\(backend)",
                                                                     "reason": "\(error)", "after": "\(streak.failures) failed \(settings.kind) checks"])
                }
            }
        }
    }

    /// One probe, bounded by the check's timeout.
    func probe(group: UpstreamGroup, index: Int, settings: HealthCheckSettings, on loop: EventLoop) -> EventLoopFuture<Result<Void, Error>> {
        let backend = group.backends[index]
        let done = loop.makePromise(of: Void.self)
        let tls = settings.kind == .tcp ? nil : group.tls
        let host = settings.host ?? group.hostHeader ?? group.tls?.serverName(for: backend) ?? backend.description
        let request = settings.kind == .http
            ? HTTPRequestHead(version: .http1_1, method: .GET, uri: settings.path,
                              headers: ["Host": host, "User-Agent": "edge-gateway-health-check", "Connection": "close"]) : nil
        let expected = settings.expectedStatus
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(settings.timeout)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let sync = channel.pipeline.syncOperations
                    if let tls {
                        try sync.addHandler(OpenSSLHandler(clientContext: tls.context, serverName: tls.serverName(for: backend),
                                                                  verifyHostnames: tls.verifyNames(for: backend), allowCommonName: tls.allowCommonName))
                    }
                    try sync.addHandler(HTTPRequestEncoder())
                    try sync.addHandler(ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop)))
                    try sync.addHandler(ProbeHandler(request: request, needsHandshake: tls != nil, expected: expected, timeout: settings.timeout, done: done))
                }
            }
        let timer = loop.scheduleTask(in: settings.timeout) {
            done.fail(ProbeError(reason: "no answer within \(settings.timeout.nanoseconds / 1_000_000) ms"))
        }
        bootstrap.connect(to: backend.address).whenComplete { result in
            switch result {
            case .failure(let error):
                done.fail(ProbeError(reason: "connect failed: \(connectFailureReason(error))"))
            case .success(let channel):
                done.futureResult.whenComplete { _ in channel.close(promise: nil) }
            }
        }
        return done.futureResult.always { _ in timer.cancel() }.map { .success(()) }.recover { .failure($0) }
    }
}

struct ProbeError: Error, CustomStringConvertible {
    var reason: String
    var description: String { self.reason }
}

/// Completes `done` once the probe has its answer: connected, handshaken, or a status line.
private final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    private let request: HTTPRequestHead?
    private let needsHandshake: Bool
    private let expected: ClosedRange<Int>
    private let done: EventLoopPromise<Void>
    /// The longest wait for a TLS 1.3 upstream's verdict on our client certificate.
    private let verdictWait: TimeAmount

    init(request: HTTPRequestHead?, needsHandshake: Bool, expected: ClosedRange<Int>, timeout: TimeAmount, done: EventLoopPromise<Void>) {
        self.verdictWait = min(.seconds(1), .nanoseconds(timeout.nanoseconds / 2))
        self.request = request
        self.needsHandshake = needsHandshake
        self.expected = expected
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.needsHandshake { self.connected(context: context) }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event { self.connected(context: context) }
        context.fireUserInboundEventTriggered(event)
    }

    private func connected(context: ChannelHandlerContext) {
        guard let request else {
            self.handshaken(context: context)
            return
        }
        context.write(Self.wrapOutboundOut(.head(request)), promise: nil)
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
    }

    /// A `tls` check passes once the handshake is done, except that a TLS 1.3 server checks
    /// our client certificate after that: it passes when the server's session ticket says it
    /// accepted it, fails on its alert, and passes after `verdictWait` of silence (a server
    /// that sends no tickets), which stays within the check's timeout.
    private func handshaken(context: ChannelHandlerContext, verdictBy: NIODeadline? = nil) {
        guard context.channel.isActive else { return }  // closed: its error or the timeout answers
        let tls = try? context.pipeline.syncOperations.handler(type: OpenSSLHandler.self)
        let deadline = verdictBy ?? .now() + self.verdictWait
        guard let tls, tls.awaitsClientCertificateVerdict, NIODeadline.now() < deadline else {
            self.done.succeed(())
            return
        }
        self.awaitingVerdict = tls
        context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(20)) {
            self.handshaken(context: context, verdictBy: deadline)
        }
    }
    /// The TLS handler whose verdict the probe waits for, if it does.
    private var awaitingVerdict: OpenSSLHandler?

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = Self.unwrapInboundIn(data) {
            let code = Int(head.status.code)
            if self.expected.contains(code) {
                self.done.succeed(())
            } else {
                self.done.fail(ProbeError(reason: "status \(code), expected \(self.expected.lowerBound)-\(self.expected.upperBound)"))
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.done.fail(ProbeError(reason: (error as? TLSError).map(\.description) ?? "\(error)"))
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if self.awaitingVerdict?.awaitsClientCertificateVerdict == false {
            // The verdict came, then the upstream closed: a refusal (an alert) failed the
            // probe already; a session ticket accepted us.
            self.done.succeed(())
        }
        self.done.fail(ProbeError(reason: "connection closed before an answer"))
        context.fireChannelInactive()
    }
}
