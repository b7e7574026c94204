import Atomics
import Dispatch
import EdgeCertificates
import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Proof that what was published is what clients get: after every publication (and once
/// the listeners are bound), a real TLS handshake to each HTTPS listener serving the
/// store, for a name of each lineage that changed, and the chain it served compared,
/// certificate by certificate, with the chain just published.
///
/// Why: a renewal can be on disk, loaded, counted and shown in every status view while
/// handshakes still get the old certificate (a listener that kept an old context, a
/// second process on the port, a balancer terminating TLS in front); an operator learns
/// it from an expired certificate weeks later. No peer closes this loop.
///
/// Probes run one at a time on a queue of their own (they block, for at most a few
/// seconds each), never on an event loop; the newest result per lineage and listener is
/// kept for the status views and the metrics.
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

        /// true: the published chain was served; false: another one; nil: not known (the
        /// probe failed).
        package var matches: Bool? { self.seen.map { $0 == self.expected } }
    }

    private let logger: Logger
    private let queue = DispatchQueue(label: "edge-gateway.served-proof")
    private let targets = NIOLockedValueBox<[Target]>([])
    /// lineage name -> listener -> the newest check.
    private let results = NIOLockedValueBox<[String: [String: Check]]>([:])
    private let stopped = ManagedAtomic(false)
    private let observers = NIOLockedValueBox<[(CertificateStore, Int)]>([])

    init(logger: Logger) {
        self.logger = logger
    }

    /// Starts proving: every lineage of every target's store now, and the lineages each
    /// later publication adds or updates.
    func start(targets: [Target]) {
        self.targets.withLockedValue { $0 = targets }
        var stores: [CertificateStore] = []
        for target in targets where !stores.contains(where: { $0 === target.store }) { stores.append(target.store) }
        for store in stores {
            let id = store.observePublications { [weak self] report in
                self?.enqueue(store: store, lineages: Set(report.added + report.updated))
            }
            self.observers.withLockedValue { $0.append((store, id)) }
            self.enqueue(store: store, lineages: nil)
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
    /// it serves. The current one, not the one whose publication queued this: a newer
    /// publication may have come meanwhile, and what it published is what must be served.
    private func prove(store: CertificateStore, lineages: Set<String>?) {
        let targets = self.targets.withLockedValue { $0 }.filter { $0.store === store }
        let snapshot = store.snapshot
        let names = snapshot.servedNames
        for (index, lineage) in snapshot.lineages.enumerated() where lineages?.contains(lineage.name) ?? true {
            guard let serverName = Self.probeName(names[index], isDefault: snapshot.isDefault(index)) else { continue }
            let expected = lineage.chain.map(\.sha256Fingerprint)
            let algorithms = Self.signatureAlgorithms(forKey: lineage.leaf.keyDescription)
            for target in targets {
                guard !self.stopped.load(ordering: .acquiring) else { return }
                let outcome = ServedProbe.handshake(host: target.host, port: target.port, serverName: serverName, proxyHeader: target.proxyHeader,
                                                    signatureAlgorithms: algorithms)
                var check = Check(listener: target.listener, serverName: serverName, checkedAt: Int64(currentTime()), expected: expected)
                switch outcome {
                case .success(let seen): check.seen = seen.chain
                case .failure(let failure): check.error = failure.description
                }
                guard !self.stopped.load(ordering: .acquiring) else { return }
                self.record(lineage: lineage.name, check)
            }
        }
    }

    private func record(lineage: String, _ check: Check) {
        let previous = self.results.withLockedValue { results -> Check? in
            defer { results[lineage, default: [:]][check.listener] = check }
            return results[lineage]?[check.listener]
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

    /// The name a probe asks for: one the lineage is served for (a wildcard's with a label
    /// of ours), none for a default certificate served for no name; nil when the lineage
    /// is served for nothing at all (a name another lineage won).
    static func probeName(_ served: [String], isDefault: Bool) -> String? {
        if let exact = served.first(where: { !$0.hasPrefix("*.") }) { return exact }
        if let wildcard = served.first { return "edge-gateway-served-proof" + wildcard.dropFirst() }
        return isDefault ? "" : nil
    }

    /// Where an ECDSA and an RSA certificate share a name, the probe offers only what the
    /// lineage's key signs, as a client that can take nothing else.
    static func signatureAlgorithms(forKey key: String) -> String? {
        if key.hasPrefix("RSA") {
            return "rsa_pss_rsae_sha256:rsa_pss_rsae_sha384:rsa_pss_rsae_sha512:RSA+SHA256:RSA+SHA384:RSA+SHA512"
        }
        if key.hasPrefix("ECDSA") { return "ECDSA+SHA256:ECDSA+SHA384:ECDSA+SHA512" }
        return nil
    }
}
