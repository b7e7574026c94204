import EdgeCertificates
import EdgeProxy
import EdgeTLS
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix

/// The gateway's version, shown by `--version` and `/status`.
package let gatewayVersion = "0.1.0"

extension Gateway {
    /// `quiescing` lets a reload close this generation's admin connections: one kept
    /// alive (a Prometheus scraper's) would otherwise go on asking the replaced
    /// configuration, and write its state into the metrics the generations share. (NIO's
    /// HTTP server pipeline handler closes an idle connection at once and a busy one after
    /// its response, which it marks `connection: close`.)
    func bindAdmin(group: EventLoopGroup, fd: CInt, quiescing: ServerQuiescingHelper) async throws -> Channel {
        let logger = self.logger
        let timeouts = self.config.admin.timeouts
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                // Out of descriptors, the admin endpoint backs off like the listeners.
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptPacing(listener: "admin", logger: logger))
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(AdminDeadlineHandler(header: timeouts.header.timeAmount, idle: timeouts.idle.timeAmount))
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(gateway: self))
                }
            }
        return try await bootstrap.withBoundSocket(fd).get()
    }

    /// Reports of every served lineage, across stores.
    package func certificateReports(now: Int64 = Int64(currentTime())) -> [CertificateReport] {
        let policy = self.plan.expiryPolicy
        return self.stores.flatMap { $0.reports(policy: policy, now: now) }
    }

    /// The `/status/certificates` document.
    package func certificatesJSON(now: Int64 = Int64(currentTime())) -> String {
        let items = self.certificateReports(now: now).map { certificateJSON($0, served: self.servedProof.checks(for: $0.name),
                                                                                       ocsp: self.ocspStapler.state(fingerprint: $0.sha256Fingerprint), now: now) }
        let crls = RevocationListStatus.files(self.stores, groups: self.groups).map { revocationListJSON($0, now: now) }
        return "{\"generated_at\":\(now),\"generated_at_rfc3339\":\(jsonString(rfc3339(now))),\"certificates\":[\(items.joined(separator: ","))],"
            + "\"revocation_lists\":[\(crls.joined(separator: ","))]}\n"
    }

    /// The `/status` document.
    func statusJSON() -> String {
        let now = Int64(currentTime())
        let listeners = self.listeners.map { plan -> String in
            let port = self.boundPort(listener: plan.name).map(String.init) ?? "null"
            let profile = plan.tlsContext == nil ? "null" : jsonString(self.config.listeners.first { $0.name == plan.name }?.tls?.profile.rawValue ?? "intermediate")
            return "{\"name\":\(jsonString(plan.name)),\"address\":\(jsonString("\(plan.host):\(plan.port)")),\"port\":\(port),\"tls\":\(plan.tlsContext != nil),"
                + "\"tls_profile\":\(profile),\"h2\":\(plan.h2),\"mutual_tls\":\(plan.mutualTLS),"
                + "\"proxy_protocol\":\(plan.proxyProtocol)"
                + (plan.proxyProtocolFrom.map { ",\"proxy_protocol_from\":[\($0.map { jsonString($0.description) }.joined(separator: ","))]" } ?? "") + "}"
        }
        let reports = self.certificateReports(now: now)
        let counts = CertificateState.allCases.map { state in
            "\(jsonString(state.rawValue)):\(reports.filter { $0.state == state }.count)"
        }
        let problems = self.stores.flatMap { $0.problems }.map {
            "{\"name\":\(jsonString($0.name)),\"error\":\(jsonString($0.error)),\"since\":\($0.since),\"since_rfc3339\":\(jsonString(rfc3339($0.since))),"
                + "\"serving_previous\":\($0.servingPrevious)}"
        }
        let certificates = reports.map { r -> String in
            let renewal: String = r.renewal.map { renewalJSON($0, lineage: r.name, now: now) } ?? "null"
            // What `/status/certificates` says in full, cut to what needs an operator:
            // the listeners serving something else, and OCSP stapling short of ok.
            let mismatched = self.servedProof.checks(for: r.name).filter { $0.matches == false }.map { jsonString($0.listener) }
            let ocsp = self.ocspStapler.state(fingerprint: r.sha256Fingerprint).map { $0.level(now: now) }
            let ocspProblem = ocsp.flatMap { $0.level == .ok ? nil : "{\"level\":\"\($0.level.rawValue)\",\"reason\":\($0.reason.map(jsonString) ?? "null")}" }
            return "{\"name\":\(jsonString(r.name)),\"serial\":\(jsonString(r.serial)),\"not_after\":\(r.notAfter),"
                + "\"not_after_rfc3339\":\(jsonString(rfc3339(r.notAfter))),\"state\":\(jsonString(r.state.rawValue)),\"renewal\":\(renewal),"
                + "\"served_mismatch\":[\(mismatched.joined(separator: ","))],\"ocsp_problem\":\(ocspProblem ?? "null")}"
        }
        let staleLists = RevocationListStatus.files(self.stores, groups: self.groups)
            .filter { $0.lists.isStale(now: now) }
            .map { "{\"file\":\(jsonString($0.path)),\"used_by\":\(jsonString($0.usedBy)),\"crl_strict\":\($0.strict)}" }
        let generation = self.stores.map { $0.snapshot.generation }.max() ?? 0
        let lifecycle = self.lifecycle  // read once: `ready` and `lifecycle` agree
        let last = self.stores.map { $0.lastReload }.max { $0.time < $1.time }
        let upstreams: String = self.groups.map { upstreamJSON($0) }.joined(separator: ",")
        let configReload: String = self.configStatus.lastOutcome.map {
            "{\"time\":\($0.time),\"time_rfc3339\":\(jsonString(rfc3339($0.time))),\"result\":\(jsonString($0.result)),\"error\":\($0.error.map(jsonString) ?? "null")}"
        } ?? "null"
        return "{\"version\":\(jsonString(gatewayVersion)),\"uptime_seconds\":\(Int(currentTime() - self.startTime)),"
            + "\"ready\":\(lifecycle == .running),\"lifecycle\":\"\(lifecycle.rawValue)\",\"snapshot_generation\":\(generation),"
            + "\"live_snapshots\":\(CertificateSnapshot.liveCount),"
            + "\"last_reload\":{\"time\":\(last?.time ?? 0),\"time_rfc3339\":\(last.map { jsonString(rfc3339($0.time)) } ?? "null"),"
            + "\"result\":\(jsonString(last?.result ?? "never"))},"
            + "\"listeners\":[\(listeners.joined(separator: ","))],"
            + "\"certificates_by_state\":{\(counts.joined(separator: ","))},"
            + "\"certificates\":[\(certificates.joined(separator: ","))],"
            + "\"certificate_problems\":[\(problems.joined(separator: ","))],"
            + "\"revocation_lists_stale\":[\(staleLists.joined(separator: ","))],"
            + "\"upstreams\":[\(upstreams)],"
            + "\"config_reload\":\(configReload)}\n"
    }

    /// The `/status/upstreams` document.
    func upstreamsJSON() -> String {
        let upstreams: String = self.groups.map { upstreamJSON($0) }.joined(separator: ",")
        return "{\"upstreams\":[\(upstreams)]}\n"
    }

    /// The Prometheus exposition.
    func metricsText() -> String {
        let now = Int64(currentTime())
        return self.metrics.render(reports: self.certificateReports(now: now), stores: self.stores, groups: self.groups, served: self.servedProof.allChecks,
                                   revocationLists: RevocationListStatus.files(self.stores, groups: self.groups),
                                   ocsp: { self.ocspStapler.state(fingerprint: $0) }, now: now)
    }
}

/// One upstream group's balancing, health and pool figures.
func upstreamJSON(_ group: UpstreamGroup) -> String {
    let backends = zip(group.backends, group.states).map { backend, state -> String in
        let requests = state.requests.load(ordering: .relaxed)
        let opened = state.connectionsOpened.load(ordering: .relaxed)
        let reuse = requests > 0 ? max(0, 1 - Double(opened) / Double(requests)) : 0
        let health = state.isEjected ? "ejected" : (state.isHealthyByCheck ? "up" : "down")
        return "{\"address\":\(jsonString(backend.description)),\"weight\":\(backend.weight),\"health\":\(jsonString(health)),"
            + "\"active_requests\":\(state.active.load(ordering: .relaxed)),\"idle_connections\":\(state.idleConnections.load(ordering: .relaxed)),"
            + "\"requests\":\(requests),\"connections_opened\":\(opened),\"http2_connections_opened\":\(state.http2ConnectionsOpened.load(ordering: .relaxed)),"
            + "\"streams_in_flight\":\(state.streamsInFlight.load(ordering: .relaxed)),\"http2_ping_timeouts\":\(state.pingTimeouts.load(ordering: .relaxed)),\"reuse_ratio\":\((reuse * 10000).rounded() / 10000),"
            + "\"connect_failures\":\(state.connectFailures.load(ordering: .relaxed)),\"tls_resumed\":\(state.tlsResumed.load(ordering: .relaxed)),"
            + "\"tls_handshake_failures\":\(tlsFailuresJSON(state)),"
            + "\"last_error\":\(state.lastErrorDescription.map(jsonString) ?? "null")}"
    }
    let check = group.healthCheck.map { "\(jsonString("\($0.kind) every \($0.interval.nanoseconds / 1_000_000) ms"))" } ?? "null"
    let client = group.tls?.clientCertificate.map {
        "{\"subject\":\(jsonString($0.subject)),\"serial\":\(jsonString($0.serialNumberHex)),\"sha256_fingerprint\":\(jsonString($0.sha256Fingerprint)),"
            + "\"not_after\":\($0.notAfter),\"not_after_rfc3339\":\(jsonString(rfc3339($0.notAfter)))}"
    } ?? "null"
    return "{\"name\":\(jsonString(group.name)),\"balance\":\(jsonString(group.algorithm.description)),\"protocol\":\"\(group.upstreamProtocol.rawValue)\",\"tls\":\(group.tls != nil),"
        + "\"client_certificate\":\(client),"
        + "\"health_check\":\(check),\"backends\":[\(backends.joined(separator: ","))]}"
}

/// Failed upstream handshakes by reason, only the reasons seen: `{"certificate_expired":3}`.
private func tlsFailuresJSON(_ state: BackendState) -> String {
    let seen = zip(UpstreamHandshakeFailure.allCases, state.tlsHandshakeFailures).compactMap { reason, count -> String? in
        let value = count.load(ordering: .relaxed)
        return value > 0 ? "\(jsonString(reason.rawValue)):\(value)" : nil
    }
    return "{\(seen.joined(separator: ","))}"
}

/// What each HTTPS listener served for a lineage when last checked (`ServedProof`):
/// `served_verified_at` is when it served the published chain (null after a mismatch or
/// a failed probe), `fingerprint_seen` the leaf it served.
func servedJSON(_ checks: [ServedProof.Check]) -> String {
    let items = checks.map { check -> String in
        let state = check.matches.map { $0 ? "verified" : "mismatch" } ?? "unverified"
        let verified = check.matches == true ? "\(check.checkedAt)" : "null"
        let verifiedText = check.matches == true ? jsonString(rfc3339(check.checkedAt)) : "null"
        return "{\"listener\":\(jsonString(check.listener)),\"server_name\":\(jsonString(check.serverName)),\"state\":\"\(state)\","
            + "\"served_verified_at\":\(verified),\"served_verified_at_rfc3339\":\(verifiedText),"
            + "\"checked_at\":\(check.checkedAt),\"checked_at_rfc3339\":\(jsonString(rfc3339(check.checkedAt))),"
            + "\"fingerprint_seen\":\(check.seen?.first.map(jsonString) ?? "null"),\"chain_seen\":\(check.seen.map { "[\($0.map(jsonString).joined(separator: ","))]" } ?? "null"),"
            + "\"error\":\(check.error.map(jsonString) ?? "null")"
            + (check.staple.map { ",\"ocsp_staple\":\(jsonString($0)),\"ocsp_staple_problem\":\(check.stapleProblem)" } ?? "") + "}"
    }
    return "[\(items.joined(separator: ","))]"
}

/// One lineage's report; `served`: what the listeners served for it (the running
/// gateway's `/status/certificates`; `certs` reads files and has none).
func certificateJSON(_ r: CertificateReport, served: [ServedProof.Check]? = nil, ocsp: OCSPStapleState? = nil, now: Int64) -> String {
    let chain = r.chain.map {
        "{\"subject\":\(jsonString($0.subject)),\"issuer\":\(jsonString($0.issuer)),\"serial\":\(jsonString($0.serial)),"
            + "\"not_before\":\($0.notBefore),\"not_before_rfc3339\":\(jsonString(rfc3339($0.notBefore))),"
            + "\"not_after\":\($0.notAfter),\"not_after_rfc3339\":\(jsonString(rfc3339($0.notAfter))),"
            + "\"state\":\(jsonString($0.state.rawValue))}"
    }
    let rejected = r.rejectedError.map {
        "{\"error\":\(jsonString($0)),\"since\":\(r.rejectedSince ?? 0),\"since_rfc3339\":\(jsonString(rfc3339(r.rejectedSince ?? 0))),\"serving_previous_version\":true}"
    } ?? "null"
    let renewal: String = r.renewal.map { renewalJSON($0, lineage: r.name, now: now) } ?? "null"
    return "{\"name\":\(jsonString(r.name)),"
        + "\"source\":{\"configured\":\(jsonString(r.source)),\"certificate\":\(jsonString(r.certificateFile)),\"key\":\(jsonString(r.keyFile)),"
        + "\"resolved_certificate\":\(jsonString(r.resolvedCertificateFile)),\"resolved_key\":\(jsonString(r.resolvedKeyFile))},"
        + "\"server_names\":[\(r.servedNames.map(jsonString).joined(separator: ","))],\"default\":\(r.isDefault),"
        + "\"serial\":\(jsonString(r.serial)),\"subject\":\(jsonString(r.subject)),\"issuer\":\(jsonString(r.issuer)),"
        + "\"subject_alternative_names\":[\(r.subjectAlternativeNames.map(jsonString).joined(separator: ","))],"
        + "\"key_type\":\(jsonString(r.keyType)),\"sha256_fingerprint\":\(jsonString(r.sha256Fingerprint)),"
        + "\"not_before\":\(r.notBefore),\"not_before_rfc3339\":\(jsonString(rfc3339(r.notBefore))),"
        + "\"not_after\":\(r.notAfter),\"not_after_rfc3339\":\(jsonString(rfc3339(r.notAfter))),\"seconds_remaining\":\(r.secondsRemaining),"
        + "\"lifetime_used\":\(Double(Int(r.lifetimeUsed * 10000)) / 10000),\"state\":\(jsonString(r.state.rawValue)),"
        + "\"chain\":[\(chain.joined(separator: ","))],"
        + "\"chain_valid\":\(r.chainChecked ? "\(r.chainProblem == nil)" : "null"),\"chain_checked\":\(r.chainChecked),\"chain_problem\":\(r.chainProblem.map(jsonString) ?? "null"),"
        + "\"loaded_at\":\(r.loadedAt),\"loaded_at_rfc3339\":\(jsonString(rfc3339(r.loadedAt))),\"generation\":\(r.generation),\"rejected_version\":\(rejected),"
        + "\"renewal\":\(renewal)"
        + (served.map { ",\"served\":\(servedJSON($0))" } ?? "")
        + (ocsp.map { ",\"ocsp\":\(ocspJSON($0, now: now))" } ?? "") + "}"
}

/// OCSP stapling of a certificate whose AIA names a responder (`OCSPStapler`).
func ocspJSON(_ s: OCSPStapleState, now: Int64) -> String {
    let (level, reason) = s.level(now: now)
    let response = s.response
    func time(_ key: String, _ value: Int64?) -> String {
        "\"\(key)\":\(value.map(String.init) ?? "null"),\"\(key)_rfc3339\":\(value.map { jsonString(rfc3339($0)) } ?? "null")"
    }
    return "{\"state\":\(jsonString(s.state(now: now))),\"level\":\(jsonString(level.rawValue)),\"reason\":\(reason.map(jsonString) ?? "null"),"
        + "\"must_staple\":\(s.mustStaple),\"responder\":\(jsonString(s.responderURL)),"
        + "\"certificate_status\":\(response.map { jsonString($0.status.name) } ?? "null"),\"source\":\(s.source.map { jsonString($0.rawValue) } ?? "null"),"
        + time("this_update", response?.thisUpdate) + "," + time("next_update", response?.nextUpdate) + ","
        + time("fetched_at", s.fetchedAt) + "," + time("next_fetch_at", s.off ? nil : s.nextFetchAt) + ","
        + "\"last_error\":\(s.lastError.map(jsonString) ?? "null"),\"failures\":\(s.failures)}"
}

/// When the renewing agent should renew the served certificate (the renewal watchdog).
func renewalJSON(_ e: RenewalExpectation, lineage: String, now: Int64) -> String {
    // An unknown schedule publishes no times (nothing to alert on but the problem).
    let known = !e.basis.isUnknown
    func time(_ key: String, _ value: Int64) -> String {
        known ? "\"\(key)\":\(value),\"\(key)_rfc3339\":\(jsonString(rfc3339(value)))" : "\"\(key)\":null,\"\(key)_rfc3339\":null"
    }
    return "{\"state\":\(jsonString(e.state.rawValue)),\"agent\":\(jsonString(e.basis.agent)),\"basis\":\(jsonString(e.basis.description)),"
        + time("expected_at", e.expectedAt) + ",\"grace_seconds\":\(known ? "\(e.graceSeconds)" : "null"),"
        + time("overdue_at", e.expectedAt + e.graceSeconds) + ","
        + "\"late_seconds\":\(known ? "\(e.lateSeconds(now: now))" : "null"),"
        + "\"last_renewed_at\":\(e.lastRenewedAt),\"last_renewed_at_rfc3339\":\(jsonString(rfc3339(e.lastRenewedAt))),"
        + "\"problem\":\(e.problem.map(jsonString) ?? "null"),"
        + "\"message\":\(e.state == .overdue ? jsonString(e.message(lineage: lineage, now: now)) : "null")}"
}

func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

/// The admin endpoint: health, readiness, status views, metrics, reload.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let gateway: Gateway
    private let policy: AdminRequestPolicy
    private var head: HTTPRequestHead?

    init(gateway: Gateway) {
        self.gateway = gateway
        self.policy = AdminRequestPolicy(allowedHosts: Set(gateway.config.admin.allowedHosts.map { $0.lowercased() }))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            if let (status, text) = self.policy.refusal(head) {
                self.gateway.logger.warning("admin request refused", metadata: ["method": "\(head.method)", "path": "\(path)", "reason": "\(text.dropLast())"])
                self.respond(context: context, head: head, status: status, type: "text/plain", body: text)
                return
            }
            let (status, type, body): (HTTPResponseStatus, String, String)
            switch (head.method, path) {
            case (.GET, "/healthz"):
                (status, type, body) = (.ok, "text/plain", "ok\n")
            case (.GET, "/readyz"):
                let ready = self.gateway.isReady && self.gateway.stores.allSatisfy { !$0.snapshot.lineages.isEmpty }
                (status, type, body) = (ready ? .ok : .serviceUnavailable, "text/plain", ready ? "ready\n" : "not ready\n")
            case (.GET, "/status"):
                (status, type, body) = (.ok, "application/json", self.gateway.statusJSON())
            case (.GET, "/status/certificates"):
                (status, type, body) = (.ok, "application/json", self.gateway.certificatesJSON())
            case (.GET, "/status/upstreams"):
                (status, type, body) = (.ok, "application/json", self.gateway.upstreamsJSON())
            case (.GET, "/metrics"):
                (status, type, body) = (.ok, "text/plain; version=0.0.4; charset=utf-8", self.gateway.metricsText())
            case (.GET, "/"):
                (status, type, body) = (.ok, "text/html; charset=utf-8", statusPage(self.gateway))
            case (.POST, "/reload"):
                guard let handler = self.gateway.reloadHandler.withLockedValue({ $0 }) else {
                    let reports = self.gateway.stores.map { $0.reload(reason: "admin /reload") }
                    let published = reports.contains { $0.published }
                    (status, type, body) = (.ok, "text/plain", published ? "reloaded: new certificates published\n" : "reloaded: nothing changed\n")
                    break
                }
                // The whole configuration: answered once the reload is done.
                let promise = context.eventLoop.makePromise(of: AdminReloadAnswer.self)
                promise.completeWithTask { await handler() }
                promise.futureResult.assumeIsolated().whenSuccess { answer in
                    let text = answer.summary
                    if let seconds = answer.retryAfter {
                        self.respond(context: context, head: head, status: .tooManyRequests, type: "text/plain", body: text,
                                     extra: [("retry-after", "\(seconds)")])
                        return
                    }
                    let code: HTTPResponseStatus = text.hasPrefix("applied") || text.hasPrefix("certificates") ? .ok
                        : text.hasPrefix("shutting down") ? .serviceUnavailable : .unprocessableEntity
                    self.respond(context: context, head: head, status: code, type: "text/plain", body: text)
                }
                return
            case (_, "/reload"):
                // The path exists; only its method is wrong (as nginx and Envoy's admin answer).
                self.respond(context: context, head: head, status: .methodNotAllowed, type: "text/plain",
                             body: "405 method not allowed: use POST /reload (curl -X POST http://ADMIN/reload)\n", extra: [("allow", "POST")])
                return
            default:
                (status, type, body) = (.notFound, "text/plain", "not found; try /, /healthz, /readyz, /status, /status/certificates, /status/upstreams, /metrics\n")
            }
            self.respond(context: context, head: head, status: status, type: type, body: body)
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, status: HTTPResponseStatus, type: String, body: String,
                         extra: [(String, String)] = []) {
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
        buffer.writeString(body)
        let headers = HTTPHeaders([("content-type", type), ("content-length", "\(buffer.readableBytes)"), ("cache-control", "no-store")] + extra)
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        context.write(Self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
        if !head.isKeepAlive { context.close(promise: nil) }
    }
}
