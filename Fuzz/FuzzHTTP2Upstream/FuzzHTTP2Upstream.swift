// libFuzzer target: the h2/h2c upstream translation (`HTTP2UpstreamTranslation`), both ways.
import NIOCore
import NIOHPACK
import NIOHTTP2
@testable import EdgeProxy

/// The first byte chooses the direction. Odd: the rest is what the proxy writes to an h2
/// upstream (HTTP/1.1 request bytes), split in two writes at the second byte; the frames
/// it makes must carry a header block HTTP/2 allows (lower-case token names, no CR, LF
/// or NUL in a value, pseudo-headers first), on the stream ID the connection gave, asked
/// for once. Even: the rest is a response header block (fields separated by 0xFF, name
/// and value by 0xFE; bit 1 of the first byte is END_STREAM), then, after a 0xFD, a DATA
/// frame's bytes; the head made of them must say the frame's status, and a body of
/// unknown length must reach the proxy as the DATA frame's bytes, then end.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP2Upstream(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let mode = bytes.first else { return 0 }
    if mode & 1 == 1 {
        checkRequest(Array(bytes.dropFirst()))
    } else {
        checkResponse(Array(bytes.dropFirst()), endStream: mode & 2 == 2)
    }
    return 0
}

func checkRequest(_ input: [UInt8]) {
    var translation = HTTP2UpstreamTranslation(scheme: "https", defaultAuthority: "backend:443")
    let split = min(input.first.map(Int.init) ?? 0, input.count)
    var frames: [HTTP2Frame] = []
    var asked = 0
    let newStream = { () -> HTTP2StreamID in
        asked += 1
        return 5
    }
    do {
        frames += try translation.requestFrames(ByteBuffer(bytes: input[..<split]), newStream: newStream)
        frames += try translation.requestFrames(ByteBuffer(bytes: input[split...]), newStream: newStream)
    } catch {
        return
    }
    precondition(asked <= 1, "asked for \(asked) stream IDs")
    for frame in frames {
        precondition(frame.streamID == 5, "stream \(frame.streamID)")
        guard case .headers(let headers) = frame.payload else { continue }
        var regular = false
        for (name, value, _) in headers.headers {
            if name.hasPrefix(":") {
                precondition(!regular, "a pseudo-header after a field: \(headers.headers)")
                precondition(HTTP2RequestCheck.isFieldValue(value), "CR, LF or NUL in \(name)")
            } else {
                regular = true
                precondition(HTTP2RequestCheck.isFieldName(name) && HTTP2RequestCheck.isFieldValue(value), "field \(name): \(value)")
            }
        }
    }
}

func checkResponse(_ input: [UInt8], endStream: Bool) {
    let parts = input.split(separator: 0xFD, maxSplits: 1, omittingEmptySubsequences: false)
    var headers = HPACKHeaders()
    for field in parts[0].split(separator: 0xFF, omittingEmptySubsequences: false) {
        let pieces = field.split(separator: 0xFE, maxSplits: 1, omittingEmptySubsequences: false)
        let name = String(decoding: pieces[0].map { $0 & 0x7F }, as: UTF8.self)
        headers.add(name: name, value: pieces.count > 1 ? String(decoding: pieces[1], as: UTF8.self) : "")
    }
    var translation = HTTP2UpstreamTranslation(scheme: "http", defaultAuthority: "backend:80")
    guard (try? translation.requestFrames(ByteBuffer(string: "GET / HTTP/1.1\r\nhost: a\r\n\r\n"), newStream: { 1 })) != nil,
          translation.streamID == 1 else {
        preconditionFailure("a plain GET must start a stream")
    }
    let step: HTTP2UpstreamTranslation.ResponseStep
    do {
        step = try translation.responseStep(.headers(.init(headers: headers, endStream: endStream)))
    } catch {
        return
    }
    guard case .head(let parsed) = step.part else {
        precondition(step.part == nil && !step.ended, "an interim response gives nothing")
        return
    }
    precondition(String(parsed.status) == headers.first(name: ":status"), "status \(parsed.status)")
    precondition(HTTP1Parser.headEnd(in: ByteBuffer(bytes: parsed.bytes), from: 0) == parsed.bytes.count, "the head ends before its end: \(show(parsed.bytes))")
    guard parts.count > 1, !step.ended, parsed.chunked else { return }
    // A body of unknown length reaches the proxy as the DATA frame's bytes, then ends.
    guard let next = try? translation.responseStep(.data(.init(data: .byteBuffer(ByteBuffer(bytes: parts[1])), endStream: true))) else {
        preconditionFailure("DATA after a head refused")
    }
    var read: [UInt8] = []
    if case .body(let data) = next.part { read = Array(data.readableBytesView) }
    precondition(read == Array(parts[1]) && next.ended && translation.responseEnded, "body \(show(read)) for \(show(Array(parts[1])))")
}

func show(_ bytes: [UInt8]) -> String { String(decoding: bytes, as: UTF8.self).debugDescription }
