// libFuzzer target: the body framer, chunked and length-delimited (`bench/fuzz`).
import NIOCore
@testable import EdgeProxy

/// The first byte picks the framing (even: chunked; odd: a length from the next two
/// bytes) and the second how the rest arrives (in reads of 1 to 16 bytes, or whole).
/// Invariants: the body, its trailers and where it ends do not depend on how the bytes
/// were split into reads; `.end` comes once and nothing after it; the data never exceeds
/// the input; the trailers are field lines (each a name, a colon and a value without
/// control bytes but HTAB, ending in CR LF).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzBodyFramer(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard bytes.count >= 4 else { return 0 }
    let framer = bytes[0] & 1 == 0 ? BodyFramer.chunked : BodyFramer(length: Int(bytes[2]) << 8 | Int(bytes[3]))
    let step = Int(bytes[1] % 17)  // 0: in one read
    let input = Array(bytes[4...])
    let whole = run(framer, input, step: 0)
    let split = run(framer, input, step: step)
    precondition(whole == split, "the body depends on how it was read: \(whole) vs \(split)")
    if case .ended(let body, let trailers, let rest) = whole {
        precondition(body.count + rest + trailers.count <= input.count)
        var line: [UInt8] = []
        var k = 0
        while k < trailers.count {
            if trailers[k] == 0x0D {
                precondition(k + 1 < trailers.count && trailers[k + 1] == 0x0A, "a bare CR in the trailers")
                precondition(line.contains(UInt8(ascii: ":")) && line.first != UInt8(ascii: ":"), "not a field line")
                line = []
                k += 2
                continue
            }
            precondition(trailers[k] >= 0x20 || trailers[k] == 0x09, "a control byte in the trailers")
            line.append(trailers[k])
            k += 1
        }
        precondition(line.isEmpty, "the trailers do not end with CR LF")
    }
    return 0
}

enum Outcome: Equatable {
    /// The body, its trailer field lines and the bytes left after its end.
    case ended([UInt8], trailers: [UInt8], rest: Int)
    /// More bytes were needed (the body so far).
    case incomplete([UInt8])
    case malformed
}

func run(_ start: BodyFramer, _ input: [UInt8], step: Int) -> Outcome {
    var framer = start
    var buffer = ByteBuffer()
    var body: [UInt8] = []
    var offset = 0
    var ended = false
    var trailers: [UInt8] = []
    repeat {
        let take = step == 0 ? input.count - offset : min(step, input.count - offset)
        buffer.writeBytes(input[offset..<offset + take])
        offset += take
        do {
            while let piece = try framer.next(from: &buffer) {
                switch piece {
                case .data(let data):
                    precondition(!ended, "data after the end")
                    body += data.readableBytesView
                case .end(let section):
                    precondition(!ended, "a second end")
                    ended = true
                    trailers = section
                }
            }
        } catch {
            return .malformed
        }
        if ended { return .ended(body, trailers: trailers, rest: buffer.readableBytes + input.count - offset) }
    } while offset < input.count
    return .incomplete(body)
}
