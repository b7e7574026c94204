import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Yams

#if canImport(Glibc)
import Glibc
#endif

/// The `listeners` section: addresses, timeouts, TLS (certificates, tickets, HTTP/2, client
/// authentication) and limits of each listener.
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
    /// PEM CRLs the client's certificate is checked against; watched like `ca_file`.
    package var crlFile: String?
    package var crlCheck: CRLCheck
    /// Refuse clients while a CRL is past its next update, instead of checking them against it.
    package var crlStrict: Bool

    enum CodingKeys: String, CodingKey, CaseIterable {
        case caFile = "ca_file"
        case mode, allow
        case crlFile = "crl_file"
        case crlCheck = "crl_check"
        case crlStrict = "crl_strict"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.caFile = try c.decode(String.self, forKey: .caFile)
        self.mode = try c.decodeRecorded(Choice<ClientAuthMode>.self, forKey: .mode)?.value ?? .required
        self.allow = try c.decodeRecorded(ClientAllowConfig.self, forKey: .allow)
        self.crlFile = try c.decodeRecorded(String.self, forKey: .crlFile)
        self.crlCheck = try c.decodeRecorded(Choice<CRLCheck>.self, forKey: .crlCheck)?.value ?? .leaf
        self.crlStrict = try c.decodeRecorded(Bool.self, forKey: .crlStrict) ?? false
        if self.crlFile == nil, c.contains(.crlCheck) || c.contains(.crlStrict) {
            throw ConfigError(path: keyPath(decoder.codingPath + [CodingKeys.crlFile]), message: "required with crl_check and crl_strict")
        }
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
