import Atomics
import EdgeTLS
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// A small HTTP/1.1 origin for the README demo, the benchmarks and the tests.
///
/// Paths: `/` greeting; `/echo` streams the body back (a chunked body's trailers
/// too, with `x-echo-body-bytes`); `/sha256` answers the
/// body's SHA-256; `/bytes?n=N` streams N bytes; `/headers` lists the request
/// headers; `/stats` counts connections; `/slow?ms=N` answers late;
/// `/stall?ms=N` sends the head and half the body, the rest N ms later;
/// `/status?code=N` answers with that status (and `&sts=V`, a
/// strict-transport-security field of its own); `/client-cert` names the TLS
/// client certificate's serial.
package final class DemoUpstream: Sendable {
    private let channel: Channel
    private let children: NIOLockedValueBox<[ObjectIdentifier: Channel]>

    /// Starts serving on `host:port` (0 picks a free port), optionally over TLS.
    /// `idleClose` closes keep-alive connections idle that long (as upstreams with short keepalive_timeout do).
    package static func start(host: String = "127.0.0.1", port: Int = 0, tls: TLSContext? = nil, idleClose: TimeAmount? = nil,
                             group: EventLoopGroup) async throws -> DemoUpstream {
        let counters = Counters()
        let children = NIOLockedValueBox<[ObjectIdentifier: Channel]>([:])
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                counters.connections.wrappingIncrement(ordering: .relaxed)
                let id = ObjectIdentifier(channel)
                children.withLockedValue { $0[id] = channel }
                channel.closeFuture.whenComplete { _ in _ = children.withLockedValue { $0.removeValue(forKey: id) } }
                return channel.eventLoop.makeCompletedFuture {
                    if let tls {
                        try channel.pipeline.syncOperations.addHandler(OpenSSLHandler(serverContext: tls))
                    }
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    if let idleClose {
                        try channel.pipeline.syncOperations.addHandler(IdleStateHandler(readTimeout: idleClose))
                    }
                    try channel.pipeline.syncOperations.addHandler(DemoHandler(counters: counters))
                }
            }
        let channel = try await bootstrap.bind(host: host, port: port).get()
        return DemoUpstream(channel: channel, counters: counters, children: children)
    }

    private let counters: Counters

    private init(channel: Channel, counters: Counters, children: NIOLockedValueBox<[ObjectIdentifier: Channel]>) {
        self.channel = channel
        self.counters = counters
        self.children = children
    }

    /// Stops listening and cuts every open connection, like a crashed process.
    package func kill() async {
        try? await self.channel.close()
        let open = self.children.withLockedValue { Array($0.values) }
        for child in open { try? await child.close() }
    }

    package var port: Int { self.channel.localAddress?.port ?? 0 }
    package var connectionCount: Int { self.counters.connections.load(ordering: .relaxed) }
    package var requestCount: Int { self.counters.requests.load(ordering: .relaxed) }

    package func close() async {
        try? await self.channel.close()
    }

    /// Runs until the channel closes (for the CLI).
    package func wait() async throws {
        try await self.channel.closeFuture.get()
    }
}

final class Counters: Sendable {
    let connections = ManagedAtomic<Int>(0)
    let requests = ManagedAtomic<Int>(0)
}

private final class DemoHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Mode { case greet, echo, sha256(SHA256Stream), drain }

    private let counters: Counters
    private var head: HTTPRequestHead?
    private var mode: Mode = .drain
    private var bodyBytes = 0
    private var remainingToSend = 0
    private var sending = false

    init(counters: Counters) {
        self.counters = counters
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Idle keep-alive connection: close it (only between requests).
        if event is IdleStateHandler.IdleStateEvent, self.head == nil {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch Self.unwrapInboundIn(data) {
        case .head(let head):
            self.counters.requests.wrappingIncrement(ordering: .relaxed)
            self.head = head
            self.bodyBytes = 0
            let path = head.uri.split(separator: "?").first.map(String.init) ?? "/"
            switch path {
            case "/echo":
                self.mode = .echo
                var headers = HTTPHeaders([("content-type", "application/octet-stream")])
                if let length = head.headers.first(name: "content-length") {
                    headers.add(name: "content-length", value: length)
                } else {
                    headers.add(name: "transfer-encoding", value: "chunked")
                }
                context.writeAndFlush(Self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            case "/sha256":
                self.mode = .sha256(SHA256Stream())
            case "/reject":
                // Answers at once without reading the body, then closes, as an upstream
                // refusing an upload does (nginx's 413 for client_max_body_size).
                self.mode = .drain
                var closing = head
                closing.headers.replaceOrAdd(name: "connection", value: "close")
                let code = Int(self.query(head, "code") ?? "413") ?? 413
                self.respond(context: context, head: closing, status: HTTPResponseStatus(statusCode: code), body: "rejected \(code)\n")
            default:
                self.mode = .greet
            }
        case .body(let body):
            self.bodyBytes += body.readableBytes
            switch self.mode {
            case .echo:
                context.writeAndFlush(Self.wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            case .sha256(let hasher):
                body.withUnsafeReadableBytes { hasher.update($0) }
            default:
                break
            }
        case .end(let trailers):
            guard let head = self.head else { return }
            switch self.mode {
            case .echo:
                // A chunked echo ends with the request's trailers, and one of its own.
                self.head = nil
                var echoed = trailers
                if trailers != nil { echoed?.add(name: "x-echo-body-bytes", value: "\(self.bodyBytes)") }
                context.writeAndFlush(Self.wrapOutboundOut(.end(echoed)), promise: nil)
            case .sha256(let hasher):
                self.respond(context: context, head: head, status: .ok, body: hasher.finalizeHex() + "\n")
            default:
                self.answer(context: context, head: head)
            }
        }
    }

    private func query(_ head: HTTPRequestHead, _ name: String) -> String? {
        guard let q = head.uri.split(separator: "?", maxSplits: 1).dropFirst().first else { return nil }
        for pair in q.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1)
            if parts.count == 2, parts[0] == name { return String(parts[1]) }
        }
        return nil
    }

    private func answer(context: ChannelHandlerContext, head: HTTPRequestHead) {
        let path = head.uri.split(separator: "?").first.map(String.init) ?? "/"
        switch path {
        case "/bytes":
            let n = Int(self.query(head, "n") ?? "0") ?? 0
            let headers = HTTPHeaders([("content-type", "application/octet-stream"), ("content-length", "\(n)")])
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            self.remainingToSend = n
            self.sending = true
            self.sendMore(context: context)
        case "/headers":
            let text = head.headers.map { "\($0.name.lowercased()): \($0.value)" }.joined(separator: "\n") + "\n"
            self.respond(context: context, head: head, status: .ok, body: text)
        case "/client-cert":
            let tls = try? context.pipeline.syncOperations.handler(type: OpenSSLHandler.self)
            let serial = tls?.peerCertificate?.serialNumberHex ?? "none"
            self.respond(context: context, head: head, status: .ok, body: "client-cert=\(serial)\n")
        case "/stats":
            self.respond(context: context, head: head, status: .ok,
                         body: "connections=\(self.counters.connections.load(ordering: .relaxed)) requests=\(self.counters.requests.load(ordering: .relaxed))\n")
        case "/slow":
            let ms = Int64(self.query(head, "ms") ?? "1000") ?? 1000
            context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: .milliseconds(ms)) {
                self.respond(context: context, head: head, status: .ok, body: "slow \(ms)ms\n")
            }
        case "/stall":
            let ms = Int64(self.query(head, "ms") ?? "1000") ?? 1000
            let headers = HTTPHeaders([("content-type", "text/plain"), ("content-length", "20")])
            context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: .ok, headers: headers))), promise: nil)
            context.writeAndFlush(Self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "first ten\n")))), promise: nil)
            context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: .milliseconds(ms)) {
                guard context.channel.isActive else { return }
                self.head = nil
                context.write(Self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "last ten.\n")))), promise: nil)
                context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
            }
        case "/status":
            let code = Int(self.query(head, "code") ?? "200") ?? 200
            let sts = self.query(head, "sts").map { [("strict-transport-security", $0)] } ?? []
            self.respond(context: context, head: head, status: HTTPResponseStatus(statusCode: code), body: "status \(code)\n", extra: sts)
        default:
            let host = head.headers.first(name: "host") ?? "-"
            self.respond(context: context, head: head, status: .ok,
                         body: "hello from the demo upstream: \(head.method) \(head.uri) host=\(host) body=\(self.bodyBytes)\n")
        }
    }

    private func sendMore(context: ChannelHandlerContext) {
        let chunkSize = 64 * 1024
        while self.remainingToSend > 0 && context.channel.isWritable {
            let n = min(chunkSize, self.remainingToSend)
            var buffer = context.channel.allocator.buffer(capacity: n)
            buffer.writeRepeatingByte(UInt8(ascii: "a") &+ UInt8(self.remainingToSend % 26), count: n)
            self.remainingToSend -= n
            context.writeAndFlush(Self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        }
        if self.remainingToSend == 0 && self.sending {
            self.sending = false
            self.head = nil
            context.writeAndFlush(Self.wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if self.sending && context.channel.isWritable { self.sendMore(context: context) }
        context.fireChannelWritabilityChanged()
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead, status: HTTPResponseStatus, body: String,
                         extra: [(String, String)] = []) {
        self.head = nil
        var buffer = context.channel.allocator.buffer(capacity: body.utf8.count)
        buffer.writeString(body)
        var headers = HTTPHeaders([("content-type", "text/plain"), ("content-length", "\(buffer.readableBytes)")] + extra)
        if !head.isKeepAlive { headers.add(name: "connection", value: "close") }
        context.write(Self.wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        if head.method != .HEAD { context.write(Self.wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil) }
        context.writeAndFlush(Self.wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            if !head.isKeepAlive { context.close(promise: nil) }
        }
    }
}
