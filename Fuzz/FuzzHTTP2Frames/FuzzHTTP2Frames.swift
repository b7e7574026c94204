// libFuzzer target: the HTTP/2 frame layer (`HTTP2FrameReader`, `HTTP2FrameWriter`).
import NIOCore
@testable import EdgeProxy

/// The first byte chooses how the rest is read: bit 0, as a server's reader (the client
/// preface is put in front, so that the frames behind it are reached); bits 1-7, how many
/// bytes arrive at a time (1-128). The rest is read twice, whole and in those steps: both
/// must give the same frames and the same error. Every frame the writer can write is
/// written again and read back as the same frame; a DATA frame's flow-controlled length
/// covers its data; a field block stays within its bound. The frames a server reads then
/// go through a connection's state (`drive`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHTTP2Frames(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let mode = bytes.first else { return 0 }
    let server = mode & 1 == 1
    let input = (server ? http2ClientPreface : []) + bytes.dropFirst()
    let whole = read(input, step: input.count, server: server)
    let stepped = read(input, step: Int(mode >> 1) + 1, server: server)
    precondition(whole.frames == stepped.frames && whole.error == stepped.error, "whole \(whole) stepped \(stepped)")
    for frame in whole.frames {
        switch frame {
        case .data(_, let data, _, let flowControlled):
            precondition(data.readableBytes <= flowControlled && flowControlled <= 16_384, "DATA \(data.readableBytes) of \(flowControlled)")
        case .headers(_, let block, _, _), .pushPromise(_, _, let block):
            precondition(block.readableBytes <= fieldBlockBound, "a field block of \(block.readableBytes)")
        default:
            break
        }
        guard let written = rewrite(frame) else { continue }
        let again = read(Array(written.readableBytesView), step: written.readableBytes, server: false, first: false)
        precondition(again.error == nil && again.frames == [frame], "\(frame) read back as \(again)")
    }
    if server { drive(whole.frames) }
    return 0
}

/// The frames through a connection's state, answering each new stream with what the
/// windows allow: the state keeps its bounds whatever the client sends.
func drive(_ frames: [HTTP2WireFrame]) {
    var state = HTTP2ServerConnectionState(limits: .init(maxConcurrentStreams: 4, maxGlitches: 20))
    for frame in frames {
        let received: HTTP2ServerConnectionState.Received
        do {
            received = try state.received(frame)
        } catch {
            return
        }
        switch received {
        case .opened(let id, _, _), .windowOpened(.some(let id), _):
            _ = state.sentHeaders(on: id, endStream: false)
            let length = state.sendable(on: id)
            state.sentData(on: id, length: length, endStream: length % 2 == 1)
        case .data(let id, let data, _, _):
            state.windowGiven(on: nil, increment: data.readableBytes)
            state.windowGiven(on: id, increment: data.readableBytes)
        default:
            break
        }
        precondition(state.streams.count <= 4, "\(state.streams.count) streams")
        precondition(state.connectionReceiveWindow >= 0 && state.connectionReceiveWindow <= 65_535, "window \(state.connectionReceiveWindow)")
        precondition(state.connectionSendWindow <= 0x7FFF_FFFF, "send window \(state.connectionSendWindow)")
        for stream in state.streams {
            precondition(stream.id & 1 == 1 && stream.id <= state.lastStreamID && stream.receiveWindow >= 0 && stream.sendWindow <= 0x7FFF_FFFF, "\(stream)")
            precondition(state.streams.filter { $0.id == stream.id }.count == 1, "stream \(stream.id) twice")
        }
    }
}

let fieldBlockBound = 4_096
let continuationBound = 4
/// Small enough that blocks are rewritten in CONTINUATION frames, large enough that the
/// largest block the reader lets through needs no more of them than it allows.
let rewriteFrameSize = (fieldBlockBound + continuationBound) / (continuationBound + 1) + 1

func read(_ input: [UInt8], step: Int, server: Bool, first: Bool = true) -> (frames: [HTTP2WireFrame], error: HTTP2WireError?) {
    var reader = HTTP2FrameReader(expectsClientPreface: server, maxFieldBlockBytes: fieldBlockBound, maxContinuationFrames: continuationBound)
    var buffer = ByteBuffer()
    if !first {
        HTTP2FrameWriter.settings([], into: &buffer)
        _ = try? reader.next(from: &buffer)
    }
    var frames: [HTTP2WireFrame] = []
    var offset = 0
    while offset < input.count {
        let end = min(input.count, offset + max(step, 1))
        buffer.writeBytes(input[offset..<end])
        offset = end
        do {
            while let frame = try reader.next(from: &buffer) { frames.append(frame) }
        } catch {
            return (frames, error)
        }
    }
    return (frames, nil)
}

/// The frame as the writer writes it, for the frames it writes.
func rewrite(_ frame: HTTP2WireFrame) -> ByteBuffer? {
    var out = ByteBuffer()
    switch frame {
    case .data(let stream, var data, let endStream, let flowControlled) where flowControlled == data.readableBytes:
        HTTP2FrameWriter.dataHeader(stream: stream, length: data.readableBytes, endStream: endStream, into: &out)
        out.writeBuffer(&data)
    case .headers(let stream, let block, let endStream, nil):
        HTTP2FrameWriter.headers(stream: stream, block: block, endStream: endStream, maxFrameSize: rewriteFrameSize, into: &out)
    case .settings(let settings):
        HTTP2FrameWriter.settings(settings, into: &out)
    case .settingsAck:
        HTTP2FrameWriter.settingsAck(into: &out)
    case .ping(let data, let ack):
        HTTP2FrameWriter.ping(data, ack: ack, into: &out)
    case .windowUpdate(let stream, let increment):
        HTTP2FrameWriter.windowUpdate(stream: stream, increment: increment, into: &out)
    case .resetStream(let stream, let code):
        guard let code = HTTP2WireError.Code(rawValue: code) else { return nil }
        HTTP2FrameWriter.resetStream(stream: stream, code: code, into: &out)
    default:
        return nil
    }
    return out
}
