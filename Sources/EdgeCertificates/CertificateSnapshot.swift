import Atomics
import EdgeTLS

/// An immutable certificate set: one `SSL_CTX` per lineage and policy, and an SNI index.
///
/// Published with one atomic store; read by the servername callback with one
/// atomic load. Old snapshots die when their last reader lets go, and each
/// connection holds OpenSSL's own reference to the context it was handed.
package final class CertificateSnapshot: AtomicReference, Sendable {
    package let generation: Int
    package let lineages: [LoadedLineage]
    /// `contexts[policy][lineage]`.
    let contexts: [[TLSContext]]
    /// Contexts holding an ECDSA and an RSA lineage together, `[policy][pair]`: OpenSSL
    /// then serves whichever the client's signature algorithms allow, ECDSA first.
    let dualContexts: [[TLSContext]]
    let dualPairs: [[Int]]
    /// Per name: a lineage index, or `-1 - pair` for a dual pair.
    let names: ServerNameIndex<Int>
    let defaultIndex: Int?
    let strictSNI: Bool
    /// Names claimed by more than one lineage, with the winner, for the log.
    package let conflicts: [(name: String, winner: String, losers: [String])]

    /// The CRL files installed in its contexts, once each (by path), with the policy index
    /// that names them: what clients are checked against now.
    package var revocationLists: [(policy: Int, lists: RevocationListFile)] {
        var seen = Set<String>()
        var found: [(policy: Int, lists: RevocationListFile)] = []
        for (policy, contexts) in zip(self.contexts.indices, zip(self.contexts, self.dualContexts).map { $0 + $1 }) {
            for context in contexts {
                guard let lists = context.revocation, seen.insert(lists.path).inserted else { continue }
                found.append((policy, lists))
            }
        }
        return found
    }

    /// The names each lineage is served for, sorted, in the order of `lineages`.
    package var servedNames: [[String]] {
        var names = [[String]](repeating: [], count: self.lineages.count)
        for (name, index) in self.names.patterns {
            for lineage in self.lineagesServing(index) { names[lineage].append(name) }
        }
        return names.map { $0.sorted() }
    }

    /// The lineage served to a client that names no known host, if any.
    package func isDefault(_ index: Int) -> Bool { self.defaultIndex == index }

    /// Snapshots alive in this process (published or still held by a handshake).
    package static var liveCount: Int { live.load(ordering: .relaxed) }
    private static let live = ManagedAtomic<Int>(0)

    deinit {
        Self.live.wrappingDecrement(ordering: .relaxed)
    }

    /// The client CA bundle and CRLs each policy's contexts were built with, read once for
    /// the snapshot (nil for a policy without a bundle): a publication that cannot read
    /// them again builds with these (`CertificateStore`).
    let trusts: [ClientTrust?]

    init(generation: Int, lineages: [LoadedLineage], policies: [TLSServerPolicy], trusts: [ClientTrust?], defaultName: String?, strictSNI: Bool) throws {
        precondition(trusts.count == policies.count, "one trust per policy")
        self.trusts = trusts
        self.generation = generation
        // Deterministic order: by name.
        let ordered = lineages.sorted { $0.name < $1.name }
        self.lineages = ordered
        // Each context says what it was chosen as (policy and lineages), which the next
        // snapshot's context for the same choice says too (`TLSContext.servesLike`).
        self.contexts = try policies.enumerated().map { index, policy in
            try ordered.map { try TLSContext.server(chain: $0.chain, key: $0.key, policy: policy, selection: "\(index):\($0.name)", trust: trusts[index]) }
        }
        // A name claimed twice goes to the certificate that lives longest, then by lineage name;
        // an ECDSA and an RSA claimant are not a conflict but a dual pair.
        var claims: [String: [Int]] = [:]
        for (index, lineage) in ordered.enumerated() {
            for name in Set(lineage.serverNames) { claims[name, default: []].append(index) }
        }
        var names = ServerNameIndex<Int>()
        var conflicts: [(String, String, [String])] = []
        var pairs: [[Int]] = []
        func best(_ indices: [Int]) -> Int? {
            indices.max { a, b in
                let (la, lb) = (ordered[a].leaf.notAfter, ordered[b].leaf.notAfter)
                return la != lb ? la < lb : ordered[a].name > ordered[b].name
            }
        }
        for (name, indices) in claims.sorted(by: { $0.key < $1.key }) {
            let rsa = indices.filter { ordered[$0].leaf.keyDescription.hasPrefix("RSA") }
            let other = indices.filter { !rsa.contains($0) }
            var chosen: Int
            var winners: [Int]
            if let e = best(other), let r = best(rsa) {
                winners = [e, r]
                if let existing = pairs.firstIndex(of: winners) {
                    chosen = -1 - existing
                } else {
                    pairs.append(winners)
                    chosen = -pairs.count
                }
            } else {
                chosen = best(indices)!
                winners = [chosen]
            }
            if indices.count > winners.count {
                conflicts.append((name, winners.map { ordered[$0].name }.joined(separator: "+"), indices.filter { !winners.contains($0) }.map { ordered[$0].name }))
            }
            names.insert(name, chosen)
        }
        self.dualPairs = pairs
        self.dualContexts = try policies.enumerated().map { index, policy in
            try pairs.map { pair in
                try TLSContext.server(pairs: pair.map { (ordered[$0].chain, ordered[$0].key) }, policy: policy,
                                      selection: "\(index):" + pair.map { ordered[$0].name }.joined(separator: "+"), trust: trusts[index])
            }
        }
        self.names = names
        self.conflicts = conflicts
        if let defaultName, let index = ordered.firstIndex(where: { $0.name == defaultName }) {
            self.defaultIndex = index
        } else {
            self.defaultIndex = ordered.isEmpty ? nil : 0
        }
        self.strictSNI = strictSNI
        // Counted only once fully built: a throwing init never runs deinit.
        Self.live.wrappingIncrement(ordering: .relaxed)
    }

    /// The lineage index a normalized name selects by itself (exact, then one-label
    /// wildcard), without falling back to the default; nil for a name no certificate names.
    func namedLineageIndex(for name: String) -> Int? {
        self.names.match(name)
    }

    /// The lineage index for a normalized SNI name (`ServerName.normalized`): exact,
    /// then one-label wildcard, then the default.
    package func lineageIndex(for serverName: String?) -> Int? {
        guard let name = serverName, !name.isEmpty else { return self.defaultIndex }
        return self.names.match(name) ?? (self.strictSNI ? nil : self.defaultIndex)
    }

    /// The lineages behind an index of the name maps (two for a dual ECDSA/RSA pair).
    func lineagesServing(_ index: Int) -> [Int] {
        index >= 0 ? [index] : self.dualPairs[-1 - index]
    }

    /// The context for a normalized SNI name under one client-authentication policy.
    func select(serverName: String?, policy: Int) -> ServerNameSelection {
        guard let index = self.lineageIndex(for: serverName) else { return .reject }
        return .use(index >= 0 ? self.contexts[policy][index] : self.dualContexts[policy][-1 - index])
    }

    package func lineage(named name: String) -> LoadedLineage? {
        self.lineages.first { $0.name == name }
    }
}
