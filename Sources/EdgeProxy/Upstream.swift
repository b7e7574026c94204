import Atomics
import EdgeTLS
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1

/// Timeouts of an upstream group.
package struct UpstreamTimeouts: Sendable, Hashable {
    /// TCP connect.
    package var connect: TimeAmount = .seconds(5)
    /// TCP connect plus the TLS handshake.
    package var totalConnection: TimeAmount = .seconds(10)
    /// From the request sent to the first response byte, and between reads.
    package var read: TimeAmount = .seconds(60)
    /// How long the upstream may refuse to take more of the request.
    package var write: TimeAmount = .seconds(60)
    /// How long a pooled connection may stay idle.
    package var idle: TimeAmount = .seconds(60)
    /// After a backend timed out before answering, another one is tried only while less
    /// than this has passed since the first try began (nginx's
    /// `proxy_next_upstream_timeout`): retries never multiply the client's wait.
    package var nextUpstream: TimeAmount = .seconds(120)

    package init() {}
}

/// TLS towards an upstream group: the client context plus the names to send and verify.
///
/// With a client certificate, the context is rebuilt when the certificate's
/// store publishes a new generation (the pair is watched like serving
/// certificates); connections made with the old one finish and idle out.
///
/// Names, per backend: SNI is `sni`, else the backend's host unless it is an IP
/// literal (never sent as SNI). The certificate must hold one of `sni` (else the
/// backend's host) and the `alternative_cn` names, each accepted on its own.
package final class UpstreamTLS: Sendable {
    /// `sni` as configured: nil sends each backend's host name, "" sends none.
    package let configuredServerName: String?
    /// `alternative_cn`: further names the certificate may hold instead.
    package let alternativeNames: [String]
    /// Whether names are checked at all (`verify_cert` and `verify_hostname`).
    package let verifiesNames: Bool
    /// `allow_common_name`: a certificate without subject alternative names may match by its CN.
    package let allowCommonName: Bool
    /// `tls.crl_file` and how it is checked, for the status views.
    package let revocation: (file: String, chain: Bool, strict: Bool)?
    /// The client certificate new connections present, for `/status/upstreams`.
    private let clientCertificateProbe: (@Sendable () -> X509Certificate?)?
    private let current: NIOLockedValueBox<(generation: Int, context: TLSContext)>
    private let rebuild: (@Sendable () -> (generation: Int, context: TLSContext?))?
    private let generationProbe: (@Sendable () -> Int)?
    private let slots = NIOLockedValueBox<[String: TLSSessionSlot]>([:])

    /// `generation` reads the client certificate's current generation (cheap);
    /// `rebuild` makes a context for it.
    package init(context: TLSContext, serverName: String?, alternativeNames: [String] = [], verifiesNames: Bool = true,
                allowCommonName: Bool = false, revocation: (file: String, chain: Bool, strict: Bool)? = nil,
                clientCertificate: (@Sendable () -> X509Certificate?)? = nil,
                generation: (@Sendable () -> Int)? = nil,
                rebuild: (@Sendable () -> (generation: Int, context: TLSContext?))? = nil) {
        self.current = NIOLockedValueBox((generation?() ?? 0, context))
        self.configuredServerName = serverName
        self.alternativeNames = alternativeNames
        self.verifiesNames = verifiesNames
        self.allowCommonName = allowCommonName
        self.revocation = revocation
        self.clientCertificateProbe = clientCertificate
        self.generationProbe = generation
        self.rebuild = rebuild
    }

    /// The SNI sent to `backend`; nil sends none.
    package func serverName(for backend: Backend) -> String? {
        if let configured = self.configuredServerName { return configured.isEmpty ? nil : configured }
        return isIPAddress(backend.host) ? nil : backend.host
    }

    /// The names `backend`'s certificate may hold; empty when names are not checked.
    package func verifyNames(for backend: Backend) -> [String] {
        guard self.verifiesNames else { return [] }
        let first = self.configuredServerName.flatMap { $0.isEmpty ? nil : $0 } ?? backend.host
        return [first] + self.alternativeNames.filter { $0 != first }
    }

    /// The client certificate presented to the upstream, if any.
    package var clientCertificate: X509Certificate? { self.clientCertificateProbe?() }

    /// The client certificate generation new connections use (0 without one).
    package var generation: Int { self.generationProbe?() ?? 0 }

    /// The context for new connections, rebuilt if the client certificate or the CRL
    /// changed. The sessions kept for resumption are dropped with the old context: a
    /// resumed session skips the certificate check, so one made before a revocation must
    /// not outlive it (nor one made with the previous client certificate).
    package var context: TLSContext { self.currentContext.context }

    /// The context new connections use now, as it is (never rebuilt here): for the status views.
    package var installedContext: TLSContext { self.current.withLockedValue { $0.context } }

    /// The context for new connections and the generation it was built for, read together:
    /// a connection takes its session slot by this generation, never by one read apart, so
    /// a session kept under an older context (before a revocation) is never offered with
    /// a newer one.
    package var currentContext: (generation: Int, context: TLSContext) {
        let wanted = self.generation
        var rebuilt = false
        let current = self.current.withLockedValue { current in
            if current.generation != wanted, let rebuild = self.rebuild {
                let fresh = rebuild()
                // A failed build is not tried again until the next change.
                current = (fresh.generation, fresh.context ?? current.context)
                rebuilt = fresh.context != nil
            }
            return current
        }
        // Slots are keyed by generation; the old ones only hold memory.
        if rebuilt { self.slots.withLockedValue { $0.removeAll() } }
        return current
    }

    /// The session slot of one backend address, for TLS session resumption.
    func sessionSlot(for key: String) -> TLSSessionSlot {
        self.slots.withLockedValue { slots in
            if let slot = slots[key] { return slot }
            let slot = TLSSessionSlot()
            slots[key] = slot
            return slot
        }
    }
}

/// One backend address of a group.
package struct Backend: Sendable, Hashable, CustomStringConvertible {
    package var host: String
    package var port: Int
    package var address: SocketAddress
    package var weight: Int

    package init(host: String, port: Int, weight: Int = 1) throws {
        self.host = host
        self.port = port
        self.weight = max(1, weight)
        self.address = try SocketAddress.makeAddressResolvingHost(host, port: port)
    }

    package var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
}

/// How a group picks a backend for a request.
package enum BalanceAlgorithm: Sendable, Hashable, CustomStringConvertible {
    /// Smooth weighted round robin (nginx's); plain round robin when weights are equal.
    case roundRobin
    /// Weighted random.
    case random
    /// Fewest requests in flight relative to weight.
    case leastConnections
    /// Ketama ring on a request key: only about 1/N of the keys move when a backend goes.
    case consistentHash(HashKey)

    package var description: String {
        switch self {
        case .roundRobin: return "round_robin"
        case .random: return "random"
        case .leastConnections: return "least_conn"
        case .consistentHash(let key): return "consistent_hash(\(key))"
        }
    }
}

/// What consistent hashing hashes.
package enum HashKey: Sendable, Hashable, CustomStringConvertible {
    case clientAddress
    case header(String)
    case path

    package var description: String {
        switch self {
        case .clientAddress: return "client_ip"
        case .header(let name): return "header:\(name)"
        case .path: return "path"
        }
    }
}

/// Passive health: consecutive failures (connects refused or timed out, responses that
/// never started within the read timeout) eject a backend for a while (nginx's
/// max_fails/fail_timeout).
package struct PassiveHealth: Sendable, Hashable {
    /// 0 disables ejection.
    package var maxFails = 3
    package var failTimeout: TimeAmount = .seconds(10)

    package init() {}
}

/// The health and traffic figures of one backend. Shared by every event loop.
package final class BackendState: Sendable {
    /// Requests in flight (least connections).
    package let active = ManagedAtomic<Int>(0)
    /// The active health check's verdict.
    let checkHealthy = ManagedAtomic<Bool>(true)
    let consecutiveFailures = ManagedAtomic<Int>(0)
    /// Uptime nanoseconds until which passive health keeps the backend out.
    let ejectedUntil = ManagedAtomic<Int64>(0)
    package let requests = ManagedAtomic<Int>(0)
    package let connectionsOpened = ManagedAtomic<Int>(0)
    package let connectFailures = ManagedAtomic<Int>(0)
    package let idleConnections = ManagedAtomic<Int>(0)
    package let tlsResumed = ManagedAtomic<Int>(0)
    /// Connections opened that speak HTTP/2 (all of an h2 or h2c group's; an auto
    /// group's that the backend agreed to h2 by ALPN).
    package let http2ConnectionsOpened = ManagedAtomic<Int>(0)
    /// Streams leased on the backend's HTTP/2 connections and not yet let go of.
    package let streamsInFlight = ManagedAtomic<Int>(0)
    /// HTTP/2 connections closed because a PING went unanswered (`pool.ping_timeout`).
    package let pingTimeouts = ManagedAtomic<Int>(0)
    /// Active health checks of the backend that passed and that failed (Envoy's
    /// `health_check.success` and `.failure`): what says the checks run at all.
    package let healthChecksPassed = ManagedAtomic<Int>(0)
    package let healthChecksFailed = ManagedAtomic<Int>(0)
    /// Failed TLS handshakes (also counted in `connectFailures`), by reason, in the
    /// order of `UpstreamHandshakeFailure.allCases`.
    package let tlsHandshakeFailures = UpstreamHandshakeFailure.allCases.map { _ in ManagedAtomic<Int>(0) }
    let lastError = NIOLockedValueBox<String?>(nil)

    package init() {}

    /// Active check healthy and not ejected.
    /// The clock is read only for a backend that was ejected at some point.
    package func isAvailable(now: @autoclosure () -> NIODeadline = .now()) -> Bool {
        guard self.checkHealthy.load(ordering: .relaxed) else { return false }
        let ejectedUntil = self.ejectedUntil.load(ordering: .relaxed)
        return ejectedUntil <= 0 || ejectedUntil <= Int64(now().uptimeNanoseconds)
    }

    package var isHealthyByCheck: Bool { self.checkHealthy.load(ordering: .relaxed) }
    package var isEjected: Bool { self.ejectedUntil.load(ordering: .relaxed) > Int64(NIODeadline.now().uptimeNanoseconds) }
    func streamsInFlightChanged(by delta: Int) {
        self.streamsInFlight.wrappingIncrement(by: delta, ordering: .relaxed)
    }
    /// An HTTP/2 connection to the backend did not answer a PING and was closed.
    func pingTimedOut(_ reason: String) {
        self.pingTimeouts.wrappingIncrement(ordering: .relaxed)
        self.lastError.withLockedValue { $0 = reason }
    }
    /// A connection to the backend went idle in a pool (`by: 1`) or left it (`by: -1`).
    func idleConnectionsChanged(by delta: Int) {
        self.idleConnections.wrappingIncrement(by: delta, ordering: .relaxed)
    }
    package var lastErrorDescription: String? { self.lastError.withLockedValue { $0 } }
}

/// The HTTP version spoken to a group's backends (`protocol`).
package enum UpstreamProtocol: String, Sendable, CaseIterable {
    /// HTTP/1.1 (the default).
    case http1
    /// HTTP/2 over TLS, agreed by ALPN (`h2`); a backend that does not agree fails the handshake.
    case h2
    /// HTTP/2 over plain TCP with prior knowledge (RFC 9113 §3.3): gRPC servers speak it.
    case h2c
    /// Over TLS, whichever of h2 and http/1.1 each backend chooses by ALPN (Pingora's
    /// `H2H1`): one backend of a group may speak HTTP/2 while another is upgraded to it.
    case auto

    /// Whether a connection may carry HTTP/2 (whether a grpc check can pass).
    package var mayBeHTTP2: Bool { self != .http1 }

    /// The protocols the TLS handshake offers by ALPN (none for HTTP/1.1 and h2c).
    package var alpnOffer: [String] {
        switch self {
        case .http1, .h2c: return []
        case .h2: return ["h2"]
        case .auto: return ["h2", "http/1.1"]
        }
    }

    /// The protocol the handshake must agree on, when only one will do.
    var requiredALPN: String? { self == .h2 ? "h2" : nil }

    /// Whether a connection speaks HTTP/2, given what its handshake agreed by ALPN.
    func speaksHTTP2(negotiated: String?) -> Bool {
        switch self {
        case .http1: return false
        case .h2, .h2c: return true
        case .auto: return negotiated == "h2"
        }
    }
}

/// `pool.ping_interval` and `pool.ping_timeout` of an HTTP/2 group: see `HTTP2PingLiveness`.
package struct HTTP2Ping: Sendable, Hashable {
    package var interval: TimeAmount
    package var timeout: TimeAmount

    package init(interval: TimeAmount, timeout: TimeAmount) {
        self.interval = interval
        self.timeout = timeout
    }
}

/// A named list of backends with shared options, a balancing algorithm and health state.
package final class UpstreamGroup: Sendable {
    package let name: String
    package let backends: [Backend]
    package let states: [BackendState]
    package let tls: UpstreamTLS?
    package let timeouts: UpstreamTimeouts
    /// Replaces the client's Host header when set.
    package let hostHeader: String?
    package let maxIdlePerBackend: Int
    /// HTTP/2: streams in flight on one connection at most.
    package let maxStreamsPerConnection: Int
    /// HTTP/2: connections per backend and event loop at most (0: no limit).
    package let maxConnectionsPerBackend: Int
    /// Requests (HTTP/2: streams) one connection serves at most before it is closed (0:
    /// no limit): Envoy's `max_requests_per_connection`, HAProxy's `max-reuse`.
    package let maxRequestsPerConnection: Int
    /// HTTP/2: PINGs of idle connections (`pool.ping_interval`), if configured.
    package let ping: HTTP2Ping?
    package let algorithm: BalanceAlgorithm
    package let passive: PassiveHealth
    /// At most this many backends are tried for one request when connecting fails.
    package let maxConnectAttempts: Int
    /// Active probing of every backend, if configured.
    package let healthCheck: HealthCheckSettings?
    /// SO_KEEPALIVE on upstream connections.
    package let tcpKeepalive: Bool
    /// `max_response_head_bytes`: a longer response head is a 502.
    package let maxResponseHeadBytes: Int
    /// HTTP/1.1, or HTTP/2 (h2 over TLS, h2c in plain).
    package let upstreamProtocol: UpstreamProtocol
    private let cursor = ManagedAtomic<Int>(0)
    private let smooth: NIOLockedValueBox<[Int]>
    private let equalWeights: Bool
    private let ring: [(hash: UInt64, backend: Int)]

    package init(name: String, backends: [Backend], tls: UpstreamTLS?, timeouts: UpstreamTimeouts, hostHeader: String?,
                maxIdlePerBackend: Int = 128, maxStreamsPerConnection: Int = 100, maxConnectionsPerBackend: Int = 0,
                maxRequestsPerConnection: Int = 0, ping: HTTP2Ping? = nil, algorithm: BalanceAlgorithm = .roundRobin, passive: PassiveHealth = .init(),
                maxConnectAttempts: Int = 3, healthCheck: HealthCheckSettings? = nil, tcpKeepalive: Bool = true,
                maxResponseHeadBytes: Int = 64 * 1024, upstreamProtocol: UpstreamProtocol = .http1) {
        precondition(!backends.isEmpty, "an upstream group needs a backend")
        precondition(upstreamProtocol != .h2 && upstreamProtocol != .auto || tls != nil, "h2 and auto need TLS")
        precondition(upstreamProtocol != .h2c || tls == nil, "h2c is plain")
        self.upstreamProtocol = upstreamProtocol
        self.name = name
        self.backends = backends
        self.states = backends.map { _ in BackendState() }
        self.tls = tls
        self.timeouts = timeouts
        self.hostHeader = hostHeader
        self.maxIdlePerBackend = max(0, maxIdlePerBackend)
        self.maxStreamsPerConnection = max(1, maxStreamsPerConnection)
        self.maxConnectionsPerBackend = max(0, maxConnectionsPerBackend)
        self.maxRequestsPerConnection = max(0, maxRequestsPerConnection)
        self.ping = ping
        self.algorithm = algorithm
        self.passive = passive
        self.maxConnectAttempts = max(1, min(maxConnectAttempts, backends.count))
        self.healthCheck = healthCheck
        self.tcpKeepalive = tcpKeepalive
        self.maxResponseHeadBytes = maxResponseHeadBytes
        self.smooth = NIOLockedValueBox(Array(repeating: 0, count: backends.count))
        self.equalWeights = Set(backends.map(\.weight)).count == 1
        if case .consistentHash = algorithm {
            self.ring = Self.ketamaRing(backends)
        } else {
            self.ring = []
        }
    }

    /// What a balancing decision may look at. Only consistent hashing reads it, so the
    /// path and headers are extracted then, not for every request.
    package struct RequestKey {
        /// The client's address as text (`DownstreamInfo.clientIP`, formatted once per
        /// connection): as a `SocketAddress` it went through glibc's inet_ntop for every
        /// request that a `client_ip` hash balanced.
        var clientIP: String?
        private enum Request {
            case nio(HTTPRequestHead)
            case bytes(HTTPHead)
        }
        private var request: Request

        package init(client: SocketAddress?, head: HTTPRequestHead) {
            self.clientIP = DownstreamInfo.text(client)
            self.request = .nio(head)
        }

        init(clientIP: String?, request: HTTPHead) {
            self.clientIP = clientIP
            self.request = .bytes(request)
        }

        private var uri: String {
            switch self.request {
            case .nio(let head): return head.uri
            case .bytes(let head): return head.target
            }
        }

        private func header(_ name: String) -> String? {
            switch self.request {
            case .nio(let head): return head.headers.first(name: name)
            case .bytes(let head): return head.value(of: name)
            }
        }

        func text(for key: HashKey) -> String {
            switch key {
            case .clientAddress: return self.clientIP ?? ""
            case .header(let name): return self.header(name) ?? ""
            case .path: return String(self.uri.prefix { $0 != "?" })
            }
        }
    }

    /// The backend for a request among available backends not in `tried`; nil when none is left.
    /// The key is an autoclosure: only hashing builds it (copying a request head
    /// is a handful of retains that round robin has no use for).
    package func select(_ key: @autoclosure () -> RequestKey, tried: [Int] = []) -> Int? {
        let states = self.states
        func usable(_ index: Int) -> Bool { !tried.contains(index) && states[index].isAvailable() }
        switch self.algorithm {
        case .roundRobin:
            if self.equalWeights {
                let start = self.cursor.loadThenWrappingIncrement(ordering: .relaxed)
                let n = self.backends.count
                for offset in 0..<n {
                    let index = ((start &+ offset) % n + n) % n
                    if usable(index) { return index }
                }
                return nil
            }
            return self.smooth.withLockedValue { current in
                // nginx's smooth weighted round robin over the usable backends.
                var total = 0
                var best: Int?
                for index in self.backends.indices where usable(index) {
                    current[index] += self.backends[index].weight
                    total += self.backends[index].weight
                    if best == nil || current[index] > current[best!] { best = index }
                }
                if let best { current[best] -= total }
                return best
            }
        case .random:
            let total = self.backends.indices.filter(usable).reduce(0) { $0 + self.backends[$1].weight }
            guard total > 0 else { return nil }
            var pick = Int.random(in: 0..<total)
            for index in self.backends.indices where usable(index) {
                pick -= self.backends[index].weight
                if pick < 0 { return index }
            }
            return nil
        case .leastConnections:
            // Fewest in flight per weight; ties broken round robin so equal load spreads.
            let start = self.cursor.loadThenWrappingIncrement(ordering: .relaxed)
            let n = self.backends.count
            var best: Int?
            var bestLoad = Double.infinity
            for offset in 0..<n {
                let index = ((start &+ offset) % n + n) % n
                guard usable(index) else { continue }
                let load = Double(self.states[index].active.load(ordering: .relaxed)) / Double(self.backends[index].weight)
                if load < bestLoad {
                    best = index
                    bestLoad = load
                }
            }
            return best
        case .consistentHash(let hashKey):
            return self.ringLookup(hash64(key().text(for: hashKey)), usable: usable)
        }
    }

    /// The first usable backend clockwise from `hash` on the ring.
    func ringLookup(_ hash: UInt64, usable: (Int) -> Bool) -> Int? {
        var low = 0, high = self.ring.count
        while low < high {
            let mid = (low + high) / 2
            if self.ring[mid].hash < hash { low = mid + 1 } else { high = mid }
        }
        for step in 0..<self.ring.count {
            let backend = self.ring[(low + step) % self.ring.count].backend
            if usable(backend) { return backend }
        }
        return nil
    }

    /// 160 points per unit of weight, as Ketama places them, keyed by the backend's address.
    static func ketamaRing(_ backends: [Backend]) -> [(hash: UInt64, backend: Int)] {
        var ring: [(hash: UInt64, backend: Int)] = []
        for (index, backend) in backends.enumerated() {
            for point in 0..<(160 * backend.weight) {
                ring.append((hash64("\(backend.description)-\(point)"), index))
            }
        }
        return ring.sorted { $0.hash < $1.hash }
    }

    // MARK: passive health

    /// What went wrong with `index` last, for `/status/upstreams` (a failure that does not
    /// count towards ejection: a connection broken or a response malformed).
    func recordError(_ index: Int, reason: String) {
        self.states[index].lastError.withLockedValue { $0 = reason }
    }

    // The per-backend counters change only through these methods: the request path says
    // what happened, the group keeps the figures (status, metrics, least connections).

    /// An exchange chose backend `index` (least connections counts it until `requestLeft`).
    func requestBegan(on index: Int) {
        self.states[index].active.wrappingIncrement(ordering: .relaxed)
    }

    /// The exchange that chose `index` ended or moved on.
    func requestLeft(_ index: Int) {
        self.states[index].active.wrappingDecrement(ordering: .relaxed)
    }

    /// A request went out to `index` on a connection (each attempt counts).
    func requestSent(to index: Int) {
        self.states[index].requests.wrappingIncrement(ordering: .relaxed)
    }

    /// A new TLS connection to `index` resumed a session.
    func sessionResumed(on index: Int) {
        self.states[index].tlsResumed.wrappingIncrement(ordering: .relaxed)
    }

    /// An active check of `index` ended, passed or failed.
    package func healthChecked(_ index: Int, passed: Bool) {
        (passed ? self.states[index].healthChecksPassed : self.states[index].healthChecksFailed).wrappingIncrement(ordering: .relaxed)
    }

    /// The active check found `index` healthy again: it takes traffic at once, an ejection
    /// by passive health included.
    func checkedUp(_ index: Int) {
        self.states[index].checkHealthy.store(true, ordering: .relaxed)
        self.states[index].ejectedUntil.store(0, ordering: .relaxed)
    }

    /// The active check took `index` out until it passes again.
    func checkedDown(_ index: Int) {
        self.states[index].checkHealthy.store(false, ordering: .relaxed)
    }

    /// A connection to `index` was established. It does not end a run of failures: a
    /// backend that accepts and never answers connects every time, and reset on connect
    /// its read timeouts never added up to `max_fails`.
    func connectSucceeded(_ index: Int) {
        self.states[index].connectionsOpened.wrappingIncrement(ordering: .relaxed)
    }

    /// A response head arrived from `index`: its run of failures is over.
    func responseReceived(_ index: Int) {
        let failures = self.states[index].consecutiveFailures
        if failures.load(ordering: .relaxed) != 0 { failures.store(0, ordering: .relaxed) }
    }

    /// A TLS handshake with `index` failed for `reason` (also a connect failure).
    func tlsHandshakeFailed(_ index: Int, reason: UpstreamHandshakeFailure) {
        let position = UpstreamHandshakeFailure.allCases.firstIndex(of: reason) ?? 0
        self.states[index].tlsHandshakeFailures[position].wrappingIncrement(ordering: .relaxed)
    }

    /// A connect to `index` failed, or it accepted a request and sent no response byte
    /// within the read timeout (`connect: false`); returns true when this failure ejected
    /// it (and it was not ejected already).
    func backendFailed(_ index: Int, reason: String, connect: Bool = true) -> Bool {
        let state = self.states[index]
        if connect { state.connectFailures.wrappingIncrement(ordering: .relaxed) }
        state.lastError.withLockedValue { $0 = reason }
        let failures = state.consecutiveFailures.wrappingIncrementThenLoad(ordering: .relaxed)
        guard self.passive.maxFails > 0, failures >= self.passive.maxFails else { return false }
        state.consecutiveFailures.store(0, ordering: .relaxed)
        let now = NIODeadline.now()
        let until = Int64((now + self.passive.failTimeout).uptimeNanoseconds)
        // Requests already in flight to it fail after it was ejected: it is ejected once.
        let wasEjected = state.ejectedUntil.exchange(until, ordering: .relaxed) > Int64(now.uptimeNanoseconds)
        return !wasEjected
    }
}

/// FNV-1a, then a 64-bit finaliser so nearby strings spread over the ring.
func hash64(_ text: String) -> UInt64 {
    var hash: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in text.utf8 {
        hash ^= UInt64(byte)
        hash = hash &* 0x0000_0100_0000_01b3
    }
    hash ^= hash >> 33
    hash = hash &* 0xff51_afd7_ed55_8ccd
    hash ^= hash >> 33
    hash = hash &* 0xc4ce_b9fe_1a85_ec53
    hash ^= hash >> 33
    return hash
}
