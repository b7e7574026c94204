import EdgeGateway
import EdgeTLS
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A gateway and a demo upstream running in this process on free loopback ports.
package final class GatewayHarness: @unchecked Sendable {
    package let group: MultiThreadedEventLoopGroup
    package let upstream: DemoUpstream
    package let gateway: Gateway
    package let directory: TemporaryDirectory
    /// Everything the gateway logged at info and above.
    package let logs: LogCapture

    /// `yaml` receives the upstream's port; listeners should use port 0.
    package static func start(
        directory: TemporaryDirectory = TemporaryDirectory(),
        upstreamTLS: TLSContext? = nil,
        upstreamIdleClose: TimeAmount? = nil,
        yaml: (Int) -> String
    ) async throws -> GatewayHarness {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let upstream = try await DemoUpstream.start(tls: upstreamTLS, idleClose: upstreamIdleClose, group: group)
        let text = yaml(upstream.port)
        try directory.write("config.yaml", text)
        let logs = LogCapture()
        let config = try GatewayConfig.parse(yaml: text)
        let gateway = try Gateway.prepare(config: config, baseDirectory: directory.path, logger: logs.logger())
        try await gateway.start(group: group)
        return GatewayHarness(group: group, upstream: upstream, gateway: gateway, directory: directory, logs: logs)
    }

    private init(group: MultiThreadedEventLoopGroup, upstream: DemoUpstream, gateway: Gateway, directory: TemporaryDirectory, logs: LogCapture) {
        self.group = group
        self.upstream = upstream
        self.gateway = gateway
        self.directory = directory
        self.logs = logs
    }

    package func port(_ listener: String) -> Int { self.gateway.boundPort(listener: listener) ?? 0 }

    private let stopped = NIOLockedValueBox(false)

    /// Stops the gateway, the upstream and the event loops; safe to call twice.
    package func shutdown() async {
        guard !self.stopped.withLockedValue({ let was = $0; $0 = true; return was }) else { return }
        await self.gateway.shutdown(grace: .seconds(2))
        await self.upstream.close()
        try? await self.group.shutdownGracefully()
    }
}

/// A gateway binary started as a child process, stopped on `stop()`.
package final class GatewayProcess: @unchecked Sendable {
    package let process: Process
    package let logPath: String

    package convenience init(config: String, logPath: String, arguments: [String] = [], environment: [String: String] = [:]) throws {
        try self.init(commandLine: [gatewayBinary(), "run", "-c", config] + arguments, logPath: logPath, environment: environment)
    }

    /// Runs `commandLine` as it is: an installed gateway, or one started as its unit says.
    package init(commandLine: [String], logPath: String, environment: [String: String] = [:]) throws {
        let process = Process()
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
        }
        process.executableURL = URL(fileURLWithPath: commandLine[0])
        process.arguments = Array(commandLine.dropFirst())
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let handle = FileHandle(forWritingAtPath: logPath)
        process.standardError = handle
        process.standardOutput = handle
        try process.run()
        self.process = process
        self.logPath = logPath
    }

    package var pid: Int32 { self.process.processIdentifier }

    package var log: String { (try? String(contentsOfFile: self.logPath, encoding: .utf8)) ?? "" }

    /// Waits (bounded) until `port` accepts connections.
    package func waitForPort(_ port: Int, timeout: TimeInterval = 20) -> Bool {
        Probe.wait(port: port, timeout: timeout) { self.process.isRunning }
    }

    package enum Probe {
        /// Polls (bounded) until `port` accepts a connection, while `alive` holds.
        package static func wait(port: Int, timeout: TimeInterval = 20, alive: () -> Bool = { true }) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if !alive() { return false }
            let fd = connectedSocket(port: port)
            if fd >= 0 {
                close(fd)
                return true
            }
            usleep(50_000)
        }
        return false
        }
    }

    /// Sends `signal` and waits (bounded) for exit; returns the exit status.
    @discardableResult
    package func stop(signal: Int32 = SIGTERM, timeout: TimeInterval = 20) -> Int32 {
        if self.process.isRunning { kill(self.pid, signal) }
        let deadline = Date().addingTimeInterval(timeout)
        while self.process.isRunning && Date() < deadline { usleep(20_000) }
        if self.process.isRunning {
            kill(self.pid, SIGKILL)
            self.process.waitUntilExit()
            return -9
        }
        return self.process.terminationStatus
    }

    deinit {
        if self.process.isRunning { kill(self.pid, SIGKILL) }
    }
}

/// `edge-gateway demo-upstream` as a child process on a free loopback port, stopped on `stop()` or deinit.
package final class DemoUpstreamProcess: @unchecked Sendable {
    package let port = freePort()
    private let process = Process()

    package init() throws {
        self.process.executableURL = URL(fileURLWithPath: gatewayBinary())
        self.process.arguments = ["demo-upstream", "--listen", "127.0.0.1:\(self.port)"]
        self.process.standardError = FileHandle.nullDevice
        try self.process.run()
        guard GatewayProcess.Probe.wait(port: self.port, alive: { self.process.isRunning }) else {
            throw NSError(domain: "demo-upstream did not start", code: 1)
        }
    }

    package func stop() {
        if self.process.isRunning { self.process.terminate() }
        self.process.waitUntilExit()
    }

    deinit { self.stop() }
}

extension GatewayHarness {
    /// Opens a connection to `port` that sends nothing, then drains the gateway with a
    /// 10 s grace period: how long the drain took and whether the connection was closed.
    package func drainWithSilentConnection(port: Int) async -> (seconds: TimeInterval, closed: Bool) {
        let socket = connectedSocket(port: port)
        defer { close(socket) }
        pause(0.2)
        let started = Date()
        await self.gateway.shutdown(grace: .seconds(10))
        let seconds = Date().timeIntervalSince(started)
        var byte: UInt8 = 0
        return (seconds, read(socket, &byte, 1) <= 0)
    }
}
