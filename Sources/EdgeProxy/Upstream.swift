import Atomics
import EdgeTLS
import NIOCore

/// Timeouts of an upstream group.
public struct UpstreamTimeouts: Sendable, Hashable {
    public var connect: TimeAmount = .seconds(5)
    /// From the request sent to the first response byte, and between reads.
    public var read: TimeAmount = .seconds(60)
    /// How long a pooled connection may stay idle.
    public var idle: TimeAmount = .seconds(60)

    public init() {}
}

/// TLS towards an upstream group: one client context plus the names to send and verify.
public final class UpstreamTLS: Sendable {
    public let context: TLSContext
    /// SNI sent to the backend; nil sends none (IP literal backends).
    public let serverName: String?
    /// Names accepted in the backend's certificate; empty when verification is off.
    public let verifyNames: [String]

    public init(context: TLSContext, serverName: String?, verifyNames: [String]) {
        self.context = context
        self.serverName = serverName
        self.verifyNames = verifyNames
    }
}

/// One backend address of a group.
public struct Backend: Sendable, Hashable, CustomStringConvertible {
    public var host: String
    public var port: Int
    public var address: SocketAddress

    public init(host: String, port: Int) throws {
        self.host = host
        self.port = port
        self.address = try SocketAddress.makeAddressResolvingHost(host, port: port)
    }

    public var description: String { self.host.contains(":") ? "[\(self.host)]:\(self.port)" : "\(self.host):\(self.port)" }
}

/// A named list of backends chosen round-robin, with shared options.
public final class UpstreamGroup: Sendable {
    public let name: String
    public let backends: [Backend]
    public let tls: UpstreamTLS?
    public let timeouts: UpstreamTimeouts
    /// Replaces the client's Host header when set.
    public let hostHeader: String?
    public let maxIdlePerBackend: Int
    private let cursor = ManagedAtomic<Int>(0)

    public init(name: String, backends: [Backend], tls: UpstreamTLS?, timeouts: UpstreamTimeouts, hostHeader: String?, maxIdlePerBackend: Int = 128) {
        precondition(!backends.isEmpty, "an upstream group needs a backend")
        self.name = name
        self.backends = backends
        self.tls = tls
        self.timeouts = timeouts
        self.hostHeader = hostHeader
        self.maxIdlePerBackend = maxIdlePerBackend
    }

    /// The next backend in round-robin order.
    public func nextBackendIndex() -> Int {
        let n = self.cursor.loadThenWrappingIncrement(ordering: .relaxed)
        return (n % self.backends.count + self.backends.count) % self.backends.count
    }
}

/// Host/path routing to upstream groups. First matching route wins.
public struct Router: Sendable {
    public struct Route: Sendable {
        /// nil: any host. `*.example.com` matches exactly one more label.
        public var host: String?
        public var pathPrefix: String?
        public var upstream: UpstreamGroup

        public init(host: String?, pathPrefix: String?, upstream: UpstreamGroup) {
            self.host = host?.lowercased()
            self.pathPrefix = pathPrefix
            self.upstream = upstream
        }

        func matches(host: String, path: Substring) -> Bool {
            if let pattern = self.host {
                if pattern.hasPrefix("*.") {
                    guard let dot = host.firstIndex(of: "."), host[host.index(after: dot)...] == pattern.dropFirst(2),
                          dot != host.startIndex else { return false }
                } else if pattern != host {
                    return false
                }
            }
            if let prefix = self.pathPrefix, !path.hasPrefix(prefix) { return false }
            return true
        }
    }

    public var routes: [Route]

    public init(routes: [Route]) {
        self.routes = routes
    }

    /// The group for a request, from its Host (port stripped) and path.
    public func route(host rawHost: String?, uri: String) -> UpstreamGroup? {
        let host = Self.normalizedHost(rawHost)
        let path = uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        return self.routes.first { $0.matches(host: host, path: path) }?.upstream
    }

    static func normalizedHost(_ raw: String?) -> String {
        guard var host = raw?.lowercased() else { return "" }
        if host.hasPrefix("[") {
            if let end = host.firstIndex(of: "]") { host = String(host[host.index(after: host.startIndex)..<end]) }
        } else if let colon = host.lastIndex(of: ":") {
            host = String(host[..<colon])
        }
        if host.hasSuffix(".") { host.removeLast() }
        return host
    }
}
