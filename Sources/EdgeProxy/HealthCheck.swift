import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOHTTP2
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
        /// gRPC's `grpc.health.v1.Health/Check` for `service` over the group's HTTP/2 (h2
        /// or h2c): passes when the server says SERVING (`GRPCHealth`).
        case grpc
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
    /// The service a grpc check asks about; empty: the server as a whole.
    package var service = ""

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
        var request: (head: HTTPRequestHead, body: ByteBuffer?)?
        switch settings.kind {
        case .tcp, .tls:
            request = nil
        case .http:
            request = (HTTPRequestHead(version: .http1_1, method: .GET, uri: settings.path,
                                       headers: ["Host": host, "User-Agent": "edge-gateway-health-check", "Connection": "close"]), nil)
        case .grpc:
            let body = GRPCHealth.requestBody(service: settings.service)
            request = (HTTPRequestHead(version: .http1_1, method: .POST, uri: GRPCHealth.path,
                                       headers: ["Host": host, "User-Agent": "edge-gateway-health-check", "Content-Type": "application/grpc",
                                                 "Content-Length": "\(body.readableBytes)"]), body)
        }
        let expected: ProbeHandler.Expectation = settings.kind == .grpc ? .serving : .status(settings.expectedStatus)
        // An http or grpc check speaks the group's protocol, HTTP/2 through the same
        // translation as the proxy's requests (HAProxy's `check-proto h2`), as the pool
        // decides it: always on h2 and h2c, on auto when the backend agrees to h2.
        let http2 = request != nil && group.upstreamProtocol.mayBeHTTP2
            ? ProbeHandler.HTTP2Probe(upstreamProtocol: group.upstreamProtocol, needed: settings.kind == .grpc,
                                      scheme: tls == nil ? "http" : "https", authority: backend.description, address: backend.address)
            : nil
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
                    try sync.addHandler(ProbeHandler(request: request, needsHandshake: tls != nil, expected: expected, timeout: settings.timeout,
                                                     http2: http2, done: done))
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

/// Completes `done` once the probe has its answer: connected, handshaken, a status line,
/// or a gRPC health answer.
private final class ProbeHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart

    enum Expectation {
        /// An HTTP status in the range.
        case status(ClosedRange<Int>)
        /// A gRPC health answer that says SERVING.
        case serving
    }

    private let request: (head: HTTPRequestHead, body: ByteBuffer?)?
    private let needsHandshake: Bool
    private let expected: Expectation
    private let done: EventLoopPromise<Void>
    /// The longest wait for a TLS 1.3 upstream's verdict on our client certificate.
    private let verdictWait: TimeAmount
    /// How a group that may speak HTTP/2 carries the check's request.
    struct HTTP2Probe {
        var upstreamProtocol: UpstreamProtocol
        /// A gRPC check fails on a connection that speaks HTTP/1.1.
        var needed: Bool
        /// The translation's `:scheme` and `:authority`.
        var scheme: String
        var authority: String
        var address: SocketAddress
    }
    private let http2: HTTP2Probe?
    /// A grpc check's answer so far.
    private var status = 0
    private var grpcStatus: String?
    private var grpcMessage: String?
    private var body = ByteBuffer()

    init(request: (head: HTTPRequestHead, body: ByteBuffer?)?, needsHandshake: Bool, expected: Expectation, timeout: TimeAmount,
         http2: HTTP2Probe?, done: EventLoopPromise<Void>) {
        self.verdictWait = min(.seconds(1), .nanoseconds(timeout.nanoseconds / 2))
        self.request = request
        self.needsHandshake = needsHandshake
        self.expected = expected
        self.http2 = http2
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.needsHandshake { self.connected(context: context, http2: self.http2) }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event {
            guard let http2 = self.http2 else {
                self.connected(context: context, http2: nil)
                context.fireUserInboundEventTriggered(event)
                return
            }
            // As the pool refuses it (`UpstreamHandler`): a check that passed where every
            // request fails would keep a useless backend up.
            let chose = negotiated.map { "chose \($0)" } ?? "chose none"
            if let required = http2.upstreamProtocol.requiredALPN, negotiated != required {
                self.done.fail(ProbeError(reason: "the upstream did not agree to \(required) by ALPN (\(chose))"))
                context.close(promise: nil)
                return
            }
            let speaksHTTP2 = http2.upstreamProtocol.speaksHTTP2(negotiated: negotiated)
            if http2.needed, !speaksHTTP2 {
                self.done.fail(ProbeError(reason: "gRPC needs HTTP/2 and the upstream did not agree to h2 by ALPN (\(chose))"))
                context.close(promise: nil)
                return
            }
            self.connected(context: context, http2: speaksHTTP2 ? http2 : nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func connected(context: ChannelHandlerContext, http2: HTTP2Probe?) {
        guard let request else {
            self.handshaken(context: context)
            return
        }
        if let http2 {
            // After the handshake (the TLS handler, if any, is first), a session of its
            // own with one stream, as the pool's: the answer comes as the proxy's parts.
            do {
                let sync = context.pipeline.syncOperations
                let key = PoolKey(backend: BackendState(), address: http2.address, generation: 0)  // not the backend's figures
                let session = HTTP2UpstreamSession(channel: context.channel, key: key, backendIndex: 0, handler: nil, backend: http2.authority,
                                                   scheme: http2.scheme, authority: http2.authority, maxHeadBytes: 64 * 1024, maxStreams: 1,
                                                   idleTimeout: nil)
                let connection = HTTP2UpstreamSession.connectionHandler(settings: [HTTP2Setting(parameter: .enablePush, value: 0)], session: session)
                if let tls = try? sync.handler(type: OpenSSLHandler.self) {
                    try sync.addHandlers([connection, session], position: .after(tls))
                } else {
                    try sync.addHandlers([connection, session], position: .first)
                }
                session.start()
                let stream = session.openStream()
                stream.delegate = ProbeStreamReader(probe: self, context: context)
                session.write(Self.bytes(request.head, body: request.body), on: stream)
                session.flush()
            } catch {
                self.done.fail(ProbeError(reason: "cannot start HTTP/2: \(error)"))
            }
            return
        }
        context.write(Self.wrapOutboundOut(.head(request.head)), promise: nil)
        if let body = request.body { context.write(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil) }
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

    /// The request as HTTP/1.1 bytes, as the proxy writes to a stream.
    static func bytes(_ head: HTTPRequestHead, body: ByteBuffer?) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeString("\(head.method.rawValue) \(head.uri) HTTP/1.1\r\n")
        for (name, value) in head.headers { out.writeString("\(name): \(value)\r\n") }
        out.writeStaticString("\r\n")
        if var body { out.writeBuffer(&body) }
        return out
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        self.received(Self.unwrapInboundIn(data))
    }

    func received(_ part: HTTPClientResponsePart) {
        switch (part, self.expected) {
        case (.head(let head), .status(let expected)):
            let code = Int(head.status.code)
            if expected.contains(code) {
                self.done.succeed(())
            } else {
                self.done.fail(ProbeError(reason: "status \(code), expected \(expected.lowerBound)-\(expected.upperBound)"))
            }
        case (.head(let head), .serving):
            // A trailers-only answer carries the call's status in its head.
            self.status = Int(head.status.code)
            self.grpcStatus = head.headers.first(name: "grpc-status")
            self.grpcMessage = head.headers.first(name: "grpc-message")
        case (.body(var part), .serving):
            // One small message: anything past 64 KiB is not a health answer.
            if self.body.readableBytes + part.readableBytes <= 64 * 1024 { self.body.writeBuffer(&part) }
        case (.end(let trailers), .serving):
            if let status = trailers?.first(name: "grpc-status") { self.grpcStatus = status }
            if let message = trailers?.first(name: "grpc-message") { self.grpcMessage = message }
            if let failure = GRPCHealth.failure(httpStatus: self.status, grpcStatus: self.grpcStatus, grpcMessage: self.grpcMessage, body: self.body) {
                self.done.fail(ProbeError(reason: failure))
            } else {
                self.done.succeed(())
            }
        case (.body, .status), (.end, .status):
            break
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        self.failed(error, context: context)
    }

    func failed(_ error: Error, context: ChannelHandlerContext) {
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

/// A health check's HTTP/2 stream: the parts it gets, as the HTTP/1.1 codec's for the probe.
private final class ProbeStreamReader: UpstreamExchangeDelegate {
    private let probe: ProbeHandler
    private let context: ChannelHandlerContext

    init(probe: ProbeHandler, context: ChannelHandlerContext) {
        self.probe = probe
        self.context = context
    }

    func upstreamReceived(_ part: UpstreamResponsePart, from connection: UpstreamConnection?) {
        switch part {
        case .head(let head):
            var headers = HTTPHeaders()
            for field in head.fields { headers.add(name: head.lowercasedName(field), value: head.string(field.value)) }
            self.probe.received(.head(HTTPResponseHead(version: .http1_1, status: .init(statusCode: head.status), headers: headers)))
        case .body(let body):
            self.probe.received(.body(body))
        case .end(let trailers):
            // Field lines, each `name: value` and CRLF (`TrailerSection`).
            var fields = HTTPHeaders()
            var start = 0
            while start < trailers.count, let cr = trailers[start...].firstIndex(of: 0x0D) {
                if let colon = trailers[start..<cr].firstIndex(of: UInt8(ascii: ":")) {
                    var value = colon + 1
                    while value < cr, trailers[value] == 0x20 || trailers[value] == 0x09 { value += 1 }
                    fields.add(name: String(decoding: trailers[start..<colon], as: UTF8.self), value: String(decoding: trailers[value..<cr], as: UTF8.self))
                }
                start = cr + 2
            }
            self.probe.received(.end(fields))
        }
    }

    func upstreamFailed(_ error: Error, from connection: UpstreamConnection?) {
        self.probe.failed(error, context: self.context)
    }

    func upstreamWritabilityChanged(_ writable: Bool) {}
    func upstreamReadComplete() {}
    var downstreamWritable: Bool { true }
}
