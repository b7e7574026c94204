/// The receive window of an upstream HTTP/2 connection (`HTTP2UpstreamSession`) served
/// by NIO's connection handler without its stream multiplexer (which would otherwise
/// manage it); the client side's engine grants its own (`HTTP2ServerEngine`). It starts `boost` bytes
/// above the default 65,535, follows the handler's own count
/// (`NIOHTTP2WindowUpdatedEvent`: DATA dropped for a reset stream takes window too, and
/// counted from the frames seen it leaked until the connection stalled), and is topped
/// up once a good part of it was used.
struct HTTP2ConnectionWindow {
    /// What the peer may have in flight on the connection at most.
    let target: Int
    static let threshold = 32 * 1024
    /// What the peer may still send, as NIO last said.
    private(set) var window: Int
    /// An update is written and NIO has not reported a window since it left NIO: NIO's
    /// count does not have it yet (the update may wait in NIO's buffer of control frames
    /// while DATA is counted), and a top-up from that count would grant it twice.
    private var updatePending = false
    private var reportAwaited = false

    /// The window once the connection's first WINDOW_UPDATE (`boost`) went out.
    init(boost: Int) {
        self.target = 65_535 + boost
        self.window = self.target
    }

    mutating func nioReported(_ inbound: Int) {
        self.window = inbound
        if !self.updatePending { self.reportAwaited = false }
    }

    /// The WINDOW_UPDATE increment to write now, if one is due; `updateWritten` once it
    /// has left NIO.
    mutating func topUp() -> Int? {
        guard self.target - self.window >= Self.threshold, !self.updatePending, !self.reportAwaited else { return nil }
        let increment = self.target - self.window
        self.window = self.target
        self.updatePending = true
        return increment
    }

    mutating func updateWritten() {
        self.updatePending = false
        self.reportAwaited = true
    }
}
