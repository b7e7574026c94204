import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOCore

/// One listener, ready to bind.
struct ListenerPlan: Sendable {
    var name: String
    var host: String
    var port: Int
    var address: SocketAddress
    var tlsContext: TLSContext?
    /// The store whose snapshots `tlsContext` serves: what `ServedProof` checks it against.
    var certificateStore: CertificateStore?
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

/// A TLS listener's policies, before its certificates are loaded: the listener's own
/// policy first, then one per `client_auth_by_name` pattern; `sharedIndices` places them
/// in the shared set's policy list, nil for a listener with its own pair.
typealias PendingListenerTLS = (index: Int, policies: [TLSServerPolicy], patterns: [String], sharedIndices: [Int]?)

extension PlanBuilder {
    /// Each TLS listener's policies (profile, versions, ciphers, ALPN, tickets, client
    /// authentication), and the policies the shared certificate set serves.
    mutating func listenerTLS() -> (sharedPolicies: [TLSServerPolicy], ticketSettings: SessionTicketsConfig?, pending: [PendingListenerTLS]) {
        var sharedPolicies: [TLSServerPolicy] = []
        var ticketSettings: SessionTicketsConfig?
        var pending: [(index: Int, policies: [TLSServerPolicy], patterns: [String], sharedIndices: [Int]?)] = []
        var names = Set<String>()
        for (index, listener) in config.listeners.enumerated() {
            let path = "listeners[\(index)]"
            if !names.insert(listener.name).inserted { problems.append("\(path).name: duplicate listener name '\(listener.name)'") }
            guard let tls = listener.tls else { continue }
            var policy = TLSServerPolicy()
            if tls.profile == .modern { policy.minimumVersion = .tls13 }
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
                policy.requireClientCertificate = auth.mode == .required
                policy.clientCRLFile = auth.crlFile.map(resolve)
                policy.clientCRLChain = auth.crlCheck == .chain
                policy.clientCRLStrict = auth.crlStrict
                // Checked here to name the key: the contexts report it only as the listener's.
                if let crl = policy.clientCRLFile, let bundle = try? PEMBundle.parse(try readRegularFile(resolve(auth.caFile))) {
                    do {
                        _ = try RevocationListFile(path: crl, issuers: bundle.certificates)
                    } catch {
                        problems.append("\(key).crl_file: \(Gateway.reason(error))")
                    }
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
            if let version = tls.minVersion { policy.minimumVersion = version }
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
        return (sharedPolicies, ticketSettings, pending)
    }

    /// The shared certificate set (`certificates`), loaded and checked.
    mutating func sharedStore(policies sharedPolicies: [TLSServerPolicy], succeeding previous: CertificateStore?) -> CertificateStore? {
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
                    succeeding: previous
                )
                stores.append(store)
                shared = store
            } catch let error as CertificateLoadError where error.path.hasPrefix("certificates.") {
                problems.append(error.description)  // names its key already
            } catch {
                problems.append("certificates: \(Gateway.reason(error))")
            }
        }
        return shared
    }

    /// The listeners, ready to bind: addresses, TLS contexts (certificates loaded),
    /// timeouts and limits.
    mutating func listeners(_ pending: [PendingListenerTLS], shared: CertificateStore?) -> [ListenerPlan] {
        var listeners: [ListenerPlan] = []
        for (index, listener) in config.listeners.enumerated() {
            let path = "listeners[\(index)]"
            let host: String, port: Int
            let address: SocketAddress
            do {
                (host, port) = try parseAddress(listener.address)
                address = try SocketAddress.makeAddressResolvingHost(host, port: port)
            } catch {
                problems.append("\(path).address: \(Gateway.reason(error))")
                continue
            }
            var context: TLSContext?
            var serverNames: (any ServerNameSelector)?
            var servedFrom: CertificateStore?
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
                            servedFrom = shared
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
                        servedFrom = store
                    }
                } catch {
                    problems.append("\(path).tls: \(Gateway.reason(error))")
                }
            }
            var plan = ListenerPlan(
                name: listener.name, host: host, port: port, address: address, tlsContext: context,
                handshakeTimeout: listener.timeouts.handshake.timeAmount, headerTimeout: listener.timeouts.header.timeAmount,
                idleTimeout: listener.timeouts.idle.timeAmount, maxHeadBytes: listener.maxRequestHeadBytes,
                maxBodyBytes: listener.maxRequestBodyBytes
            )
            plan.serverNames = serverNames
            plan.certificateStore = servedFrom
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
        return listeners
    }
}
