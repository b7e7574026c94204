// libFuzzer target: the YAML configuration decoder (`bench/fuzz`).
import EdgeGateway

/// Any file an operator could write: decoding either succeeds or throws an error that
/// names a problem; it never traps (a duration of `infs`, a port past 65535, a key of
/// the wrong type) and never reads a file.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    do {
        _ = try GatewayConfig.parse(yaml: text)
    } catch {
        precondition(!"\(error)".isEmpty, "an error that says nothing")
    }
    return 0
}
