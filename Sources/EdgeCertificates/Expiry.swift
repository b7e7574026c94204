import EdgeTLS
import Logging

/// How close to expiry a certificate is.
package enum CertificateState: String, Sendable, CaseIterable, Comparable {
    case ok
    case warning
    case critical
    case expired
    case notYetValid = "not_yet_valid"

    var severity: Int {
        switch self {
        case .ok: return 0
        case .warning: return 1
        case .critical: return 2
        case .notYetValid: return 3
        case .expired: return 4
        }
    }

    package static func < (lhs: CertificateState, rhs: CertificateState) -> Bool { lhs.severity < rhs.severity }
}

/// Expiry thresholds relative to each certificate's own lifetime, with absolute floors.
///
/// A certificate is `warning` once the time left is at most `warningRemaining` of its
/// lifetime (or `warningFloor`, whichever is longer), `critical` at `criticalRemaining`
/// (or `criticalFloor`). The defaults make a 90-day certificate warn at 27 days left
/// and go critical at 9, and a 6-day certificate warn at 43 hours and go critical at 14.4.
package struct ExpiryPolicy: Sendable, Hashable {
    package var warningRemaining = 0.30
    package var criticalRemaining = 0.10
    package var warningFloorSeconds: Int64 = 24 * 3600
    package var criticalFloorSeconds: Int64 = 12 * 3600
    /// When each lineage's renewing agent should have renewed it (the renewal watchdog).
    package var renewal = RenewalPolicy()

    package init() {}

    package func state(notBefore: Int64, notAfter: Int64, now: Int64) -> CertificateState {
        if now < notBefore { return .notYetValid }
        if now >= notAfter { return .expired }
        let lifetime = Double(max(1, notAfter - notBefore))
        let remaining = Double(notAfter - now)
        if remaining <= max(self.criticalRemaining * lifetime, Double(self.criticalFloorSeconds)) { return .critical }
        if remaining <= max(self.warningRemaining * lifetime, Double(self.warningFloorSeconds)) { return .warning }
        return .ok
    }

    /// The worst state over a served chain (an expiring intermediate counts).
    package func state(of chain: [X509Certificate], now: Int64) -> CertificateState {
        chain.map { self.state(notBefore: $0.notBefore, notAfter: $0.notAfter, now: now) }.max() ?? .ok
    }
}

/// Decides which expiry lines to log: at startup, on every state change, then
/// once per repeat interval of the current state, never once per check.
///
/// A pure state machine: the caller passes the time, so tests inject a clock.
package struct ExpiryMonitor: Sendable {
    package struct Observation: Sendable {
        package var name: String
        package var serial: String
        package var state: CertificateState
        package var notAfter: Int64
        package init(name: String, serial: String, state: CertificateState, notAfter: Int64) {
            self.name = name
            self.serial = serial
            self.state = state
            self.notAfter = notAfter
        }
    }

    package struct Line: Sendable, Equatable {
        package var level: Logger.Level
        package var message: String
        package var name: String
        package var state: CertificateState
        package var secondsRemaining: Int64
        package var changed: Bool
    }

    /// Seconds between repeated lines per state (`ok` is logged on change only).
    package var repeatSeconds: [CertificateState: Int64] = [.warning: 86_400, .critical: 3_600, .expired: 3_600, .notYetValid: 3_600]
    private var last: [String: (serial: String, state: CertificateState, loggedAt: Int64)] = [:]
    private var chainReported: [String: String] = [:]

    /// True once per lineage version whose chain does not verify.
    package mutating func shouldReportChain(_ name: String, serial: String) -> Bool {
        guard self.chainReported[name] != serial else { return false }
        self.chainReported[name] = serial
        return true
    }

    package init() {}

    package mutating func evaluate(_ observations: [Observation], now: Int64) -> [Line] {
        var lines: [Line] = []
        var seen = Set<String>()
        for o in observations.sorted(by: { $0.name < $1.name }) {
            seen.insert(o.name)
            let previous = self.last[o.name]
            let changed = previous == nil || previous!.state != o.state || previous!.serial != o.serial
            var due = changed
            if !changed, o.state != .ok, let interval = self.repeatSeconds[o.state], now - previous!.loggedAt >= interval {
                due = true
            }
            guard due else { continue }
            self.last[o.name] = (o.serial, o.state, now)
            let remaining = max(0, o.notAfter - now)
            let level: Logger.Level
            let message: String
            switch o.state {
            case .ok:
                level = .info
                message = "certificate valid"
            case .warning:
                level = .warning
                message = "certificate expires soon; is renewal running?"
            case .critical:
                level = .error
                message = "certificate expires very soon; renewal is failing or late"
            case .expired:
                level = .error
                message = "certificate has EXPIRED and is still being served"
            case .notYetValid:
                level = .error
                message = "certificate is not yet valid (clock skew or early deployment)"
            }
            lines.append(Line(level: level, message: message, name: o.name, state: o.state, secondsRemaining: remaining, changed: changed))
        }
        for name in self.last.keys where !seen.contains(name) { self.last[name] = nil }
        return lines
    }
}

/// Human form of a number of seconds: `27d 3h`, `43h 12m`, `5m 2s`.
package func humanDuration(_ seconds: Int64) -> String {
    let s = max(0, seconds)
    let d = s / 86_400, h = (s % 86_400) / 3_600, m = (s % 3_600) / 60
    if d > 0 { return "\(d)d \(h)h" }
    if h > 0 { return "\(h)h \(m)m" }
    return "\(m)m \(s % 60)s"
}
