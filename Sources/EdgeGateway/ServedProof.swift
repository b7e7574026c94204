import Atomics
import Dispatch
import EdgeCertificates
import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Proof that what was published is what clients get: after every publication (and once
/// the listeners are bound), a real TLS handshake to each HTTPS listener serving the
/// store, for each name of each lineage that changed, and the chain it served compared,
/// certificate by certificate, with the chain just published.
///
/// Why: a renewal can be on disk, loaded, counted and shown in every status view while
/// handshakes still get the old certificate (a listener that kept an old context, a
/// process of another build on the port); an operator learns it from an expired
/// certificate weeks later, since the expiry views follow what was published. No peer
/// closes this loop. (It checks the gateway from loopback: what terminates TLS in front
/// of it, a balancer or a CDN, is not seen.)
///
/// Probes run one at a time on a queue of their own (they block, for at most a few
/// seconds each), never on an event loop; the newest result per lineage and listener is
/// kept for the status views and the metrics, and every lineage is checked again every
/// `recheckInterval`, so a mismatch whose cause went away clears without a publication.
package final class ServedProof: Sendable {
    /// A TLS listener, as a probe reaches it: over loopback, with a PROXY header if the
    /// listener expects one.
    struct Target: Sendable {
        var listener: String
        var host: String
        var port: Int
        var proxyHeader: Bool
        var store: CertificateStore
    }

    /// What one listener served for one lineage when last checked.
    package struct Check: Sendable {
        package var listener: String
        /// The name the probe asked for ("" for none: the default certificate).
        package var serverName: String
        package var checkedAt: Int64
        /// The published chain's fingerprints, leaf first.
        package var expected: [String]
        /// What was served; nil when the probe failed (`error`).
        package var seen: [String]?
        package var error: String?
        /// What the handshake stapled, checked (`certs --check-served`); nil when not looked at.
        package var staple: String?
        /// How bad that is, as the status views grade it: 0 a current good response, or none
        /// with stapling off; 1 none, or not checked; 2 revoked, invalid, or none for a
        /// must-staple certificate.
        package var stapleProblem = 0

        /// true: the published chain was served; false: another one; nil: not known (the
        /// probe failed). The published chain served with more after it counts as served:
        /// OpenSSL completes a chain from its store when the file holds the leaf alone (a
        /// listener's client CA bundle is in that store).
        package var matches: Bool? { self.seen.map { Self.serves($0, self.expected) } }

        static func serves(_ seen: [String], _ expected: [String]) -> Bool {
            !expected.isEmpty && seen.starts(with: expected)
        }
    }

    /// Every lineage is checked again this often, publication or not.
    static let recheckInterval = DispatchTimeInterval.seconds(600)

    private let logger: Logger
    private let queue = DispatchQueue(label: "edge-gateway.served-proof")
    private let targets = NIOLockedValueBox<[Target]>([])
    /// lineage name -> listener -> the newest check.
    private let results = NIOLockedValueBox<[String: [String: Check]]>([:])
    private let stopped = ManagedAtomic(false)
    private let observers = NIOLockedValueBox<[(CertificateStore, Int)]>([])

    /// `previous`: the generation this one replaces, whose results are shown until this
    /// one has checked again (a reload does not reset a mismatch, or an alert's timer).
    init(logger: Logger, previous: ServedProof? = nil) {
        self.logger = logger
        if let previous { self.results.withLockedValue { $0 = previous.results.withLockedValue { $0 } } }
    }

    /// Starts proving: every lineage of every target's store now and every
    /// `recheckInterval`, and the lineages each later publication adds or updates.
    func start(targets: [Target]) {
        self.targets.withLockedValue { $0 = targets }
        var stores: [CertificateStore] = []
        for target in targets where !stores.contains(where: { $0 === target.store }) { stores.append(target.store) }
        for store in stores {
            // Weakly: the store holds its observers until `stop`.
            let id = store.observePublications { [weak self, weak store] report in
                guard let self, let store else { return }
                self.enqueue(store: store, lineages: Set(report.added + report.updated))
            }
            self.observers.withLockedValue { $0.append((store, id)) }
        }
        self.recheck(stores)
    }

    private func recheck(_ stores: [CertificateStore]) {
        for store in stores { self.enqueue(store: store, lineages: nil) }
        self.queue.asyncAfter(deadline: .now() + Self.recheckInterval) { [weak self] in
            guard let self, !self.stopped.load(ordering: .acquiring) else { return }
            self.recheck(stores)
        }
    }

    /// No more probes; one under way finishes alone, its result dropped.
    func stop() {
        self.stopped.store(true, ordering: .releasing)
        for (store, id) in self.observers.withLockedValue({ $0 }) { store.stopObservingPublications(id) }
    }

    /// The newest check of each listener serving `lineage`, by listener name.
    package func checks(for lineage: String) -> [Check] {
        (self.results.withLockedValue { $0[lineage] } ?? [:]).values.sorted { $0.listener < $1.listener }
    }

    /// Every lineage's checks, for the metrics.
    package var allChecks: [String: [Check]] {
        self.results.withLockedValue { $0 }.mapValues { $0.values.sorted { $0.listener < $1.listener } }
    }

    private func enqueue(store: CertificateStore, lineages: Set<String>?) {
        guard !self.stopped.load(ordering: .acquiring) else { return }
        self.queue.async { [weak self] in self?.prove(store: store, lineages: lineages) }
    }

    /// Checks the lineages named (nil: all) of `store`'s current snapshot on each listener
    /// it serves. The current one, read again before each handshake, not the one whose
    /// publication queued this: a newer publication may have come meanwhile, and what it
    /// published is what must be served. A mismatch found while the lineage was published
    /// again is dropped: that publication queued its own check.
    private func prove(store: CertificateStore, lineages: Set<String>?) {
        let targets = self.targets.withLockedValue { $0 }.filter { $0.store === store }
        let snapshot = store.snapshot
        let names = snapshot.servedNames
        for (index, lineage) in snapshot.lineages.enumerated() where lineages?.contains(lineage.name) ?? true {
            let serverNames = Self.probeNames(names[index], isDefault: snapshot.isDefault(index))
            guard !serverNames.isEmpty else { continue }
            // An ECDSA and an RSA certificate for one name: the probe asks as a client that
            // can take only this one's key (a client offering both gets the ECDSA one).
            let shared = names.enumerated().contains { $0.offset != index && !Set($0.element).isDisjoint(with: names[index]) }
            let algorithms = shared ? Self.signatureAlgorithms(forKey: lineage.leaf.keyDescription) : nil
            for target in targets {
                // Each name the lineage is served for: the first one not served as published
                // decides the listener's check, else the last one.
                var decided: Check?
                for serverName in serverNames {
                    guard !self.stopped.load(ordering: .acquiring) else { return }
                    let expected = Self.chain(of: lineage.name, in: store)
                    let outcome = ServedProbe.handshake(host: target.host, port: target.port, serverName: serverName, proxyHeader: target.proxyHeader,
                                                        signatureAlgorithms: algorithms)
                    var check = Check(listener: target.listener, serverName: serverName, checkedAt: Int64(currentTime()), expected: expected)
                    switch outcome {
                    case .success(let seen): check.seen = seen.chain
                    case .failure(let failure): check.error = failure.description
                    }
                    decided = check
                    if check.matches != true { break }
                }
                guard let check = decided, !self.stopped.load(ordering: .acquiring) else { return }
                if check.matches == false, Self.chain(of: lineage.name, in: store) != check.expected { continue }
                self.record(lineage: lineage.name, check)
            }
        }
        if lineages == nil { self.forgetLineagesNoLongerServed() }
    }

    private static func chain(of lineage: String, in store: CertificateStore) -> [String] {
        store.snapshot.lineages.first { $0.name == lineage }?.chain.map(\.sha256Fingerprint) ?? []
    }

    /// The results of lineages that no store of this generation serves any more.
    private func forgetLineagesNoLongerServed() {
        var stores: [CertificateStore] = []
        for target in self.targets.withLockedValue({ $0 }) where !stores.contains(where: { $0 === target.store }) { stores.append(target.store) }
        let served = Set(stores.flatMap { $0.snapshot.lineages.map(\.name) })
        self.results.withLockedValue { results in results = results.filter { served.contains($0.key) } }
    }

    private func record(lineage: String, _ check: Check) {
        let previous = self.results.withLockedValue { results -> Check? in
            let previous = results[lineage]?[check.listener]
            // A failed probe does not clear a mismatch: only a handshake that serves the
            // published chain does.
            if check.matches == nil, previous?.matches == false, previous?.expected == check.expected { return previous }
            results[lineage, default: [:]][check.listener] = check
            return previous
        }
        var metadata: Logger.Metadata = ["lineage": "\(lineage)", "listener": "\(check.listener)", "server_name": "\(check.serverName)",
                                         "published": "\(check.expected.first ?? "")"]
        switch check.matches {
        case true?:
            self.logger.debug("published certificate verified as served", metadata: metadata)
        case false?:
            metadata["served"] = "\(check.seen?.first ?? "")"
            if check.seen?.first == check.expected.first { metadata["difference"] = "the chain after the leaf" }
            self.logger.error("served certificate differs from the published one", metadata: metadata)
        case nil:
            // Once per state: a listener loopback cannot reach is not news at every rotation.
            guard previous?.error == nil || previous?.error != check.error else { return }
            metadata["error"] = "\(check.error ?? "")"
            self.logger.warning("could not verify the served certificate", metadata: metadata)
        }
    }

    /// Where a probe reaches a listener bound to `address`: loopback for a wildcard
    /// address, else the address itself.
    static func loopbackHost(for address: SocketAddress) -> String {
        let ip = address.ipAddress ?? "127.0.0.1"
        switch ip {
        case "0.0.0.0": return "127.0.0.1"
        case "::", "::0": return "::1"
        default: return ip
        }
    }

    /// The names a probe asks for: those the lineage is served for (a wildcard's with a
    /// label of ours), exact ones first, at most `limit` (a certificate with hundreds of
    /// names is proven by a sample, not by hundreds of handshakes per publication); none
    /// ("") for a default certificate served for no name; empty when the lineage is served
    /// for nothing at all (every name another lineage won).
    static func probeNames(_ served: [String], isDefault: Bool, limit: Int = 8) -> [String] {
        let exact = served.filter { !$0.hasPrefix("*.") }
        let wildcards = served.filter { $0.hasPrefix("*.") }.map { "edge-gateway-served-proof" + $0.dropFirst() }
        let names = Array((exact + wildcards).prefix(limit))
        return names.isEmpty && isDefault ? [""] : names
    }

    /// The one name `certs --check-served` asks for.
    static func probeName(_ served: [String], isDefault: Bool) -> String? {
        Self.probeNames(served, isDefault: isDefault, limit: 1).first
    }

    /// What a client that can take only this key's certificate offers (OpenSSL's list syntax).
    static func signatureAlgorithms(forKey key: String) -> String? {
        if key.hasPrefix("RSA") {
            return "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:RSA+SHA256:RSA+SHA384:RSA+SHA512"
        }
        if key.hasPrefix("ECDSA") { return "ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512" }
        return nil
    }
}
