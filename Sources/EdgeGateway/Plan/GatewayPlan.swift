import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOCore

/// What a configuration describes, checked and built, before anything runs: upstream
/// groups, routes, listeners with their TLS contexts and certificate stores, the access
/// log and session-ticket settings, the admin address. Building it binds nothing, starts
/// no watch, installs no key and opens no log (`check` builds one and stops there; a
/// rejected reload leaves the running generation as it was). `Gateway` runs a plan.
///
/// Each section has its own builder (`UpstreamPlan.swift`, `RoutePlan.swift`,
/// `ListenerPlan.swift`, `ServicePlan.swift`), and every problem of every section is
/// gathered, each naming its key, so one `check` lists them all.
struct GatewayPlan: Sendable {
    let config: GatewayConfig
    let listeners: [ListenerPlan]
    let router: Router
    /// Every upstream group, by name.
    let groups: [UpstreamGroup]
    /// Every certificate store: upstream client pairs, the shared set, one per explicit pair.
    let stores: [CertificateStore]
    /// The shared certificate set, if `certificates` is configured.
    let sharedStore: CertificateStore?
    let adminAddress: SocketAddress
    /// Session-ticket settings shared by every TLS listener (one key ring per process).
    let sessionTickets: SessionTicketsConfig
    /// The ticket keys of `session_tickets.key_file`, parsed here and installed in the
    /// process's key ring only when the generation starts.
    let ticketKeys: [TicketKey]?
    /// The resolved handoff socket path, if zero-downtime restarts are enabled.
    let handoffSocket: String?
    /// The access log to open when the generation starts (checked here: `check` reports
    /// a path it cannot write, and creates nothing).
    let accessLogPlan: (path: String, format: AccessLogFile.Format)?
    /// Problems `check` fails on that `run` serves through (see `Gateway.checkFailures`).
    let checkFailures: [String]
    /// Expiry thresholds and renewal points, for the status views and the monitor.
    let expiryPolicy: ExpiryPolicy

    /// `succeeding`: the shared store of the generation this one replaces, whose
    /// certificates it takes over (`CertificateStore(succeeding:)`).
    init(config: GatewayConfig, baseDirectory: String, logger: Logger, succeeding previous: CertificateStore?) throws {
        var builder = PlanBuilder(config: config, baseDirectory: baseDirectory, logger: logger)
        let groups = builder.upstreamGroups()
        self.groups = groups.keys.sorted().map { groups[$0]! }
        self.router = builder.router(groups: groups)
        let tls = builder.listenerTLS()
        self.sharedStore = builder.sharedStore(policies: tls.sharedPolicies, succeeding: previous)
        (self.sessionTickets, self.ticketKeys) = builder.sessionTickets(tls.ticketSettings)
        self.handoffSocket = config.handoffSocket.map(builder.resolve)
        self.accessLogPlan = builder.accessLog()
        builder.checkOCSPCacheDirectory()
        self.listeners = builder.listeners(tls.pending, shared: self.sharedStore)
        self.adminAddress = builder.adminAddress()
        self.config = config
        self.expiryPolicy = config.expiryPolicy(base: baseDirectory)
        self.stores = builder.stores
        self.checkFailures = builder.checkFailures
        if !builder.problems.isEmpty { throw ConfigProblems(problems: builder.problems) }
    }
}

/// Builds a `GatewayPlan` section by section, gathering the problems it finds and the
/// certificate stores it makes (in the order `stores` lists them).
struct PlanBuilder {
    let config: GatewayConfig
    let baseDirectory: String
    let logger: Logger
    /// A configured path, relative to the configuration file's directory.
    let resolve: @Sendable (String) -> String
    var problems: [String]
    var checkFailures: [String] = []
    var stores: [CertificateStore] = []

    init(config: GatewayConfig, baseDirectory: String, logger: Logger) {
        self.config = config
        self.baseDirectory = baseDirectory
        self.logger = logger
        self.resolve = { resolvePath($0, base: baseDirectory) }
        self.problems = config.decodingProblems
    }
}
