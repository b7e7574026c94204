import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore

extension PlanBuilder {
    /// The upstream groups, by name: backends, TLS peer options, balancing, health checks,
    /// timeouts. A group whose backends or TLS settings fail is left out (its problems
    /// are reported; routes to it are not reported again).
    mutating func upstreamGroups() -> [String: UpstreamGroup] {
        var groups: [String: UpstreamGroup] = [:]
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
                    problems.append("\(path).backends[\(index)]: \(Gateway.reason(error))")
                }
            }
            var tls: UpstreamTLS?
            switch upstream.upstreamProtocol {
            case .h2 where upstream.tls == nil:
                problems.append("\(path).protocol: h2 is HTTP/2 over TLS and needs the group's tls settings; use h2c for plain HTTP/2")
            case .h2c where upstream.tls != nil:
                problems.append("\(path).protocol: h2c is HTTP/2 without TLS; use h2 with the group's tls settings")
            case .auto where upstream.tls == nil:
                problems.append("\(path).protocol: auto chooses between h2 and http/1.1 by ALPN, which needs the group's tls settings; use h2c for plain HTTP/2")
            default:
                break
            }
            if !upstream.upstreamProtocol.mayBeHTTP2, let check = upstream.healthCheck, check.kind == "grpc" {
                problems.append("\(path).health_check.kind: a grpc check speaks HTTP/2: set the group's protocol to h2, h2c or auto")
            }
            if let t = upstream.tls {
                do {
                    let made = try Self.makeUpstreamTLS(t, upstream: name, backends: backends, path: path + ".tls", expiry: config.expiry.policy,
                                                         alpn: upstream.upstreamProtocol.alpnOffer,
                                                         resolve: resolve, logger: logger)
                    tls = made.tls
                    if let failure = made.checkFailure { checkFailures.append(failure) }
                    if let store = made.clientStore { stores.append(store) }
                } catch {
                    problems.append(Gateway.reason(error))
                }
            }
            var algorithm = BalanceAlgorithm.roundRobin
            switch upstream.balance {
            case .roundRobin, .weightedRoundRobin: algorithm = .roundRobin
            case .random: algorithm = .random
            case .leastConn: algorithm = .leastConnections
            case .consistentHash:
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
            }
            if upstream.hashKey != nil, case .consistentHash = algorithm {} else if upstream.hashKey != nil {
                problems.append("\(path).hash_key: only used with balance: consistent_hash")
            }
            var healthCheck: HealthCheckSettings?
            if let h = upstream.healthCheck {
                do {
                    healthCheck = try Self.makeHealthCheck(h, path: path + ".health_check", hasTLS: upstream.tls != nil)
                } catch {
                    problems.append(Gateway.reason(error))
                }
            }
            if upstream.maxConnectAttempts < 1 { problems.append("\(path).max_connect_attempts: must be at least 1") }
            if upstream.pool.maxIdlePerBackend < 0 { problems.append("\(path).pool.max_idle_per_backend: must not be negative") }
            if upstream.pool.maxStreamsPerConnection < 1 {
                problems.append("\(path).pool.max_streams_per_connection: must be at least 1, got \(upstream.pool.maxStreamsPerConnection)")
            }
            if upstream.pool.maxRequestsPerConnection < 0 {
                problems.append("\(path).pool.max_requests_per_connection: must not be negative (0 is no limit)")
            }
            if upstream.pool.maxConnectionsPerBackend < 0 {
                problems.append("\(path).pool.max_connections_per_backend: must not be negative (0 is no limit)")
            }
            let ping = Self.ping(upstream, path: path, problems: &problems)
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
            let protocolFits: Bool
            switch upstream.upstreamProtocol {
            case .http1: protocolFits = true
            case .h2, .auto: protocolFits = tls != nil
            case .h2c: protocolFits = upstream.tls == nil
            }
            if (upstream.tls == nil || tls != nil) && protocolFits {
                groups[name] = UpstreamGroup(name: name, backends: backends, tls: tls, timeouts: timeouts,
                                             hostHeader: upstream.hostHeader, maxIdlePerBackend: upstream.pool.maxIdlePerBackend,
                                             maxStreamsPerConnection: upstream.pool.maxStreamsPerConnection,
                                             maxConnectionsPerBackend: upstream.pool.maxConnectionsPerBackend,
                                             maxRequestsPerConnection: upstream.pool.maxRequestsPerConnection, ping: ping,
                                             algorithm: algorithm, passive: passive, maxConnectAttempts: upstream.maxConnectAttempts,
                                             healthCheck: healthCheck, tcpKeepalive: upstream.tcpKeepalive,
                                             maxResponseHeadBytes: upstream.maxResponseHeadBytes, upstreamProtocol: upstream.upstreamProtocol)
            }
        }
        return groups
    }

    /// `pool.ping_interval` and `pool.ping_timeout`: PINGs go over HTTP/2 only, so an
    /// http1 group refuses them rather than ignoring them.
    static func ping(_ upstream: UpstreamConfig, path: String, problems: inout [String]) -> HTTP2Ping? {
        let pool = upstream.pool
        let timeout = pool.pingTimeout ?? .seconds(5)
        if timeout.nanoseconds <= 0 { problems.append("\(path).pool.ping_timeout: must be more than 0") }
        guard let interval = pool.pingInterval else {
            if pool.pingTimeout != nil { problems.append("\(path).pool.ping_timeout: only used with pool.ping_interval") }
            return nil
        }
        if upstream.upstreamProtocol == .http1 {
            problems.append("\(path).pool.ping_interval: only HTTP/2 connections are PINGed; the group's protocol is http1 (use h2, h2c or auto)")
        }
        if interval.nanoseconds <= 0 { problems.append("\(path).pool.ping_interval: must be more than 0 (leave it out for no PINGs)") }
        if interval.nanoseconds >= upstream.timeouts.idle.nanoseconds {
            problems.append("\(path).pool.ping_interval: \(interval) is not shorter than timeouts.idle (\(upstream.timeouts.idle)): "
                            + "an idle connection would close before its first PING")
        }
        return HTTP2Ping(interval: interval.timeAmount, timeout: timeout.timeAmount)
    }

    static func makeHealthCheck(_ h: HealthCheckConfig, path: String, hasTLS: Bool) throws -> HealthCheckSettings {
        var settings = HealthCheckSettings()
        guard let kind = HealthCheckSettings.Kind(rawValue: h.kind == "https" ? "http" : h.kind) else {
            throw ConfigError(path: path + ".kind", message: "'\(h.kind)' is not one of tcp, tls, http, grpc")
        }
        if let service = h.service {
            guard kind == .grpc else { throw ConfigError(path: path + ".service", message: "only used with kind: grpc") }
            settings.service = service
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

    static func makeUpstreamTLS(_ t: UpstreamTLSConfig, upstream: String, backends: [Backend], path: String, expiry: ExpiryPolicy,
                                        alpn: [String] = [], resolve: (String) -> String, logger: Logger) throws -> (tls: UpstreamTLS, clientStore: CertificateStore?, checkFailure: String?) {
        var configuration = TLSClientConfiguration()
        configuration.alpnProtocols = alpn
        configuration.verifyCertificate = t.verifyCert
        configuration.caFile = t.caFile.map(resolve)
        configuration.crlFile = t.crlFile.map(resolve)
        configuration.crlChain = t.crlCheck == .chain
        configuration.crlStrict = t.crlStrict
        if let version = t.minVersion { configuration.minimumVersion = version }
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
                throw ConfigError(path: path + ".client_certificate", message: Gateway.reason(error))
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
            // Made before the context reads the file: a change while it is built is not missed.
            let crlChanges = configuration.crlFile.map { FileChangeCounter(path: $0) }
            let context = try TLSContext.client(configuration: configuration)
            // SNI is `sni`, else each backend's host (never an IP literal); the certificate
            // must hold one of `sni` (else the backend's host) and the alternative_cn names.
            let names = (serverName: t.sni, alternatives: alternatives, verifies: t.verifyCert && t.verifyHostname, allowCN: t.allowCommonName)
            // The context is built again when the client certificate's store publishes, when
            // the CRL file changes, and when a crl_strict list goes stale (so that no pooled
            // connection or kept session made before is used again): the generation counts all three.
            guard clientStore != nil || crlChanges != nil else {
                return (UpstreamTLS(context: context, serverName: names.serverName, alternativeNames: names.alternatives,
                                    verifiesNames: names.verifies, allowCommonName: names.allowCN, revocation: configuration.crlFile.map { ($0, configuration.crlChain, configuration.crlStrict) }), nil, checkFailure)
            }
            let store = clientStore
            let base = configuration
            let strictNextUpdate = NIOLockedValueBox(base.crlStrict ? context.revocation?.nextUpdate : nil)
            let generation: @Sendable () -> Int = {
                let stale = strictNextUpdate.withLockedValue { $0 }.map { Int64(currentTime()) > $0 } ?? false
                return (store?.snapshot.generation ?? 0) << 32 | (crlChanges?.changes ?? 0) << 1 | (stale ? 1 : 0)
            }
            let lastSerial = NIOLockedValueBox(base.clientChain?.first?.serialNumberHex)
            var clientCertificate: (@Sendable () -> X509Certificate?)?
            if let store { clientCertificate = { store.snapshot.lineages.first?.leaf } }
            let tls = UpstreamTLS(
                context: context, serverName: names.serverName, alternativeNames: names.alternatives,
                verifiesNames: names.verifies, allowCommonName: names.allowCN, revocation: configuration.crlFile.map { ($0, configuration.crlChain, configuration.crlStrict) },
                clientCertificate: clientCertificate,
                generation: generation,
                rebuild: { () -> (generation: Int, context: TLSContext?) in
                    // The store only publishes validated pairs; a context that still fails
                    // (a CRL file that does not parse) keeps the old one.
                    let wanted = generation()
                    var next = base
                    if let snapshot = store?.snapshot {
                        next.clientChain = snapshot.lineages[0].chain
                        next.clientKey = snapshot.lineages[0].privateKeyForClientUse
                    }
                    do {
                        let context = try TLSContext.client(configuration: next)
                        if next.crlStrict { strictNextUpdate.withLockedValue { $0 = context.revocation?.nextUpdate } }
                        let serial = next.clientChain?.first?.serialNumberHex
                        let changed = lastSerial.withLockedValue { last -> Bool in
                            defer { last = serial }
                            return last != serial
                        }
                        if let serial, changed {
                            logger.info("upstream client certificate rotated", metadata: ["upstream": "\(upstream)", "serial": "\(serial)"])
                        }
                        if let crlFile = next.crlFile {
                            logger.info("upstream TLS context rebuilt", metadata: ["upstream": "\(upstream)", "crl_file": "\(crlFile)"])
                        }
                        return (wanted, context)
                    } catch {
                        logger.error("upstream TLS context not rebuilt; keeping the current one", metadata: ["upstream": "\(upstream)", "error": "\(error)"])
                        return (wanted, nil)
                    }
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
    static func checkClientCertificateDates(_ lineage: LoadedLineage, path: String, expiry: ExpiryPolicy, logger: Logger) -> String? {
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
