import Atomics
import EdgeTLS

/// An immutable certificate set: one `SSL_CTX` per lineage and policy, and an SNI index.
///
/// Published with one atomic store; read by the servername callback with one
/// atomic load. Old snapshots die when their last reader lets go, and each
/// connection holds OpenSSL's own reference to the context it was handed.
public final class CertificateSnapshot: AtomicReference, Sendable {
    public let generation: Int
    public let lineages: [LoadedLineage]
    /// `contexts[policy][lineage]`.
    let contexts: [[TLSContext]]
    let exact: [String: Int]
    let wildcard: [String: Int]
    let defaultIndex: Int?
    let strictSNI: Bool
    /// Names claimed by more than one lineage, with the winner, for the log.
    public let conflicts: [(name: String, winner: String, losers: [String])]

    /// Snapshots alive in this process (published or still held by a handshake).
    public static var liveCount: Int { live.load(ordering: .relaxed) }
    private static let live = ManagedAtomic<Int>(0)

    deinit {
        Self.live.wrappingDecrement(ordering: .relaxed)
    }

    init(generation: Int, lineages: [LoadedLineage], policies: [TLSServerPolicy], defaultName: String?, strictSNI: Bool) throws {
        self.generation = generation
        // Deterministic order: by name.
        let ordered = lineages.sorted { $0.name < $1.name }
        self.lineages = ordered
        self.contexts = try policies.map { policy in
            try ordered.map { try TLSContext.server(chain: $0.chain, key: $0.key, policy: policy) }
        }
        // A name claimed twice goes to the certificate that lives longest, then by lineage name.
        var claims: [String: [Int]] = [:]
        for (index, lineage) in ordered.enumerated() {
            for name in Set(lineage.serverNames) { claims[name, default: []].append(index) }
        }
        var exact: [String: Int] = [:]
        var wildcard: [String: Int] = [:]
        var conflicts: [(String, String, [String])] = []
        for (name, indices) in claims.sorted(by: { $0.key < $1.key }) {
            let best = indices.max { a, b in
                let (la, lb) = (ordered[a].leaf.notAfter, ordered[b].leaf.notAfter)
                return la != lb ? la < lb : ordered[a].name > ordered[b].name
            }!
            if indices.count > 1 {
                conflicts.append((name, ordered[best].name, indices.filter { $0 != best }.map { ordered[$0].name }))
            }
            if name.hasPrefix("*.") {
                wildcard[String(name.dropFirst(2))] = best
            } else {
                exact[name] = best
            }
        }
        self.exact = exact
        self.wildcard = wildcard
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

    /// The lineage index for an SNI name: exact, then one-label wildcard, then the default.
    public func lineageIndex(for serverName: String?) -> Int? {
        guard let name = serverName?.lowercased(), !name.isEmpty else { return self.defaultIndex }
        if let index = self.exact[name] { return index }
        if let dot = name.firstIndex(of: "."), let index = self.wildcard[String(name[name.index(after: dot)...])] {
            return index
        }
        return self.strictSNI ? nil : self.defaultIndex
    }

    func select(serverName: String?, policy: Int) -> ServerNameSelection {
        guard let index = self.lineageIndex(for: serverName) else { return .reject }
        return .use(self.contexts[policy][index])
    }

    public func lineage(named name: String) -> LoadedLineage? {
        self.lineages.first { $0.name == name }
    }
}
