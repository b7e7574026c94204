// libFuzzer target: the HTTP/1.1 request head parser (`bench/fuzz`).
@testable import EdgeProxy

/// Invariants of every head the parser accepts: no CR, LF or NUL in the method, the
/// target or any field (nothing it passes on can end a line upstream); the target is a
/// path in normal form, `*` for OPTIONS, or CONNECT's authority; and the head written
/// back out from its parts parses to the same parts.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1Request(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let head = try? HTTP1Parser.parseRequest(bytes) else { return 0 }
    let parts = Parts(head)
    parts.checkNoLineBreaks()
    // Bytes, not Characters: "/" and a combining mark after it are one Character.
    if head.target.utf8.first == UInt8(ascii: "/") {
        precondition(PathNormalization.normalize(Array(head.target.utf8.prefix { $0 != UInt8(ascii: "?") })) == .unchanged,
                     "an accepted target is not in normal form: \(head.target)")
    } else {
        precondition(head.target == "*" || head.method == "CONNECT", "an accepted target is not a path: \(head.target)")
    }
    guard let again = try? HTTP1Parser.parseRequest(parts.serialized) else {
        preconditionFailure("the head as re-serialised does not parse: \(parts)")
    }
    precondition(Parts(again) == parts, "re-serialised head parses differently: \(parts) vs \(Parts(again))")
    return 0
}

/// A request head's parts as the proxy uses them.
struct Parts: Equatable, CustomStringConvertible {
    var method: String
    var target: String
    var minorVersion: Int
    var fields: [[UInt8]]
    var contentLength: Int?
    var chunked: Bool

    init(_ head: HTTPHead) {
        self.method = head.method
        self.target = head.target
        self.minorVersion = head.minorVersion
        self.fields = head.fields.flatMap { [Array(head.bytes[$0.name]), Array(head.bytes[$0.value])] }
        self.contentLength = head.contentLength
        self.chunked = head.chunked
    }

    var serialized: [UInt8] {
        var out = Array("\(self.method) \(self.target) HTTP/1.\(self.minorVersion)\r\n".utf8)
        for i in stride(from: 0, to: self.fields.count, by: 2) {
            out += self.fields[i] + Array(": ".utf8) + self.fields[i + 1] + [0x0D, 0x0A]
        }
        return out + [0x0D, 0x0A]
    }

    func checkNoLineBreaks() {
        for piece in [Array(self.method.utf8), Array(self.target.utf8)] + self.fields {
            precondition(!piece.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 }, "CR, LF or NUL in an accepted head: \(self)")
        }
    }

    var description: String { String(decoding: self.serialized, as: UTF8.self).debugDescription }
}
