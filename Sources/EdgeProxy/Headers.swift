import NIOCore
import NIOHTTP1

/// Header rewriting for the proxy hop (RFC 9110 §7.6.1).
enum ProxyHeaders {
    static let hopByHop: Set<String> = [
        "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    ]

    /// Removes hop-by-hop headers, including every header named by Connection.
    static func removeHopByHop(_ headers: inout HTTPHeaders) {
        var named: [String] = []
        for value in headers["connection"] {
            for token in value.split(separator: ",") {
                let name = token.trimmingSpaces().lowercased()
                if !name.isEmpty { named.append(name) }
            }
        }
        for name in named { headers.remove(name: name) }
        for name in hopByHop where headers.contains(name: name) { headers.remove(name: name) }
    }

    static func isChunked(_ headers: HTTPHeaders) -> Bool {
        headers["transfer-encoding"].contains { $0.lowercased().contains("chunked") }
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var s = self
        while let first = s.first, first == " " || first == "\t" { s.removeFirst() }
        while let last = s.last, last == " " || last == "\t" { s.removeLast() }
        return s
    }
}

extension HTTPMethod {
    /// Methods a proxy may replay after a failure on a reused connection (RFC 9110 §9.2.2).
    var isIdempotent: Bool {
        switch self {
        case .GET, .HEAD, .OPTIONS, .TRACE, .PUT, .DELETE: return true
        default: return false
        }
    }
}

extension SocketAddress {
    /// `127.0.0.1:8443` or `[::1]:8443`, as operators write addresses (NIO's own
    /// description adds the family and the host name twice).
    public var hostPort: String {
        guard let ip = self.ipAddress, let port = self.port else { return "\(self)" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
