// libFuzzer target: the HTTP/2 header block to HTTP/1.1 request bridge (`bench/fuzz`).
import NIOCore
import NIOHPACK
import NIOHTTP2
@testable import EdgeProxy

/// The input is a decoded header block: fields separated by 0xFF, name and value by
/// 0xFE; the first byte's low bit is END_STREAM. Invariants of a block the bridge
/// accepts: the HTTP/1.1 head it makes ends exactly at its end (no field can end it
/// early and start another request), every line ends with CR LF and holds no other
/// CR, LF or NUL, and when the HTTP/1.1 parser accepts it, its method is `:method`'s
/// and its Host is `:authority`'s.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP2Bridge(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let flags = bytes.first else { return 0 }
    var headers = HPACKHeaders()
    for field in bytes.dropFirst().split(separator: 0xFF, omittingEmptySubsequences: false) {
        let parts = field.split(separator: 0xFE, maxSplits: 1, omittingEmptySubsequences: false)
        // HPACKHeaders takes ASCII names only (its decoder's own names are checked by the bridge).
        let name = String(decoding: parts[0].map { $0 & 0x7F }, as: UTF8.self)
        let value = parts.count > 1 ? String(decoding: parts[1], as: UTF8.self) : ""
        headers.add(name: name, value: value)
    }
    checkTrailers(headers)
    let bridge = HTTP2StreamBridge()
    let frame = HTTP2Frame.FramePayload.Headers(headers: headers, endStream: flags & 1 == 1)
    guard let head = bridge.requestHead(frame, allocator: ByteBufferAllocator()) else { return 0 }
    let out = Array(head.readableBytesView)
    precondition(HTTP1Parser.headEnd(in: head, from: 0) == out.count, "the head ends before its end: \(show(out))")
    var i = 0
    while i < out.count {
        switch out[i] {
        case 0:
            preconditionFailure("NUL in \(show(out))")
        case 0x0D:
            precondition(i + 1 < out.count && out[i + 1] == 0x0A, "a bare CR in \(show(out))")
            i += 2
        case 0x0A:
            preconditionFailure("a bare LF in \(show(out))")
        default:
            i += 1
        }
    }
    if let parsed = try? HTTP1Parser.parseRequest(out) {
        precondition(parsed.method == headers.first(name: ":method"), "method \(parsed.method)")
        if let authority = headers.first(name: ":authority"), parsed.method != "CONNECT" {
            precondition(parsed.first(.host) == authority, "host \(parsed.first(.host) ?? "none"), :authority \(authority)")
        }
    }
    return 0
}

/// The same block as a request's trailers: the field lines it makes (or a refusal) can
/// end the chunked body's last chunk only where the block ends, every line is a field
/// line, and the body framer, reading them back, hands out the same lines or refuses
/// them (a field that must not be a trailer); never other lines.
func checkTrailers(_ headers: HPACKHeaders) {
    guard let lines = HTTP2StreamBridge.trailerLines(headers) else { return }
    var last = TrailerSection.lastChunk(lines)
    var framer = BodyFramer.chunked
    let piece: BodyFramer.Piece?
    do {
        piece = try framer.next(from: &last)
    } catch {
        return  // refused: a field that must not be a trailer
    }
    precondition(piece == .end(trailers: lines), "trailers read back as \(String(describing: piece)), not \(show(lines))")
    precondition(last.readableBytes == 0, "the trailers ended early: \(show(lines))")
    let fields = HTTP2StreamBridge.trailerFields(lines)
    precondition(fields.count == headers.count, "\(fields.count) fields back from \(headers.count): \(show(lines))")
}

func show(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self).debugDescription }
