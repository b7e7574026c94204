import EdgeCertificates
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

#if canImport(Glibc)
import Glibc
#endif

/// Runs a prepared gateway as a service: binds, serves until graceful shutdown,
/// then drains for the configured grace period.
public struct GatewayService: Service {
    let gateway: Gateway
    let group: EventLoopGroup

    public init(gateway: Gateway, group: EventLoopGroup) {
        self.gateway = gateway
        self.group = group
    }

    public func run() async throws {
        try await self.gateway.start(group: self.group)
        SystemdNotify.send("READY=1\nSTATUS=serving \(self.gateway.listeners.count) listener(s)\nMAINPID=\(getpid())")
        await withDiscardingTaskGroup { tasks in
            tasks.addTask {
                // SIGHUP re-reads certificates at once.
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    SystemdNotify.send("RELOADING=1")
                    for store in self.gateway.stores { store.reload(reason: "SIGHUP") }
                    SystemdNotify.send("READY=1")
                }
            }
            tasks.addTask {
                await self.gateway.runExpiryMonitor()
            }
            try? await gracefulShutdown()
            tasks.cancelAll()
        }
        SystemdNotify.send("STOPPING=1\nSTATUS=draining")
        await self.gateway.shutdown(grace: self.gateway.config.shutdownGracePeriod.timeAmount)
    }
}

/// Reads and prepares a configuration file, collecting every problem.
public func loadGateway(configPath: String, logger: Logger) throws -> Gateway {
    let (config, base) = try GatewayConfig.load(path: configPath)
    return try Gateway.prepare(config: config, baseDirectory: base, logger: logger)
}

struct FileReadError: Error, CustomStringConvertible {
    var description: String
}

func readTextFile(_ path: String) throws -> String {
    guard let file = fopen(path, "r") else {
        throw FileReadError(description: String(cString: strerror(errno)))
    }
    defer { fclose(file) }
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = fread(&chunk, 1, chunk.count, file)
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    return String(decoding: bytes, as: UTF8.self)
}

extension Gateway {
    /// Logs expiry states at startup, on every change and at each state's repeat interval.
    func runExpiryMonitor() async {
        var monitor = self.config.expiry.monitor
        let interval = max(1_000_000_000, self.config.expiry.checkInterval.nanoseconds)
        while !Task.isCancelled {
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
            for report in reports where report.chainProblem != nil && monitor.shouldReportChain(report.name, serial: report.serial) {
                self.logger.warning("served chain does not verify; clients without a cached intermediate will fail", metadata: [
                    "lineage": "\(report.name)", "reason": "\(report.chainProblem ?? "")",
                ])
            }
            try? await Task.sleep(nanoseconds: UInt64(interval))
        }
    }
}
