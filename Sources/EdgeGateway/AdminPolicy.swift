import EdgeTLS
import NIOHTTP1

#if canImport(Glibc)
import Glibc
#endif

/// Which requests the admin endpoint answers at all: a pure decision on the request
/// head, taken before any route.
///
/// The endpoint listens on loopback, but a web page in the operator's browser can still
/// reach it: by DNS rebinding (its own name resolving to 127.0.0.1, so the request
/// carries that name as Host) or by a cross-site "simple" POST, which a browser sends
/// without asking first. So a request is answered only when its Host is an IP literal,
/// `localhost` or a name in `admin.allowed_hosts`; a cross-site request (`Sec-Fetch-Site`,
/// or an `Origin` naming another host) is refused; and `POST /reload` must be a request
/// no browser sends cross-site without a preflight (a custom header or a JSON body).
struct AdminRequestPolicy: Sendable {
    /// Host names (without port) besides IP literals and `localhost`.
    var allowedHosts: Set<String> = []

    /// The header a reload request carries (or `content-type: application/json`).
    static let reloadHeader = "x-edge-gateway-reload"

    /// Why `head` is refused (status and a line of text), or nil to answer it.
    func refusal(_ head: HTTPRequestHead) -> (HTTPResponseStatus, String)? {
        let hosts = head.headers["host"]
        if hosts.count > 1 { return (.badRequest, "more than one Host\n") }
        if let host = hosts.first, !self.admits(host: host) {
            return (.misdirectedRequest, "Host '\(host)' is not this admin endpoint's (an IP address, localhost or admin.allowed_hosts)\n")
        }
        if let site = head.headers["sec-fetch-site"].first?.lowercased(), site != "same-origin", site != "none" {
            return (.forbidden, "cross-site request refused (Sec-Fetch-Site: \(site))\n")
        }
        if let origin = head.headers["origin"].first, origin != "null" || head.method != .GET {
            guard let host = Self.originHost(origin), self.admits(host: host) else {
                return (.forbidden, "cross-site request refused (Origin: \(origin))\n")
            }
        }
        if head.method == .POST, head.uri.split(separator: "?").first == "/reload" {
            let json = head.headers["content-type"].first?.lowercased().hasPrefix("application/json") ?? false
            guard json || head.headers.contains(name: Self.reloadHeader) else {
                return (.forbidden, "a reload needs the header '\(Self.reloadHeader): 1' (or a JSON body), which a browser does not send cross-site\n")
            }
        }
        return nil
    }

    /// `host` (a Host value: a name or address, perhaps with a port) may name this endpoint.
    func admits(host: String) -> Bool {
        let name = Self.stripPort(host).lowercased()
        return name == "localhost" || isIPAddress(name) || self.allowedHosts.contains(name)
    }

    static func stripPort(_ host: String) -> String {
        if host.hasPrefix("[") {
            guard let end = host.firstIndex(of: "]") else { return host }
            return String(host[host.index(after: host.startIndex)..<end])
        }
        if let colon = host.lastIndex(of: ":"), host.firstIndex(of: ":") == colon { return String(host[..<colon]) }
        return host
    }

    /// The host of an `Origin` value (`scheme://host[:port]`).
    static func originHost(_ origin: String) -> String? {
        guard let range = origin.range(of: "://") else { return nil }
        let rest = origin[range.upperBound...]
        return String(rest.prefix { $0 != "/" })
    }
}

/// Whether `host` (an address's host part) is loopback: 127.0.0.0/8, ::1 or `localhost`.
/// Parsed, not compared as text: `127.evil.example` is a name, not a loopback address.
func isLoopbackHost(_ host: String) -> Bool {
    if host.lowercased() == "localhost" { return true }
    var v4 = in_addr()
    if inet_pton(AF_INET, host, &v4) == 1 { return UInt32(bigEndian: v4.s_addr) >> 24 == 127 }
    var v6 = in6_addr()
    if inet_pton(AF_INET6, host, &v6) == 1 {
        return withUnsafeBytes(of: &v6) { bytes in bytes.prefix(15).allSatisfy { $0 == 0 } && bytes[15] == 1 }
    }
    return false
}
