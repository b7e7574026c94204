import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOHTTP1
import NIOPosix

/// Every problem found in a configuration, one line each.
package struct ConfigProblems: Error, CustomStringConvertible, Sendable {
    package var problems: [String]
    package var description: String { self.problems.joined(separator: "\n") }
}

/// Parses `host:port`, `[v6]:port` or `:port`.
package func parseAddress(_ text: String) throws -> (host: String, port: Int) {
    var host: Substring
    var portText: Substring
    if text.hasPrefix("[") {
        guard let end = text.firstIndex(of: "]"), text[text.index(after: end)...].hasPrefix(":") else {
            throw ConfigError(path: "", message: "invalid address '\(text)' (expected [ipv6]:port)")
        }
        host = text[text.index(after: text.startIndex)..<end]
        portText = text[text.index(end, offsetBy: 2)...]
    } else {
        guard let colon = text.lastIndex(of: ":") else {
            throw ConfigError(path: "", message: "invalid address '\(text)' (expected host:port)")
        }
        host = text[..<colon]
        portText = text[text.index(after: colon)...]
    }
    guard let port = Int(portText), (0...65535).contains(port) else {
        throw ConfigError(path: "", message: "invalid port in '\(text)'")
    }
    if host.isEmpty { host = "0.0.0.0" }
    return (String(host), port)
}

extension Duration {
    var timeAmount: TimeAmount { .nanoseconds(self.nanoseconds) }
}

/// A configuration generation: its plan (`GatewayPlan`: validated, every object built)
/// and the running state of serving it.
///
/// `prepare` does all checks `check` reports (files, keys, addresses,
/// references) before a single port is bound.
package final class Gateway: Sendable {
    let plan: GatewayPlan
    package var config: GatewayConfig { self.plan.config }
    var listeners: [ListenerPlan] { self.plan.listeners }
    var router: Router { self.plan.router }
    /// Every upstream group, by name.
    package var groups: [UpstreamGroup] { self.plan.groups }
    /// Every certificate store (upstream client pairs, the shared set, one per explicit pair).
    package var stores: [CertificateStore] { self.plan.stores }
    /// The shared certificate set, if `certificates` is configured.
    package var sharedStore: CertificateStore? { self.plan.sharedStore }
    var adminAddress: SocketAddress { self.plan.adminAddress }
    var sessionTickets: SessionTicketsConfig { self.plan.sessionTickets }
    var handoffSocket: String? { self.plan.handoffSocket }
    var accessLogPlan: (path: String, format: AccessLogFile.Format)? { self.plan.accessLogPlan }
    var ticketKeys: [TicketKey]? { self.plan.ticketKeys }
    let logger: Logger
    /// Handshakes with the gateway's own HTTPS listeners after each publication.
    package let servedProof: ServedProof
    /// OCSP responses of the served certificates that name a responder.
    package let ocspStapler: OCSPStapler
    let state = NIOLockedValueBox(RunState())
    let metrics: GatewayMetrics
    /// Outcome of configuration reloads; carried from one configuration generation to the next.
    package let configStatus: ConfigReloadStatus
    /// Runs a full configuration reload (set by the service); `POST /reload` calls it.
    let reloadHandler = NIOLockedValueBox<(@Sendable () async -> AdminReloadAnswer)?>(nil)

    package let startTime = currentTime()
    /// Problems `check` fails on that `run` serves through, logged as errors: an expired
    /// upstream client certificate fails only that upstream's handshakes, and refusing to
    /// start would take every other site down with it.
    package var checkFailures: [String] { self.plan.checkFailures }

    /// Where a generation is in its life: built (`prepared`), binding (`starting`),
    /// serving (`running`: ready), draining its connections, done. It only moves forward,
    /// like hummingbird's `Server` state: a generation starts once and stops once.
    package enum Lifecycle: String, Sendable {
        case prepared, starting, running, draining, stopped
    }

    struct RunState {
        var lifecycle = Lifecycle.prepared
        /// `start` is running. A start that failed stays `starting` until it is shut down,
        /// but is no longer binding.
        var binding = false
        /// Shutdowns that began while `start` was binding: resumed when it returns, so
        /// that the drain finds every listener, the admin endpoint and the jobs it made.
        var awaitingStart: [CheckedContinuation<Void, Never>] = []
        var serverChannels: [String: Channel] = [:]
        var adminChannel: Channel?
        /// Closes the admin endpoint's connections as well as its listening channel.
        var adminQuiescing: ServerQuiescingHelper?
        var quiescing: [ServerQuiescingHelper] = []
        /// Watchers, health checks, ticket keys, the client CA watch, the heap trimmer.
        var jobs: BackgroundJobs?
        /// Listening descriptors by listener name ("admin" for the admin endpoint), for handoff.
        var listenerSockets: [String: (address: String, fd: CInt)] = [:]
        var handoffServer: SocketHandoff.Server?
        /// A new process took the sockets over (and serves on them): the drain that follows
        /// is a hand-over, not a stop, for the admin endpoint as for a reload.
        var handedOver = false
        var pools: (PoolRegistry, EventLoopGroup)?
        /// Opened by `start`, closed after the drain.
        var accessLog: AccessLogFile?
        /// The drain `shutdown` started; every later call waits for it.
        var shutdown: Task<Void, Never>?
    }

    /// Validates `config` and builds every object it describes; paths are relative to `baseDirectory`.
    /// `previous`, on a reload, lends its metrics and reload status so counters continue.
    package static func prepare(config: GatewayConfig, baseDirectory: String, logger: Logger, previous: Gateway? = nil) throws -> Gateway {
        try Gateway(config: config, baseDirectory: baseDirectory, logger: logger, previous: previous)
    }

    private init(config: GatewayConfig, baseDirectory: String, logger: Logger, previous: Gateway?) throws {
        self.plan = try GatewayPlan(config: config, baseDirectory: baseDirectory, logger: logger, succeeding: previous?.sharedStore)
        self.logger = logger
        self.servedProof = ServedProof(logger: logger, previous: previous?.servedProof)
        self.ocspStapler = OCSPStapler(config: config.ocsp, baseDirectory: baseDirectory, logger: logger, previous: previous?.ocspStapler)
        self.metrics = previous?.metrics ?? GatewayMetrics()
        self.configStatus = previous?.configStatus ?? ConfigReloadStatus()
    }

    static func reason(_ error: Error) -> String {
        switch error {
        case let e as ConfigError: return e.description
        case let e as CertificateLoadError: return e.description
        case let e as TLSError: return e.description
        case let e as ConfigProblems: return e.description
        default: return "\(error)"
        }
    }
}

extension String {
    func replacingSuffix(_ suffix: String) -> String {
        self.hasSuffix(suffix) ? String(self.dropLast(suffix.count)) : self
    }
}

/// What the last configuration reload did, for `/status` and the log.
package final class ConfigReloadStatus: Sendable {
    package struct Outcome: Sendable {
        package var time: Int64
        /// applied, rejected (invalid file; the running configuration stays), failed (could not start it).
        package var result: String
        package var error: String?
    }

    private let last = NIOLockedValueBox<Outcome?>(nil)

    package init() {}

    package var lastOutcome: Outcome? { self.last.withLockedValue { $0 } }

    func record(_ result: String, error: String? = nil) {
        self.last.withLockedValue { $0 = Outcome(time: Int64(currentTime()), result: result, error: error) }
    }
}

/// Identity of a file's current contents for change polling: inode, size, mtime.
func fileStamp(_ path: String) -> String? {
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return "\(st.st_ino)-\(st.st_size)-\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
}

/// Seconds since the epoch, with fractions.
package func currentTime() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

/// "known: a, b" for a name that matched none, or that there are none at all.
func knownNames(_ names: [String], kind: String) -> String {
    names.isEmpty ? "no \(kind) are configured" : "known: \(names.joined(separator: ", "))"
}
