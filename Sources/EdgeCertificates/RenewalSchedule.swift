/// Why a lineage is expected to be renewed when it is: the renewing agent's own rule.
///
/// An ACME Renewal Information window (RFC 9773, the CA's suggested renewal window) would be
/// one more case, its window's end taking the place of the computed time; the Debian certbot
/// and pebble have none yet, so nothing reads one.
package enum RenewalBasis: Sendable, Hashable {
    /// certbot's `renewal/<name>.conf` sets `renew_before_expiry`.
    case certbotSetting(file: String, value: String)
    /// The file sets none: certbot's default (`CertbotRenewalConfig.defaultRenewBefore`).
    case certbotDefault(file: String, version: String?)
    /// The file could not be read, or certbot cannot parse it (it then skips the lineage):
    /// when certbot renews is not known.
    case certbotUnknown(file: String)
    /// No such file: `certbot renew` on this host does not renew the lineage.
    case certbotMissing(file: String)
    /// cert-manager's default for a Kubernetes secret: two thirds through the lifetime.
    case certManagerDefault
    /// cert-manager's setting (`key=value`) as the pod's annotations file has it.
    case certManagerAnnotation(file: String, setting: String)
    /// `renew_before` on the source in the gateway's configuration.
    case configured(seconds: Int64)

    /// Nothing says when the agent renews: no time is expected (or published), and the
    /// lineage is never overdue on a guess; the expiry states still warn.
    package var isUnknown: Bool {
        switch self {
        case .certbotUnknown, .certbotMissing: return true
        default: return false
        }
    }

    /// Who renews: named in the warning.
    package var agent: String {
        switch self {
        case .certbotSetting, .certbotDefault, .certbotUnknown, .certbotMissing: return "certbot"
        case .certManagerDefault, .certManagerAnnotation: return "cert-manager"
        case .configured: return "the renewal job"
        }
    }

    package var description: String {
        switch self {
        case .certbotSetting(let file, let value): return "renew_before_expiry = \(value) in \(file)"
        case .certbotDefault(let file, let version):
            let rule = CertbotRenewalConfig.isVersion4OrLater(version)
                ? "a third of the lifetime left (half under 10 days)"
                : "30 days before expiry, or a third of the lifetime left if certbot 4 runs it now, whichever is later"
            return "certbot's default for a file written by certbot \(version ?? "(version unknown)"): \(rule) (\(file) sets no renew_before_expiry)"
        case .certbotUnknown(let file): return "\(file) could not be read or parsed"
        case .certbotMissing(let file): return "\(file) does not exist on this host"
        case .certManagerDefault: return "cert-manager's default, two thirds through the lifetime (renew_before or annotations_file on the source sets a Certificate's spec.renewBefore)"
        case .certManagerAnnotation(let file, let setting): return "\(setting) in \(file)"
        case .configured(let seconds): return "renew_before: \(humanDuration(seconds)) in the configuration"
        }
    }
}

/// Where a lineage is against its expected renewal.
package enum RenewalState: String, Sendable, CaseIterable {
    /// The renewal point has not come.
    case scheduled
    /// Past the renewal point, within the grace: the agent's next run should renew.
    case due
    /// Past the renewal point by more than the grace, and nothing newer is served.
    case overdue
    /// The agent will not renew it (certbot's `autorenew = False`).
    case disabled
    /// The agent's settings could not be read: never called overdue on a guess.
    case unknown
}

/// When a served lineage should have been renewed, and whether it is late.
package struct RenewalExpectation: Sendable, Hashable {
    package var basis: RenewalBasis
    /// When the agent should renew (Unix time): never before the certificate's not-before.
    package var expectedAt: Int64
    package var graceSeconds: Int64
    /// The served certificate's not-before: when the last renewal happened.
    package var lastRenewedAt: Int64
    package var state: RenewalState
    /// Why the agent will not renew as expected, or why its settings could not be read.
    package var problem: String?
    /// A newer version on disk that the gateway rejected (the reason): the agent did renew.
    package var rejectedVersion: String?

    /// Seconds past the renewal point (0 before it).
    package func lateSeconds(now: Int64) -> Int64 { max(0, now - self.expectedAt) }

    /// The warning an operator acts on: who should have renewed what, when, and what to run.
    package func message(lineage: String, now: Int64) -> String {
        let late = humanDuration(self.lateSeconds(now: now))
        let last = humanDuration(max(0, now - self.lastRenewedAt))
        if let rejected = self.rejectedVersion {
            return "\(lineage) was renewed on disk but the new version was rejected (\(rejected)); the certificate served was issued \(last) ago "
                + "and is \(late) past its renewal"
        }
        switch self.basis {
        case .certbotSetting, .certbotDefault, .certbotUnknown, .certbotMissing:
            return "certbot should have renewed \(lineage) \(late) ago; last renewal \(last) ago; check `certbot renew --dry-run` and the timer"
        case .certManagerDefault, .certManagerAnnotation:
            return "cert-manager should have renewed \(lineage) \(late) ago; last renewal \(last) ago; check `kubectl describe certificate` and its CertificateRequests"
        case .configured:
            return "\(lineage) should have been renewed \(late) ago (renew_before); last renewal \(last) ago; check the job that renews it"
        }
    }
}

/// How long past its renewal point a lineage may go before it is overdue, and the
/// renewal points the configuration sets.
package struct RenewalPolicy: Sendable, Hashable {
    /// The longest grace after the renewal point (`expiry.renewal_grace`).
    package var graceSeconds: Int64 = 2 * 86_400
    /// For short-lived certificates, this fraction of the lifetime when that is shorter...
    package var graceLifetimeFraction = 0.10
    /// ...but not under 26 hours: Debian's certbot timer runs at 00:00 and 12:00 with up to
    /// 12 hours of random delay, so two runs can be 24 hours apart.
    package static let timerGapSeconds: Int64 = 26 * 3600
    /// `renew_before` per configured source; 0 takes the source out of the watch.
    package var renewBefore: [CertificateSource: Int64] = [:]
    /// `annotations_file` per Kubernetes source: the downward API file that may carry
    /// cert-manager's renewal setting (`PodAnnotations`).
    package var annotationFiles: [CertificateSource: String] = [:]

    package init() {}

    /// The grace for a certificate of `lifetime` seconds expected to renew `untilExpiry`
    /// seconds before it expires: never more than half that, so that a late renewal is
    /// overdue before the certificate expires.
    package func grace(lifetime: Int64, untilExpiry: Int64) -> Int64 {
        let fraction = max(Int64(self.graceLifetimeFraction * Double(max(0, lifetime))), Self.timerGapSeconds)
        return max(0, min(self.graceSeconds, fraction, untilExpiry / 2))
    }

    /// The expectation for one lineage's served leaf; nil when nothing is known to renew it
    /// (a plain pair or directory without `renew_before`, or `renew_before: 0s`).
    /// `rejectedVersion`: why the newest version on disk was rejected, if it was.
    package func expectation(source: CertificateSource, lineage: String, notBefore: Int64, notAfter: Int64, rejectedVersion: String?,
                             now: Int64, files: CertbotRenewalFiles = .shared) -> RenewalExpectation? {
        let lifetime = max(1, notAfter - notBefore)
        var basis: RenewalBasis
        var renewBefore: Int64
        var problem: String?
        var disabled = false
        if let configured = self.renewBefore[source] {
            guard configured > 0 else { return nil }
            basis = .configured(seconds: configured)
            renewBefore = configured
        } else {
            switch source {
            case .certbot(let path):
                let live = certbotLiveDirectory(path)
                let file = CertbotRenewalConfig.path(liveDirectory: live, lineage: lineage)
                switch files.reading(liveDirectory: live, lineage: lineage) {
                case .read(let config):
                    if let text = config.renewBeforeText {
                        basis = .certbotSetting(file: file, value: text)
                        renewBefore = config.renewBeforeSeconds ?? 0
                    } else {
                        basis = .certbotDefault(file: file, version: config.version)
                        renewBefore = config.defaultRenewBefore(lifetime: lifetime)
                    }
                    problem = config.problem
                    // A file certbot cannot parse is skipped by every run: it renews nothing,
                    // and no time is expected.
                    if problem?.hasPrefix("line ") == true { basis = .certbotUnknown(file: file) }
                    disabled = !config.autorenew
                case .missing:
                    basis = .certbotMissing(file: file)
                    renewBefore = 0
                    problem = "\(file): no such file here: `certbot renew` does not renew this lineage on this host (renew_before: 0s on the source if it is renewed elsewhere)"
                case .unreadable(_, let reason):
                    basis = .certbotUnknown(file: file)
                    renewBefore = 0
                    problem = "\(file): \(reason): when certbot renews is not known (the gateway's group needs read access to renewal/, as the deploy hook gives it)"
                }
            case .kubernetes:
                basis = .certManagerDefault
                renewBefore = lifetime / 3
                if let file = self.annotationFiles[source] {
                    switch files.annotations(path: file) {
                    case .read(let annotations):
                        let setting = annotations.renewBefore(lifetime: lifetime)
                        renewBefore = setting.seconds
                        if let name = setting.setting { basis = .certManagerAnnotation(file: file, setting: name) }
                        problem = setting.problem.map { "\(file): \($0)" }
                    case .missing:
                        problem = "\(file): no such file: the downward API volume that should carry the pod's annotations is not mounted there"
                    case .unreadable(_, let reason):
                        problem = "\(file): \(reason)"
                    }
                }
            case .pair, .directory:
                return nil
            }
        }
        var expectation = Self.expectation(basis: basis, renewBefore: renewBefore, disabled: disabled, problem: problem,
                                           notBefore: notBefore, notAfter: notAfter, policy: self, now: now)
        expectation.rejectedVersion = rejectedVersion
        return expectation
    }

    /// The pure rule: the agent renews once expiry is `renewBefore` away, or at its first
    /// run after issuance when that is longer than the lifetime.
    package static func expectation(basis: RenewalBasis, renewBefore: Int64, disabled: Bool, problem: String?,
                                    notBefore: Int64, notAfter: Int64, policy: RenewalPolicy, now: Int64) -> RenewalExpectation {
        let expectedAt = max(notBefore, notAfter - renewBefore)
        let grace = policy.grace(lifetime: max(1, notAfter - notBefore), untilExpiry: notAfter - expectedAt)
        let state: RenewalState
        if basis.isUnknown {
            state = .unknown
        } else if disabled {
            state = .disabled
        } else if now < expectedAt {
            state = .scheduled
        } else if now < expectedAt + grace {
            state = .due
        } else {
            state = .overdue
        }
        return RenewalExpectation(basis: basis, expectedAt: expectedAt, graceSeconds: grace, lastRenewedAt: notBefore, state: state, problem: problem)
    }
}
