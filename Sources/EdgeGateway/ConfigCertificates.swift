import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Yams

#if canImport(Glibc)
import Glibc
#endif

/// The `certificates` section: where certificates come from, how they are watched, and
/// when their expiry warns.
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
    /// How long past its renewal point a lineage may go before it is overdue...
    package var renewalGrace: Duration = .seconds(2 * 86_400)
    /// ...or this fraction of its lifetime, when that is shorter (short-lived certificates).
    package var renewalGraceLifetime = 0.10

    enum CodingKeys: String, CodingKey, CaseIterable {
        case warningRemaining = "warning_remaining"
        case criticalRemaining = "critical_remaining"
        case warningFloor = "warning_floor"
        case criticalFloor = "critical_floor"
        case repeatWarning = "repeat_warning"
        case repeatCritical = "repeat_critical"
        case repeatExpired = "repeat_expired"
        case checkInterval = "check_interval"
        case renewalGrace = "renewal_grace"
        case renewalGraceLifetime = "renewal_grace_lifetime"
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
        self.renewalGrace = try c.decodeRecorded(Duration.self, forKey: .renewalGrace) ?? self.renewalGrace
        self.renewalGraceLifetime = try c.decodeRecorded(Double.self, forKey: .renewalGraceLifetime) ?? self.renewalGraceLifetime
        guard (0...1).contains(self.renewalGraceLifetime) else {
            throw ConfigError(path: keyPath(decoder.codingPath + [CodingKeys.renewalGraceLifetime]), message: "a fraction of the lifetime (0 to 1)")
        }
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
        policy.renewal.graceSeconds = self.renewalGrace.nanoseconds / 1_000_000_000
        policy.renewal.graceLifetimeFraction = self.renewalGraceLifetime
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
    /// When the source's renewing agent renews: this long before expiry (cert-manager's
    /// `spec.renewBefore` for a Kubernetes secret; any agent's for a directory or pair).
    /// A certbot source takes it from certbot's own renewal file instead.
    package var renewBefore: Duration?
    /// For a Kubernetes secret: the downward API file of the pod's annotations, read for
    /// cert-manager's `cert-manager.io/renew-before` (or `-percentage`) at every check.
    package var annotationsFile: String?

    enum CodingKeys: String, CodingKey, CaseIterable {
        case certbot, kubernetes, directory, certificate, key, name
        case renewBefore = "renew_before"
        case annotationsFile = "annotations_file"
    }

    package init(from decoder: any Decoder) throws {
        try decoder.rejectUnknownKeys(CodingKeys.self)
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.certbot = try c.decodeRecorded(String.self, forKey: .certbot)
        self.kubernetes = try c.decodeRecorded(String.self, forKey: .kubernetes)
        self.directory = try c.decodeRecorded(String.self, forKey: .directory)
        self.certificate = try c.decodeRecorded(String.self, forKey: .certificate)
        self.key = try c.decodeRecorded(String.self, forKey: .key)
        self.name = try c.decodeRecorded(String.self, forKey: .name)
        self.renewBefore = try c.decodeRecorded(Duration.self, forKey: .renewBefore)
        self.annotationsFile = try c.decodeRecorded(String.self, forKey: .annotationsFile)
        if self.annotationsFile != nil {
            guard self.kubernetes != nil else {
                throw ConfigError(path: keyPath(decoder.codingPath + [CodingKeys.annotationsFile]),
                                  message: "only for a kubernetes source: it names the pod's annotations, where cert-manager's renewal setting may be")
            }
            guard self.renewBefore == nil else {
                throw ConfigError(path: keyPath(decoder.codingPath + [CodingKeys.annotationsFile]),
                                  message: "set together with renew_before, which would decide: keep one")
            }
        }
        // 0s takes any source out of the watch (a host that gets certbot's live/ and archive/
        // from elsewhere, without renewal/); another value is certbot's own file's to set.
        if self.certbot != nil, let renewBefore = self.renewBefore, renewBefore.nanoseconds != 0 {
            throw ConfigError(path: keyPath(decoder.codingPath + [CodingKeys.renewBefore]),
                              message: "not for a certbot source: certbot renews by renew_before_expiry in its renewal/<name>.conf, which the gateway reads (0s turns the watch off)")
        }
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

extension GatewayConfig {
    /// The expiry thresholds with the renewal points the sources set (`renew_before`,
    /// `annotations_file`), keyed by each source as `base` resolves it.
    func expiryPolicy(base: String) -> ExpiryPolicy {
        var policy = self.expiry.policy
        for source in self.certificates?.sources ?? [] {
            guard let resolved = source.source(base: base) else { continue }
            if let renewBefore = source.renewBefore { policy.renewal.renewBefore[resolved] = renewBefore.nanoseconds / 1_000_000_000 }
            if let file = source.annotationsFile { policy.renewal.annotationFiles[resolved] = resolvePath(file, base: base) }
        }
        return policy
    }
}
