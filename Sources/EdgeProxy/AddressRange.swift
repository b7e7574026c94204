#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore

/// An address or a CIDR range ("10.0.0.0/8", "192.0.2.7", "2001:db8::/32"), as nginx's
/// `set_real_ip_from` and `allow` take them. An IPv4 range also holds the IPv4-mapped
/// IPv6 form of its addresses (a dual-stack listener's peers).
package struct AddressRange: Sendable, Equatable, CustomStringConvertible {
    /// The network's bytes (4 or 16), host bits zero.
    private let network: [UInt8]
    private let prefixLength: Int
    package let description: String

    package struct Invalid: Error, CustomStringConvertible {
        package let description: String
    }

    package init(parsing text: String) throws(Invalid) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        let host = String(parts[0])
        guard let bytes = Self.bytes(of: host) else {
            throw Invalid(description: "\"\(text)\" is not an IPv4 or IPv6 address or CIDR range (as 10.0.0.0/8 or 2001:db8::/32)")
        }
        let bits = bytes.count * 8
        var length = bits
        if parts.count == 2 {
            guard parts[1].utf8.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }), let n = Int(parts[1]), (0...bits).contains(n) else {
                throw Invalid(description: "\"\(text)\": the prefix length must be 0 to \(bits)")
            }
            length = n
        }
        let masked = Self.mask(bytes, length)
        guard masked == bytes else {
            // nginx warns "low address bits are meaningless" and goes on; a typo here
            // decides who may claim any client address, so it is an error.
            throw Invalid(description: "\"\(text)\" has bits set after its /\(length) prefix: the range is \(Self.text(masked))/\(length)")
        }
        self.network = masked
        self.prefixLength = length
        self.description = text
    }

    /// Whether `address` (an IP socket address) is in the range.
    package func contains(_ address: SocketAddress) -> Bool {
        var bytes: [UInt8]
        switch address {
        case .v4(let a):
            bytes = withUnsafeBytes(of: a.address.sin_addr) { Array($0) }
        case .v6(let a):
            bytes = withUnsafeBytes(of: a.address.sin6_addr) { Array($0) }
            if self.network.count == 4, bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xFF, bytes[11] == 0xFF {
                bytes = Array(bytes[12...])  // ::ffff:a.b.c.d
            }
        default:
            return false
        }
        return bytes.count == self.network.count && Self.mask(bytes, self.prefixLength) == self.network
    }

    private static func mask(_ bytes: [UInt8], _ length: Int) -> [UInt8] {
        bytes.indices.map { i in
            let keep = min(max(length - i * 8, 0), 8)
            return keep == 0 ? 0 : bytes[i] & ~UInt8(0xFF >> keep)
        }
    }

    private static func bytes(of host: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, host, &v4) == 1 { return withUnsafeBytes(of: v4) { Array($0) } }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, host, &v6) == 1 { return withUnsafeBytes(of: v6) { Array($0) } }
        return nil
    }

    private static func text(_ bytes: [UInt8]) -> String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        return bytes.withUnsafeBytes { raw in
            inet_ntop(bytes.count == 4 ? AF_INET : AF_INET6, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil
                ? String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : "?"
        }
    }
}
