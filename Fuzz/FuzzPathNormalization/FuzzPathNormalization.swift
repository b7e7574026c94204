// libFuzzer target: the request-path normaliser (`bench/fuzz`).
@testable import EdgeProxy

/// Invariants: normalising is idempotent; a normal path starts with `/`, has no `.` or
/// `..` segment and no percent-encoded unreserved character or lower-case hex digit;
/// `%2F` is never decoded (the number of `/` never grows); a path that is reported
/// unchanged is already normal.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzPathNormalization(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let path = [UInt8(ascii: "/")] + Array(UnsafeBufferPointer(start: data, count: size))
    let normal: [UInt8]
    switch PathNormalization.normalize(path) {
    case .malformed, .ambiguous:
        return 0
    case .unchanged:
        normal = path
    case .normalized(let bytes):
        normal = bytes
        precondition(PathNormalization.normalize(bytes) == .unchanged, "not idempotent: \(show(path)) -> \(show(bytes))")
        precondition(bytes.filter { $0 == UInt8(ascii: "/") }.count <= path.filter { $0 == UInt8(ascii: "/") }.count, "a / appeared")
    }
    precondition(normal.first == UInt8(ascii: "/"))
    for segment in normal.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropFirst() {
        precondition(!segment.elementsEqual([0x2E]) && !segment.elementsEqual([0x2E, 0x2E]), "a dot segment in \(show(normal))")
    }
    var i = 0
    while i < normal.count {
        if normal[i] == UInt8(ascii: "%") {
            let high = PathNormalization.hexValue(normal[i + 1])!, low = PathNormalization.hexValue(normal[i + 2])!
            precondition(!PathNormalization.isUnreserved(high << 4 | low), "an encoded unreserved character in \(show(normal))")
            precondition(!(normal[i + 1...i + 2].contains { (0x61...0x66).contains($0) }), "lower-case hex in \(show(normal))")
            i += 3
        } else {
            i += 1
        }
    }
    return 0
}

func show(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self).debugDescription }
