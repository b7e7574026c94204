// libFuzzer target: the PROXY protocol v1/v2 header decoder (`bench/fuzz`).
import Glibc
@testable import EdgeProxy

/// Invariants: a complete header's length is within the bytes given and within the
/// version's maximum; the client it names is an address in canonical text; the header
/// alone parses to the same result; any prefix of it is incomplete, never a different
/// answer (the decoder is fed reads as they come).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzProxyProtocol(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    guard case .complete(let client, let length)? = try? ProxyProtocol.parse(bytes) else { return 0 }
    precondition(length > 0 && length <= size && length <= ProxyProtocol.v2MaxLength + 16, "length \(length) of \(size)")
    if let client {
        let family = client.ip.contains(":") ? AF_INET6 : AF_INET
        precondition(ProxyProtocol.canonical(client.ip, family: family) == client.ip, "not canonical: \(client.ip)")
    }
    let header = UnsafeRawBufferPointer(rebasing: bytes[0..<length])
    precondition((try? ProxyProtocol.parse(header)) == .complete(client, length: length), "the header alone parses differently")
    for cut in [1, length / 2, length - 1] where cut > 0 && cut < length {
        let prefix = UnsafeRawBufferPointer(rebasing: bytes[0..<cut])
        if let parsed = try? ProxyProtocol.parse(prefix) {
            precondition(parsed == .incomplete, "a prefix of \(cut) bytes parsed as \(parsed)")
        }
    }
    return 0
}
