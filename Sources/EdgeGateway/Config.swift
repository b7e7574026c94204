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
    /// OCSP stapling of served certificates whose AIA names a responder.
    package var ocsp: OCSPConfig
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
        case ocsp
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
        self.ocsp = try c.decodeRecorded(OCSPConfig.self, forKey: .ocsp) ?? OCSPConfig()
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

/// OCSP stapling (`ocsp:`): on by default for every served certificate whose Authority
/// Information Access names an OCSP responder (certificates without one are left alone).
package struct OCSPConfig: Decodable, Sendable {
    package var stapling = true
    /// A directory (relative to the configuration file) where verified responses are kept,
    /// so that a restart staples at once without asking the responder.
    package var cacheDir: String?
    /// How long one request to a responder may take.
    package var responderTimeout: Duration = .seconds(10)

    enum CodingKeys: String, CodingKey, CaseIterable {
        case stapling
        case cacheDir = "cache_dir"
        case responderTimeout = "responder_timeout"
    }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.stapling = try c.decodeRecorded(Bool.self, forKey: .stapling) ?? true
        self.cacheDir = try c.decodeRecorded(String.self, forKey: .cacheDir)
        self.responderTimeout = try c.decodeRecorded(Duration.self, forKey: .responderTimeout) ?? self.responderTimeout
        guard (1_000_000_000...60_000_000_000).contains(self.responderTimeout.nanoseconds) else {
            throw ConfigError(path: keyPath(decoder.codingPath + [CodingKeys.responderTimeout]), message: "between 1s and 60s")
        }
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

package struct AdminConfig: Decodable, Sendable {
    package var address: String = "127.0.0.1:9901"
    /// Binding the admin listener beyond loopback needs this explicit opt-in.
    package var allowNonLoopback = false
    /// Host names the admin endpoint answers to besides IP addresses and `localhost`.
    package var allowedHosts: [String] = []
    /// The least time between two reloads asked for by `POST /reload`; sooner is 429.
    package var reloadMinInterval: Duration = .seconds(1)
    package var timeouts = AdminTimeouts()

    enum CodingKeys: String, CodingKey, CaseIterable {
        case address, timeouts
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
        self.timeouts = try c.decodeRecorded(AdminTimeouts.self, forKey: .timeouts) ?? self.timeouts
    }
}

/// How long an admin connection may take to send a request (see `AdminConnectionDeadline`).
package struct AdminTimeouts: Decodable, Sendable {
    /// A connection's first request must be complete within this of its start.
    package var header: Duration = .seconds(30)
    /// A kept-alive connection's next request must be complete within this of the previous response.
    package var idle: Duration = .seconds(75)

    enum CodingKeys: String, CodingKey, CaseIterable { case header, idle }

    init() {}

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.header = try c.decodeRecorded(Duration.self, forKey: .header) ?? self.header
        self.idle = try c.decodeRecorded(Duration.self, forKey: .idle) ?? self.idle
    }
}
