import NIOCore
import NIOHTTP1

// Small extensions the request path shares. (The hop-by-hop header helpers that were here
// were unused: the head writer in ProxyHandler drops hop-by-hop fields as it writes.)

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
    package var hostPort: String {
        guard let ip = self.ipAddress, let port = self.port else { return "\(self)" }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}
