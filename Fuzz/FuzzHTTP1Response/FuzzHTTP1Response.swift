// libFuzzer target: the HTTP/1.1 response head parser (`bench/fuzz`).
@testable import EdgeProxy
import NIOCore
import NIOHPACK

/// Invariants of every response head the parser accepts: a three-digit status of at
/// least 100, never both Content-Length and Transfer-Encoding, a transfer coding only
/// as a single `chunked`, no CR, LF or NUL in a field, and the head written back out
/// parses to the same status, framing and fields; and its HTTP/2 field block
/// (`HPACKResponseEncoder.encodeResponse`) is within the bound the bridge checks and
/// decodes (by NIO's decoder, a client's) to `:status` and the fields that are not
/// hop-by-hop, names in lower case.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP1Response(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let head = try? HTTP1Parser.parseResponse(bytes) else { return 0 }
    precondition((100...999).contains(head.status), "status \(head.status)")
    precondition(!(head.contentLength != nil && (head.chunked || head.otherTransferCoding)), "both Content-Length and Transfer-Encoding")
    precondition(!head.otherTransferCoding, "a transfer coding other than chunked was accepted")
    var out = Array("HTTP/1.\(head.minorVersion) \(head.status) \r\n".utf8)
    var fields: [[UInt8]] = []
    for field in head.fields {
        let name = Array(head.bytes[field.name]), value = Array(head.bytes[field.value])
        for piece in [name, value] {
            precondition(!piece.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 }, "CR, LF or NUL in an accepted field")
        }
        fields += [name, value]
        out += name + Array(": ".utf8) + value + [0x0D, 0x0A]
    }
    out += [0x0D, 0x0A]
    guard let again = try? HTTP1Parser.parseResponse(out) else {
        preconditionFailure("the head as re-serialised does not parse: \(String(decoding: out, as: UTF8.self).debugDescription)")
    }
    precondition(again.status == head.status && again.contentLength == head.contentLength && again.chunked == head.chunked,
                 "re-serialised head frames differently")
    precondition(again.fields.flatMap { [Array(again.bytes[$0.name]), Array(again.bytes[$0.value])] } == fields, "fields differ")

    var block = ByteBuffer()
    HPACKResponseEncoder.encodeResponse(head, hsts: nil, withoutContentLength: false, into: &block)
    precondition(block.readableBytes <= HPACKResponseEncoder.responseSizeBound(head, hsts: nil), "a block over its bound")
    var decoder = HPACKDecoder(allocator: ByteBufferAllocator(), maxDynamicTableSize: 4_096, maxHeaderListSize: 1 << 24)
    guard let decoded = try? decoder.decodeHeaders(from: &block) else { preconditionFailure("the response's block does not decode") }
    var expected = [":status", String(head.status)]
    for field in head.fields where !head.isHopByHop(field) {
        expected += [head.string(field.name).lowercased(), head.string(field.value)]
    }
    precondition(decoded.flatMap { [$0.name, $0.value] } == expected, "the block decodes to other fields")
    return 0
}
