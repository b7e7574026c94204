import NIOCore
import NIOHTTP2

/// A `ProxyHandler` serving one HTTP/2 stream is in no pipeline: `HTTP2Downstream`
/// calls these where NIO called a stream channel's handler. `context` is the
/// connection's (its loop and allocator); reads, closes and writability are the
/// stream's (`HTTP2DownstreamStream`), never the connection's.
extension ProxyHandler {
    /// The stream's HEADERS arrived: it begins (a stream channel's handlerAdded).
    func streamOpened(context: ChannelHandlerContext) {
        self.context = context
    }

    /// A frame of the stream's request.
    func streamReceived(_ payload: HTTP2Frame.FramePayload) {
        guard let stream = self.stream, let bytes = stream.requestBytes(payload) else { return }
        self.received(bytes)
    }

    /// The connection's read batch ended: what went upstream is flushed, and the client
    /// may send more unless the proxy holds it back.
    func streamReadComplete() {
        if self.upstreamNeedsFlush {
            self.upstreamNeedsFlush = false
            self.exchange?.connection?.flush()
        }
        if self.state.readAsked(holding: self.holdsReads) == .read { self.readDownstream() }
    }

    func streamWritabilityChanged(_ writable: Bool) {
        if writable { self.exchange?.connection?.resumeRead() }
    }

    func streamQuiesce() {
        if self.state.quiesce() == .awaitDrainQuiet { self.awaitDrainQuiet() }
    }

    /// The stream is gone (closed both ways, reset, or its connection lost).
    func streamClosed() {
        self.becameInactive()
        self.loop.deadlines.cancel(self)
        self.context = nil
        self.stream?.detach()
    }
}
