import NIOCore
import NIOHTTP2

/// One client stream of an HTTP/2 connection served by `HTTP2Downstream`: what a
/// stream channel was to the proxy before (its reads, writes, writability and close),
/// as a small object in the connection's table instead of a channel and pipeline per
/// stream. Its proxy (`ProxyHandler`, with the stream's `HTTP2StreamBridge`) writes
/// frames through it; the connection hands it the frames that arrive.
final class HTTP2DownstreamStream {
    let id: UInt32
    /// The connection's handler; unowned: the connection's table holds the stream, and
    /// the stream is gone from it before the handler is.
    unowned let connection: HTTP2Downstream
    /// The stream's proxy, until the stream is done with it (`finish`).
    var proxy: ProxyHandler?
    /// DATA received (as flow control counts it) and not yet given back to the client by
    /// a WINDOW_UPDATE: given back as the proxy reads, so a request whose upstream cannot
    /// take its body holds the client back by this stream's window alone.
    var unacknowledged = 0
    /// Response DATA written into the engine and still in its queue (the client's window
    /// closed, or the channel not writable): `HTTP2Downstream.dataDone` counts it out.
    var queuedBytes = 0
    /// What the proxy was last told about writability.
    var reportedWritable = true
    /// The client has sent END_STREAM (or the stream closed): no WINDOW_UPDATE is due.
    var requestEnded = false
    /// The engine closed the stream, or it was reset here: nothing more is written on it.
    var closed = false
    /// The response's last frame (END_STREAM) was written.
    var responseEnded = false
    /// The proxy was told the stream is gone (once).
    var finished = false
    /// Got frames in the current read batch: its proxy's read completes at the batch's end.
    var touched = false
    /// Pieces of response DATA the engine has finished with (handed to the channel, or
    /// refused), and the
    /// client's WINDOW_UPDATEs for the stream: the stall sweep
    /// (`HTTP2Downstream.sweepStalled`) compares their sum between sweeps.
    var writesDone: UInt32 = 0
    var windowUpdates: UInt32 = 0
    var progressAtSweep: UInt32 = 0
    /// Sweeps in a row that found response bytes waiting and none of them gone out.
    var stalledSweeps = 0

    /// Response bytes buffered above which the proxy stops reading its upstream, and
    /// below which it resumes: as NIO's upstream stream channels' watermarks in the
    /// upstream session.
    static let highWater = 64 * 1024
    static let lowWater = 32 * 1024
    /// Window given back once this much was read: half the stream's 65,535-byte window.
    static let windowUpdateThreshold = 32 * 1024

    init(id: UInt32, connection: HTTP2Downstream) {
        self.id = id
        self.connection = connection
    }

    var allocator: ByteBufferAllocator { self.connection.allocator }
    var eventLoop: any EventLoop { self.connection.eventLoop }

    /// The response may take more: little of it is buffered, and the connection is writable.
    var isWritable: Bool { self.queuedBytes < Self.highWater && self.connection.isWritable }

    /// A frame of the response (or a reset, a 100 Continue).
    func write(_ payload: HTTP2Frame.FramePayload, promise: EventLoopPromise<Void>?) {
        guard !self.closed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        switch payload {
        case .rstStream: self.closed = true
        case .headers(let headers) where headers.endStream: self.responseEnded = true
        case .data(let data) where data.endStream: self.responseEnded = true
        default: break
        }
        self.connection.write(payload, on: self, promise: promise)
    }

    /// The response's HEADERS (or trailers), encoded by `encode` where they are written
    /// (`HTTP2ServerEngine.sendFields`).
    func writeFields(endStream: Bool, encode: (inout ByteBuffer) -> Void) {
        guard !self.closed else { return }
        if endStream { self.responseEnded = true }
        self.connection.writeFields(on: self, endStream: endStream, encode: encode)
    }

    func flush() {
        self.connection.flush()
    }

    /// The proxy reads on: the window of what it took goes back to the client.
    func read() {
        self.connection.giveBack(self)
    }

    /// Ends the stream from the proxy's side, as closing a stream channel did: reset with
    /// CANCEL if it is still open, and the proxy is told it is gone. Not once both sides
    /// ended: the response's end may still wait in the engine for the client's window, and a
    /// reset would drop it.
    func close() {
        if !self.closed, !(self.responseEnded && self.requestEnded) { self.write(.rstStream(.cancel), promise: nil) }
        self.connection.flush()
        self.connection.finishLater(self)
    }

    /// Resets the stream with CANCEL whatever was written (a frame of it was refused, so
    /// what it wrote may never have gone out), unless it was reset already.
    func reset() {
        if !self.closed { self.write(.rstStream(.cancel), promise: nil) }
        self.connection.flush()
        self.connection.finishLater(self)
    }
}

@available(*, unavailable)
extension HTTP2DownstreamStream: Sendable {}
