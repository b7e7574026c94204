import Atomics
import EdgeTLS
import Logging
import NIOConcurrencyHelpers

/// Configuration of a certificate set.
package struct CertificateSetConfiguration: Sendable {
    package var sources: [CertificateSource]
    package var defaultName: String?
    package var strictSNI: Bool
    /// The protocol policies of the listeners that serve this set; a snapshot
    /// holds one context per lineage and policy.
    package var policies: [TLSServerPolicy]
    /// CA bundle the served chains are verified against (nil: the system trust store).
    package var trustCAFile: String?
    /// What the chains are checked as: served chains, or upstream client certificates.
    package var chainCheck: ChainCheck

    package init(sources: [CertificateSource], defaultName: String? = nil, strictSNI: Bool = false, policies: [TLSServerPolicy], trustCAFile: String? = nil,
                chainCheck: ChainCheck = .served) {
        self.trustCAFile = trustCAFile
        self.chainCheck = chainCheck
        self.sources = sources
        self.defaultName = defaultName
        self.strictSNI = strictSNI
        self.policies = policies
    }
}

/// A rejected version of a lineage (or an unreadable source), kept for status output.
package struct CertificateProblem: Sendable, Hashable {
    package var name: String
    package var error: String
    /// Seconds since the epoch when the problem was first seen.
    package var since: Int64
    /// True when an older version of this lineage is still being served.
    package var servingPrevious: Bool

    /// A certbot `live/` directory that does not exist yet and never served anything:
    /// watched for, and served once certbot creates it (a new host before its first
    /// `certbot certonly`), not a failure. One deleted while its lineages are still served
    /// (`servingPrevious`) is a failure: those certificates will not be renewed.
    package var isAwaitedDirectory: Bool {
        Self.isAwaitedDirectory(name: self.name, error: self.error, servingPrevious: self.servingPrevious)
    }

    package static func isAwaitedDirectory(name: String, error: String, servingPrevious: Bool) -> Bool {
        !servingPrevious && name.hasPrefix("certbot:") && error.hasSuffix(": no such directory")
    }
}

/// One reload that published a snapshot or rejected a version, for the status page's history.
package struct Publication: Sendable {
    package var time: Int64
    /// What started it: "loaded", "file change", "periodic rescan", "SIGHUP", "admin /reload".
    package var trigger: String
    /// The snapshot generation served after it.
    package var generation: Int
    package var added: [String]
    package var updated: [String]
    package var removed: [String]
    /// Versions newly rejected by it, with why.
    package var rejected: [CertificateProblem]
}

/// Outcome of one reload.
package struct ReloadReport: Sendable {
    package var generation: Int
    /// True when a new snapshot was published.
    package var published: Bool
    package var added: [String]
    package var updated: [String]
    package var removed: [String]
    package var problems: [CertificateProblem]
}

/// What the status endpoints show of a store's reloads: an immutable value, replaced
/// whole at the end of each reload.
final class StoreStatus: AtomicReference, Sendable {
    let problems: [CertificateProblem]
    let outcomes: [String: Int]
    let lastReload: Int64
    let lastReloadResult: String
    let publications: [Publication]

    init(problems: [CertificateProblem], outcomes: [String: Int], lastReload: Int64, lastReloadResult: String, publications: [Publication]) {
        self.publications = publications
        self.problems = problems
        self.outcomes = outcomes
        self.lastReload = lastReload
        self.lastReloadResult = lastReloadResult
    }
}

/// The current certificate snapshot, its sources and its reload logic.
///
/// Reloads are serialised by a lock, which is held while files are read; readers
/// never take it: the servername callback does one atomic load of `current`, and the
/// admin endpoints (on the proxy's event loops) one of `status`, so a slow or stuck
/// file never stalls a handshake or a status request.
package final class CertificateStore: Sendable {
    package let configuration: CertificateSetConfiguration
    private let current: ManagedAtomic<CertificateSnapshot>
    private let state: NIOLockedValueBox<ReloadState>
    private let status: ManagedAtomic<StoreStatus>
    /// Files written to and not yet closed, as the watcher saw them: every reload (the
    /// watcher's, SIGHUP's, `POST /reload`'s) leaves their lineages as they are.
    private let filesBeingWritten = NIOLockedValueBox(Set<FileID>())
    private let logger: Logger
    /// Told of each publication, after it (`observePublications`).
    private let publicationObservers = NIOLockedValueBox<(next: Int, all: [Int: @Sendable (ReloadReport) -> Void])>((0, [:]))
    /// For tests of the served proof only (`holdServedSnapshot`): the snapshot handshakes
    /// keep getting while publications go on.
    private let held = ManagedAtomic<CertificateSnapshot?>(nil)
    /// Whether `held` is set: a word-sized load on every handshake instead of the
    /// double-word one of an atomic reference.
    private let holding = ManagedAtomic(false)

    private struct ReloadState {
        var outcomes: [String: Int] = [:]
        var generation = 0
        var problems: [String: CertificateProblem] = [:]
        var lastReload: Int64 = 0
        var lastReloadResult = "never"
        /// The latest publications and rejections, oldest first, at most `CertificateStore.historyLength`.
        var publications: [Publication] = []

        mutating func record(_ publication: Publication) {
            self.publications.append(publication)
            if self.publications.count > CertificateStore.historyLength { self.publications.removeFirst(self.publications.count - CertificateStore.historyLength) }
        }
    }

    /// Publications kept for the status page.
    package static let historyLength = 20
    private let clock: @Sendable () -> Int64
    /// The watcher's event count when the last completed reload began (any reload), for a
    /// test that must know the gateway read its change before it checks what is served.
    private let covered = ManagedAtomic(0)
    /// The same, for settled reloads only.
    private let coveredBySettled = ManagedAtomic(0)
    /// Events the watcher read about this store's files and directories.
    private let fileEvents = ManagedAtomic(0)
    /// The same, for every store of the process (`edge_certificate_watch_events_total`,
    /// which tells an operator whether inotify sees the renewals at all: a network file
    /// system, a mount the watcher does not reach, shows none). Process-wide, so that a
    /// configuration reload's new stores do not start it again from 0.
    private static let allFileEvents = ManagedAtomic(0)
    /// Tells this store's reload counts apart from its successor's (`GatewayMetrics`).
    package let serial: Int = CertificateStore.serials.wrappingIncrementThenLoad(ordering: .relaxed)
    private static let serials = ManagedAtomic(0)

    /// Loads every source once. Throws when nothing at all can be served, or when
    /// `requireAll` is set and any lineage fails (startup of explicit pairs).
    /// `succeeding`: the store this one replaces on a configuration reload, whose history of
    /// publications goes on here (its first entry says what the reload changed).
    /// `clock`: the wall clock in seconds, which decides what is valid, expired or not yet
    /// valid at each load (the tests move it instead of making certificates that expire).
    package init(configuration: CertificateSetConfiguration, logger: Logger, requireAll: Bool = false, succeeding previous: CertificateStore? = nil,
                clock: @escaping @Sendable () -> Int64 = currentEpochSeconds) throws {
        self.configuration = configuration
        self.logger = logger
        self.clock = clock
        let now = clock()
        var loaded: [LoadedLineage] = []
        var problems: [String: CertificateProblem] = [:]
        for source in configuration.sources {
            let files: [LineageFiles]
            do {
                files = try source.scan()
            } catch {
                if requireAll { throw error }
                problems[source.description] = CertificateProblem(name: source.description, error: "\(error)", since: now, servingPrevious: false)
                continue
            }
            for file in files {
                do {
                    loaded.append(try LineageLoader.load(file, now: now, generation: 1, trustCAFile: configuration.trustCAFile, chainCheck: configuration.chainCheck))
                } catch {
                    if requireAll { throw error }
                    problems[file.name] = CertificateProblem(name: file.name, error: "\(error)", since: now, servingPrevious: false)
                }
            }
        }
        if loaded.isEmpty {
            let reasons = problems.values.map(\.error).sorted().joined(separator: "; ")
            throw CertificateLoadError(
                path: configuration.sources.map(\.description).joined(separator: ", "),
                reason: "no usable certificate" + (reasons.isEmpty ? "" : ": " + reasons)
            )
        }
        if let name = configuration.defaultName, !loaded.contains(where: { $0.name == name }) {
            let names = loaded.map(\.name).sorted().joined(separator: ", ")
            throw CertificateLoadError(path: "certificates.default", reason: "no lineage named '\(name)' was loaded (loaded: \(names))")
        }
        let snapshot = try CertificateSnapshot(
            generation: 1, lineages: loaded, policies: configuration.policies, trusts: try configuration.policies.map(ClientTrust.load),
            defaultName: configuration.defaultName, strictSNI: configuration.strictSNI
        )
        self.current = ManagedAtomic(snapshot)
        var state = ReloadState(generation: 1, problems: problems, lastReload: now, lastReloadResult: "loaded")
        if let previous {
            // A configuration reload: what it changed, against what the old store served.
            let before = Dictionary(previous.snapshot.lineages.map { ($0.name, $0.contentHash) }) { first, _ in first }
            state.publications = previous.publications
            state.record(Publication(
                time: now, trigger: "configuration reload", generation: 1,
                added: loaded.filter { before[$0.name] == nil }.map(\.name).sorted(),
                updated: loaded.filter { before[$0.name] != nil && before[$0.name] != $0.contentHash }.map(\.name).sorted(),
                removed: before.keys.filter { name in !loaded.contains { $0.name == name } }.sorted(),
                rejected: problems.values.filter { problem in previous.problems.first { $0.name == problem.name }?.error != problem.error }
                    .sorted { $0.name < $1.name }))
        } else {
            state.record(Publication(time: now, trigger: "loaded", generation: 1, added: loaded.map(\.name).sorted(), updated: [], removed: [],
                                     rejected: problems.values.sorted { $0.name < $1.name }))
        }
        self.state = NIOLockedValueBox(state)
        self.status = ManagedAtomic(Self.status(of: state))
        for problem in problems.values.sorted(by: { $0.name < $1.name }) {
            logger.error("certificate rejected", metadata: ["lineage": "\(problem.name)", "error": "\(problem.error)"])
        }
        self.logConflicts(snapshot)
    }

    /// The snapshot serving new handshakes now.
    package var snapshot: CertificateSnapshot { self.current.load(ordering: .acquiring) }

    /// What the servername callback hands out: the published snapshot, unless a test
    /// broke the publication path on purpose.
    var servedSnapshot: CertificateSnapshot {
        if self.holding.load(ordering: .relaxed), let held = self.held.load(ordering: .acquiring) { return held }
        return self.current.load(ordering: .acquiring)
    }

    /// Breaks the publication path on purpose, for tests of the served proof: from now
    /// on handshakes get the snapshot published at this moment, whatever is published
    /// later (as a listener that kept an old context would).
    package func holdServedSnapshot() {
        self.held.store(self.snapshot, ordering: .releasing)
        self.holding.store(true, ordering: .releasing)
    }

    /// `observer` is called after each publication, on the thread that reloaded, outside
    /// the reload's lock; it must not block (`ServedProof` only queues a check).
    @discardableResult
    package func observePublications(_ observer: @escaping @Sendable (ReloadReport) -> Void) -> Int {
        self.publicationObservers.withLockedValue { observers in
            defer { observers.next += 1 }
            observers.all[observers.next] = observer
            return observers.next
        }
    }

    /// Forgets an observer (`observePublications`' answer): the generation it belonged to
    /// is gone, and a store may serve the next one.
    package func stopObservingPublications(_ id: Int) {
        _ = self.publicationObservers.withLockedValue { $0.all.removeValue(forKey: id) }
    }

    /// Current problems (rejected versions, unreadable sources).
    package var problems: [CertificateProblem] { self.status.load(ordering: .acquiring).problems }

    /// Reloads so far by outcome: published, partial, unchanged, rejected, failed.
    package var reloadOutcomes: [String: Int] { self.status.load(ordering: .acquiring).outcomes }

    /// The latest publications and rejections (at most 20), oldest first.
    package var publications: [Publication] { self.status.load(ordering: .acquiring).publications }

    /// `fileEventsRead` as it was when the last completed reload began. Past a count read
    /// before a file step, it says a reload that began after the watcher read the step
    /// has finished (early or settled); `eventsCoveredBySettledReload` says it of a settled one.
    package var eventsCoveredByReload: Int { self.covered.load(ordering: .acquiring) }
    package var eventsCoveredBySettledReload: Int { self.coveredBySettled.load(ordering: .acquiring) }

    /// Events the watcher has read about this store's files and directories.
    package var fileEventsRead: Int { self.fileEvents.load(ordering: .acquiring) }

    private static func raise(_ counter: ManagedAtomic<Int>, to value: Int) {
        var current = counter.load(ordering: .relaxed)
        while current < value {
            let (exchanged, original) = counter.compareExchange(expected: current, desired: value, ordering: .acquiringAndReleasing)
            if exchanged { return }
            current = original
        }
    }

    /// The same for every store of the process.
    package static var allFileEventsRead: Int { Self.allFileEvents.load(ordering: .relaxed) }

    /// The watcher read `count` events about files a lineage may use, or their directories.
    package func countFileEvents(_ count: Int) {
        Self.allFileEvents.wrappingIncrement(by: count, ordering: .relaxed)
        self.fileEvents.wrappingIncrement(by: count, ordering: .releasing)
    }

    package var lastReload: (time: Int64, result: String) {
        let status = self.status.load(ordering: .acquiring)
        return (status.lastReload, status.lastReloadResult)
    }

    private static func status(of state: ReloadState) -> StoreStatus {
        StoreStatus(problems: state.problems.values.sorted { $0.name < $1.name }, outcomes: state.outcomes,
                    lastReload: state.lastReload, lastReloadResult: state.lastReloadResult, publications: state.publications)
    }

    /// A selector for one listener's policy, to hand to `TLSContext.listener`.
    /// `byName` picks another policy for some SNI names (exact, or `*.suffix` for one more label).
    package func selector(policyIndex: Int, byName: [String: Int] = [:]) -> any ServerNameSelector {
        precondition(policyIndex < self.configuration.policies.count)
        return StoreSelector(store: self, policyIndex: policyIndex, byName: byName)
    }

    /// Re-reads every source; publishes a new snapshot if anything changed.
    ///
    /// A lineage that fails keeps its last good version; a version that is expired
    /// or not yet valid never replaces a valid one. Each distinct failure is logged once.
    ///
    /// `settled: false` is the watcher's early look, right after a file was completely
    /// written or renamed in while more changes may follow: it publishes only lineages
    /// that load, validate and read the same twice, and leaves every failure, every
    /// removal and the bookkeeping of problems to the settled reload after the debounce
    /// (a certificate renamed in before its key is not an error yet).
    ///
    /// A lineage using a file that is being written (`setFilesBeingWritten`) keeps what it
    /// serves, as during a certbot renewal: a chain written in two steps is never read half-way.
    @discardableResult
    package func reload(reason: String, settled: Bool = true) -> ReloadReport {
        let report = self.reloadLocked(reason: reason, settled: settled)
        if report.published {
            for (_, observer) in self.publicationObservers.withLockedValue({ $0.all }).sorted(by: { $0.key < $1.key }) { observer(report) }
        }
        return report
    }

    private func reloadLocked(reason: String, settled: Bool) -> ReloadReport {
        let events = self.fileEvents.load(ordering: .acquiring)
        defer {
            // The largest: reloads of other threads (SIGHUP, the admin endpoint) may end
            // out of order, and a count must never go back.
            Self.raise(self.covered, to: events)
            if settled { Self.raise(self.coveredBySettled, to: events) }
        }
        let writing = self.filesBeingWritten.withLockedValue { $0 }
        return self.state.withLockedValue { state in
            defer { self.status.store(Self.status(of: state), ordering: .releasing) }
            let now = self.clock()
            let old = self.current.load(ordering: .acquiring)
            var byName: [String: LoadedLineage] = [:]
            for lineage in old.lineages { byName[lineage.name] = lineage }
            var next: [LoadedLineage] = []
            var seen = Set<String>()
            var problems: [String: CertificateProblem] = [:]
            var added: [String] = [], updated: [String] = []
            for source in self.configuration.sources {
                let files: [LineageFiles]
                do {
                    files = try source.scan()
                } catch {
                    // An unreadable source root keeps serving what it served.
                    let kept = old.lineages.filter { $0.files.source == source }
                    next.append(contentsOf: kept)
                    kept.forEach { seen.insert($0.name) }
                    if !settled { continue }
                    problems[source.description] = CertificateProblem(
                        name: source.description, error: "\(error)", since: state.problems[source.description]?.since ?? now,
                        servingPrevious: !kept.isEmpty
                    )
                    continue
                }
                for file in files where !seen.contains(file.name) {
                    seen.insert(file.name)
                    let previous = byName[file.name]
                    if file.busyReason != nil || (!writing.isEmpty && file.isBeingWritten(writing)) {
                        // certbot is mid-renewal: keep what is served, read again when it finishes.
                        if let previous { next.append(previous) }
                        if let problem = state.problems[file.name] { problems[file.name] = problem }
                        continue
                    }
                    if let previous, previous.files == file, let hash = LineageLoader.contentHash(file), hash == previous.contentHash {
                        next.append(previous)
                        continue
                    }
                    do {
                        let candidate = try LineageLoader.load(file, now: now, generation: state.generation + 1, trustCAFile: self.configuration.trustCAFile,
                                                                 chainCheck: self.configuration.chainCheck)
                        if let previous, previous.contentHash == candidate.contentHash {
                            next.append(previous)
                            continue
                        }
                        if let previous, Self.isCurrentlyValid(previous.leaf, now: now), !Self.isCurrentlyValid(candidate.leaf, now: now) {
                            let window = candidate.leaf.notAfter < now ? "expired" : "not yet valid"
                            throw CertificateLoadError(
                                path: file.certificatePath,
                                reason: "new certificate (serial \(candidate.leaf.serialNumberHex)) is \(window); keeping the valid one"
                            )
                        }
                        if !settled, LineageLoader.contentHash(file) != candidate.contentHash {
                            // Written again while it was being read: the settled reload decides.
                            throw CertificateLoadError(path: file.certificatePath, reason: "changed while being read")
                        }
                        next.append(candidate)
                        if previous == nil { added.append(file.name) } else { updated.append(file.name) }
                    } catch {
                        if let previous { next.append(previous) }
                        if !settled {
                            if let problem = state.problems[file.name] { problems[file.name] = problem }
                            continue
                        }
                        problems[file.name] = CertificateProblem(
                            name: file.name, error: "\(error)", since: state.problems[file.name]?.since ?? now,
                            servingPrevious: previous != nil
                        )
                    }
                }
            }
            if !settled {
                // A lineage missing in the middle of a change is removed only once it has settled;
                // so is a source's problem.
                next.append(contentsOf: old.lineages.filter { !seen.contains($0.name) })
                for (name, problem) in state.problems where problems[name] == nil && !seen.contains(name) { problems[name] = problem }
            }
            let removed = settled ? old.lineages.map(\.name).filter { !seen.contains($0) } : []
            // Log each distinct failure once.
            for (name, problem) in problems.sorted(by: { $0.key < $1.key }) where state.problems[name]?.error != problem.error {
                self.logger.error("certificate rejected", metadata: [
                    "lineage": "\(name)", "error": "\(problem.error)",
                    "serving": "\(problem.servingPrevious ? "previous version" : "nothing for this lineage")",
                ])
            }
            for name in state.problems.keys where problems[name] == nil {
                // Resolved means something loads again: a lineage of that name, or a
                // lineage from the source the problem was about (a certificate directory
                // deleted and recreated empty is readable again, and holds nothing).
                let source = self.configuration.sources.first { $0.description == name }
                let loads = next.contains { $0.name == name || (source != nil && $0.files.source == source) }
                if loads {
                    self.logger.info("certificate problem resolved", metadata: ["lineage": "\(name)"])
                } else {
                    self.logger.warning("certificate source readable again but holds no certificate", metadata: ["source": "\(name)"])
                }
            }
            // Versions rejected by this reload (not those still rejected from before).
            let newlyRejected = problems.values.filter { state.problems[$0.name]?.error != $0.error }.sorted { $0.name < $1.name }
            state.problems = problems
            let changed = !added.isEmpty || !updated.isEmpty || !removed.isEmpty
            if !settled && !changed {
                return ReloadReport(generation: old.generation, published: false, added: [], updated: [], removed: [], problems: Array(problems.values))
            }
            state.lastReload = now
            guard changed, !next.isEmpty else {
                if !newlyRejected.isEmpty {
                    state.record(Publication(time: now, trigger: reason, generation: old.generation, added: [], updated: [], removed: [], rejected: newlyRejected))
                }
                state.lastReloadResult = problems.isEmpty ? "unchanged" : "rejected"
                state.outcomes[problems.isEmpty ? "unchanged" : "rejected", default: 0] += 1
                return ReloadReport(generation: old.generation, published: false, added: [], updated: [], removed: [], problems: Array(problems.values))
            }
            do {
                let defaultName = next.contains { $0.name == self.configuration.defaultName } ? self.configuration.defaultName : nil
                let snapshot = try CertificateSnapshot(
                    generation: state.generation + 1, lineages: next, policies: self.configuration.policies, trusts: self.trustsForPublication(old),
                    defaultName: defaultName, strictSNI: self.configuration.strictSNI
                )
                state.generation += 1
                self.current.store(snapshot, ordering: .releasing)
                state.record(Publication(time: now, trigger: reason, generation: snapshot.generation, added: added.sorted(), updated: updated.sorted(),
                                         removed: removed.sorted(), rejected: newlyRejected))
                state.lastReloadResult = problems.isEmpty ? "published" : "published with rejections"
                state.outcomes[problems.isEmpty ? "published" : "partial", default: 0] += 1
                self.logger.info("certificates published", metadata: [
                    "generation": "\(snapshot.generation)", "reason": "\(reason)",
                    "added": "\(added)", "updated": "\(updated)", "removed": "\(removed)",
                    "serials": "\(next.filter { added.contains($0.name) || updated.contains($0.name) }.map { "\($0.name)=\($0.leaf.serialNumberHex)" })",
                ])
                self.logConflicts(snapshot)
                return ReloadReport(generation: snapshot.generation, published: true, added: added, updated: updated, removed: removed, problems: Array(problems.values))
            } catch {
                state.record(Publication(time: now, trigger: reason, generation: old.generation, added: [], updated: [], removed: [],
                                         rejected: newlyRejected + [CertificateProblem(name: "snapshot", error: "not built: \(error)", since: now, servingPrevious: true)]))
                state.lastReloadResult = "failed: \(error)"
                state.outcomes["failed", default: 0] += 1
                self.logger.error("certificate snapshot not built", metadata: ["error": "\(error)"])
                return ReloadReport(generation: old.generation, published: false, added: [], updated: [], removed: [], problems: Array(problems.values))
            }
        }
    }

    /// The files written to and not yet closed (`IN_MODIFY` without `IN_CLOSE_WRITE`).
    package func setFilesBeingWritten(_ files: Set<FileID>) {
        self.filesBeingWritten.withLockedValue { $0 = files }
    }

    /// Rebuilds every context from the lineages already loaded, re-reading the files the
    /// policies name (a client CA bundle). Keeps the current snapshot if that fails.
    @discardableResult
    /// `rereadTrust`: read the client CA bundles and CRLs again (a file changed); false
    /// builds from those in use (a strict list went stale with time).
    package func rebuildContexts(reason: String, rereadTrust: Bool = true) -> Bool {
        self.state.withLockedValue { state in
            let old = self.current.load(ordering: .acquiring)
            do {
                // Read strictly: a bundle or CRL file that does not load keeps the current contexts.
                let snapshot = try CertificateSnapshot(
                    generation: state.generation + 1, lineages: old.lineages, policies: self.configuration.policies,
                    trusts: rereadTrust ? try self.configuration.policies.map(ClientTrust.load) : old.trusts,
                    defaultName: self.configuration.defaultName, strictSNI: self.configuration.strictSNI
                )
                state.generation += 1
                self.current.store(snapshot, ordering: .releasing)
                self.logger.info("certificate contexts rebuilt", metadata: ["generation": "\(snapshot.generation)", "reason": "\(reason)"])
                return true
            } catch {
                self.logger.error("contexts not rebuilt; keeping the current ones", metadata: ["reason": "\(reason)", "error": "\(error)"])
                return false
            }
        }
    }

    /// The client CA bundles and CRLs a certificate publication builds with: read again, or,
    /// when one of them does not load now (a CRL job caught mid-write, a bundle removed),
    /// those the current snapshot was built with. A renewal is never held back by a trust
    /// file; the client CA watch, which rebuilds when those files change, reports them.
    private func trustsForPublication(_ current: CertificateSnapshot) -> [ClientTrust?] {
        // Per policy: one broken file keeps its own policy on the trust in use, not the others.
        self.configuration.policies.enumerated().map { index, policy in
            do {
                return try ClientTrust.load(for: policy)
            } catch {
                self.logger.error("client CA bundle or CRL file not loaded; certificates published with the ones in use",
                                  metadata: ["error": "\(error)"])
                return current.trusts[index]
            }
        }
    }

    private func logConflicts(_ snapshot: CertificateSnapshot) {
        for conflict in snapshot.conflicts {
            self.logger.warning("server name claimed by several certificates", metadata: [
                "name": "\(conflict.name)", "serving": "\(conflict.winner)", "ignored": "\(conflict.losers)",
            ])
        }
    }

    static func isCurrentlyValid(_ cert: X509Certificate, now: Int64) -> Bool {
        cert.notBefore <= now && now < cert.notAfter
    }
}

/// Adapts the store to one listener's policy for the servername callback.
private final class StoreSelector: ServerNameSelector {
    let store: CertificateStore
    let policyIndex: Int
    /// Policies other than the listener's, for some names (`client_auth_by_name`).
    let byName: ServerNameIndex<Int>

    init(store: CertificateStore, policyIndex: Int, byName: [String: Int]) {
        self.store = store
        self.policyIndex = policyIndex
        var index = ServerNameIndex<Int>()
        for (pattern, policy) in byName { index.insert(pattern, policy) }
        self.byName = index
    }

    /// The policy (client authentication) for a normalized name.
    private func policy(for name: String?) -> Int {
        guard !self.byName.isEmpty, let name else { return self.policyIndex }
        return self.byName.match(name) ?? self.policyIndex
    }

    func select(serverName: String?) -> ServerNameSelection {
        // One atomic load; the snapshot (and so the context) stays alive until
        // the callback has handed it to SSL_set_SSL_CTX.
        self.store.servedSnapshot.select(serverName: serverName, policy: self.policy(for: serverName))
    }

    /// A request's host must select what the connection's SNI selected: another client
    /// authentication (a host that requires a certificate, reached over a connection
    /// made for one that does not) or another certificate (a name served by a different
    /// lineage) is a request for another connection (RFC 9110 §15.5.20). A host that
    /// names no certificate (an address, an unknown name) is checked only for its policy.
    func misdirection(serverName rawServerName: String?, host rawHost: String) -> String? {
        let serverName = rawServerName.map(ServerName.normalized)
        let host = ServerName.normalized(rawHost)
        if self.policy(for: host) != self.policy(for: serverName) {
            return "the host's client authentication is not the connection's (SNI \(rawServerName.map { "'\($0)'" } ?? "none"))"
        }
        guard let serverName, !serverName.isEmpty else { return nil }
        let snapshot = self.store.snapshot
        if let hostLineage = snapshot.namedLineageIndex(for: host),
           hostLineage != snapshot.lineageIndex(for: serverName) {
            return "the host's certificate is not the one the connection was made for (SNI '\(rawServerName ?? "")')"
        }
        return nil
    }
}
