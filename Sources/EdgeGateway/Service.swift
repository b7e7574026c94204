import EdgeCertificates
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import UnixSignals

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
        await withDiscardingTaskGroup { tasks in
            tasks.addTask {
                // SIGHUP re-reads certificates at once.
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    for store in self.gateway.stores { store.reload(reason: "SIGHUP") }
                }
            }
            try? await gracefulShutdown()
            tasks.cancelAll()
        }
        await self.gateway.shutdown(grace: self.gateway.config.shutdownGracePeriod.timeAmount)
    }
}

/// Reads and prepares a configuration file, collecting every problem.
public func loadGateway(configPath: String, logger: Logger) throws -> Gateway {
    let text: String
    do {
        text = try readTextFile(configPath)
    } catch {
        throw ConfigProblems(problems: ["\(configPath): \(error)"])
    }
    let config: GatewayConfig
    do {
        config = try GatewayConfig.parse(yaml: text)
    } catch {
        throw ConfigProblems(problems: ["\(configPath): \(error)"])
    }
    let base = configPath.contains("/") ? String(configPath[..<configPath.lastIndex(of: "/")!]) : "."
    return try Gateway.prepare(config: config, baseDirectory: base.isEmpty ? "/" : base, logger: logger)
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
