import NIOCore
import NIOHTTP2

/// One exchange's stream on a multiplexed HTTP/2 upstream connection: what the proxy
/// holds (through its `UpstreamConnection`) from the moment the pool leases it until the
/// exchange lets go of it. The translation and the stream's own flow-control and
/// writability figures live here; the connection's I/O is `HTTP2UpstreamSession`'s.
final class HTTP2UpstreamStream {
    /// Strong: the exchange keeps the connection's handler while it holds the stream.
    let session: HTTP2UpstreamSession
    var translation: HTTP2UpstreamTranslation
    /// The exchange the response parts go to, from `begin` until the stream ends.
    var delegate: (any UpstreamExchangeDelegate)?
    /// What the exchange holds; handed to the delegate with every part. Cleared when the
    /// stream ends (the two refer to each other until then).
    var lease: UpstreamConnection?
    /// Flow-controlled response bytes passed on and not yet given back to the stream's
    /// window: given back while the client takes them, held while it does not.
    var unacknowledged = 0
    /// Request body bytes written and not yet on the wire (waiting for the upstream's window).
    var queuedBodyBytes = 0
    /// Whether the exchange may write more request body (`HTTP2UpstreamSession.highWater`).
    var isWritable = true
    /// A failure was reported (or is about to be): nothing more reaches the exchange.
    var failed = false
    /// The exchange let go of the stream (released, abandoned, or failed and dropped).
    var ended = false
    /// Its HEADERS were written and NIO has not said it closed: a stream to reset when the
    /// exchange lets go of it early (NIO may still hold the HEADERS, the upstream's
    /// stream limit reached: the reset drops them).
    var open = false
    /// NIO created the stream (its HEADERS went out, `NIOHTTP2StreamCreatedEvent`): an
    /// error before that means the HEADERS never did, and there is nothing to reset.
    var created = false
    /// Leased from a connection with no stream in flight: if the connection dies before
    /// any answer, the upstream closed it idle and did not read the request, the HTTP/1.1
    /// keep-alive case. (On a busy connection it may have read it: no replay of a POST.)
    var leasedIdle = false
    /// In the session's list of streams that got parts in the current read batch.
    var touched = false

    init(session: HTTP2UpstreamSession, translation: HTTP2UpstreamTranslation) {
        self.session = session
        self.translation = translation
    }

    /// Whether the exchange may release the stream, rather than reset it: its request was
    /// all sent. (The proxy abandons a stream whose response ended first.)
    var reusable: Bool { self.translation.requestEnded }
}

@available(*, unavailable)
extension HTTP2UpstreamStream: Sendable {}
