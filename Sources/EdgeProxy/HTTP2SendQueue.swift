import NIOCore

/// What a connection's streams have written that the client's flow-control windows do
/// not let out yet, for the gateway's own HTTP/2 engine (#32): DATA waits for its
/// stream's window and the connection's, and a stream's trailers wait behind its DATA.
/// `next` hands out what may go now, one frame at a time, taking turns between streams
/// (a stream with a large response does not hold back the others' small ones) and
/// cutting DATA to what the windows and the client's frame size allow. No I/O: the
/// engine writes what it is handed, with its completion on the last piece of each part.
///
/// Field blocks are held as `Fields` (the engine's are encoded already: its encoder keeps
/// no dynamic table, so a block means the same whenever it was encoded, and the engine
/// adds the first block's size update as it writes it).
struct HTTP2SendQueue<Fields, Completion> {
    enum Part {
        case data(ByteBuffer, endStream: Bool)
        /// Trailers (which end the stream), or a head that follows something queued.
        case fields(Fields, endStream: Bool)
    }

    /// A frame to write now; `completion` is the part's, on its last piece.
    enum Frame {
        case data(stream: UInt32, ByteBuffer, endStream: Bool, completion: Completion?)
        case fields(stream: UInt32, Fields, endStream: Bool, completion: Completion?)
    }

    private struct Waiting {
        let stream: UInt32
        var parts: CircularBuffer<(part: Part, completion: Completion?)>
        var bytes: Int
    }

    /// Streams with parts waiting, in turn order.
    private var waiting: [Waiting] = []
    /// Where the next turn starts.
    private var turn = 0

    var isEmpty: Bool { self.waiting.isEmpty }
    /// A stream with parts waiting (to drop them all when the connection ends).
    var firstStream: UInt32? { self.waiting.first?.stream }

    /// DATA bytes waiting on the stream (for its writability).
    func queuedBytes(on stream: UInt32) -> Int {
        for waiting in self.waiting where waiting.stream == stream { return waiting.bytes }
        return 0
    }

    /// Whether the stream has parts waiting: what it writes next must queue behind them.
    func hasParts(on stream: UInt32) -> Bool { self.waiting.contains { $0.stream == stream } }

    mutating func append(_ part: Part, on stream: UInt32, completion: Completion?) {
        var bytes = 0
        if case .data(let data, _) = part { bytes = data.readableBytes }
        if let i = self.waiting.firstIndex(where: { $0.stream == stream }) {
            self.waiting[i].parts.append((part, completion))
            self.waiting[i].bytes += bytes
        } else {
            var parts = CircularBuffer<(part: Part, completion: Completion?)>(initialCapacity: 4)
            parts.append((part, completion))
            self.waiting.append(Waiting(stream: stream, parts: parts, bytes: bytes))
        }
    }

    /// The next frame the windows let out (and the windows taken), or nil when every
    /// waiting stream waits for a window.
    mutating func next(_ state: inout HTTP2ServerConnectionState) -> Frame? {
        var tried = 0
        while tried < self.waiting.count {
            if self.turn >= self.waiting.count { self.turn = 0 }
            let i = self.turn
            guard let frame = self.take(at: i, &state) else {
                tried += 1
                self.turn += 1
                continue
            }
            if self.waiting[i].parts.isEmpty {
                self.waiting.remove(at: i)  // the turn passes to the stream that moved into its place
            } else {
                self.turn += 1
            }
            return frame
        }
        return nil
    }

    private mutating func take(at i: Int, _ state: inout HTTP2ServerConnectionState) -> Frame? {
        let stream = self.waiting[i].stream
        let (part, completion) = self.waiting[i].parts.first!
        switch part {
        case .fields(let fields, let endStream):
            self.waiting[i].parts.removeFirst()
            _ = state.sentHeaders(on: stream, endStream: endStream)
            return .fields(stream: stream, fields, endStream: endStream, completion: completion)
        case .data(var data, let endStream):
            let allowed = state.sendable(on: stream)
            guard allowed > 0 || data.readableBytes == 0 else { return nil }
            if data.readableBytes <= allowed {
                self.waiting[i].parts.removeFirst()
                self.waiting[i].bytes -= data.readableBytes
                state.sentData(on: stream, length: data.readableBytes, endStream: endStream)
                return .data(stream: stream, data, endStream: endStream, completion: completion)
            }
            let piece = data.readSlice(length: allowed)!
            self.waiting[i].parts[self.waiting[i].parts.startIndex] = (.data(data, endStream: endStream), completion)
            self.waiting[i].bytes -= allowed
            state.sentData(on: stream, length: allowed, endStream: false)
            return .data(stream: stream, piece, endStream: false, completion: nil)
        }
    }

    /// The stream was reset or closed: its parts will not go; their completions are given
    /// back to be failed.
    mutating func drop(stream: UInt32) -> [Completion] {
        guard let i = self.waiting.firstIndex(where: { $0.stream == stream }) else { return [] }
        let dropped = self.waiting.remove(at: i)
        if self.turn > i { self.turn -= 1 }
        return dropped.parts.compactMap { $0.completion }
    }
}
