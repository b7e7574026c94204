import Atomics
import EdgeCertificates
import EdgeProxy
import EdgeTLS
import NIOConcurrencyHelpers
import Prometheus

/// The gateway's Prometheus metrics (swift-prometheus over swift-metrics' handler types).
///
/// Event counters are updated where things happen; certificate gauges are derived
/// state and refreshed at scrape time, with the series of rotated-away serials removed.
final class GatewayMetrics: Sendable {
    let registry = PrometheusCollectorRegistry()
    private let certificateGauges = NIOLockedValueBox<[String: Gauge]>([:])
    private let counters = NIOLockedValueBox<[String: Counter]>([:])
    private let gauges = NIOLockedValueBox<[String: Gauge]>([:])
    /// Reload outcomes already counted, per store (`CertificateStore.serial`): a
    /// configuration reload's new store starts its counts at 0, and its reloads are
    /// counted from there (before, they were not until its totals passed the old store's).
    private let reloadsSeen = NIOLockedValueBox<[Int: [String: Int]]>([:])
    private let watchEventsSeen = NIOLockedValueBox(0)
    private let listeners = NIOLockedValueBox<[String: ListenerMetrics]>([:])

    /// One metric per name and label set, made on first use.
    private func cached<Metric>(_ box: NIOLockedValueBox<[String: Metric]>, _ name: String, _ labels: [(String, String)], make: () -> Metric) -> Metric {
        let key = metricKey(name, labels)
        return box.withLockedValue { metrics in
            if let existing = metrics[key] { return existing }
            let made = make()
            metrics[key] = made
            return made
        }
    }

    private func counter(_ name: String, _ labels: [(String, String)], help: String) -> Counter {
        self.cached(self.counters, name, labels) {
            self.registry.makeCounter(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
        }
    }

    private func gauge(_ name: String, _ labels: [(String, String)], help: String) -> Gauge {
        self.cached(self.gauges, name, labels) {
            self.registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
        }
    }

    /// One listener's connection, handshake and request metrics, made once per listener
    /// name and kept across reloads; `bind` resolves it once. Looking each series up by
    /// name and labels cost ~3 % of a full handshake (four lookups under a lock), and
    /// 7 % of an HTTP/2 request when the request counter was built per stream.
    /// A plain listener has no handshake series (kept apart by `tls`: a reload may change that).
    func listener(_ name: String, tls: Bool) -> ListenerMetrics {
        let key = "\(name)|\(tls)"
        if let existing = self.listeners.withLockedValue({ $0[key] }) { return existing }
        let made = ListenerMetrics(
            requestsByClass: (1...5).map { self.counter("edge_requests_total", [("listener", name), ("class", "\($0)xx")], help: "Requests answered, by listener and status class.") },
            open: self.gauge("edge_connections_open", [("listener", name)], help: "Open client connections."),
            accepted: self.counter("edge_connections_total", [("listener", name)], help: "Client connections accepted."),
            handshakes: !tls ? [] : ["ok", "failed", "timeout"].map { self.counter("edge_tls_handshakes_total", [("listener", name), ("result", $0)], help: "TLS handshakes with clients, by result.") },
            proxyProtocolRefused: self.counter("edge_proxy_protocol_refused_total", [("listener", name)],
                                               help: "Connections closed for a missing or malformed PROXY protocol header, or from a peer outside proxy_protocol_from (proxy_protocol listeners)."),
            overflow: self.counter("edge_connections_refused_total", [("listener", name), ("reason", "max_connections")],
                                   help: "Client connections closed as they were accepted, by reason (max_connections: the listener had that many open)."),
            acceptErrors: self.counter("edge_accept_errors_total", [("listener", name)],
                                       help: "Failed accepts (out of descriptors: EMFILE, ENFILE; out of memory), each followed by a 250 ms pause in accepting."))
        return self.listeners.withLockedValue { listeners in
            if let existing = listeners[key] { return existing }
            listeners[key] = made
            return made
        }
    }

    /// A heap trim (`HeapTrimmer`) gave `bytes` of resident memory back to the kernel.
    func heapTrimmed(bytes: Int) {
        self.counter("edge_memory_trims_total", [], help: "Times free heap pages were returned to the kernel (memory_trimming).").increment()
        self.counter("edge_memory_trimmed_bytes_total", [], help: "Resident memory returned to the kernel by heap trims, in bytes.").increment(by: Int64(bytes))
    }

    /// Refreshes the derived gauges and renders the exposition.
    func render(reports: [CertificateReport], stores: [CertificateStore], groups: [UpstreamGroup], served: [String: [ServedProof.Check]] = [:],
                revocationLists: [RevocationListStatus.File] = [], ocsp: (String) -> OCSPStapleState? = { _ in nil }, now: Int64) -> String {
        self.refreshUpstreams(groups)
        var live: [String: Gauge] = [:]
        for file in revocationLists {
            // One series per issuer: two lists of one CA name in a file (a key rollover keeps
            // two) are shown as one, due at the earlier next update, stale if either is.
            let byIssuer = Dictionary(grouping: file.lists.lists, by: \.issuer)
            for (issuer, lists) in byIssuer.sorted(by: { $0.key < $1.key }) {
                let labels = [("file", file.path), ("used_by", file.usedBy), ("issuer", issuer)]
                if let nextUpdate = lists.compactMap(\.nextUpdate).min() {
                    let next = self.certificateGauge("edge_crl_next_update_timestamp_seconds", labels,
                                                     help: "When a CRL (client_auth.crl_file, upstreams tls.crl_file) is due to be replaced by its CA (its nextUpdate, Unix time).")
                    next.set(to: Double(nextUpdate))
                    live[metricKey("edge_crl_next_update_timestamp_seconds", labels)] = next
                }
                let stale = self.certificateGauge("edge_crl_stale", labels,
                                                  help: "1 when a CRL is past its nextUpdate: revocations since are not in it (peers are refused with crl_strict, else checked against it).")
                stale.set(to: lists.contains { $0.isStale(now: now) } ? 1 : 0)
                live[metricKey("edge_crl_stale", labels)] = stale
            }
        }
        for report in reports {
            for check in served[report.name] ?? [] {
                let labels = [("name", report.name), ("listener", check.listener)]
                let mismatch = self.certificateGauge("edge_certificate_served_mismatch", labels,
                                                     help: "1 when a listener's handshake served another chain than the one published for the lineage (ServedProof); 0 when it served the published one or could not be checked.")
                mismatch.set(to: check.matches == false ? 1 : 0)
                live[metricKey("edge_certificate_served_mismatch", labels)] = mismatch
                let unverified = self.certificateGauge("edge_certificate_served_unverified", labels,
                                                       help: "1 when the last handshake with a listener to check what it serves for the lineage failed (the error is on /status/certificates).")
                unverified.set(to: check.matches == nil ? 1 : 0)
                live[metricKey("edge_certificate_served_unverified", labels)] = unverified
                let verified = self.certificateGauge("edge_certificate_served_verified_timestamp_seconds", labels,
                                                     help: "When the last check found a listener serving the chain published for the lineage (Unix time); 0 when the last check found another chain or failed.")
                verified.set(to: check.matches == true ? Double(check.checkedAt) : 0)
                live[metricKey("edge_certificate_served_verified_timestamp_seconds", labels)] = verified
            }
        }
        for report in reports {
            let labels = [("name", report.name), ("serial", report.serial), ("source", report.source)]
            let notAfter = self.certificateGauge("edge_certificate_not_after_seconds", labels, help: "Not-after of the served certificate (Unix time).")
            notAfter.set(to: Double(report.notAfter))
            live[metricKey("edge_certificate_not_after_seconds", labels)] = notAfter
            let remaining = self.certificateGauge("edge_certificate_remaining_seconds", labels, help: "Seconds until the served certificate (or an earlier-expiring chain certificate) expires; 0 once expired.")
            let firstExpiry = report.chain.map(\.notAfter).min() ?? report.notAfter
            remaining.set(to: Double(max(0, firstExpiry - now)))
            live[metricKey("edge_certificate_remaining_seconds", labels)] = remaining
            for state in CertificateState.allCases {
                let stateLabels = [("name", report.name), ("state", state.rawValue)]
                let g = self.certificateGauge("edge_certificate_state", stateLabels, help: "1 for the current expiry state of each lineage.")
                g.set(to: report.state == state ? 1 : 0)
                live[metricKey("edge_certificate_state", stateLabels)] = g
            }
            let chainLabels = [("name", report.name)]
            if report.chainChecked {
                // No series for a chain not checked (an upstream client certificate without
                // client_ca_file): neither valid nor invalid, and no alert may fire on it.
                let chain = self.certificateGauge("edge_certificate_chain_valid", chainLabels, help: "1 when the served chain verifies against the trust store.")
                chain.set(to: report.chainProblem == nil ? 1 : 0)
                live[metricKey("edge_certificate_chain_valid", chainLabels)] = chain
            }
            if let renewal = report.renewal {
                // No series for a lineage nothing is known to renew (a plain pair or directory).
                if !renewal.basis.isUnknown {
                    // No time when it is not known (certbot's file missing or unreadable).
                    let expected = self.certificateGauge("edge_certificate_renewal_expected_timestamp_seconds", chainLabels,
                                                         help: "When the lineage's renewing agent (certbot by its renewal file, cert-manager, or renew_before) should renew the served certificate (Unix time).")
                    expected.set(to: Double(renewal.expectedAt))
                    live[metricKey("edge_certificate_renewal_expected_timestamp_seconds", chainLabels)] = expected
                }
                let overdue = self.certificateGauge("edge_certificate_renewal_overdue", chainLabels,
                                                    help: "1 when the served certificate is past its expected renewal by more than the grace (expiry.renewal_grace) and nothing newer has appeared.")
                overdue.set(to: renewal.state == .overdue ? 1 : 0)
                live[metricKey("edge_certificate_renewal_overdue", chainLabels)] = overdue
                let problem = self.certificateGauge("edge_certificate_renewal_problem", chainLabels,
                                                    help: "1 when the renewing agent will not renew the lineage as expected or its settings could not be read (certbot's renewal file missing, unreadable or not understood; the reason is on /status/certificates).")
                problem.set(to: renewal.problem == nil ? 0 : 1)
                live[metricKey("edge_certificate_renewal_problem", chainLabels)] = problem
            }
            if let stapling = ocsp(report.sha256Fingerprint) {
                // No series for a certificate without an OCSP responder: nothing to staple.
                let stapled = self.certificateGauge("edge_certificate_ocsp_stapled", chainLabels,
                                                    help: "1 when a verified and current OCSP response is stapled for the served certificate (its AIA names a responder): good, or revoked (then edge_certificate_ocsp_problem is 2).")
                stapled.set(to: stapling.stapled(now: now) == nil ? 0 : 1)
                live[metricKey("edge_certificate_ocsp_stapled", chainLabels)] = stapled
                let next = self.certificateGauge("edge_certificate_ocsp_next_update_timestamp_seconds", chainLabels,
                                                 help: "Next update of the stapled OCSP response (Unix time); 0 when none is stapled or it names none.")
                next.set(to: Double(stapling.stapled(now: now)?.nextUpdate ?? 0))
                live[metricKey("edge_certificate_ocsp_next_update_timestamp_seconds", chainLabels)] = next
                let level = self.certificateGauge("edge_certificate_ocsp_problem", chainLabels,
                                                  help: "OCSP stapling of the served certificate: 0 ok, 1 warning (no current response, or its refresh fails), 2 critical (revoked, or must-staple without a response); the reason is on /status/certificates.")
                level.set(to: Double([OCSPStapleState.Level.ok, .warning, .critical].firstIndex(of: stapling.level(now: now).level)!))
                live[metricKey("edge_certificate_ocsp_problem", chainLabels)] = level
            }
            let rejected = self.certificateGauge("edge_certificate_rejected", chainLabels, help: "1 when the newest version on disk was rejected and an older one is served.")
            rejected.set(to: report.rejectedError == nil ? 0 : 1)
            live[metricKey("edge_certificate_rejected", chainLabels)] = rejected
        }
        // Drop the series of lineages and serials that are no longer served.
        self.certificateGauges.withLockedValue { gauges in
            for (key, gauge) in gauges where live[key] == nil {
                self.registry.unregisterGauge(gauge)
                gauges[key] = nil
            }
        }
        // Reload outcomes: counters advanced by what the stores counted since the last scrape.
        self.reloadsSeen.withLockedValue { seen in
            // Kept for stores no longer passed in too: a draining generation's admin
            // endpoint may answer a scrape with its own stores, and the next scrape must
            // not count the current ones again. Only the 64 newest are kept: a store that
            // old is long gone.
            for store in stores {
                var counted = seen[store.serial] ?? [:]
                for (outcome, total) in store.reloadOutcomes where total > counted[outcome, default: 0] {
                    self.counter("edge_certificate_reloads_total", [("result", outcome)], help: "Certificate reloads, by result.")
                        .increment(by: Int64(total - counted[outcome, default: 0]))
                    counted[outcome] = total
                }
                seen[store.serial] = counted
            }
            if seen.count > 64 {
                for serial in seen.keys.sorted().prefix(seen.count - 64) { seen[serial] = nil }
            }
        }
        // Watcher events: what tells an operator that inotify sees the renewals at all.
        let events = CertificateStore.allFileEventsRead
        let watchEvents = self.counter("edge_certificate_watch_events_total", [],
                                       help: "inotify events the certificate watchers read about certificate files and their directories; flat while files change means inotify does not see them.")
        self.watchEventsSeen.withLockedValue { seen in
            if events > seen {
                watchEvents.increment(by: Int64(events - seen))
                seen = events
            }
        }
        self.gauge("edge_certificate_snapshots_live", [], help: "Certificate snapshot generations alive (published or held by a handshake).")
            .set(to: Double(CertificateSnapshot.liveCount))
        self.gauge("edge_certificate_snapshot_generation", [], help: "Generation of the newest published certificate snapshot.")
            .set(to: Double(stores.map { $0.snapshot.generation }.max() ?? 0))
        return sortedExposition(self.registry.emitToString())
    }

    /// A backend entry whose totals the counters follow, with the totals already added.
    private struct FollowedBackend {
        var state: BackendState
        let labels: [(String, String)]
        let tls: Bool
        /// The group has an active health check: its counters are series from the start.
        let checked: Bool
        var added: [String: Int] = [:]
    }

    /// Every backend entry of every configuration still alive. A reload gives each entry
    /// new figures from zero, which add to the same series; the old configuration keeps
    /// counting while it drains (and its admin connections may still render with it), so
    /// each render brings every entry's counters up to date, and an entry is dropped only
    /// once nothing else holds it, after a last update.
    private let followed = NIOLockedValueBox<[ObjectIdentifier: FollowedBackend]>([:])

    /// Upstream gauges, and counters advanced to the backends' atomic totals.
    private func refreshUpstreams(_ groups: [UpstreamGroup]) {
        for group in groups {
            for (backend, state) in zip(group.backends, group.states) {
                let labels = [("upstream", group.name), ("backend", backend.description)]
                self.gauge("edge_upstream_backend_up", labels, help: "1 when the backend takes requests (health check passing, not ejected).")
                    .set(to: state.isAvailable() ? 1 : 0)
                self.gauge("edge_upstream_active_requests", labels, help: "Requests in flight to the backend.")
                    .set(to: Double(state.active.load(ordering: .relaxed)))
                self.gauge("edge_upstream_idle_connections", labels, help: "Idle keep-alive connections pooled for the backend.")
                    .set(to: Double(state.idleConnections.load(ordering: .relaxed)))
                self.gauge("edge_upstream_streams_in_flight", labels, help: "Streams in flight on the backend's HTTP/2 connections.")
                    .set(to: Double(state.streamsInFlight.load(ordering: .relaxed)))
                self.followed.withLockedValue { followed in
                    if followed[ObjectIdentifier(state)] == nil {
                        followed[ObjectIdentifier(state)] = FollowedBackend(state: state, labels: labels, tls: group.tls != nil,
                                                                            checked: group.healthCheck != nil)
                    }
                }
            }
        }
        self.followed.withLockedValue { followed in
            for id in Array(followed.keys) {
                var entry = followed.removeValue(forKey: id)!
                self.advanceCounters(&entry)
                if !isKnownUniquelyReferenced(&entry.state) { followed[id] = entry }
            }
        }
    }

    private func advanceCounters(_ entry: inout FollowedBackend) {
        let state = entry.state
        var totals: [(String, [(String, String)], String, Int)] = [
            ("edge_upstream_requests_total", entry.labels, "Requests sent to the backend.", state.requests.load(ordering: .relaxed)),
            ("edge_upstream_connections_opened_total", entry.labels, "New connections opened to the backend (requests minus these were reused).", state.connectionsOpened.load(ordering: .relaxed)),
            ("edge_upstream_http2_connections_opened_total", entry.labels, "New connections to the backend that speak HTTP/2.", state.http2ConnectionsOpened.load(ordering: .relaxed)),
            ("edge_upstream_http2_ping_timeouts_total", entry.labels, "HTTP/2 connections to the backend closed because a PING went unanswered (ping_timeout).",
             state.pingTimeouts.load(ordering: .relaxed)),
            ("edge_upstream_connect_failures_total", entry.labels, "Failed connects to the backend.", state.connectFailures.load(ordering: .relaxed)),
            ("edge_upstream_tls_resumed_total", entry.labels, "Upstream TLS handshakes that resumed a session.", state.tlsResumed.load(ordering: .relaxed)),
        ]
        if entry.checked {
            for (result, count) in [("passed", state.healthChecksPassed), ("failed", state.healthChecksFailed)] {
                totals.append(("edge_upstream_health_checks_total", entry.labels + [("result", result)],
                               "Active health checks of the backend, by result.", count.load(ordering: .relaxed)))
            }
        }
        if entry.tls {
            // Every reason from zero, so that the first failure is an increase.
            for (reason, count) in zip(UpstreamHandshakeFailure.allCases, state.tlsHandshakeFailures) {
                totals.append(("edge_upstream_tls_handshake_failures_total", entry.labels + [("reason", reason.rawValue)],
                               "Failed TLS handshakes with the backend, by reason (also counted as connect failures).",
                               count.load(ordering: .relaxed)))
            }
        }
        for (name, series, help, total) in totals {
            let key = metricKey(name, series)
            if let added = entry.added[key], total <= added { continue }
            let counter = self.counter(name, series, help: help)
            if total > entry.added[key, default: 0] { counter.increment(by: Int64(total - entry.added[key, default: 0])) }
            entry.added[key] = total
        }
    }

    private func certificateGauge(_ name: String, _ labels: [(String, String)], help: String) -> Gauge {
        self.cached(self.certificateGauges, name, labels) {
            self.registry.makeGauge(descriptor: MetricNameDescriptor(metricName: name, unitName: "", helpText: help), labels: labels)
        }
    }
}

private func metricKey(_ name: String, _ labels: [(String, String)]) -> String {
    name + labels.map { "|\($0.0)=\($0.1)" }.joined()
}

/// The metrics of one listener, resolved once (at bind) so that a connection, a
/// handshake or a request costs an atomic increment and no lookup by name.
final class ListenerMetrics: ProxyObserver, Sendable {
    let requests: RequestCounter
    private let open: Gauge
    private let accepted: Counter
    /// ok, failed, timeout
    private let handshakes: [Counter]
    private let refusedProxyHeaders: Counter
    private let overflow: Counter
    private let acceptErrors: Counter
    /// Connections admitted under `max_connections` and not closed yet, across the
    /// listener's generations (a reload's old connections still hold their descriptors).
    private let admitted = ManagedAtomic<Int>(0)

    init(requestsByClass: [Counter], open: Gauge, accepted: Counter, handshakes: [Counter], proxyProtocolRefused: Counter, overflow: Counter,
         acceptErrors: Counter) {
        self.requests = RequestCounter { status in
            requestsByClass[min(max(status / 100, 1), 5) - 1].increment()
        }
        self.open = open
        self.accepted = accepted
        self.handshakes = handshakes
        self.refusedProxyHeaders = proxyProtocolRefused
        self.overflow = overflow
        self.acceptErrors = acceptErrors
    }

    /// An accept on the listener failed (`AcceptErrors`).
    func acceptFailed() {
        self.acceptErrors.increment()
    }

    /// Admits one more connection when fewer than `max` are open (counted from accept to
    /// close); false, counted as refused, when the listener is full.
    func admit(max: Int) -> Bool {
        if self.admitted.loadThenWrappingIncrement(ordering: .relaxed) < max { return true }
        self.admitted.wrappingDecrement(ordering: .relaxed)
        self.overflow.increment()
        return false
    }

    /// An admitted connection closed.
    func release() {
        self.admitted.wrappingDecrement(ordering: .relaxed)
    }

    func proxyProtocolRefused() {
        self.refusedProxyHeaders.increment()
    }

    /// Client connections open in the process, every listener's (for the line that says
    /// a listener cannot accept: the gauge cannot be read back).
    static let openConnections = ManagedAtomic<Int>(0)

    func connectionOpened() {
        Self.openConnections.wrappingIncrement(ordering: .relaxed)
        self.open.increment()
        self.accepted.increment()
        HeapTrimmer.shared.noteConnectionEvent()
    }

    func connectionClosed() {
        Self.openConnections.wrappingDecrement(ordering: .relaxed)
        self.open.decrement()
        HeapTrimmer.shared.noteConnectionEvent()
    }

    func handshake(result: String) {
        guard !self.handshakes.isEmpty else { return }
        switch result {
        case "ok": self.handshakes[0].increment()
        case "failed": self.handshakes[1].increment()
        default: self.handshakes[2].increment()
        }
    }
}

/// The exposition with its families in name order and each family's series in label order:
/// the registry emits them in hash order, different on every start, which makes two
/// scrapes (or a scrape and the README) hard to compare by eye or with diff.
func sortedExposition(_ text: String) -> String {
    var families: [(name: String, lines: [Substring])] = []
    for line in text.split(separator: "\n") {
        if line.hasPrefix("# HELP ") || line.hasPrefix("# TYPE ") {
            let name = String(line.dropFirst(7).prefix { $0 != " " })
            if families.last?.name != name { families.append((name, [])) }
            families[families.count - 1].lines.append(line)
        } else if !families.isEmpty {
            families[families.count - 1].lines.append(line)
        } else {
            families.append(("", [line]))
        }
    }
    var out = ""
    for family in families.sorted(by: { $0.name < $1.name }) {
        let comments = family.lines.filter { $0.hasPrefix("#") }
        let samples = family.lines.filter { !$0.hasPrefix("#") }.sorted()
        for line in comments + samples { out += line + "\n" }
    }
    return out
}
