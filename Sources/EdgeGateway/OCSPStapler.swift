import Dispatch
import EdgeCertificates
import EdgeTLS
import Foundation
import Logging
import Atomics
import NIOConcurrencyHelpers

/// OCSP stapling for served certificates whose AIA names a responder: asks the responder
/// for each such leaf, verifies the answer (`OCSPCheck.verify`), hands it to the leaf's
/// staple slot (read by the status callback of every context serving the leaf), refreshes
/// it half-way through its validity and keeps it in `ocsp.cache_dir` when one is set.
///
/// Runs as a periodic job on a thread of the pool: a request blocks for up to the
/// responder timeout, one at a time. Certificates without a responder are never looked at
/// again, and nothing is said about them (nginx logs a warning per such certificate on
/// every reload). The state per leaf lives across rotations of other lineages and across
/// configuration reloads, so neither refetches what is still good.
package final class OCSPStapler: Sendable {
    struct Entry {
        var lineage: String
        let leaf: X509Certificate
        /// nil: the chain holds no issuer of the leaf (no request can name it).
        var issuer: X509Certificate?
        /// Held here too, so a slot outlives a moment when no context serves its leaf.
        let slot: OCSPStapleSlot
        var state: OCSPStapleState
        /// The level and state last logged, so a change is logged once.
        var logged: (level: OCSPStapleState.Level, state: String) = (.ok, "pending")
    }

    /// Where ticks run: requests block, one at a time, for up to the responder timeout.
    static let queue = DispatchQueue(label: "edge-gateway.ocsp-stapling")

    let enabled: Bool
    let cacheDirectory: String?
    let timeoutSeconds: Int
    private let logger: Logger
    /// By leaf fingerprint.
    private let entries: NIOLockedValueBox<[String: Entry]>
    /// The stores' snapshot generations when the served leaves were last collected:
    /// unchanged, the collection (a fingerprint per lineage) is skipped.
    private let collectedGenerations = NIOLockedValueBox<[Int]>([])
    /// Set by `start`, when this stapler's generation serves: until then its ticks do
    /// nothing, and the generation it may replace goes on stapling (a reload whose
    /// listeners cannot bind leaves that one running).
    private let started = ManagedAtomic(false)
    /// Set when a reload's stapler took the entries over: this one's ticks, which go on
    /// until its generation stops, do nothing (two staplers would ask twice, and one
    /// with stapling turned off could staple again what the other cleared).
    private let retired = ManagedAtomic(false)

    /// The stapler of the generation this one replaces, until `start` takes over from it:
    /// what the status views show meanwhile (the new admin endpoint answers before
    /// stapling moves over).
    private let predecessor: NIOLockedValueBox<OCSPStapler?>

    /// Touches nothing of `previous`: this may be the plan of a reload whose start fails.
    init(config: OCSPConfig, baseDirectory: String, logger: Logger, previous: OCSPStapler?) {
        self.enabled = config.stapling
        self.cacheDirectory = config.cacheDir.map { resolvePath($0, base: baseDirectory) }
        self.timeoutSeconds = Int(config.responderTimeout.nanoseconds / 1_000_000_000)
        self.logger = logger
        self.entries = NIOLockedValueBox([:])
        self.predecessor = NIOLockedValueBox(previous)
    }

    /// Starts stapling for a generation that now serves, taking over from the one it
    /// replaces: its responses and schedules, so a reload fetches nothing again. A reload
    /// that turns stapling off ends every staple at once (nothing refreshes them, so a
    /// revocation would go unseen); one that turns it on asks for each at once.
    func start() {
        if let previous = self.predecessor.withLockedValue({ $0 }) {
            // Retired first: a fetch of its still in flight changes no slot after this (one
            // it finishes is lost to this stapler, which asks again).
            previous.retired.store(true, ordering: .sequentiallyConsistent)
            let now = Int64(currentTime())
            var adopted = previous.entries.withLockedValue { $0 }
            if previous.enabled != self.enabled {
                for (fingerprint, entry) in adopted {
                    adopted[fingerprint]!.state = OCSPStapleState(mustStaple: entry.state.mustStaple, responderURL: entry.state.responderURL,
                                                                 off: !self.enabled, now: now)
                    if !self.enabled { entry.slot.current = nil }
                }
            }
            self.entries.withLockedValue { $0 = adopted }
            if self.enabled && !previous.enabled {
                // The cached response is stapled meanwhile, but asked for again at once: a
                // revocation may have come while nothing was fetched.
                for (fingerprint, entry) in adopted { self.loadCached(fingerprint, leaf: entry.leaf, issuer: entry.issuer, now: now) }
                self.entries.withLockedValue { entries in
                    for fingerprint in entries.keys { entries[fingerprint]!.state.fetchNow(now: now) }
                }
            }
        }
        self.started.store(true, ordering: .sequentiallyConsistent)
        self.predecessor.withLockedValue { $0 = nil }
    }

    /// What is known about stapling the leaf of this fingerprint; nil when it names no
    /// responder (or is not served by a listener).
    package func state(fingerprint: String) -> OCSPStapleState? {
        if !self.started.load(ordering: .sequentiallyConsistent), let predecessor = self.predecessor.withLockedValue({ $0 }) {
            return predecessor.state(fingerprint: fingerprint)
        }
        return self.entries.withLockedValue { $0[fingerprint]?.state }
    }

    /// One round: takes in the leaves the listeners serve (when a store published since
    /// the last round), and asks the responder for those due.
    func tick(stores: [CertificateStore], now: Int64) {
        guard self.started.load(ordering: .relaxed), !self.retired.load(ordering: .relaxed) else { return }
        let served = stores.filter { $0.configuration.chainCheck == .served }
        let generations = served.map { $0.snapshot.generation }
        if self.collectedGenerations.withLockedValue({ $0 }) != generations {
            self.collect(served, now: now)
            self.collectedGenerations.withLockedValue { $0 = generations }
        }
        // First fetches first, then the longest waiting: retries of a responder that does
        // not answer come after a new certificate's first request. A round stops starting
        // fetches after twice the timeout; the rest stay due for the next one.
        let due = self.entries.withLockedValue { entries in
            entries.filter { $0.value.state.due(now: now) }.map { ($0.key, $0.value) }
                .sorted { ($0.1.state.attempted ? 1 : 0, $0.1.state.nextFetchAt) < ($1.1.state.attempted ? 1 : 0, $1.1.state.nextFetchAt) }
        }
        let budget = now + Int64(2 * self.timeoutSeconds)
        // Nothing more once retired: the answers would be thrown away, and the successor's
        // first round waits on this queue behind them.
        for (fingerprint, entry) in due where Int64(currentTime()) < budget && !self.retired.load(ordering: .relaxed) {
            self.fetch(fingerprint, entry, now: Int64(currentTime()))
        }
        // A tick that was running when a reload took over says nothing: the successor does.
        if !self.retired.load(ordering: .relaxed) { self.logChanges(now: Int64(currentTime())) }
    }

    /// Takes in the leaves `stores` serve now, with their cached responses, and drops the
    /// entries of leaves no longer served.
    private func collect(_ stores: [CertificateStore], now: Int64) {
        var served: [String: (lineage: String, chain: [X509Certificate], slot: OCSPStapleSlot)] = [:]
        for store in stores {
            for lineage in store.snapshot.lineages {
                guard let leaf = lineage.chain.first, let slot = OCSPStaples.shared.slot(for: leaf) else { continue }
                served[slot.fingerprint] = (lineage.name, lineage.chain, slot)
            }
        }
        let fresh: [(String, X509Certificate, X509Certificate?)] = self.entries.withLockedValue { entries in
            entries = entries.filter { served[$0.key] != nil }
            var fresh: [(String, X509Certificate, X509Certificate?)] = []
            for (fingerprint, found) in served {
                if entries[fingerprint] != nil {
                    entries[fingerprint]!.lineage = found.lineage
                    // The same leaf with its issuer added to the chain: asked for at once.
                    if entries[fingerprint]!.issuer == nil, let issuer = OCSPCheck.issuer(of: found.chain[0], in: found.chain) {
                        entries[fingerprint]!.issuer = issuer
                        entries[fingerprint]!.state.fetchNow(now: now)
                    }
                    continue
                }
                let leaf = found.chain[0]
                let issuer = OCSPCheck.issuer(of: leaf, in: found.chain)
                var state = OCSPStapleState(mustStaple: OCSPCheck.mustStaple(leaf), responderURL: OCSPCheck.responderURLs(of: leaf)[0],
                                            off: !self.enabled, now: now)
                if !self.enabled {
                    // Off: nothing is stapled that is no longer refreshed (a revocation would
                    // never be seen), whatever an earlier configuration fetched. (Retired
                    // meanwhile, the slot is the successor's.)
                    if !self.retired.load(ordering: .sequentiallyConsistent) { found.slot.current = nil }
                } else if let held = found.slot.current {
                    // A slot that already holds a response (a reload made this stapler) keeps it.
                    state.loadedFromCache(held, now: now)
                }
                entries[fingerprint] = Entry(lineage: found.lineage, leaf: leaf, issuer: issuer, slot: found.slot, state: state)
                fresh.append((fingerprint, leaf, issuer))
            }
            return fresh
        }
        if self.enabled { for (fingerprint, leaf, issuer) in fresh { self.loadCached(fingerprint, leaf: leaf, issuer: issuer, now: now) } }
    }

    private func fetch(_ fingerprint: String, _ entry: Entry, now: Int64) {
        let url = entry.state.responderURL
        let outcome: Result<VerifiedOCSPResponse, Error>
        if let issuer = entry.issuer {
            outcome = Result {
                let request = try OCSPCheck.request(leaf: entry.leaf, issuer: issuer)
                let der = try OCSPFetch.post(request, to: url, timeoutSeconds: self.timeoutSeconds)
                return try OCSPCheck.verify(der, leaf: entry.leaf, issuer: issuer, now: now)
            }
        } else {
            outcome = .failure(TLSError.configuration("the chain holds no certificate of the leaf's issuer, which OCSP needs; add the intermediate to the certificate file"))
        }
        let done = Int64(currentTime())
        // A response that differs from the one held (not the same pre-signed answer again).
        let isNew: Bool = self.entries.withLockedValue { entries in
            guard entries[fingerprint] != nil, !self.retired.load(ordering: .sequentiallyConsistent) else { return false }
            let previous = entries[fingerprint]!.state.response?.der
            switch outcome {
            case .success(let response):
                entries[fingerprint]!.state.fetched(response, now: done)
                // What the responder says now is stapled, revoked included; an `unknown`
                // ends stapling (the good one held before is no longer what it says).
                entries[fingerprint]!.slot.current = response.staplable(now: done) ? response : nil
            case .failure(let error):
                entries[fingerprint]!.state.failed("\(url): \(Gateway.reason(error))", now: done)
            }
            return (try? outcome.get().der) != previous
        }
        guard case .success(let response) = outcome, isNew else { return }
        if response.staplable(now: done) {
            self.logger.info("OCSP response stapled", metadata: [
                "lineage": "\(entry.lineage)", "responder": "\(url)", "certificate_status": "\(response.status.name)",
                "this_update": "\(isoDate(response.thisUpdate))",
                "next_update": "\(response.nextUpdate.map(isoDate) ?? "none")",
            ])
            self.writeCache(fingerprint, response)
        } else {
            // Unknown to the responder: the good response cached before must not be stapled
            // by the next start. (A revoked one replaces it in the cache.)
            self.removeCache(fingerprint)
        }
    }

    /// Logs a lineage whose stapling level changed: once when it gets worse, once when it clears.
    private func logChanges(now: Int64) {
        let changes: [(String, OCSPStapleState.Level, OCSPStapleState.Level, String?, String)] = self.entries.withLockedValue { entries in
            var changes: [(String, OCSPStapleState.Level, OCSPStapleState.Level, String?, String)] = []
            for (fingerprint, entry) in entries {
                let (level, reason) = entry.state.level(now: now)
                let state = entry.state.state(now: now)
                // A new state at the same level counts too: critical for want of a response,
                // then critical because the responder says revoked.
                guard level != entry.logged.level || (level != .ok && state != entry.logged.state) else { continue }
                changes.append((entry.lineage, entry.logged.level, level, reason, entry.state.responderURL))
                entries[fingerprint]!.logged = (level, state)
            }
            return changes
        }
        for (lineage, before, level, reason, url) in changes {
            let metadata: Logger.Metadata = ["lineage": "\(lineage)", "responder": "\(url)", "reason": "\(reason ?? "")"]
            switch level {
            case .ok: self.logger.notice("OCSP stapling recovered", metadata: metadata.merging(["was": "\(before.rawValue)"]) { $1 })
            case .warning: self.logger.warning("OCSP stapling: no current response", metadata: metadata)
            case .critical: self.logger.error("OCSP stapling critical: clients will refuse the certificate", metadata: metadata)
            }
        }
    }

    private func cacheFile(_ fingerprint: String) -> String? {
        self.cacheDirectory.map { $0 + "/" + fingerprint.replacingOccurrences(of: ":", with: "").lowercased() + ".ocsp" }
    }

    /// A response cached by an earlier run: stapled at once if it verifies and is current.
    private func loadCached(_ fingerprint: String, leaf: X509Certificate, issuer: X509Certificate?, now: Int64) {
        guard let file = self.cacheFile(fingerprint), let issuer, let bytes = try? readRegularFile(file) else { return }
        do {
            let response = try OCSPCheck.verify(bytes, leaf: leaf, issuer: issuer, now: now)
            guard response.staplable(now: now) else { return }
            self.entries.withLockedValue { entries in
                // Retired meanwhile (a reload took over, perhaps turning stapling off): the
                // slot is the successor's to fill.
                guard !self.retired.load(ordering: .sequentiallyConsistent), entries[fingerprint]?.state.stapled(now: now) == nil else { return }
                entries[fingerprint]?.state.loadedFromCache(response, now: now)
                entries[fingerprint]?.slot.current = response
            }
        } catch {
            self.logger.warning("OCSP cache file ignored", metadata: ["file": "\(file)", "reason": "\(Gateway.reason(error))"])
        }
    }

    private func removeCache(_ fingerprint: String) {
        guard let file = self.cacheFile(fingerprint) else { return }
        if unlink(file) != 0, errno != ENOENT {
            self.logger.warning("OCSP cache file not removed", metadata: ["file": "\(file)", "reason": "\(String(cString: strerror(errno)))"])
        }
    }

    /// Writes the response next to the others, atomically (a temporary file renamed).
    private func writeCache(_ fingerprint: String, _ response: VerifiedOCSPResponse) {
        guard let directory = self.cacheDirectory, let file = self.cacheFile(fingerprint) else { return }
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
            // Named by this process: two instances sharing the directory never rename each
            // other's half-written file into place.
            let temporary = file + ".\(getpid()).tmp"
            try Data(response.der).write(to: URL(fileURLWithPath: temporary))
            guard rename(temporary, file) == 0 else { throw TLSError.configuration("rename to \(file): \(String(cString: strerror(errno)))") }
        } catch {
            self.logger.warning("OCSP response not cached", metadata: ["directory": "\(directory)", "reason": "\(error)"])
        }
    }
}
