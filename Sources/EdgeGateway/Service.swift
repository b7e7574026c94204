import EdgeCertificates
import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// Runs a prepared gateway as a service: binds, serves until graceful shutdown,
/// then drains for the configured grace period. `SIGHUP` and `POST /reload` reload the
/// whole configuration file.
package final class GatewayService: Service, Sendable {
    private let current: NIOLockedValueBox<Gateway>
    private let group: EventLoopGroup
    private let configPath: String?
    private let logger: Logger
    /// Whether a reload runs, or the service is stopping (no reload starts any more).
    private let phase = NIOLockedValueBox(Phase.serving)
    /// Generations a reload replaced that are still draining.
    private let replaced = NIOLockedValueBox<[Gateway]>([])
    /// When `POST /reload` last started a reload (`admin.reload_min_interval`).
    private let lastAdminReload = NIOLockedValueBox<NIODeadline?>(nil)

    /// `configPath`: the file a reload re-reads (nil: reloads re-read certificates only).
    package init(gateway: Gateway, group: EventLoopGroup, configPath: String? = nil) {
        self.current = NIOLockedValueBox(gateway)
        self.group = group
        self.configPath = configPath
        self.logger = gateway.logger
    }

    /// The configuration generation serving now.
    package var gateway: Gateway { self.current.withLockedValue { $0 } }

    package func run() async throws {
        let gateway = self.gateway
        SystemLimits.raiseDescriptorLimit(logger: self.logger)
        self.install(gateway)
        do {
            try await gateway.start(group: self.group)
        } catch {
            // Stop what did start (certificate watchers, health checks, key rotation timers)
            // before the caller shuts the event loops down under them.
            await gateway.shutdown(grace: .zero, quietly: true)
            throw error
        }
        SystemdNotify.send("READY=1\nSTATUS=serving \(gateway.listeners.count) listener(s)\nMAINPID=\(getpid())")
        await withDiscardingTaskGroup { tasks in
            tasks.addTask {
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    _ = await self.reload(reason: "SIGHUP")
                }
            }
            tasks.addTask {
                await self.runExpiryMonitor()
            }
            try? await gracefulShutdown()
            tasks.cancelAll()
        }
        // After the last reload has ended: its RELOADING/READY never follow STOPPING.
        await self.stopReloading()
        SystemdNotify.send("STOPPING=1\nSTATUS=draining")
        let last = self.gateway
        await last.shutdown(grace: last.config.shutdownGracePeriod.timeAmount)
        // Generations replaced by reloads shortly before may still be draining their
        // requests: the process waits for them too (their own grace periods), so neither
        // those requests nor their access-log lines are cut off by the exit.
        for replaced in self.replaced.withLockedValue({ $0 }) {
            await replaced.shutdown(grace: replaced.config.shutdownGracePeriod.timeAmount, quietly: true)
        }
    }

    private func install(_ gateway: Gateway) {
        gateway.reloadHandler.withLockedValue { $0 = { [weak self] in await self?.adminReload() ?? AdminReloadAnswer(summary: "not running\n") } }
    }

    /// `POST /reload`, at most once per `admin.reload_min_interval`: each applied reload
    /// drains every client connection, so a script (or a page that got past the admin
    /// endpoint's origin checks) looping on it would keep every client reconnecting.
    /// SIGHUP, which only the host's users can send, is not limited.
    private func adminReload() async -> AdminReloadAnswer {
        let interval = self.gateway.config.admin.reloadMinInterval.timeAmount
        let now = NIODeadline.now()
        let wait = self.lastAdminReload.withLockedValue { last -> TimeAmount? in
            if let last, now < last + interval { return last + interval - now }
            last = now
            return nil
        }
        if let wait {
            let seconds = max(1, (wait.nanoseconds + 999_999_999) / 1_000_000_000)
            self.logger.warning("admin reload refused: too soon after the previous one", metadata: [
                "reload_min_interval": "\(self.gateway.config.admin.reloadMinInterval)",
            ])
            return AdminReloadAnswer(summary: "too many reloads: retry after \(seconds)s (admin.reload_min_interval)\n", retryAfter: seconds)
        }
        let summary = await self.reload(reason: "admin /reload")
        // The interval runs from the reload's end: one that took longer than it does not
        // leave the door open for the next at once.
        self.lastAdminReload.withLockedValue { $0 = .now() }
        return AdminReloadAnswer(summary: summary)
    }

    /// Re-reads the configuration file: an invalid one leaves everything as it is (logged and
    /// shown on /status); a valid one takes over the listening sockets and the old generation
    /// drains. Certificates are re-read either way. Returns a one-line summary.
    package func reload(reason: String) async -> String {
        let refusal = self.phase.withLockedValue { phase -> String? in
            switch phase {
            case .serving:
                phase = .reloading(waiter: nil)
                return nil
            case .reloading: return "a reload is already running\n"
            case .stopping: return "shutting down: not reloaded\n"
            }
        }
        if let refusal { return refusal }
        defer { self.reloadEnded() }
        SystemdNotify.send("RELOADING=1")
        defer { SystemdNotify.send("READY=1") }
        let previous = self.gateway
        guard let path = self.configPath else {
            for store in previous.stores { store.reload(reason: reason) }
            return "certificates re-read\n"
        }
        let next: Gateway
        do {
            let (config, base) = try GatewayConfig.load(path: path)
            next = try Gateway.prepare(config: config, baseDirectory: base, logger: self.logger, previous: previous)
        } catch {
            let text = (error as? ConfigProblems)?.problems.joined(separator: "; ") ?? Gateway.reason(error)
            previous.configStatus.record("rejected", error: text)
            self.logger.error("configuration reload rejected; the running configuration stays", metadata: ["reason": "\(reason)", "file": "\(path)", "error": "\(text)"])
            for store in previous.stores { store.reload(reason: reason) }
            return "rejected: \(text)\n"
        }
        do {
            try await next.start(group: self.group, replacing: previous)
        } catch {
            // The failed generation stops first: resumed before it, the previous one shared
            // its listening sockets with listeners serving the rejected configuration.
            await next.shutdown(grace: .zero, quietly: true)
            previous.setAccepting(true)
            previous.configStatus.record("failed", error: Gateway.reason(error))
            self.logger.error("new configuration could not start; the running configuration stays", metadata: ["reason": "\(reason)", "error": "\(Gateway.reason(error))"])
            return "failed: \(Gateway.reason(error))\n"
        }
        self.current.withLockedValue { $0 = next }
        self.install(next)
        next.configStatus.record("applied")
        let before = Set(previous.listeners.map(\.name)), after = Set(next.listeners.map(\.name))
        self.logger.notice("configuration reloaded", metadata: [
            "reason": "\(reason)", "file": "\(path)",
            "listeners_added": "\(after.subtracting(before).sorted())", "listeners_removed": "\(before.subtracting(after).sorted())",
            "upstreams": "\(next.groups.map(\.name))", "routes": "\(next.config.routes.count)",
        ])
        // Connections of the previous generation finish on its handlers and pools.
        self.replaced.withLockedValue { $0.append(previous) }
        Task {
            await previous.shutdown(grace: previous.config.shutdownGracePeriod.timeAmount, quietly: true)
            self.replaced.withLockedValue { $0.removeAll { $0 === previous } }
        }
        return "applied: \(next.listeners.count) listener(s), \(next.groups.count) upstream(s), \(next.config.routes.count) route(s)\n"
    }

    /// Where reloads are: none, one running (and whether the shutdown waits for it), or
    /// none any more. A reload that started while the service drained would start a
    /// generation that nothing stops, and drain the one the shutdown is draining a second
    /// time (`POST /reload` is served until the drain ends).
    private enum Phase {
        case serving
        case reloading(waiter: CheckedContinuation<Void, Never>?)
        case stopping
    }

    /// No reload starts from now on; returns once a reload that is running has ended, so
    /// that the generation the shutdown drains is the last one.
    private func stopReloading() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = self.phase.withLockedValue { phase -> Bool in
                if case .reloading = phase {
                    phase = .reloading(waiter: continuation)
                    return false
                }
                phase = .stopping
                return true
            }
            if now { continuation.resume() }
        }
    }

    private func reloadEnded() {
        let waiter = self.phase.withLockedValue { phase -> CheckedContinuation<Void, Never>? in
            guard case .reloading(let waiter) = phase else { return nil }
            phase = waiter == nil ? .serving : .stopping
            return waiter
        }
        waiter?.resume()
    }

    /// Logs expiry states of whichever generation is serving.
    private func runExpiryMonitor() async {
        var monitor = self.gateway.config.expiry.monitor
        var renewals = RenewalMonitor()
        renewals.repeatSeconds = self.gateway.config.expiry.repeatWarning.nanoseconds / 1_000_000_000
        while !Task.isCancelled {
            let gateway = self.gateway
            gateway.checkExpiry(&monitor, renewals: &renewals)
            let interval = max(1_000_000_000, gateway.config.expiry.checkInterval.nanoseconds)
            try? await Task.sleep(nanoseconds: UInt64(interval))
        }
    }
}

/// What `POST /reload` answers: the reload's one-line summary, or when to ask again.
struct AdminReloadAnswer: Sendable {
    var summary: String
    /// Seconds until a reload is accepted again (429); nil when the reload ran.
    var retryAfter: Int64?
}

/// Reads and prepares a configuration file, collecting every problem.
package func loadGateway(configPath: String, logger: Logger) throws -> Gateway {
    let (config, base) = try GatewayConfig.load(path: configPath)
    return try Gateway.prepare(config: config, baseDirectory: base, logger: logger)
}

/// Why a configuration or key file was not read (the caller names the file).
struct TextFileError: Error, CustomStringConvertible {
    var description: String
}

/// Reads a configuration or key file without ever blocking (a FIFO is refused, not
/// waited on; `readRegularFile`); the error says why, the caller names the file.
func readTextFile(_ path: String) throws -> String {
    do {
        return String(decoding: try readRegularFile(path, limit: 16 << 20), as: UTF8.self)
    } catch let error as FileReadError {
        throw TextFileError(description: error.reason)
    }
}

extension Gateway {
    /// Logs expiry states at startup, on every change and at each state's repeat interval,
    /// and overdue renewals when they become so, daily while they last, and when they clear.
    func checkExpiry(_ monitor: inout ExpiryMonitor, renewals: inout RenewalMonitor) {
        do {
            let now = Int64(currentTime())
            let reports = self.certificateReports(now: now)
            let observations = reports.map {
                ExpiryMonitor.Observation(name: $0.name, serial: $0.serial, state: $0.state, notAfter: $0.chain.map(\.notAfter).min() ?? $0.notAfter)
            }
            for line in monitor.evaluate(observations, now: now) {
                let report = reports.first { $0.name == line.name }
                self.logger.log(level: line.level, "\(line.message)", metadata: [
                    "lineage": "\(line.name)", "state": "\(line.state.rawValue)", "remaining": "\(humanDuration(line.secondsRemaining))",
                    "not_after": "\(isoDate(report?.notAfter ?? 0))", "serial": "\(report?.serial ?? "")",
                ])
            }
            for line in renewals.evaluate(reports.map { ($0.name, $0.serial, $0.renewal) }, now: now) {
                let report = reports.first { $0.name == line.name }
                self.logger.log(level: line.level, "\(line.message)", metadata: [
                    "lineage": "\(line.name)", "expected_renewal": "\(isoDate(report?.renewal?.expectedAt ?? 0))",
                    "basis": "\(report?.renewal?.basis.description ?? "")", "serial": "\(report?.serial ?? "")",
                ])
            }
            for report in reports where report.chainProblem != nil && monitor.shouldReportChain(report.name, serial: report.serial) {
                self.logger.warning("served chain does not verify; clients without a cached intermediate will fail", metadata: [
                    "lineage": "\(report.name)", "reason": "\(report.chainProblem ?? "")",
                ])
            }
        }
    }
}
