import EdgeCertificates
import NIOCore
import NIOHTTP1
import NIOPosix

/// The gateway's version, shown by `--version` and `/status`.
public let gatewayVersion = "0.1.0"

extension Gateway {
    func bindAdmin(group: EventLoopGroup, pools: PoolRegistry) async throws -> Channel {
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    try channel.pipeline.syncOperations.addHandler(AdminHandler(gateway: self))
                }
            }
        return try await bootstrap.bind(to: self.adminAddress).get()
    }

    /// The `/status` document.
    func statusJSON() -> String {
        let now = currentEpochSecondsForStatus()
        let listeners = self.listeners.map { plan -> String in
            let port = self.boundPort(listener: plan.name).map(String.init) ?? "null"
            return "{\"name\":\(jsonString(plan.name)),\"address\":\(jsonString("\(plan.host):\(plan.port)")),\"port\":\(port),\"tls\":\(plan.tlsContext != nil)}"
        }
        let certificates = self.stores.flatMap { store -> [String] in
            let snapshot = store.snapshot
            return snapshot.lineages.map { lineage in
                let leaf = lineage.leaf
                return "{\"name\":\(jsonString(lineage.name)),\"serial\":\(jsonString(leaf.serialNumberHex)),"
                    + "\"names\":[\(lineage.serverNames.map(jsonString).joined(separator: ","))],"
                    + "\"not_after\":\(leaf.notAfter),\"seconds_remaining\":\(max(0, leaf.notAfter - now)),"
                    + "\"generation\":\(snapshot.generation),\"source\":\(jsonString(lineage.files.source.description))}"
            }
        }
        let problems = self.stores.flatMap { $0.problems }.map {
            "{\"name\":\(jsonString($0.name)),\"error\":\(jsonString($0.error)),\"since\":\($0.since),\"serving_previous\":\($0.servingPrevious)}"
        }
        let generation = self.sharedStore?.snapshot.generation ?? self.stores.first?.snapshot.generation ?? 0
        return "{\"version\":\(jsonString(gatewayVersion)),\"uptime_seconds\":\(Int(currentTime() - self.startTime)),"
            + "\"ready\":\(self.isReady),\"snapshot_generation\":\(generation),"
            + "\"live_snapshots\":\(CertificateSnapshot.liveCount),"
            + "\"last_reload\":{\"time\":\(self.sharedStore?.lastReload.time ?? 0),\"result\":\(jsonString(self.sharedStore?.lastReload.result ?? "n/a"))},"
            + "\"listeners\":[\(listeners.joined(separator: ","))],"
            + "\"certificates\":[\(certificates.joined(separator: ","))],"
            + "\"certificate_problems\":[\(problems.joined(separator: ","))]}\n"
    }
}

func currentEpochSecondsForStatus() -> Int64 { Int64(currentTime()) }

func jsonString(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        default:
            if scalar.value < 0x20 {
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
    }
    return out + "\""
}

/// `GET /healthz`, `/readyz`, `/status` on the loopback admin listener.
final class AdminHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let gateway: Gateway
    private var head: HTTPRequestHead?

    init(gateway: Gateway) {
        self.gateway = gateway
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head = self.head else { return }
            self.head = nil
            let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            let (status, type, body): (HTTPResponseStatus, String, String)
            switch (head.method, path) {
            case (.GET, "/healthz"):
                (status, type, body) = (.ok, "text/plain", "ok\n")
            case (.GET, "/readyz"):
                let ready = self.gateway.isReady
                (status, type, body) = (ready ? .ok : .serviceUnavailable, "text/plain", ready ? "ready\n" : "not ready\n")
            case (.GET, "/status"):
                (status, type, body) = (.ok, "application/json", self.gateway.statusJSON())
            case (.POST, "/reload"):
                let reports = self.gateway.stores.map { $0.reload(reason: "admin /reload") }
                let published = reports.contains { $0.published }
                (status, type, body) = (.ok, "text/plain", published ? "reloaded: new certificates published\n" : "reloaded: nothing changed\n")
            default:
                (status, type, body) = (.notFound, "text/plain", "not found; try /healthz, /readyz, /status\n")
            }
            var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
            buffer.writeString(body)
            let headers = HTTPHeaders([("content-type", type), ("content-length", "\(buffer.readableBytes)"), ("cache-control", "no-store")])
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
            context.write(Self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
            if !head.isKeepAlive { context.close(promise: nil) }
        }
    }
}
