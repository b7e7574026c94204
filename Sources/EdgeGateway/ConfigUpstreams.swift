import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Yams

#if canImport(Glibc)
import Glibc
#endif

/// The `upstreams` and `routes` sections: backends, health checks, upstream TLS (Pingora's
/// peer options), timeouts, the keep-alive pool, and where each request goes.
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
    /// http1 (default), h2 (over the group's TLS, agreed by ALPN) or h2c (plain, prior knowledge).
    package var upstreamProtocol: UpstreamProtocol

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
        case upstreamProtocol = "protocol"
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
        self.upstreamProtocol = try c.decodeRecorded(Choice<UpstreamProtocol>.self, forKey: .upstreamProtocol)?.value ?? .http1
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
    /// A grpc check's service name (empty: the server as a whole).
    package var service: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case kind, path, host, interval, timeout, service
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
        self.service = try c.decodeRecorded(String.self, forKey: .service)
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
    /// PEM CRLs the upstream's certificate is checked against; watched (checked every second).
    package var crlFile: String?
    package var crlCheck: CRLCheck = .leaf
    /// Refuse the upstream while a CRL is past its next update, instead of checking against it.
    package var crlStrict = false

    enum CodingKeys: String, CodingKey, CaseIterable {
        case crlFile = "crl_file"
        case crlCheck = "crl_check"
        case crlStrict = "crl_strict"
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
        self.crlFile = try c.decodeRecorded(String.self, forKey: .crlFile)
        self.crlCheck = try c.decodeRecorded(Choice<CRLCheck>.self, forKey: .crlCheck)?.value ?? .leaf
        self.crlStrict = try c.decodeRecorded(Bool.self, forKey: .crlStrict) ?? false
        if self.crlFile == nil, c.contains(.crlCheck) || c.contains(.crlStrict) {
            throw ConfigError(path: keyPath(decoder.codingPath + [CodingKeys.crlFile]), message: "required with crl_check and crl_strict")
        }
        if self.crlFile != nil, !self.verifyCert {
            throw ConfigError(path: keyPath(decoder.codingPath + [CodingKeys.crlFile]), message: "checks the upstream's certificate, which verify_cert: false does not verify")
        }
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
    /// HTTP/2: streams in flight on one connection at most (the upstream's own
    /// SETTINGS_MAX_CONCURRENT_STREAMS when lower).
    package var maxStreamsPerConnection = 100
    /// HTTP/2: connections per backend (and event loop) at most; 0 is no limit.
    package var maxConnectionsPerBackend = 0
    /// Requests one connection serves at most (0: no limit).
    package var maxRequestsPerConnection = 0
    /// HTTP/2: PING an idle connection this often (none when absent), and close it when
    /// nothing comes back within `pingTimeout` (5 s when absent; Envoy's
    /// `connection_keepalive`).
    package var pingInterval: Duration?
    package var pingTimeout: Duration?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case maxIdlePerBackend = "max_idle_per_backend"
        case maxStreamsPerConnection = "max_streams_per_connection"
        case maxConnectionsPerBackend = "max_connections_per_backend"
        case maxRequestsPerConnection = "max_requests_per_connection"
        case pingInterval = "ping_interval"
        case pingTimeout = "ping_timeout"
    }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.maxIdlePerBackend = try c.decodeRecorded(Int.self, forKey: .maxIdlePerBackend) ?? self.maxIdlePerBackend
        self.maxStreamsPerConnection = try c.decodeRecorded(Int.self, forKey: .maxStreamsPerConnection) ?? self.maxStreamsPerConnection
        self.maxConnectionsPerBackend = try c.decodeRecorded(Int.self, forKey: .maxConnectionsPerBackend) ?? self.maxConnectionsPerBackend
        self.maxRequestsPerConnection = try c.decodeRecorded(Int.self, forKey: .maxRequestsPerConnection) ?? self.maxRequestsPerConnection
        self.pingInterval = try c.decodeRecorded(Duration.self, forKey: .pingInterval)
        self.pingTimeout = try c.decodeRecorded(Duration.self, forKey: .pingTimeout)
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
