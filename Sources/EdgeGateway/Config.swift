import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Yams

#if canImport(Glibc)
import Glibc
#endif

/// The whole configuration file. Every key is documented in README.md.
package struct GatewayConfig: Decodable, Sendable {
    package var listeners: [ListenerConfig]
    package var upstreams: [String: UpstreamConfig]
    package var routes: [RouteConfig]
    package var certificates: CertificatesConfig?
    package var admin: AdminConfig
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    package var shutdownGracePeriod: Duration
    /// While draining, how long an idle keep-alive connection is kept for a request its
    /// client may be sending right then (it gets `connection: close`).
    package var drainQuietPeriod: Duration
    /// Event loops; default: one per core.
    package var workers: Int?
    package var expiry: ExpiryConfig
    /// Unix socket for zero-downtime restarts: a new process takes the listening sockets over.
    package var handoffSocket: String?
    /// Give free heap pages back to the kernel after bursts of connections (`HeapTrimmer`).
    package var memoryTrimming: Bool
    package var accessLog: AccessLogConfig?
    /// Problems found while reading the file that did not stop it from being read
    /// (unknown keys), "file: key path: reason": `Gateway.prepare` reports them with its own.
    var decodingProblems: [String] = []

    enum CodingKeys: String, CodingKey, CaseIterable {
        case listeners, upstreams, routes, certificates, admin
        case shutdownGracePeriod = "shutdown_grace_period"
        case drainQuietPeriod = "drain_quiet_period"
        case workers, expiry
        case handoffSocket = "handoff_socket"
        case memoryTrimming = "memory_trimming"
        case accessLog = "access_log"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        // Each listener, upstream, route and section on its own (`Recorded`): one that
        // does not decode is reported and the others are still read.
        self.listeners = try c.decode([Recorded<ListenerConfig>].self, forKey: .listeners).compactMap(\.value)
        self.upstreams = try c.decodeIfPresent([String: Recorded<UpstreamConfig>].self, forKey: .upstreams)?.compactMapValues(\.value) ?? [:]
        self.routes = try c.decodeIfPresent([Recorded<RouteConfig>].self, forKey: .routes)?.compactMap(\.value) ?? []
        self.certificates = try c.decodeRecorded(CertificatesConfig.self, forKey: .certificates)
        self.admin = try c.decodeRecorded(AdminConfig.self, forKey: .admin) ?? AdminConfig()
        self.shutdownGracePeriod = try c.decodeRecorded(Duration.self, forKey: .shutdownGracePeriod) ?? .seconds(10)
        self.drainQuietPeriod = try c.decodeRecorded(Duration.self, forKey: .drainQuietPeriod) ?? .seconds(1)
        self.workers = try c.decodeRecorded(Int.self, forKey: .workers)
        self.expiry = try c.decodeRecorded(ExpiryConfig.self, forKey: .expiry) ?? ExpiryConfig()
        self.handoffSocket = try c.decodeRecorded(String.self, forKey: .handoffSocket)
        self.memoryTrimming = try c.decodeRecorded(Bool.self, forKey: .memoryTrimming) ?? true
        self.accessLog = try c.decodeRecorded(AccessLogConfig.self, forKey: .accessLog)
    }

    /// Parses YAML text; errors name the key path. Every problem decoding finds is
    /// reported (`ConfigErrors`, one per line), not only the first.
    package static func parse(yaml: String) throws -> GatewayConfig {
        let (config, unknownKeys) = try self.parseCollecting(yaml: yaml)
        if !unknownKeys.isEmpty { throw ConfigErrors(errors: unknownKeys) }
        return config
    }

    /// The configuration and its unknown keys, when nothing else is wrong; throws every
    /// problem when something could not be decoded (`DecodingProblems`).
    static func parseCollecting(yaml: String) throws -> (GatewayConfig, [ConfigError]) {
        let problems = DecodingProblems()
        let config: GatewayConfig
        do {
            config = try YAMLDecoder().decode(GatewayConfig.self, from: yaml, userInfo: [DecodingProblems.key: problems])
        } catch {
            problems.record(error)
            throw ConfigErrors(errors: problems.errors)
        }
        if problems.incomplete { throw ConfigErrors(errors: problems.errors) }
        return (config, problems.errors)
    }
}

/// One line per answered request, in nginx's `combined` format or as JSON.
package struct AccessLogConfig: Decodable, Sendable {
    /// A file (relative to the configuration file), or `-`/`stdout`.
    package var path: String
    package var format: AccessLogFile.Format

    enum CodingKeys: String, CodingKey, CaseIterable {
        case path, format
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.path = try c.decode(String.self, forKey: .path)
        self.format = try c.decodeRecorded(Choice<AccessLogFile.Format>.self, forKey: .format)?.value ?? .combined
    }
}

package struct ListenerConfig: Decodable, Sendable {
    package var name: String
    package var address: String
    package var tls: ListenerTLSConfig?
    package var timeouts: ListenerTimeouts
    /// Largest request head (request line and headers) accepted; larger gets 431.
    package var maxRequestHeadBytes: Int
    /// Largest request body accepted (nginx's `client_max_body_size`); nil: no limit.
    package var maxRequestBodyBytes: Int?
    /// Every connection must start with a PROXY protocol header (v1 or v2) naming the
    /// client (nginx's `listen ... proxy_protocol`, HAProxy's `accept-proxy`).
    package var proxyProtocol: Bool
    /// The peers (addresses or CIDR ranges) allowed to send that header, as the
    /// balancers' addresses (nginx's `set_real_ip_from`); nil: any peer.
    package var proxyProtocolFrom: [String]?
    /// Client connections open at once on this listener; beyond, new ones are closed as
    /// they are accepted (Envoy's listener connection limit); nil: no limit.
    package var maxConnections: Int?
    /// The listen queue: connections the kernel has accepted and the gateway not yet.
    package var backlog: Int

    enum CodingKeys: String, CodingKey, CaseIterable {
        case name, address, tls, timeouts, backlog
        case maxConnections = "max_connections"
        case maxRequestHeadBytes = "max_request_head_bytes"
        case maxRequestBodyBytes = "max_request_body_bytes"
        case proxyProtocol = "proxy_protocol"
        case proxyProtocolFrom = "proxy_protocol_from"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.name = try c.decode(String.self, forKey: .name)
        self.address = try c.decode(String.self, forKey: .address)
        self.tls = try c.decodeRecorded(ListenerTLSConfig.self, forKey: .tls)
        self.timeouts = try c.decodeRecorded(ListenerTimeouts.self, forKey: .timeouts) ?? ListenerTimeouts()
        self.maxRequestHeadBytes = try c.decodeRecorded(Int.self, forKey: .maxRequestHeadBytes) ?? 32 * 1024
        self.maxRequestBodyBytes = try c.decodeRecorded(Int.self, forKey: .maxRequestBodyBytes)
        self.proxyProtocol = try c.decodeRecorded(Bool.self, forKey: .proxyProtocol) ?? false
        self.proxyProtocolFrom = try c.decodeRecorded([String].self, forKey: .proxyProtocolFrom)
        self.maxConnections = try c.decodeRecorded(Int.self, forKey: .maxConnections)
        self.backlog = try c.decodeRecorded(Int.self, forKey: .backlog) ?? 1024
    }
}

package struct ListenerTimeouts: Decodable, Sendable {
    /// A client must finish its TLS handshake within this.
    package var handshake: Duration = .seconds(10)
    /// A client must send a complete request head within this (else 408).
    package var header: Duration = .seconds(30)
    /// An idle keep-alive client connection is closed after this.
    package var idle: Duration = .seconds(75)
    /// The longest pause between reads of a request body (nginx's `client_body_timeout`).
    package var body: Duration = .seconds(60)

    enum CodingKeys: String, CodingKey, CaseIterable { case handshake, header, idle, body }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.handshake = try c.decodeRecorded(Duration.self, forKey: .handshake) ?? self.handshake
        self.header = try c.decodeRecorded(Duration.self, forKey: .header) ?? self.header
        self.idle = try c.decodeRecorded(Duration.self, forKey: .idle) ?? self.idle
        self.body = try c.decodeRecorded(Duration.self, forKey: .body) ?? self.body
    }
}

package struct ListenerTLSConfig: Decodable, Sendable {
    /// Chain PEM (leaf first). With `key`, the listener serves this pair only.
    package var certificate: String?
    package var key: String?
    /// Mozilla profile: intermediate (default) or modern.
    package var profile: TLSProfile
    package var minVersion: TLSVersion?
    /// TLS 1.2 cipher list override (OpenSSL syntax).
    package var ciphers: String?
    /// TLS 1.3 cipher suites override.
    package var cipherSuites: String?
    /// Key-exchange groups override.
    package var groups: String?
    package var alpn: [String]?
    /// Advertise HTTP/2 (ALPN h2, http/1.1).
    package var h2: Bool
    package var http2: HTTP2Config
    package var clientAuth: ClientAuthConfig?
    /// client_auth for particular SNI names (exact or `*.` wildcard), instead of the listener's.
    package var clientAuthByName: [String: ClientAuthConfig]
    package var sessionTickets: SessionTicketsConfig?
    package var hsts: HSTSConfig?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case certificate, key, profile, hsts
        case clientAuthByName = "client_auth_by_name"
        case sessionTickets = "session_tickets"
        case minVersion = "min_version"
        case ciphers
        case cipherSuites = "ciphersuites"
        case groups, alpn, h2, http2
        case clientAuth = "client_auth"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.certificate = try c.decodeRecorded(String.self, forKey: .certificate)
        self.key = try c.decodeRecorded(String.self, forKey: .key)
        self.profile = try c.decodeRecorded(Choice<TLSProfile>.self, forKey: .profile)?.value ?? .intermediate
        self.minVersion = try c.decodeRecorded(Choice<TLSVersion>.self, forKey: .minVersion)?.value
        self.ciphers = try c.decodeRecorded(String.self, forKey: .ciphers)
        self.cipherSuites = try c.decodeRecorded(String.self, forKey: .cipherSuites)
        self.groups = try c.decodeRecorded(String.self, forKey: .groups)
        self.alpn = try c.decodeRecorded([String].self, forKey: .alpn)
        self.h2 = try c.decodeRecorded(Bool.self, forKey: .h2) ?? false
        self.http2 = try c.decodeRecorded(HTTP2Config.self, forKey: .http2) ?? HTTP2Config()
        self.clientAuth = try c.decodeRecorded(ClientAuthConfig.self, forKey: .clientAuth)
        self.sessionTickets = try c.decodeRecorded(SessionTicketsConfig.self, forKey: .sessionTickets)
        self.clientAuthByName = try c.decodeRecorded([String: ClientAuthConfig].self, forKey: .clientAuthByName) ?? [:]
        self.hsts = try c.decodeRecorded(HSTSConfig.self, forKey: .hsts)
    }
}

/// HTTP Strict Transport Security (RFC 6797) on every response of a TLS listener.
package struct HSTSConfig: Decodable, Sendable {
    /// Mozilla's recommendation: two years.
    package var maxAge: Duration = .seconds(63_072_000)
    package var includeSubdomains = false
    package var preload = false

    enum CodingKeys: String, CodingKey, CaseIterable {
        case maxAge = "max_age"
        case includeSubdomains = "include_subdomains"
        case preload
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.maxAge = try c.decodeRecorded(Duration.self, forKey: .maxAge) ?? self.maxAge
        self.includeSubdomains = try c.decodeRecorded(Bool.self, forKey: .includeSubdomains) ?? false
        self.preload = try c.decodeRecorded(Bool.self, forKey: .preload) ?? false
    }

    /// The header's value.
    package var value: String {
        var value = "max-age=\(self.maxAge.nanoseconds / 1_000_000_000)"
        if self.includeSubdomains { value += "; includeSubDomains" }
        if self.preload { value += "; preload" }
        return value
    }
}

/// Session tickets: keys rotate on a schedule, or come from a key file several instances share.
package struct SessionTicketsConfig: Decodable, Sendable, Equatable {
    package var enabled = true
    /// Without key_file: a new key this often; the two before it still decrypt.
    package var rotateEvery: Duration = .seconds(12 * 3600)
    /// Base64 keys of 80 bytes, one per line; the first encrypts. Re-read when it changes.
    package var keyFile: String?
    /// TLS 1.3 tickets sent after each handshake (OpenSSL's NumTickets).
    package var numTickets = 1

    enum CodingKeys: String, CodingKey, CaseIterable {
        case enabled
        case rotateEvery = "rotate_every"
        case keyFile = "key_file"
        case numTickets = "num_tickets"
    }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.enabled = try c.decodeRecorded(Bool.self, forKey: .enabled) ?? true
        self.rotateEvery = try c.decodeRecorded(Duration.self, forKey: .rotateEvery) ?? self.rotateEvery
        self.keyFile = try c.decodeRecorded(String.self, forKey: .keyFile)
        self.numTickets = try c.decodeRecorded(Int.self, forKey: .numTickets) ?? self.numTickets
    }
}

/// Limits of HTTP/2 connections on a listener with `h2: true`.
package struct HTTP2Config: Decodable, Sendable {
    package var maxConcurrentStreams = 128
    /// Stream resets a client may cause per 30 s before the connection is closed (rapid reset, CVE-2023-44487).
    package var maxResetsPer30s = 200

    enum CodingKeys: String, CodingKey, CaseIterable {
        case maxConcurrentStreams = "max_concurrent_streams"
        case maxResetsPer30s = "max_resets_per_30s"
    }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.maxConcurrentStreams = try c.decodeRecorded(Int.self, forKey: .maxConcurrentStreams) ?? self.maxConcurrentStreams
        self.maxResetsPer30s = try c.decodeRecorded(Int.self, forKey: .maxResetsPer30s) ?? self.maxResetsPer30s
    }
}

/// Mutual TLS towards clients.
package struct ClientAuthConfig: Decodable, Sendable {
    package var caFile: String
    /// required (default) or optional.
    package var mode: ClientAuthMode
    package var allow: ClientAllowConfig?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case caFile = "ca_file"
        case mode, allow
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.caFile = try c.decode(String.self, forKey: .caFile)
        self.mode = try c.decodeRecorded(Choice<ClientAuthMode>.self, forKey: .mode)?.value ?? .required
        self.allow = try c.decodeRecorded(ClientAllowConfig.self, forKey: .allow)
    }
}

/// Which verified client certificates are accepted; any match admits (empty lists admit every verified certificate).
package struct ClientAllowConfig: Decodable, Sendable {
    package var dns: [String] = []
    package var uri: [String] = []
    package var cn: [String] = []
    package var spkiSHA256: [String] = []

    enum CodingKeys: String, CodingKey, CaseIterable {
        case dns, uri, cn
        case spkiSHA256 = "spki_sha256"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.dns = try c.decodeRecorded([String].self, forKey: .dns) ?? []
        self.uri = try c.decodeRecorded([String].self, forKey: .uri) ?? []
        self.cn = try c.decodeRecorded([String].self, forKey: .cn) ?? []
        self.spkiSHA256 = try c.decodeRecorded([String].self, forKey: .spkiSHA256) ?? []
    }
}

package struct UpstreamConfig: Decodable, Sendable {
    package var backends: [BackendConfig]
    package var tls: UpstreamTLSConfig?
    package var hostHeader: String?
    package var timeouts: UpstreamTimeoutsConfig
    package var pool: PoolConfig
    /// round_robin (default; weighted), weighted_round_robin (the same), random, least_conn, consistent_hash.
    package var balance: BalanceChoice
    /// For consistent_hash: client_ip (default), path, or header:NAME.
    package var hashKey: String?
    package var healthCheck: HealthCheckConfig?
    package var passiveHealth: PassiveHealthConfig
    package var maxConnectAttempts: Int
    package var tcpKeepalive: Bool
    /// The largest response head (status line and fields) taken from a backend.
    package var maxResponseHeadBytes: Int

    enum CodingKeys: String, CodingKey, CaseIterable {
        case backends, tls
        case maxResponseHeadBytes = "max_response_head_bytes"
        case hostHeader = "host_header"
        case timeouts, pool, balance
        case hashKey = "hash_key"
        case healthCheck = "health_check"
        case passiveHealth = "passive_health"
        case maxConnectAttempts = "max_connect_attempts"
        case tcpKeepalive = "tcp_keepalive"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.backends = try c.decode([BackendConfig].self, forKey: .backends)
        self.tls = try c.decodeRecorded(UpstreamTLSConfig.self, forKey: .tls)
        self.hostHeader = try c.decodeRecorded(String.self, forKey: .hostHeader)
        self.timeouts = try c.decodeRecorded(UpstreamTimeoutsConfig.self, forKey: .timeouts) ?? UpstreamTimeoutsConfig()
        self.pool = try c.decodeRecorded(PoolConfig.self, forKey: .pool) ?? PoolConfig()
        self.balance = try c.decodeRecorded(Choice<BalanceChoice>.self, forKey: .balance)?.value ?? .roundRobin
        self.hashKey = try c.decodeRecorded(String.self, forKey: .hashKey)
        self.healthCheck = try c.decodeRecorded(HealthCheckConfig.self, forKey: .healthCheck)
        self.passiveHealth = try c.decodeRecorded(PassiveHealthConfig.self, forKey: .passiveHealth) ?? PassiveHealthConfig()
        self.maxConnectAttempts = try c.decodeRecorded(Int.self, forKey: .maxConnectAttempts) ?? 3
        self.tcpKeepalive = try c.decodeRecorded(Bool.self, forKey: .tcpKeepalive) ?? true
        self.maxResponseHeadBytes = try c.decodeRecorded(Int.self, forKey: .maxResponseHeadBytes) ?? 64 * 1024
    }
}

/// A backend: `"host:port"` or `{ address: "host:port", weight: 2 }`.
package struct BackendConfig: Decodable, Sendable {
    package var address: String
    package var weight: Int

    enum CodingKeys: String, CodingKey, CaseIterable { case address, weight }

    package init(from decoder: any Decoder) throws {
        if let text = try? decoder.singleValueContainer().decode(String.self) {
            self.address = text
            self.weight = 1
            return
        }
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.address = try c.decode(String.self, forKey: .address)
        self.weight = try c.decodeRecorded(Int.self, forKey: .weight) ?? 1
    }
}

package struct HealthCheckConfig: Decodable, Sendable {
    package var kind = "http"
    package var path = "/"
    package var host: String?
    package var interval: Duration = .seconds(5)
    package var timeout: Duration = .seconds(2)
    package var healthyAfter = 2
    package var unhealthyAfter = 3
    /// `200-399` (default), `200`, or `200-204`.
    package var expectedStatus = "200-399"

    enum CodingKeys: String, CodingKey, CaseIterable {
        case kind, path, host, interval, timeout
        case healthyAfter = "healthy_after"
        case unhealthyAfter = "unhealthy_after"
        case expectedStatus = "expected_status"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.kind = try c.decodeRecorded(String.self, forKey: .kind) ?? self.kind
        self.path = try c.decodeRecorded(String.self, forKey: .path) ?? self.path
        self.host = try c.decodeRecorded(String.self, forKey: .host)
        self.interval = try c.decodeRecorded(Duration.self, forKey: .interval) ?? self.interval
        self.timeout = try c.decodeRecorded(Duration.self, forKey: .timeout) ?? self.timeout
        self.healthyAfter = try c.decodeRecorded(Int.self, forKey: .healthyAfter) ?? self.healthyAfter
        self.unhealthyAfter = try c.decodeRecorded(Int.self, forKey: .unhealthyAfter) ?? self.unhealthyAfter
        if let code = try? c.decodeIfPresent(Int.self, forKey: .expectedStatus) {
            self.expectedStatus = "\(code)"
        } else {
            self.expectedStatus = try c.decodeRecorded(String.self, forKey: .expectedStatus) ?? self.expectedStatus
        }
    }
}

package struct PassiveHealthConfig: Decodable, Sendable {
    /// Consecutive connect failures that eject a backend; 0 turns passive health off.
    package var maxFails = 3
    /// How long an ejected backend stays out.
    package var failTimeout: Duration = .seconds(10)

    enum CodingKeys: String, CodingKey, CaseIterable {
        case maxFails = "max_fails"
        case failTimeout = "fail_timeout"
    }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.maxFails = try c.decodeRecorded(Int.self, forKey: .maxFails) ?? self.maxFails
        self.failTimeout = try c.decodeRecorded(Duration.self, forKey: .failTimeout) ?? self.failTimeout
    }
}

package struct UpstreamTLSConfig: Decodable, Sendable {
    package var sni: String?
    package var verifyCert: Bool
    package var verifyHostname: Bool
    package var caFile: String?
    /// Further names the certificate may hold instead of `sni` (one name or a list).
    package var alternativeCN: [String] = []
    /// Accept a certificate without subject alternative names by its subject CN (legacy upstreams).
    package var allowCommonName = false
    package var clientCertificate: String?
    package var clientKey: String?
    /// The CA the client certificate's chain is checked against (status and alerts only).
    package var clientCAFile: String?
    package var minVersion: TLSVersion?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case sni
        case verifyCert = "verify_cert"
        case verifyHostname = "verify_hostname"
        case caFile = "ca_file"
        case alternativeCN = "alternative_cn"
        case allowCommonName = "allow_common_name"
        case clientCertificate = "client_certificate"
        case clientKey = "client_key"
        case clientCAFile = "client_ca_file"
        case minVersion = "min_version"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.sni = try c.decodeRecorded(String.self, forKey: .sni)
        self.verifyCert = try c.decodeRecorded(Bool.self, forKey: .verifyCert) ?? true
        self.verifyHostname = try c.decodeRecorded(Bool.self, forKey: .verifyHostname) ?? true
        self.caFile = try c.decodeRecorded(String.self, forKey: .caFile)
        if let names = try? c.decodeIfPresent([String].self, forKey: .alternativeCN) {
            self.alternativeCN = names
        } else if let name = try c.decodeRecorded(String.self, forKey: .alternativeCN) {
            self.alternativeCN = [name]
        }
        self.allowCommonName = try c.decodeRecorded(Bool.self, forKey: .allowCommonName) ?? false
        self.clientCertificate = try c.decodeRecorded(String.self, forKey: .clientCertificate)
        self.clientKey = try c.decodeRecorded(String.self, forKey: .clientKey)
        self.clientCAFile = try c.decodeRecorded(String.self, forKey: .clientCAFile)
        self.minVersion = try c.decodeRecorded(Choice<TLSVersion>.self, forKey: .minVersion)?.value
    }
}

package struct UpstreamTimeoutsConfig: Decodable, Sendable {
    package var connect: Duration = .seconds(5)
    package var totalConnection: Duration = .seconds(10)
    package var read: Duration = .seconds(60)
    package var write: Duration = .seconds(60)
    package var idle: Duration = .seconds(60)
    /// nginx's `proxy_next_upstream_timeout`; nil: twice the read timeout.
    package var nextUpstream: Duration?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case connect
        case totalConnection = "total_connection"
        case read, write, idle
        case nextUpstream = "next_upstream"
    }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.connect = try c.decodeRecorded(Duration.self, forKey: .connect) ?? self.connect
        self.totalConnection = try c.decodeRecorded(Duration.self, forKey: .totalConnection) ?? self.totalConnection
        self.read = try c.decodeRecorded(Duration.self, forKey: .read) ?? self.read
        self.write = try c.decodeRecorded(Duration.self, forKey: .write) ?? self.write
        self.idle = try c.decodeRecorded(Duration.self, forKey: .idle) ?? self.idle
        self.nextUpstream = try c.decodeRecorded(Duration.self, forKey: .nextUpstream)
    }
}

package struct PoolConfig: Decodable, Sendable {
    package var maxIdlePerBackend = 128

    enum CodingKeys: String, CodingKey, CaseIterable { case maxIdlePerBackend = "max_idle_per_backend" }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.maxIdlePerBackend = try c.decodeRecorded(Int.self, forKey: .maxIdlePerBackend) ?? self.maxIdlePerBackend
    }
}

package struct RouteConfig: Decodable, Sendable {
    package var listener: String?
    package var host: String?
    package var pathPrefix: String?
    package var upstream: String?
    package var redirect: RedirectConfig?
    package var root: String?
    package var maxRequestBodyBytes: Int?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case listener, host
        case pathPrefix = "path_prefix"
        case upstream, redirect, root
        case maxRequestBodyBytes = "max_request_body_bytes"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.listener = try c.decodeRecorded(String.self, forKey: .listener)
        self.host = try c.decodeRecorded(String.self, forKey: .host)
        self.pathPrefix = try c.decodeRecorded(String.self, forKey: .pathPrefix)
        self.upstream = try c.decodeRecorded(String.self, forKey: .upstream)
        self.redirect = try c.decodeRecorded(RedirectConfig.self, forKey: .redirect)
        self.root = try c.decodeRecorded(String.self, forKey: .root)
        self.maxRequestBodyBytes = try c.decodeRecorded(Int.self, forKey: .maxRequestBodyBytes)
    }
}

/// A route's `redirect`: the request's path and query at another scheme, host or port.
package struct RedirectConfig: Decodable, Sendable {
    package var scheme = RedirectScheme.https
    package var host: String?
    package var port: Int?
    package var status = 301

    enum CodingKeys: String, CodingKey, CaseIterable {
        case scheme, host, port, status
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.scheme = try c.decodeRecorded(Choice<RedirectScheme>.self, forKey: .scheme)?.value ?? self.scheme
        self.host = try c.decodeRecorded(String.self, forKey: .host)
        self.port = try c.decodeRecorded(Int.self, forKey: .port)
        self.status = try c.decodeRecorded(Int.self, forKey: .status) ?? self.status
    }
}

package struct CertificatesConfig: Decodable, Sendable {
    package var sources: [CertificateSourceConfig]
    package var defaultName: String?
    package var strictSNI: Bool
    package var watch: WatchConfig
    /// CA bundle the served chains are checked against (default: the system trust store).
    package var caFile: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case sources
        case defaultName = "default"
        case strictSNI = "strict_sni"
        case watch
        case caFile = "ca_file"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.sources = try c.decode([CertificateSourceConfig].self, forKey: .sources)
        self.defaultName = try c.decodeRecorded(String.self, forKey: .defaultName)
        self.strictSNI = try c.decodeRecorded(Bool.self, forKey: .strictSNI) ?? false
        self.watch = try c.decodeRecorded(WatchConfig.self, forKey: .watch) ?? WatchConfig()
        self.caFile = try c.decodeRecorded(String.self, forKey: .caFile)
    }
}

/// Expiry thresholds and how often the monitor repeats itself.
package struct ExpiryConfig: Decodable, Sendable {
    /// Warn once the time left is at most this fraction of the certificate's lifetime.
    package var warningRemaining = 0.30
    /// Critical once the time left is at most this fraction.
    package var criticalRemaining = 0.10
    /// Always warn when at most this much time is left.
    package var warningFloor: Duration = .seconds(24 * 3600)
    /// Always critical when at most this much time is left.
    package var criticalFloor: Duration = .seconds(12 * 3600)
    /// How often a state is logged again while it lasts.
    package var repeatWarning: Duration = .seconds(86_400)
    package var repeatCritical: Duration = .seconds(3_600)
    package var repeatExpired: Duration = .seconds(3_600)
    /// How often certificates are checked.
    package var checkInterval: Duration = .seconds(60)

    enum CodingKeys: String, CodingKey, CaseIterable {
        case warningRemaining = "warning_remaining"
        case criticalRemaining = "critical_remaining"
        case warningFloor = "warning_floor"
        case criticalFloor = "critical_floor"
        case repeatWarning = "repeat_warning"
        case repeatCritical = "repeat_critical"
        case repeatExpired = "repeat_expired"
        case checkInterval = "check_interval"
    }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.warningRemaining = try c.decodeRecorded(Double.self, forKey: .warningRemaining) ?? self.warningRemaining
        self.criticalRemaining = try c.decodeRecorded(Double.self, forKey: .criticalRemaining) ?? self.criticalRemaining
        self.warningFloor = try c.decodeRecorded(Duration.self, forKey: .warningFloor) ?? self.warningFloor
        self.criticalFloor = try c.decodeRecorded(Duration.self, forKey: .criticalFloor) ?? self.criticalFloor
        self.repeatWarning = try c.decodeRecorded(Duration.self, forKey: .repeatWarning) ?? self.repeatWarning
        self.repeatCritical = try c.decodeRecorded(Duration.self, forKey: .repeatCritical) ?? self.repeatCritical
        self.repeatExpired = try c.decodeRecorded(Duration.self, forKey: .repeatExpired) ?? self.repeatExpired
        self.checkInterval = try c.decodeRecorded(Duration.self, forKey: .checkInterval) ?? self.checkInterval
        guard (0...1).contains(self.warningRemaining), (0...1).contains(self.criticalRemaining), self.criticalRemaining <= self.warningRemaining else {
            throw ConfigError(path: keyPath(decoder.codingPath), message: "warning_remaining and critical_remaining are fractions (0 to 1) with critical <= warning")
        }
    }

    var policy: ExpiryPolicy {
        var policy = ExpiryPolicy()
        policy.warningRemaining = self.warningRemaining
        policy.criticalRemaining = self.criticalRemaining
        policy.warningFloorSeconds = self.warningFloor.nanoseconds / 1_000_000_000
        policy.criticalFloorSeconds = self.criticalFloor.nanoseconds / 1_000_000_000
        return policy
    }

    var monitor: ExpiryMonitor {
        var monitor = ExpiryMonitor()
        monitor.repeatSeconds = [
            .warning: self.repeatWarning.nanoseconds / 1_000_000_000,
            .critical: self.repeatCritical.nanoseconds / 1_000_000_000,
            .expired: self.repeatExpired.nanoseconds / 1_000_000_000,
            .notYetValid: self.repeatCritical.nanoseconds / 1_000_000_000,
        ]
        return monitor
    }
}

extension GatewayConfig {
    /// Reads and parses a configuration file; returns it with the directory relative paths resolve against.
    package static func load(path: String) throws -> (config: GatewayConfig, baseDirectory: String) {
        let text: String
        var st = stat()
        if stat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR {
            throw ConfigProblems(problems: ["\(path): is a directory, not a configuration file"])
        }
        do { text = try readTextFile(path) } catch { throw ConfigProblems(problems: ["\(path): \(error)"]) }
        if text.allSatisfy({ $0.isWhitespace }) {
            throw ConfigProblems(problems: ["\(path): the file is empty (a configuration is a YAML mapping with listeners, upstreams and routes)"])
        }
        var config: GatewayConfig
        do {
            var unknownKeys: [ConfigError]
            (config, unknownKeys) = try GatewayConfig.parseCollecting(yaml: text)
            // Reported with the gateway's own checks (`Gateway.prepare`), which still run.
            config.decodingProblems = unknownKeys.map { "\(path): \($0)" }
        } catch let errors as ConfigErrors {
            throw ConfigProblems(problems: errors.errors.map { $0.inFile(path) })
        } catch let error as ConfigError {
            throw ConfigProblems(problems: [error.inFile(path)])
        } catch {
            throw ConfigProblems(problems: ["\(path): \(error)"])
        }
        guard let slash = path.lastIndex(of: "/") else { return (config, ".") }
        let base = String(path[..<slash])
        return (config, base.isEmpty ? "/" : base)
    }
}

/// `path` as written in the configuration, resolved against the configuration's directory.
func resolvePath(_ path: String, base: String) -> String {
    path.hasPrefix("/") || base == "." ? path : base + "/" + path
}

package struct CertificateSourceConfig: Decodable, Sendable {
    /// The source this entry describes; an explicit pair without `name` is named after its certificate file.
    func source(base: String) -> CertificateSource? {
        if let path = self.certbot { return .certbot(resolvePath(path, base: base)) }
        if let path = self.kubernetes { return .kubernetes(resolvePath(path, base: base)) }
        if let path = self.directory { return .directory(resolvePath(path, base: base)) }
        guard let cert = self.certificate, let key = self.key else { return nil }
        let name = self.name ?? String(cert.split(separator: "/").last ?? "pair").replacingSuffix(".pem").replacingSuffix(".crt")
        return .pair(name: name, certificate: resolvePath(cert, base: base), key: resolvePath(key, base: base))
    }

    package var certbot: String?
    package var kubernetes: String?
    package var directory: String?
    package var certificate: String?
    package var key: String?
    package var name: String?

    enum CodingKeys: String, CodingKey, CaseIterable { case certbot, kubernetes, directory, certificate, key, name }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.certbot = try c.decodeRecorded(String.self, forKey: .certbot)
        self.kubernetes = try c.decodeRecorded(String.self, forKey: .kubernetes)
        self.directory = try c.decodeRecorded(String.self, forKey: .directory)
        self.certificate = try c.decodeRecorded(String.self, forKey: .certificate)
        self.key = try c.decodeRecorded(String.self, forKey: .key)
        self.name = try c.decodeRecorded(String.self, forKey: .name)
        let kinds = [self.certbot, self.kubernetes, self.directory, self.certificate].compactMap { $0 }.count
        guard kinds == 1 else {
            throw ConfigError(path: keyPath(decoder.codingPath), message: "a source names exactly one of certbot, kubernetes, directory, or certificate (with key)")
        }
        if self.certificate != nil, self.key == nil {
            throw ConfigError(path: keyPath(decoder.codingPath + [CodingKeys.key]), message: "required with 'certificate'")
        }
    }
}

package struct WatchConfig: Decodable, Sendable {
    /// Quiet time after the last file event before re-reading.
    package var debounce: Duration = .milliseconds(200)
    /// Full rescan period, for file systems without inotify and lost events.
    package var rescanInterval: Duration = .seconds(60)
    /// Serve a pair that validates as soon as a file is complete, before the debounce.
    package var immediate = true

    enum CodingKeys: String, CodingKey, CaseIterable {
        case debounce
        case rescanInterval = "rescan_interval"
        case immediate
    }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.debounce = try c.decodeRecorded(Duration.self, forKey: .debounce) ?? self.debounce
        self.rescanInterval = try c.decodeRecorded(Duration.self, forKey: .rescanInterval) ?? self.rescanInterval
        self.immediate = try c.decodeRecorded(Bool.self, forKey: .immediate) ?? true
    }
}

package struct AdminConfig: Decodable, Sendable {
    package var address: String = "127.0.0.1:9901"
    /// Binding the admin listener beyond loopback needs this explicit opt-in.
    package var allowNonLoopback = false
    /// Host names the admin endpoint answers to besides IP addresses and `localhost`.
    package var allowedHosts: [String] = []
    /// The least time between two reloads asked for by `POST /reload`; sooner is 429.
    package var reloadMinInterval: Duration = .seconds(1)

    enum CodingKeys: String, CodingKey, CaseIterable {
        case address
        case allowNonLoopback = "allow_non_loopback"
        case allowedHosts = "allowed_hosts"
        case reloadMinInterval = "reload_min_interval"
    }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.address = try c.decodeRecorded(String.self, forKey: .address) ?? self.address
        self.allowNonLoopback = try c.decodeRecorded(Bool.self, forKey: .allowNonLoopback) ?? false
        self.allowedHosts = try c.decodeRecorded([String].self, forKey: .allowedHosts) ?? []
        self.reloadMinInterval = try c.decodeRecorded(Duration.self, forKey: .reloadMinInterval) ?? self.reloadMinInterval
    }
}
