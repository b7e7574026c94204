import Logging
import NIOCore

/// Faults caused by clients (TLS handshakes that fail or time out, malformed requests,
/// heads that never complete), logged so that a flood of them cannot flood the log:
/// each distinct reason is logged in full the first time in a 10-second window (up to 20
/// reasons), and what repeats is summed up in one line when the window closes ("412
/// client faults in the last 10 s, from 37 addresses"). Every one is still counted in
/// the metrics where it happens. One per listener and event loop, confined to it.
///
/// Before, each was a line of its own: 2,000 WARNING lines for 2,000 silent connections
/// closed at the handshake timeout, about 5,000 a second for plain HTTP sent to a TLS port.
final class ClientFaultLog {
    static let window = TimeAmount.seconds(10)
    static let distinctPerWindow = 20

    private var windowOpen = false
    private var logged: Set<String> = []
    private var repeats: [String: Int] = [:]
    private var repeated = 0
    private var addresses: Set<String> = []

    /// Logs `message` with `metadata` now if its reason is new in this window, else
    /// counts it for the window's summary.
    func report(_ message: String, reason: String, level: Logger.Level, peer: String?, metadata: @autoclosure () -> Logger.Metadata,
                listener: ProxyListener) {
        if !self.windowOpen {
            self.windowOpen = true
            listener.loop.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: Self.window) { self.summarise(listener) }
        }
        let key = message + ": " + reason
        if let peer, self.addresses.count < 100_000 { self.addresses.insert(peer) }
        if self.logged.count < Self.distinctPerWindow, self.logged.insert(key).inserted {
            listener.logger.log(level: level, "\(message)", metadata: metadata())
            return
        }
        self.repeated += 1
        if self.repeats.count < Self.distinctPerWindow || self.repeats[key] != nil { self.repeats[key, default: 0] += 1 }
    }

    private func summarise(_ listener: ProxyListener) {
        defer {
            self.windowOpen = false
            self.logged = []
            self.repeats = [:]
            self.repeated = 0
            self.addresses = []
        }
        guard self.repeated > 0 else { return }
        let top = self.repeats.sorted { $0.value > $1.value }.prefix(5).map { "\($0.key) (\($0.value))" }.joined(separator: "; ")
        listener.logger.warning("\(self.repeated) more client faults in the last \(Self.window.nanoseconds / 1_000_000_000) s, from \(self.addresses.count) addresses", metadata: [
            "listener": "\(listener.name)", "most_frequent": "\(top)",
        ])
    }
}

/// Upstream failures answered to clients, logged at most once a second per backend and
/// kind of failure, with the count of those not logged: a backend sending oversized
/// heads wrote 11,763 lines in 5 s, one per request. Confined to one event loop.
final class UpstreamFaultLog {
    private var last: [String: (at: NIODeadline, suppressed: Int)] = [:]

    /// Whether to log a failure of `key` (backend and kind) now; the metadata to add
    /// says how many were not logged since the last line.
    func shouldLog(_ key: String) -> Logger.Metadata? {
        let now = NIODeadline.now()
        if let entry = self.last[key], now < entry.at + .seconds(1) {
            self.last[key] = (entry.at, entry.suppressed + 1)
            return nil
        }
        let suppressed = self.last[key]?.suppressed ?? 0
        if self.last.count > 1_000 { self.last = [:] }
        self.last[key] = (now, 0)
        return suppressed > 0 ? ["not_logged_since_last": "\(suppressed)"] : [:]
    }
}
