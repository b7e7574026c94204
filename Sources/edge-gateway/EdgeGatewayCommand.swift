import ArgumentParser
import EdgeCertificates
import EdgeGateway
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

enum LogFormat: String, ExpressibleByArgument, CaseIterable {
    case text, json
}

struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: "Log format: text (readable) or json (one object per line).")
    var logFormat: LogFormat = .text

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func bootstrap() -> Logger {
        let level = Logger.Level(rawValue: self.logLevel) ?? .info
        let format = self.logFormat
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler = format == .json ? JSONLogHandler(label: label) : TextLogHandler(label: label)
            handler.logLevel = level
            return handler
        }
        return Logger(label: "edge-gateway")
    }
}

@main
struct EdgeGatewayCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "edge-gateway",
        abstract: "A TLS edge gateway that serves renewed certificates at the next handshake.",
        discussion: """
            Terminates TLS on the system OpenSSL, watches certificate directories (certbot,
            Kubernetes secrets, plain files) and proxies HTTP to upstream groups.

            Examples:
              edge-gateway check -c /etc/edge-gateway/config.yaml
              edge-gateway run -c /etc/edge-gateway/config.yaml --log-format json
            """,
        version: gatewayVersion,
        subcommands: [Run.self, Check.self, Certs.self, Status.self, DemoUpstreamCommand.self],
        defaultSubcommand: nil
    )

    /// ArgumentParser's own main, except that a usage error starts with `error:` like every
    /// other problem the gateway reports (ArgumentParser says `Error:`).
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            let code = exitCode(for: error)
            guard !code.isSuccess else { exit(withError: error) }  // --help, --version: as ArgumentParser prints them
            let message = fullMessage(for: error)
            if message.hasPrefix("Error: ") {
                writeStandardError("error: " + message.dropFirst("Error: ".count) + "\n")
            } else if !message.isEmpty {
                writeStandardError(message + "\n")
            }
            Glibc.exit(code.rawValue)
        }
    }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve with a configuration file. SIGTERM/SIGINT drain; SIGHUP (or POST /reload) reloads the configuration and its certificates."
    )

    @Option(name: [.short, .customLong("config")], help: "Configuration file (YAML).")
    var config: String

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        let logger = self.logging.bootstrap()
        let gateway: Gateway
        do {
            gateway = try loadGateway(configPath: self.config, logger: logger)
        } catch let problems as ConfigProblems {
            for problem in problems.problems { logger.critical("configuration error: \(problem)") }
            throw ExitCode(1)
        }
        let group = MultiThreadedEventLoopGroup(numberOfThreads: gateway.config.workers ?? System.coreCount)
        let service = GatewayService(gateway: gateway, group: group, configPath: self.config)
        let serviceGroup = ServiceGroup(
            configuration: .init(
                services: [.init(service: service)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        do {
            try await serviceGroup.run()
        } catch {
            logger.critical("stopped: \(error)")
            try? await group.shutdownGracefully()
            throw ExitCode(1)
        }
        try? await group.shutdownGracefully()
        logger.info("stopped")
    }
}

struct Check: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Validate a configuration without serving (like nginx -t). Exit 0 when valid, 1 with one line per problem."
    )

    @Option(name: [.short, .customLong("config")], help: "Configuration file (YAML).")
    var config: String

    @Flag(name: .long, help: "Exit 0 even when a certificate lineage is rejected (run serves the others, and a rejected renewal's last good version).")
    var allowRejected = false

    func run() async throws {
        LoggingSystem.bootstrap { _ in CheckLogHandler() }
        let logger = Logger(label: "edge-gateway")
        do {
            let gateway = try loadGateway(configPath: self.config, logger: logger)
            // Every certificate source was loaded as `run` loads it: a rejected lineage
            // (a key that does not match, an unreadable file) fails the check. A certbot
            // directory that does not exist yet is watched for, as `run` does: before the
            // first `certbot certonly` that is how a new host starts.
            let problems = gateway.stores.flatMap(\.problems)
            let awaited = problems.filter(\.isAwaitedDirectory)
            let rejected = problems.filter { problem in !awaited.contains { $0.name == problem.name } }
            for problem in awaited {
                writeStandardError("warning: certificate source \(problem.name): no such directory yet; watched for, its lineages are served once certbot creates them\n")
            }
            var failures = gateway.checkFailures
            if !self.allowRejected {
                failures += rejected.map { "certificate \($0.name): \($0.error) (--allow-rejected accepts this)" }
            }
            if !failures.isEmpty {
                for failure in failures { writeStandardError("error: \(failure)\n") }
                throw ExitCode(1)
            }
            print("configuration \(self.config) is valid: \(gateway.config.listeners.count) listener(s), \(gateway.config.upstreams.count) upstream(s), \(gateway.config.routes.count) route(s)")
            let lineages = gateway.stores.flatMap { $0.snapshot.lineages }
            if let first = lineages.min(by: { $0.leaf.notAfter < $1.leaf.notAfter }) {
                print("\(lineages.count) certificate lineage(s) loaded; the first to expire is \(first.name) on \(isoDate(first.leaf.notAfter)) UTC"
                      + (rejected.isEmpty ? "" : "; \(rejected.count) rejected (allowed)"))
            }
        } catch let problems as ConfigProblems {
            for problem in problems.problems {
                writeStandardError("error: \(problem)\n")
            }
            throw ExitCode(1)
        }
    }
}

struct DemoUpstreamCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-upstream",
        abstract: "Run the small demo origin used by the README and the benchmarks."
    )

    @Option(name: .long, help: "Address to listen on.")
    var listen: String = "127.0.0.1:9000"

    @Option(name: .long, help: "Event loop threads.")
    var threads: Int = 1

    func run() async throws {
        let (host, port) = try parseAddress(self.listen)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, self.threads))
        let upstream = try await DemoUpstream.start(host: host, port: port, group: group)
        writeStandardOutput("demo upstream listening on \(host):\(upstream.port)\n")
        try await upstream.wait()
    }
}

struct Certs: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show which certificate expires when, without a running gateway (like certbot certificates).",
        discussion: """
            Reads the certificate sources of a configuration file (-c) or the directories \
            given (certbot live/ or config directory, Kubernetes secret volume, or plain pairs).

            Exit codes, for cron and monitoring checks:
              0  every certificate is ok
              1  some certificate is in its warning window
              2  some certificate is critical, expired, not yet valid, or unreadable
              3  (--check-served) a listener serves another chain than the files
            With --strict, a chain that does not verify is at least 1. With
            --check-served, a listener that could not be checked is at least 1, and so
            is a certificate with an OCSP responder served without a staple (unless
            ocsp.stapling is off); a staple that is revoked or invalid, or none for a
            must-staple certificate, is 2.
            """
    )

    @Option(name: .long, help: "CA bundle to verify the chains against (default: the configuration's certificates.ca_file, else the system store).")
    var caFile: String?

    @Flag(name: .long, help: "A chain that does not verify makes the exit code at least 1.")
    var strict = false

    @Option(name: [.short, .customLong("config")], help: "Configuration file whose certificate sources to read.")
    var config: String?

    @Argument(help: "Directories to read instead of a configuration file.")
    var directories: [String] = []

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    @Flag(name: .customLong("check-served"),
          help: "With -c: also handshake with each HTTPS listener of the configuration (over loopback) and compare the chain it serves for each certificate with the files.")
    var checkServed = false

    func run() async throws {
        var sources: [CertificateSource] = []
        var trust: String? = nil
        var policy = ExpiryPolicy()
        var clientCertificates: [(source: CertificateSource, caFile: String?)] = []
        if let config = self.config {
            do {
                (sources, trust, policy, clientCertificates) = try CertsInspection.sources(configPath: config)
            } catch {
                writeStandardError("error: \(error)\n")
                throw ExitCode(2)
            }
        }
        sources += self.directories.map { CertsInspection.source(forDirectory: $0) }
        guard !sources.isEmpty || !clientCertificates.isEmpty else {
            writeStandardError(self.config.map { "error: \($0) names no certificates (no certificates, listener tls or upstream client_certificate)\n" }
                               ?? "error: name a configuration file (-c FILE) or certificate directories\n")
            throw ExitCode(2)
        }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        if let caFile = self.caFile { trust = caFile }
        var entries = CertificateInspector.inspect(sources: sources, trustCAFile: trust, policy: policy, now: Int64(now.tv_sec))
        var served: [CertsInspection.ServedResult]?
        if self.checkServed {
            guard let config = self.config else {
                writeStandardError("error: --check-served needs the configuration file (-c FILE) that names the listeners\n")
                throw ExitCode(2)
            }
            // A listener that resets the probe's connection must not end the command.
            signal(SIGPIPE, SIG_IGN)
            do {
                served = CertsInspection.checkServed(entries, targets: try CertsInspection.servedTargets(configPath: config), now: Int64(now.tv_sec))
            } catch {
                writeStandardError("error: \(error)\n")
                throw ExitCode(2)
            }
        }
        for client in clientCertificates {
            // Upstream client certificates expire too; their chain is checked only against client_ca_file.
            entries += CertificateInspector.inspect(sources: [client.source], trustCAFile: nil, chainCheck: .clientCertificate(caFile: client.caFile),
                                                    policy: policy, now: Int64(now.tv_sec))
        }
        writeStandardOutput(self.json ? CertsInspection.json(entries, served: served, now: Int64(now.tv_sec))
                            : CertsInspection.table(entries, now: Int64(now.tv_sec)) + (served.map(CertsInspection.servedTable) ?? ""))
        let code = max(CertsInspection.exitCode(entries, strict: self.strict), served.map(CertsInspection.servedExitCode) ?? 0)
        if code != 0 { throw ExitCode(code) }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Summarise the running gateway from its admin endpoint: listeners, certificates soonest expiry first, upstream health, last reloads."
    )

    @Option(name: .long, help: "Admin endpoint address.")
    var admin: String = "127.0.0.1:9901"

    @Flag(name: .long, help: "Print the /status JSON document instead of the summary.")
    var json = false

    @Option(name: .long, help: "Print this admin path as it is instead (/status/certificates, /status/upstreams, /metrics).")
    var path: String?

    func run() async throws {
        let (host, port) = try parseAddress(self.admin)
        let body: String
        do {
            body = try httpGet(host: host, port: port, path: self.path ?? "/status")
        } catch {
            writeStandardError("error: cannot reach the admin endpoint at \(self.admin): \(error)\n")
            throw ExitCode(2)
        }
        if self.json || self.path != nil {
            writeStandardOutput(body)
            return
        }
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        do {
            writeStandardOutput(try StatusSummary.text(statusJSON: body, now: Int64(now.tv_sec)))
        } catch {
            writeStandardError("error: \(error)\n")
            throw ExitCode(2)
        }
    }
}
