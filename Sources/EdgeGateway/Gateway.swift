import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix

/// Every problem found in a configuration, one line each.
package struct ConfigProblems: Error, CustomStringConvertible, Sendable {
    package var problems: [String]
    package var description: String { self.problems.joined(separator: "\n") }
}

/// Parses `host:port`, `[v6]:port` or `:port`.
package func parseAddress(_ text: String) throws -> (host: String, port: Int) {
    var host: Substring
    var portText: Substring
    if text.hasPrefix("[") {
        guard let end = text.firstIndex(of: "]"), text[text.index(after: end)...].hasPrefix(":") else {
            throw ConfigError(path: "", message: "invalid address '\(text)' (expected [ipv6]:port)")
        }
        host = text[text.index(after: text.startIndex)..<end]
        portText = text[text.index(end, offsetBy: 2)...]
    } else {
        guard let colon = text.lastIndex(of: ":") else {
            throw ConfigError(path: "", message: "invalid address '\(text)' (expected host:port)")
        }
        host = text[..<colon]
        portText = text[text.index(after: colon)...]
    }
    guard let port = Int(portText), (0...65535).contains(port) else {
        throw ConfigError(path: "", message: "invalid port in '\(text)'")
    }
    if host.isEmpty { host = "0.0.0.0" }
    return (String(host), port)
}

/// One listener, ready to bind.
struct ListenerPlan: Sendable {
    var name: String
    var host: String
    var port: Int
    var address: SocketAddress
    var tlsContext: TLSContext?
    /// The SNI selector of `tlsContext`, asked whether a request's host belongs on its connection.
    var serverNames: (any ServerNameSelector)?
    var handshakeTimeout: TimeAmount
    var headerTimeout: TimeAmount
    var idleTimeout: TimeAmount
    /// `drain_quiet_period`: how long a draining idle connection waits for a last request.
    var drainQuietPeriod = TimeAmount.seconds(1)
    var maxHeadBytes: Int
    var maxBodyBytes: Int?
    /// ALPN offers h2: the protocol is chosen per connection after the handshake.
    var h2 = false
    var http2 = HTTP2Config()
    /// Clients present certificates: their identity is forwarded upstream.
    var mutualTLS = false
    /// The `strict-transport-security` value every response carries (TLS listeners).
    var strictTransportSecurity: String?
    /// Every connection starts with a PROXY protocol header naming the client.
    var proxyProtocol = false
    /// `timeouts.body`: the longest pause between reads of a request body.
    var bodyTimeout = TimeAmount.seconds(60)
    /// `max_connections`: connections beyond it are closed as they are accepted.
    var maxConnections: Int?
    /// `backlog`, at most `net.core.somaxconn`.
    var backlog = 1024
    /// The peers that may send it (`proxy_protocol_from`); nil: any.
    var proxyProtocolFrom: [AddressRange]?
}

extension Duration {
    var timeAmount: TimeAmount { .nanoseconds(self.nanoseconds) }
}

/// The configured gateway: validated, with every object built, not yet serving.
///
/// `prepare` does all checks `check` reports (files, keys, addresses,
/// references) before a single port is bound.
package final class Gateway: Sendable {
    package let config: GatewayConfig
    let listeners: [ListenerPlan]
    let router: Router
    /// Every upstream group, by name.
    package let groups: [UpstreamGroup]
    /// Every certificate store (the shared set and one per explicit pair).
    package let stores: [CertificateStore]
    /// The shared certificate set, if `certificates` is configured.
    package let sharedStore: CertificateStore?
    let adminAddress: SocketAddress
    /// Session-ticket settings shared by every TLS listener (one key ring per process).
    let sessionTickets: SessionTicketsConfig
    /// The resolved handoff socket path, if zero-downtime restarts are enabled.
    let handoffSocket: String?
    /// The access log to open when this generation starts (checked here: `check`
    /// reports a path it cannot write, and creates nothing).
    let accessLogPlan: (path: String, format: AccessLogFile.Format)?
    /// The ticket keys of `session_tickets.key_file`, parsed here and installed in
    /// the process's key ring only when this generation starts.
    let ticketKeys: [TicketKey]?
    let logger: Logger
    let state = NIOLockedValueBox(RunState())
    let metrics: GatewayMetrics
    /// Outcome of configuration reloads; carried from one configuration generation to the next.
    package let configStatus: ConfigReloadStatus
    /// Runs a full configuration reload (set by the service); `POST /reload` calls it.
    let reloadHandler = NIOLockedValueBox<(@Sendable () async -> AdminReloadAnswer)?>(nil)

    package let startTime = currentTime()
    /// Problems `check` fails on that `run` serves through, logged as errors: an expired
    /// upstream client certificate fails only that upstream's handshakes, and refusing to
    /// start would take every other site down with it.
    package let checkFailures: [String]

    struct RunState {
        var serverChannels: [String: Channel] = [:]
        var adminChannel: Channel?
        var ready = false
        var quiescing: [ServerQuiescingHelper] = []
        /// Watchers, health checks, ticket keys, the client CA watch, the heap trimmer.
        var jobs: BackgroundJobs?
        /// Listening descriptors by listener name ("admin" for the admin endpoint), for handoff.
        var listenerSockets: [String: (address: String, fd: CInt)] = [:]
        var handoffServer: SocketHandoff.Server?
        var pools: (PoolRegistry, EventLoopGroup)?
        /// Opened by `start`, closed after the drain.
        var accessLog: AccessLogFile?
        /// The drain `shutdown` started; every later call waits for it.
        var shutdown: Task<Void, Never>?
    }

    /// Validates `config` and builds every object it describes; paths are relative to `baseDirectory`.
    /// `previous`, on a reload, lends its metrics and reload status so counters continue.
    package static func prepare(config: GatewayConfig, baseDirectory: String, logger: Logger, previous: Gateway? = nil) throws -> Gateway {
        try Gateway(config: config, baseDirectory: baseDirectory, logger: logger, previous: previous)
    }

    private init(config: GatewayConfig, baseDirectory: String, logger: Logger, previous: Gateway?) throws {
        self.config = config
        self.logger = logger
        self.metrics = previous?.metrics ?? GatewayMetrics()
        self.configStatus = previous?.configStatus ?? ConfigReloadStatus()
        var problems: [String] = config.decodingProblems
        var checkFailures: [String] = []
        func resolve(_ path: String) -> String { resolvePath(path, base: baseDirectory) }

        // Upstream groups.
        var groups: [String: UpstreamGroup] = [:]
        var stores: [CertificateStore] = []
        for (name, upstream) in config.upstreams.sorted(by: { $0.key < $1.key }) {
            let path = "upstreams.\(name)"
            var backends: [Backend] = []
            if upstream.backends.isEmpty { problems.append("\(path).backends: needs at least one backend") }
            for (index, entry) in upstream.backends.enumerated() {
                do {
                    guard entry.weight >= 1 else { throw ConfigError(path: "", message: "weight must be at least 1") }
                    let (host, port) = try parseAddress(entry.address)
                    backends.append(try Backend(host: host, port: port, weight: entry.weight))
                } catch {
                    problems.append("\(path).backends[\(index)]: \(Self.reason(error))")
                }
            }
            var tls: UpstreamTLS?
            if let t = upstream.tls {
                do {
                    let made = try Self.makeUpstreamTLS(t, upstream: name, backends: backends, path: path + ".tls", expiry: config.expiry.policy,
                                                         resolve: resolve, logger: logger)
                    tls = made.tls
                    if let failure = made.checkFailure { checkFailures.append(failure) }
                    if let store = made.clientStore { stores.append(store) }
                } catch {
                    problems.append(Self.reason(error))
                }
            }
            var algorithm = BalanceAlgorithm.roundRobin
            switch upstream.balance {
            case "round_robin", "weighted_round_robin": algorithm = .roundRobin
            case "random": algorithm = .random
            case "least_conn", "least_connections": algorithm = .leastConnections
            case "consistent_hash", "ketama":
                let key = upstream.hashKey ?? "client_ip"
                if key == "client_ip" {
                    algorithm = .consistentHash(.clientAddress)
                } else if key == "path" {
                    algorithm = .consistentHash(.path)
                } else if key.hasPrefix("header:"), key.count > 7 {
                    algorithm = .consistentHash(.header(String(key.dropFirst(7)).lowercased()))
                } else {
                    problems.append("\(path).hash_key: '\(key)' is not one of client_ip, path, header:NAME")
                }
            default:
                problems.append("\(path).balance: '\(upstream.balance)' is not one of round_robin, weighted_round_robin, random, least_conn, consistent_hash")
            }
            if upstream.hashKey != nil, case .consistentHash = algorithm {} else if upstream.hashKey != nil {
                problems.append("\(path).hash_key: only used with balance: consistent_hash")
            }
            var healthCheck: HealthCheckSettings?
            if let h = upstream.healthCheck {
                do {
                    healthCheck = try Self.makeHealthCheck(h, path: path + ".health_check", hasTLS: upstream.tls != nil)
                } catch {
                    problems.append(Self.reason(error))
                }
            }
            if upstream.maxConnectAttempts < 1 { problems.append("\(path).max_connect_attempts: must be at least 1") }
            if upstream.pool.maxIdlePerBackend < 0 { problems.append("\(path).pool.max_idle_per_backend: must not be negative") }
            guard !backends.isEmpty else { continue }
            var timeouts = UpstreamTimeouts()
            timeouts.connect = upstream.timeouts.connect.timeAmount
            timeouts.totalConnection = max(upstream.timeouts.totalConnection.timeAmount, timeouts.connect)
            timeouts.read = upstream.timeouts.read.timeAmount
            timeouts.write = upstream.timeouts.write.timeAmount
            timeouts.idle = upstream.timeouts.idle.timeAmount
            // Twice the read timeout by default: room for one more backend after a timeout.
            timeouts.nextUpstream = upstream.timeouts.nextUpstream?.timeAmount ?? .nanoseconds(2 * upstream.timeouts.read.nanoseconds)
            if upstream.maxResponseHeadBytes < 1024 {
                problems.append("upstreams.\(name).max_response_head_bytes: must be at least 1024, got \(upstream.maxResponseHeadBytes)")
            }
            var passive = PassiveHealth()
            passive.maxFails = max(0, upstream.passiveHealth.maxFails)
            passive.failTimeout = upstream.passiveHealth.failTimeout.timeAmount
            if upstream.tls == nil || tls != nil {
                groups[name] = UpstreamGroup(name: name, backends: backends, tls: tls, timeouts: timeouts,
                                             hostHeader: upstream.hostHeader, maxIdlePerBackend: upstream.pool.maxIdlePerBackend,
                                             algorithm: algorithm, passive: passive, maxConnectAttempts: upstream.maxConnectAttempts,
                                             healthCheck: healthCheck, tcpKeepalive: upstream.tcpKeepalive,
                                             maxResponseHeadBytes: upstream.maxResponseHeadBytes)
            }
        }
        self.groups = groups.keys.sorted().map { groups[$0]! }

        // Routes.
        var routes: [Router.Route] = []
        let listenerNames = Set(config.listeners.map(\.name))
        for (index, route) in config.routes.enumerated() {
            let path = "routes[\(index)]"
            if let prefix = route.pathPrefix, !prefix.hasPrefix("/") {
                problems.append("\(path).path_prefix: must start with '/'")
            } else if let prefix = route.pathPrefix {
                // Requests are matched in normal form: a prefix that is not would match nothing.
                switch PathNormalization.normalize(Array(prefix.utf8)) {
                case .unchanged:
                    break
                case .normalized(let normal):
                    problems.append("\(path).path_prefix: '\(prefix)' never matches, requests are matched in normal form: write '\(String(decoding: normal, as: UTF8.self))'")
                case .malformed, .ambiguous:
                    problems.append("\(path).path_prefix: '\(prefix)' is not a path a request can have (a malformed %, or a dot segment behind %2F, \\ or ;)")
                }
            }
            if let name = route.listener, !listenerNames.contains(name) {
                problems.append("\(path).listener: no listener named '\(name)' (\(knownNames(config.listeners.map(\.name), kind: "listeners")))")
            }
            if let max = route.maxRequestBodyBytes, max < 1 {
                problems.append("\(path).max_request_body_bytes: must be at least 1, got \(max)")
            }
            let actions = [route.upstream != nil, route.redirect != nil, route.root != nil].filter { $0 }.count
            guard actions == 1 else {
                problems.append("\(path): needs exactly one of upstream, redirect, root (has \(actions == 0 ? "none" : "\(actions)"))")
                continue
            }
            let action: Router.Route.Action
            if let name = route.upstream {
                guard let group = groups[name] else {
                    if config.upstreams[name] == nil {
                        problems.append("\(path).upstream: no upstream named '\(name)' (\(knownNames(config.upstreams.keys.sorted(), kind: "upstreams")))")
                    }
                    continue
                }
                action = .upstream(group)
            } else if let redirect = route.redirect {
                if redirect.scheme != "https" && redirect.scheme != "http" {
                    problems.append("\(path).redirect.scheme: must be https or http, got '\(redirect.scheme)'")
                }
                if !Redirect.statuses.contains(redirect.status) {
                    problems.append("\(path).redirect.status: must be one of \(Redirect.statuses.sorted().map(String.init).joined(separator: ", ")), got \(redirect.status)")
                }
                if let port = redirect.port, !(1...65535).contains(port) {
                    problems.append("\(path).redirect.port: must be 1-65535, got \(port)")
                }
                if let host = redirect.host, Redirect(host: host).location(requestHost: nil, target: "/") == nil {
                    problems.append("\(path).redirect.host: '\(host)' is not a DNS name or an IP address")
                }
                action = .redirect(Redirect(scheme: redirect.scheme, host: redirect.host?.lowercased(), port: redirect.port, status: redirect.status))
            } else {
                let directory = resolve(route.root!)
                if let problem = StaticRoot.directoryProblem(directory) {
                    problems.append("\(path).root: \(directory): \(problem)")
                }
                action = .root(StaticRoot(directory: directory))
            }
            routes.append(Router.Route(listener: route.listener, host: route.host, pathPrefix: route.pathPrefix, action: action,
                                       maxBodyBytes: route.maxRequestBodyBytes))
        }
        self.router = Router(routes: routes)

        // Certificate policies per listener; the shared set serves every listener without its own pair.
        var sharedPolicies: [TLSServerPolicy] = []
        var ticketSettings: SessionTicketsConfig?
        var pending: [(index: Int, policies: [TLSServerPolicy], patterns: [String], sharedIndices: [Int]?)] = []
        var names = Set<String>()
        for (index, listener) in config.listeners.enumerated() {
            let path = "listeners[\(index)]"
            if !names.insert(listener.name).inserted { problems.append("\(path).name: duplicate listener name '\(listener.name)'") }
            guard let tls = listener.tls else { continue }
            var policy = TLSServerPolicy()
            switch tls.profile {
            case "intermediate": break
            case "modern": policy.minimumVersion = .tls13
            default: problems.append("\(path).tls.profile: '\(tls.profile)' is not one of intermediate, modern")
            }
            if let ciphers = tls.ciphers { policy.cipherList = ciphers }
            if let suites = tls.cipherSuites { policy.cipherSuites = suites }
            if let groups = tls.groups { policy.groups = groups }
            if tls.h2 {
                if tls.alpn != nil { problems.append("\(path).tls.alpn: set either alpn or h2, not both") }
                policy.alpnProtocols = ["h2", "http/1.1"]
            } else if let alpn = tls.alpn {
                if alpn.contains("h2") { problems.append("\(path).tls.alpn: use h2: true to serve HTTP/2") }
                policy.alpnProtocols = alpn
            }
            if let tickets = tls.sessionTickets {
                if let first = ticketSettings, first != tickets {
                    problems.append("\(path).tls.session_tickets: must be the same on every listener (one key ring per process)")
                }
                ticketSettings = tickets
                policy.sessionTickets = tickets.enabled
                policy.ticketsPerHandshake = tickets.numTickets
                if !(1...8).contains(tickets.numTickets) {
                    problems.append("\(path).tls.session_tickets.num_tickets: must be 1 to 8 (turn tickets off with enabled: false)")
                }
            }
            func withClientAuth(_ base: TLSServerPolicy, _ auth: ClientAuthConfig, key: String) -> TLSServerPolicy {
                var policy = base
                policy.clientCAFile = resolve(auth.caFile)
                switch auth.mode {
                case "required": policy.requireClientCertificate = true
                case "optional": policy.requireClientCertificate = false
                default: problems.append("\(key).mode: '\(auth.mode)' is not one of required, optional")
                }
                if let allow = auth.allow {
                    var list = ClientAllowList()
                    list.dnsNames = allow.dns
                    list.uris = allow.uri
                    list.commonNames = allow.cn
                    list.spkiSHA256 = allow.spkiSHA256
                    policy.clientAllow = list
                }
                return policy
            }
            if let auth = tls.clientAuth { policy = withClientAuth(policy, auth, key: "\(path).tls.client_auth") }
            if let min = tls.minVersion {
                if let version = TLSVersion(rawValue: min) { policy.minimumVersion = version } else {
                    problems.append("\(path).tls.min_version: '\(min)' is not one of TLSv1.2, TLSv1.3")
                }
            }
            // Per-SNI client authentication: the same listener policy with another client_auth.
            var policies = [policy]
            var patterns: [String] = []
            for (name, auth) in tls.clientAuthByName.sorted(by: { $0.key < $1.key }) {
                var base = policy
                base.clientCAFile = nil
                base.clientAllow = nil
                base.requireClientCertificate = true
                policies.append(withClientAuth(base, auth, key: "\(path).tls.client_auth_by_name.\(name)"))
                patterns.append(name.lowercased())
            }
            switch (tls.certificate, tls.key) {
            case (.some, .some):
                pending.append((index, policies, patterns, nil))
            case (nil, nil):
                if config.certificates == nil {
                    problems.append("\(path).tls: names no certificate/key and there is no 'certificates' section")
                }
                let indices = policies.map { policy -> Int in
                    if let existing = sharedPolicies.firstIndex(of: policy) { return existing }
                    sharedPolicies.append(policy)
                    return sharedPolicies.count - 1
                }
                pending.append((index, policies, patterns, indices))
            default:
                problems.append("\(path).tls: 'certificate' and 'key' go together")
            }
        }

        var shared: CertificateStore?
        if let certificates = config.certificates {
            let sources = certificates.sources.compactMap { $0.source(base: baseDirectory) }
            do {
                let store = try CertificateStore(
                    configuration: CertificateSetConfiguration(
                        sources: sources, defaultName: certificates.defaultName, strictSNI: certificates.strictSNI,
                        policies: sharedPolicies.isEmpty ? [TLSServerPolicy()] : sharedPolicies,
                        trustCAFile: certificates.caFile.map(resolve)
                    ),
                    logger: logger,
                    succeeding: previous?.sharedStore
                )
                stores.append(store)
                shared = store
            } catch let error as CertificateLoadError where error.path.hasPrefix("certificates.") {
                problems.append(error.description)  // names its key already
            } catch {
                problems.append("certificates: \(Self.reason(error))")
            }
        }
        self.sharedStore = shared
        var tickets = ticketSettings ?? SessionTicketsConfig()
        tickets.keyFile = tickets.keyFile.map(resolve)
        // Validating has no side effects: the keys are parsed now and installed by `start`,
        // so a rejected reload (or `check`) leaves the live keys as they are.
        var ticketKeys: [TicketKey]?
        if let file = tickets.keyFile {
            do {
                ticketKeys = try TicketKeyRing.parse(keyFile: try readTextFile(file))
            } catch {
                problems.append("session_tickets.key_file: \(file): \(Self.reason(error))")
            }
        } else if tickets.rotateEvery.nanoseconds < 60_000_000_000 {
            problems.append("session_tickets.rotate_every: must be at least 1m")
        }
        self.sessionTickets = tickets
        self.ticketKeys = ticketKeys
        self.handoffSocket = config.handoffSocket.map(resolve)
        var accessLogPlan: (path: String, format: AccessLogFile.Format)?
        if let log = config.accessLog {
            if let format = AccessLogFile.Format(rawValue: log.format) {
                let path = AccessLogFile.isStandardOutput(log.path) ? log.path : resolve(log.path)
                do {
                    try AccessLogFile.checkWritable(path: path)
                    accessLogPlan = (path, format)
                } catch {
                    problems.append("access_log.path: \(error)")
                }
            } else {
                problems.append("access_log.format: must be \(AccessLogFile.Format.allCases.map(\.rawValue).joined(separator: " or ")), got '\(log.format)'")
            }
        }
        self.accessLogPlan = accessLogPlan

        var listeners: [ListenerPlan] = []
        for (index, listener) in config.listeners.enumerated() {
            let path = "listeners[\(index)]"
            let host: String, port: Int
            let address: SocketAddress
            do {
                (host, port) = try parseAddress(listener.address)
                address = try SocketAddress.makeAddressResolvingHost(host, port: port)
            } catch {
                problems.append("\(path).address: \(Self.reason(error))")
                continue
            }
            var context: TLSContext?
            var serverNames: (any ServerNameSelector)?
            if let entry = pending.first(where: { $0.index == index }), let tls = listener.tls {
                do {
                    func byName(_ indices: [Int]) -> [String: Int] {
                        Dictionary(uniqueKeysWithValues: zip(entry.patterns, indices.dropFirst()))
                    }
                    if let indices = entry.sharedIndices {
                        if let shared {
                            let selector = shared.selector(policyIndex: indices[0], byName: byName(indices))
                            context = try TLSContext.listener(policy: entry.policies[0], selector: selector)
                            serverNames = selector
                        }
                    } else if let cert = tls.certificate, let key = tls.key {
                        let store = try CertificateStore(
                            configuration: CertificateSetConfiguration(
                                sources: [.pair(name: listener.name, certificate: resolve(cert), key: resolve(key))],
                                policies: entry.policies,
                                trustCAFile: config.certificates?.caFile.map(resolve)
                            ),
                            logger: logger, requireAll: true
                        )
                        stores.append(store)
                        let indices = Array(entry.policies.indices)
                        let selector = store.selector(policyIndex: 0, byName: byName(indices))
                        context = try TLSContext.listener(policy: entry.policies[0], selector: selector)
                        serverNames = selector
                    }
                } catch {
                    problems.append("\(path).tls: \(Self.reason(error))")
                }
            }
            var plan = ListenerPlan(
                name: listener.name, host: host, port: port, address: address, tlsContext: context,
                handshakeTimeout: listener.timeouts.handshake.timeAmount, headerTimeout: listener.timeouts.header.timeAmount,
                idleTimeout: listener.timeouts.idle.timeAmount, maxHeadBytes: listener.maxRequestHeadBytes,
                maxBodyBytes: listener.maxRequestBodyBytes
            )
            plan.serverNames = serverNames
            plan.bodyTimeout = listener.timeouts.body.timeAmount
            if listener.timeouts.body.nanoseconds <= 0 {
                problems.append("\(path).timeouts.body: must be more than 0 (every request with a body would time out at once)")
            }
            if listener.backlog < 1 || listener.backlog > 65_535 {
                problems.append("\(path).backlog: must be 1 to 65535, got \(listener.backlog)")
            } else if let cap = SystemLimits.maxListenBacklog, listener.backlog > cap {
                // The kernel would shorten it without a word; said once, here.
                logger.notice("listen backlog capped by net.core.somaxconn", metadata: [
                    "listener": "\(listener.name)", "backlog": "\(listener.backlog)", "somaxconn": "\(cap)",
                ])
                plan.backlog = cap
            } else {
                plan.backlog = listener.backlog
            }
            if let max = listener.maxConnections {
                if max < 1 { problems.append("\(path).max_connections: must be at least 1 (leave it out for no limit), got \(max)") }
                plan.maxConnections = max
            }
            plan.proxyProtocol = listener.proxyProtocol
            plan.drainQuietPeriod = config.drainQuietPeriod.timeAmount
            if let from = listener.proxyProtocolFrom {
                if !listener.proxyProtocol {
                    problems.append("\(path).proxy_protocol_from: applies only with proxy_protocol: true")
                } else if from.isEmpty {
                    problems.append("\(path).proxy_protocol_from: lists no address; leave it out to take the header from any peer")
                }
                var ranges: [AddressRange] = []
                for (i, text) in from.enumerated() {
                    do {
                        ranges.append(try AddressRange(parsing: text))
                    } catch {
                        problems.append("\(path).proxy_protocol_from[\(i)]: \(error.description)")
                    }
                }
                plan.proxyProtocolFrom = ranges
            }
            if let max = listener.maxRequestBodyBytes, max < 1 {
                problems.append("\(path).max_request_body_bytes: must be at least 1 (leave it out for no limit), got \(max)")
            }
            if let tls = listener.tls {
                plan.h2 = tls.h2
                plan.http2 = tls.http2
                plan.mutualTLS = tls.clientAuth != nil || !tls.clientAuthByName.isEmpty
                if let hsts = tls.hsts {
                    plan.strictTransportSecurity = hsts.value
                    // The list's rules (hstspreload.org): a submitted domain is refused without them.
                    if hsts.preload && (!hsts.includeSubdomains || hsts.maxAge.nanoseconds < 31_536_000 * 1_000_000_000) {
                        problems.append("\(path).tls.hsts.preload: needs include_subdomains: true and max_age of at least 365d (the preload list's requirements)")
                    }
                }
                if tls.http2.maxConcurrentStreams < 1 { problems.append("\(path).tls.http2.max_concurrent_streams: must be at least 1") }
            }
            listeners.append(plan)
        }
        if config.listeners.isEmpty { problems.append("listeners: at least one listener is needed") }
        if config.routes.isEmpty { problems.append("routes: at least one route is needed") }
        self.listeners = listeners
        self.stores = stores
        self.checkFailures = checkFailures

        // Admin endpoint: loopback unless explicitly opened.
        var adminAddress = try! SocketAddress(ipAddress: "127.0.0.1", port: 9901)
        do {
            let (host, port) = try parseAddress(config.admin.address)
            adminAddress = try SocketAddress.makeAddressResolvingHost(host, port: port)
            let loopback = isLoopbackHost(host)
            if !loopback && !config.admin.allowNonLoopback {
                problems.append("admin.address: '\(config.admin.address)' is not a loopback address; set admin.allow_non_loopback: true to expose the admin endpoint")
            } else if !loopback {
                logger.warning("admin endpoint bound beyond loopback", metadata: ["address": "\(config.admin.address)"])
            }
        } catch {
            problems.append("admin.address: \(Self.reason(error))")
        }
        self.adminAddress = adminAddress
        if !problems.isEmpty { throw ConfigProblems(problems: problems) }
    }

    static func reason(_ error: Error) -> String {
        switch error {
        case let e as ConfigError: return e.description
        case let e as CertificateLoadError: return e.description
        case let e as TLSError: return e.description
        case let e as ConfigProblems: return e.description
        default: return "\(error)"
        }
    }

    private static func makeHealthCheck(_ h: HealthCheckConfig, path: String, hasTLS: Bool) throws -> HealthCheckSettings {
        var settings = HealthCheckSettings()
        guard let kind = HealthCheckSettings.Kind(rawValue: h.kind == "https" ? "http" : h.kind) else {
            throw ConfigError(path: path + ".kind", message: "'\(h.kind)' is not one of tcp, tls, http")
        }
        if kind == .tls && !hasTLS { throw ConfigError(path: path + ".kind", message: "a tls check needs the upstream's tls settings") }
        if h.kind == "https" && !hasTLS { throw ConfigError(path: path + ".kind", message: "an https check needs the upstream's tls settings") }
        settings.kind = kind
        guard h.path.hasPrefix("/") else { throw ConfigError(path: path + ".path", message: "must start with '/'") }
        settings.path = h.path
        settings.host = h.host
        guard h.interval.nanoseconds > 0, h.timeout.nanoseconds > 0 else {
            throw ConfigError(path: path, message: "interval and timeout must be positive")
        }
        settings.interval = h.interval.timeAmount
        settings.timeout = h.timeout.timeAmount
        guard h.healthyAfter >= 1, h.unhealthyAfter >= 1 else {
            throw ConfigError(path: path, message: "healthy_after and unhealthy_after must be at least 1")
        }
        settings.healthyAfter = h.healthyAfter
        settings.unhealthyAfter = h.unhealthyAfter
        let bounds = h.expectedStatus.split(separator: "-").map { Int(String($0).trimmingCharacters(in: " ")) }
        guard (1...2).contains(bounds.count), let low = bounds.first ?? nil, let high = bounds.last ?? nil, 100 <= low, low <= high, high <= 599 else {
            throw ConfigError(path: path + ".expected_status", message: "'\(h.expectedStatus)' is not a status or a range like 200-399")
        }
        settings.expectedStatus = low...high
        return settings
    }

    private static func makeUpstreamTLS(_ t: UpstreamTLSConfig, upstream: String, backends: [Backend], path: String, expiry: ExpiryPolicy,
                                        resolve: (String) -> String, logger: Logger) throws -> (tls: UpstreamTLS, clientStore: CertificateStore?, checkFailure: String?) {
        var configuration = TLSClientConfiguration()
        configuration.verifyCertificate = t.verifyCert
        configuration.caFile = t.caFile.map(resolve)
        if let min = t.minVersion {
            guard let version = TLSVersion(rawValue: min) else {
                throw ConfigError(path: path + ".min_version", message: "'\(min)' is not one of TLSv1.2, TLSv1.3")
            }
            configuration.minimumVersion = version
        }
        if t.clientCAFile != nil && t.clientCertificate == nil {
            throw ConfigError(path: path + ".client_ca_file", message: "only checks a client_certificate; none is set")
        }
        var clientStore: CertificateStore?
        var checkFailure: String?
        if let cert = t.clientCertificate {
            guard let key = t.clientKey else { throw ConfigError(path: path + ".client_key", message: "required with client_certificate") }
            do {
                // A store of its own, so the pair is watched, hot-reloaded and shown on /status like serving certificates.
                let store = try CertificateStore(
                    configuration: CertificateSetConfiguration(
                        sources: [.pair(name: "upstream-\(upstream)-client", certificate: resolve(cert), key: resolve(key))],
                        policies: [TLSServerPolicy()],
                        chainCheck: .clientCertificate(caFile: t.clientCAFile.map(resolve))
                    ),
                    logger: logger, requireAll: true
                )
                clientStore = store
                let lineage = store.snapshot.lineages[0]
                configuration.clientChain = lineage.chain
                configuration.clientKey = lineage.privateKeyForClientUse
            } catch {
                throw ConfigError(path: path + ".client_certificate", message: Self.reason(error))
            }
            checkFailure = Self.checkClientCertificateDates(clientStore!.snapshot.lineages[0], path: path + ".client_certificate", expiry: expiry, logger: logger)
        } else if t.clientKey != nil {
            throw ConfigError(path: path + ".client_certificate", message: "required with client_key")
        }
        if !t.verifyCert { logger.warning("upstream certificate verification is OFF", metadata: ["key": "\(path).verify_cert"]) }
        if t.verifyCert && !t.verifyHostname { logger.warning("upstream hostname verification is OFF", metadata: ["key": "\(path).verify_hostname"]) }
        if t.verifyCert && t.verifyHostname && t.allowCommonName {
            logger.warning("upstream certificates without subject alternative names are accepted by their CN (browsers, Go and rustls refuse them)",
                           metadata: ["key": "\(path).allow_common_name"])
        }
        let alternatives = t.alternativeCN.filter { !$0.isEmpty }
        do {
            let context = try TLSContext.client(configuration: configuration)
            // SNI is `sni`, else each backend's host (never an IP literal); the certificate
            // must hold one of `sni` (else the backend's host) and the alternative_cn names.
            let names = (serverName: t.sni, alternatives: alternatives, verifies: t.verifyCert && t.verifyHostname, allowCN: t.allowCommonName)
            guard let store = clientStore else {
                return (UpstreamTLS(context: context, serverName: names.serverName, alternativeNames: names.alternatives,
                                    verifiesNames: names.verifies, allowCommonName: names.allowCN), nil, checkFailure)
            }
            let base = configuration
            let tls = UpstreamTLS(
                context: context, serverName: names.serverName, alternativeNames: names.alternatives,
                verifiesNames: names.verifies, allowCommonName: names.allowCN,
                clientCertificate: { store.snapshot.lineages.first?.leaf },
                generation: { store.snapshot.generation },
                rebuild: {
                    // The store only publishes validated pairs; a context that still fails keeps the old one.
                    let snapshot = store.snapshot
                    var next = base
                    next.clientChain = snapshot.lineages[0].chain
                    next.clientKey = snapshot.lineages[0].privateKeyForClientUse
                    let context = try? TLSContext.client(configuration: next)
                    if context != nil {
                        logger.info("upstream client certificate rotated", metadata: ["upstream": "\(upstream)", "serial": "\(snapshot.lineages[0].leaf.serialNumberHex)"])
                    }
                    return (snapshot.generation, context)
                }
            )
            return (tls, store, checkFailure)
        } catch let error as TLSError {
            throw ConfigError(path: path, message: error.description)
        }
    }

    /// An expired (or not yet valid) upstream client certificate is returned for `check` to
    /// fail on and `start` to log: every handshake that asks for it fails.
    /// One in its warning window is logged as a warning.
    private static func checkClientCertificateDates(_ lineage: LoadedLineage, path: String, expiry: ExpiryPolicy, logger: Logger) -> String? {
        let now = Int64(currentTime())
        let firstExpiry = lineage.chain.map(\.notAfter).min() ?? lineage.leaf.notAfter
        let file = lineage.files.certificatePath
        var failure: String?
        switch expiry.state(notBefore: lineage.leaf.notBefore, notAfter: firstExpiry, now: now) {
        case .expired:
            failure = "\(path): \(file) expired on \(isoDate(firstExpiry)) UTC; upstreams that ask for it will refuse the handshake"
        case .notYetValid:
            failure = "\(path): \(file) is not valid before \(isoDate(lineage.leaf.notBefore)) UTC"
        case .warning, .critical:
            logger.warning("upstream client certificate expires soon", metadata: ["key": "\(path)", "file": "\(file)", "not_after": "\(isoDate(firstExpiry)) UTC"])
        case .ok:
            break
        }
        return failure
    }
}

extension String {
    func replacingSuffix(_ suffix: String) -> String {
        self.hasSuffix(suffix) ? String(self.dropLast(suffix.count)) : self
    }
}

/// What the last configuration reload did, for `/status` and the log.
package final class ConfigReloadStatus: Sendable {
    package struct Outcome: Sendable {
        package var time: Int64
        /// applied, rejected (invalid file; the running configuration stays), failed (could not start it).
        package var result: String
        package var error: String?
    }

    private let last = NIOLockedValueBox<Outcome?>(nil)

    package init() {}

    package var lastOutcome: Outcome? { self.last.withLockedValue { $0 } }

    func record(_ result: String, error: String? = nil) {
        self.last.withLockedValue { $0 = Outcome(time: Int64(currentTime()), result: result, error: error) }
    }
}

/// Identity of a file's current contents for change polling: inode, size, mtime.
func fileStamp(_ path: String) -> String? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return "\(st.st_ino)-\(st.st_size)-\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
}

/// Seconds since the epoch, with fractions.
package func currentTime() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// "known: a, b" for a name that matched none, or that there are none at all.
func knownNames(_ names: [String], kind: String) -> String {
    names.isEmpty ? "no \(kind) are configured" : "known: \(names.joined(separator: ", "))"
}
