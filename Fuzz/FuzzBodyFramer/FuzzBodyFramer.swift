// libFuzzer target: the body framer, chunked and length-delimited (`bench/fuzz`).
import NIOCore
@testable import EdgeProxy

/// The first byte picks the framing (even: chunked; odd: a length from the next two
/// bytes) and the second how the rest arrives (in reads of 1 to 16 bytes, or whole).
/// Invariants: the body and where it ends do not depend on how the bytes were split
/// into reads; `.end` comes once and nothing after it; the data never exceeds the input.
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
    if case .ended(let body, let rest) = whole { precondition(body.count + rest <= input.count) }
    return 0
}

enum Outcome: Equatable {
    /// The body and the bytes left after its end.
    case ended([UInt8], rest: Int)
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
                case .end:
                    precondition(!ended, "a second end")
                    ended = true
                }
            }
        } catch {
            return .malformed
        }
        if ended { return .ended(body, rest: buffer.readableBytes + input.count - offset) }
    } while offset < input.count
    return .incomplete(body)
}
