#if canImport(Glibc)
import Glibc
#endif

/// A Unix time as the status views write it in a sentence (`2026-12-07 07:20:17 UTC`).
func utcText(_ seconds: Int64) -> String {
    var time = time_t(seconds)
    var parts = tm()
    gmtime_r(&time, &parts)
    var buffer = [CChar](repeating: 0, count: 32)
    let count = strftime(&buffer, buffer.count, "%Y-%m-%d %H:%M:%S UTC", &parts)
    return String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// What the gateway knows about stapling one leaf certificate, and when it next asks the
/// responder: a pure value, changed by events (a response read from the cache, fetched
/// and verified, a failed fetch) at a time the caller gives, so the schedule and the
/// levels are tested without a responder or a clock.
package struct OCSPStapleState: Sendable {
    package enum Source: String, Sendable {
        /// Fetched from the responder by this process.
        case responder
        /// Read back from `ocsp.cache_dir` at start.
        case cache
    }

    /// How the status views rate it. Certificates without a responder have no state at all.
    package enum Level: String, Sendable, Comparable {
        case ok, warning, critical

        package static func < (a: Level, b: Level) -> Bool {
            let order: [Level] = [.ok, .warning, .critical]
            return order.firstIndex(of: a)! < order.firstIndex(of: b)!
        }
    }

    /// The certificate carries must-staple (TLS Feature status_request).
    package let mustStaple: Bool
    package let responderURL: String
    /// Stapling is configured off (`ocsp.stapling: false`): nothing is fetched.
    package let off: Bool
    /// The newest verified response (good, revoked or unknown).
    package private(set) var response: VerifiedOCSPResponse?
    package private(set) var source: Source?
    package private(set) var fetchedAt: Int64?
    /// Why the last fetch failed; nil after a success.
    package private(set) var lastError: String?
    package private(set) var failures = 0
    /// A fetch was made (or failed) since the state was created.
    package private(set) var attempted = false
    package private(set) var nextFetchAt: Int64

    /// The next fetch after a response that was already past its half-way point when it
    /// came (a pre-signed answer the responder hands out until it makes the next one): at
    /// least this long, so such a responder is not asked again every second.
    static let lateResponseRefreshSeconds: Int64 = 60
    /// Refresh of a response without a next update.
    static let refreshWithoutNextUpdateSeconds: Int64 = 3600
    /// First retry after a failure; doubled per failure up to `maximumRetrySeconds`.
    static let firstRetrySeconds: Int64 = 5
    static let maximumRetrySeconds: Int64 = 300

    package init(mustStaple: Bool, responderURL: String, off: Bool = false, now: Int64) {
        self.mustStaple = mustStaple
        self.responderURL = responderURL
        self.off = off
        self.nextFetchAt = now
    }

    /// A fetch is due.
    package func due(now: Int64) -> Bool { !self.off && now >= self.nextFetchAt }

    /// The response to staple at `now`: verified, current, good or revoked.
    package func stapled(now: Int64) -> VerifiedOCSPResponse? {
        self.response.flatMap { $0.staplable(now: now) ? $0 : nil }
    }

    /// Half-way through the response's validity (RFC 5019 §6: refresh well before the
    /// next update), or an hour after it was obtained when it names no next update (it is
    /// used for a week at most: `VerifiedOCSPResponse.validUntil`).
    package func refreshAt(_ response: VerifiedOCSPResponse, obtainedAt: Int64) -> Int64 {
        guard let next = response.nextUpdate else { return obtainedAt + Self.refreshWithoutNextUpdateSeconds }
        return response.thisUpdate + max(0, next - response.thisUpdate) / 2
    }

    /// A verified response read from the cache: stapled at once if it is still good and
    /// current, then refreshed at its half-way point (at once if that has passed).
    package mutating func loadedFromCache(_ response: VerifiedOCSPResponse, now: Int64) {
        guard response.staplable(now: now) else { return }
        self.response = response
        self.source = .cache
        self.nextFetchAt = max(now, self.refreshAt(response, obtainedAt: now))
    }

    /// A response fetched and verified.
    package mutating func fetched(_ response: VerifiedOCSPResponse, now: Int64) {
        self.response = response
        self.source = .responder
        self.fetchedAt = now
        self.lastError = nil
        self.failures = 0
        self.attempted = true
        let half = self.refreshAt(response, obtainedAt: now)
        self.nextFetchAt = half > now ? half : now + max(Self.lateResponseRefreshSeconds, (response.validUntil - now) / 2)
    }

    /// Something that stopped fetches from working was fixed (the issuer now in the
    /// chain): the next fetch is due now, without the back-off.
    package mutating func fetchNow(now: Int64) {
        self.failures = 0
        self.nextFetchAt = now
    }

    /// A fetch failed, or its response did not verify: the response held so far stays
    /// stapled while it is current; the next try backs off.
    package mutating func failed(_ reason: String, now: Int64) {
        self.lastError = reason
        self.failures += 1
        self.attempted = true
        let backoff = min(Self.maximumRetrySeconds, Self.firstRetrySeconds << Int64(min(self.failures - 1, 16)))
        self.nextFetchAt = now + backoff
    }

    /// One word for the status views.
    package func state(now: Int64) -> String {
        switch self.response?.status {
        case .revoked?: return "revoked"
        case .unknown?: return "unknown_to_responder"
        default: break
        }
        if self.stapled(now: now) != nil { return "stapled" }
        if self.off { return "off" }
        return self.attempted ? "unavailable" : "pending"
    }

    /// How serious it is, and why (nil when ok). A revoked certificate is critical; so is
    /// a must-staple one without a response once a fetch has failed, since clients that
    /// honour must-staple refuse it (while the first fetch is pending it is a warning). A
    /// certificate without must-staple and no response is a warning, as is a stapled
    /// response whose refresh keeps failing past its half-way point.
    package func level(now: Int64) -> (level: Level, reason: String?) {
        if case .revoked(let at, let reason)? = self.response?.status {
            return (.critical, "the OCSP responder says the certificate is revoked (since \(utcText(at))\(reason.map { ", \($0)" } ?? ""))")
        }
        if let stapled = self.stapled(now: now) {
            if let error = self.lastError, let obtained = self.fetchedAt ?? Optional(stapled.thisUpdate),
               now >= self.refreshAt(stapled, obtainedAt: obtained) {
                return (.warning, "refreshing the stapled response fails (\(error)); it is valid until \(utcText(stapled.validUntil))")
            }
            return (.ok, nil)
        }
        let why: String
        if self.off {
            why = "stapling is off (ocsp.stapling: false)"
        } else if case .unknown? = self.response?.status {
            why = "the OCSP responder does not know the certificate"
        } else if let error = self.lastError {
            why = error
        } else if !self.attempted {
            return (self.mustStaple ? .warning : .ok, self.mustStaple ? "the first OCSP response is not fetched yet" : nil)
        } else {
            why = "no current OCSP response"
        }
        if self.mustStaple { return (.critical, "the certificate requires a stapled OCSP response (must-staple) and none is available: \(why)") }
        return (self.off ? .ok : .warning, self.off ? nil : "no OCSP response to staple: \(why)")
    }
}
