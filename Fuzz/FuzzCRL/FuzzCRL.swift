// libFuzzer target: the CRL file reader (`bench/fuzz`), OpenSSL's PEM and DER decoding
// under our wrapper.
import EdgeTLS

/// The input is a CRL file as an operator's job could write it. Invariants: it parses to
/// at least one list or throws (never an empty success); each list's counts and times are
/// sane; parsing is deterministic.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCRL(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let lists = try? RevocationListFile.parse(bytes, path: "fuzz.crl") else { return 0 }
    precondition(!lists.isEmpty, "an empty success")
    for list in lists {
        precondition(list.revokedCount >= 0)
        _ = list.isStale(now: list.thisUpdate)
    }
    precondition((try? RevocationListFile.parse(bytes, path: "fuzz.crl"))?.count == lists.count, "not deterministic")
    return 0
}
