import Atomics
import EdgeTLS
import NIOCore
import NIOPosix
import NIOTLS

#if canImport(Glibc)
import Glibc
#endif

/// One piece of an upstream response, as the byte-level parser finds it.
enum UpstreamResponsePart {
    case head(HTTPHead)
    /// Body bytes, de-chunked.
    case body(ByteBuffer)
    /// The response's end, with a chunked body's trailer field lines (`TrailerSection`).
    case end(trailers: [UInt8])
}

/// Receives one exchange's response parts from an upstream connection.
protocol UpstreamExchangeDelegate: AnyObject {
    /// `connection`: what the exchange holds (nil for a health check's stream, which has no lease).
    func upstreamReceived(_ part: UpstreamResponsePart, from connection: UpstreamConnection?)
    func upstreamFailed(_ error: Error, from connection: UpstreamConnection?)
    func upstreamWritabilityChanged(_ writable: Bool)
    /// The upstream read batch ended: flush what was forwarded, once.
    func upstreamReadComplete()
    /// Whether the downstream can take more bytes; upstream reads wait while it cannot.
    var downstreamWritable: Bool { get }
}

/// Errors of the upstream side, mapped to 502/504 by the proxy.
/// A response head longer than the upstream group's `max_response_head_bytes`.
struct ResponseHeadTooLarge: Error, CustomStringConvertible {
    let limit: Int
    var description: String { "response head larger than max_response_head_bytes (\(self.limit))" }
}

package struct UpstreamError: Error, CustomStringConvertible, Sendable {
    package enum Kind: Sendable {
        case connectFailed, connectTimeout, tlsFailed, readTimeout, writeTimeout, closedEarly, protocolError, noHealthyBackend
        /// The TLS handshake failed (certificate, names, versions, client certificate):
        /// a connect failure, which moves on to another backend and counts towards ejection.
        case tlsHandshake
        /// The response head passed the group's `max_response_head_bytes`.
        case responseHeadTooLarge
        /// The gateway itself could not open a connection (out of descriptors, buffers
        /// or local ports): never the backend's failure.
        case localResources
        /// A gRPC call's deadline (`grpc-timeout`) passed before its response: the client
        /// has given up, so the gateway does too. Never the backend's failure.
        case callDeadline
        /// An HTTP/2 upstream did not process the request: it refused the stream
        /// (REFUSED_STREAM) or left it out of its GOAWAY (RFC 9113 §8.7). Sent again on a
        /// fresh connection whatever its method, when all of it is held.
        case refusedStream
        /// An HTTP/2 upstream reset the request's stream with another code: unlike an idle
        /// keep-alive connection it closed, it had the request and may have acted on it.
        case streamReset
        /// The request cannot go over HTTP/2 to this group (a protocol upgrade, a head or
        /// trailers beyond one HEADERS frame): the client's request, not the backend's failure.
        case cannotCarry
        /// Every HTTP/2 connection to the backend was busy and no more could open
        /// (`max_connections_per_backend`) before the connection timeout: the gateway's
        /// limit, not the backend's failure (Envoy's upstream overflow).
        case streamsExhausted
    }
    package var kind: Kind
    package var backend: String
    package var reason: String
    /// Why the TLS handshake failed, for a handshake failure or timeout.
    package var tlsFailure: UpstreamHandshakeFailure?
    /// False for the requests that waited on one failed HTTP/2 connect after the first:
    /// one connect failed, and the backend's passive health counts it once.
    package var countsAgainstBackend = true

    package init(kind: Kind, backend: String, reason: String, tlsFailure: UpstreamHandshakeFailure? = nil) {
        self.kind = kind
        self.backend = backend
        self.reason = reason
        self.tlsFailure = tlsFailure
    }

    /// A failure of connecting (TCP or the TLS handshake): another backend is tried.
    var isConnectFailure: Bool { self.kind == .connectFailed || self.kind == .connectTimeout || self.kind == .tlsHandshake }
    package var description: String { "upstream \(self.backend): \(self.reason)" }
}

/// What an exchange holds of an upstream: a pooled keep-alive HTTP/1.1 connection, or
/// one stream of a multiplexed HTTP/2 connection (`stream`). Event-loop bound.
final class UpstreamConnection {
    let channel: Channel
    let key: PoolKey
    /// The channel's byte-level handler (on an HTTP/2 connection it parses nothing: the
    /// session sits in front of it).
    let handler: UpstreamHandler
    let backendIndex: Int
    /// Requests served; >0 means the next use is a reuse.
    var uses = 0
    /// The pool's slot for `key`, found when the connection first idled: idling again
    /// needs no lookup.
    var slot: UpstreamPool.Slot?
    /// On an HTTP/2 connection: the exchange's stream, leased from the connection's
    /// session for this exchange alone.
    let stream: HTTP2UpstreamStream?

    init(channel: Channel, key: PoolKey, handler: UpstreamHandler, backendIndex: Int, stream: HTTP2UpstreamStream? = nil) {
        self.channel = channel
        self.key = key
        self.handler = handler
        self.backendIndex = backendIndex
        self.stream = stream
    }

    /// Writes request bytes (head or framed body); sent at the next `flush`.
    func write(_ bytes: ByteBuffer) {
        if let stream {
            stream.session.write(bytes, on: stream)
            return
        }
        // On the channel's loop (the pool is per loop): straight into the pipeline.
        self.channel.pipeline.syncOperations.write(NIOAny(bytes), promise: nil)
    }

    func flush() {
        if let stream {
            stream.session.flush()
        } else {
            self.channel.flush()
        }
    }

    var isWritable: Bool { self.channel.isWritable && (self.stream?.isWritable ?? true) }

    /// Whether the exchange may hand the connection (or stream) back to the pool after
    /// its response, rather than close (or reset) it.
    var reusable: Bool { self.stream?.reusable ?? self.handler.reusable }

    /// Resumes reading after the downstream drained.
    func resumeRead() {
        if let stream {
            stream.session.resumeRead(stream)
        } else {
            self.handler.resumeRead()
        }
    }

    /// Takes the connection for an exchange: its response parts go to `delegate`. (On a
    /// stream, the translation learns of a HEAD or an upgrade from the request's head.)
    func begin(for delegate: any UpstreamExchangeDelegate, headRequest: Bool, upgrade: Bool) {
        if let stream {
            stream.delegate = delegate
            return
        }
        self.handler.owner = .exchange(delegate)
        self.handler.beginExchange(headRequest: headRequest, upgrade: upgrade)
    }

    /// Closes the connection from the exchange's side (a timeout, a broken or abandoned
    /// exchange): its handler reports nothing more to anyone. A stream is reset; the
    /// connection's other streams go on.
    func abandon() {
        if let stream {
            stream.session.end(stream)
            return
        }
        self.handler.owner = .none
        self.channel.close(promise: nil)
    }

    func close() {
        if let stream {
            stream.session.end(stream)
            return
        }
        self.channel.close(promise: nil)
    }
}

/// Who an upstream connection answers to: the exchange using it, the pool it idles
/// in, or nobody (connecting, being handed over, or closed). One field, so a connection
/// cannot be both in an exchange and idle, as a `delegate` and an `idleIn` could.
enum UpstreamOwner {
    case none
    case exchange(any UpstreamExchangeDelegate)
    case pool(UpstreamPool)
}

/// The last handler of an upstream pipeline: parses the response bytes of the
/// current exchange (head, body framing) and hands the parts over, holds reads
/// while the downstream is full, and notices EOF on idle connections so the
/// pool evicts them at once. Requests are written as bytes past this handler.
final class UpstreamHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private enum Phase {
        /// No request outstanding: any byte is a protocol error.
        case idle
        /// Waiting for the response head; `scanned` bytes were searched already.
        case head(headRequest: Bool, scanned: Int)
        case body(BodyFramer)
    }

    // Strong references, cleared when an exchange ends and when the channel closes:
    // a weakly referenced object takes the slow reference-counting path on every
    // retain, which the per-request path cannot afford.
    /// The exchange being served, or the pool the connection idles in.
    var owner = UpstreamOwner.none
    private var delegate: (any UpstreamExchangeDelegate)? {
        if case .exchange(let delegate) = self.owner { return delegate }
        return nil
    }
    private var responseHead = HTTPHead(bytes: [])
    var connection: UpstreamConnection?
    private var context: ChannelHandlerContext?
    private var readPending = false
    private var buffer = ByteBuffer()
    /// A plain connection's first read (see `ReceiveBuffers`); TLS holds its own.
    private var firstRead: ReceiveBufferPin
    private var phase = Phase.idle
    /// Whether the connection may serve another request after the current response.
    var reusable: Bool { self.responseReusable && !self.retired }
    private var responseReusable = true
    /// No request may follow (the connection failed or closed): sticky, where
    /// `responseReusable` is decided anew by each response head.
    private var retired = false
    /// Completed when the connection is usable (after the TLS handshake, if any).
    let ready: EventLoopPromise<Void>
    private let needsHandshake: Bool
    private var handshakeDone = false
    private let backendDescription: String
    /// The group's `max_response_head_bytes`.
    private let maxHeadBytes: Int
    /// Handlers alive in the process: every upstream connection open, pooled or in use,
    /// has one, and a closed one's is freed (tests check that none outlives its channel).
    static let live = ManagedAtomic<Int>(0)

    /// The protocol the TLS handshake must agree by ALPN (`h2`), if any.
    private let requiredALPN: String?
    /// What the TLS handshake agreed by ALPN (an `auto` group speaks HTTP/2 on `h2`).
    private(set) var negotiatedALPN: String?

    init(ready: EventLoopPromise<Void>, needsHandshake: Bool, backend: String, maxHeadBytes: Int = 64 * 1024, requiredALPN: String? = nil,
         http2: Bool = false) {
        self.maxHeadBytes = maxHeadBytes
        self.ready = ready
        self.needsHandshake = needsHandshake
        self.backendDescription = backend
        self.requiredALPN = requiredALPN
        // Over HTTP/2 the session reads the socket; this handler reads nothing.
        self.firstRead = ReceiveBufferPin(enabled: !needsHandshake && !http2)
        Self.live.wrappingIncrement(ordering: .relaxed)
    }

    deinit {
        Self.live.wrappingDecrement(ordering: .relaxed)
    }

    /// A request is about to be written: parse the next response for it. With
    /// `upgrade` (a WebSocket handshake), a `101` makes the connection a tunnel.
    func beginExchange(headRequest: Bool, upgrade: Bool = false) {
        self.phase = .head(headRequest: headRequest, scanned: 0)
        self.upgradeRequested = upgrade
    }
    private var upgradeRequested = false

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    /// The context holds this handler: keeping it would keep both, with the response
    /// head's storage and the first read, after the connection closed (1.6 KB for every
    /// upstream connection ever closed, found by the soak's HTTP/2 clients).
    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        self.owner = .none
        self.connection = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        if !self.needsHandshake { self.ready.succeed(()) }
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = event {
            self.handshakeDone = true
            self.negotiatedALPN = negotiated
            if let required = self.requiredALPN, negotiated != required {
                // Counted as a failed handshake: the backend cannot serve this group.
                let chose = negotiated.map { "chose \($0)" } ?? "chose none"
                let error = UpstreamError(kind: .tlsHandshake, backend: self.backendDescription,
                                          reason: "the upstream did not agree to \(required) by ALPN (\(chose))", tlsFailure: .handshakeFailure)
                self.ready.fail(error)
                context.close(promise: nil)
                return
            }
            self.ready.succeed(())
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        self.firstRead.hold(bytes)
        defer { self.firstRead.recycle(bytes) }
        if self.buffer.readableBytes == 0 {
            self.buffer = bytes
        } else {
            self.buffer.writeBuffer(&bytes)
        }
        do {
            try self.parse()
        } catch let error as ResponseHeadTooLarge {
            self.fail(UpstreamError(kind: .responseHeadTooLarge, backend: self.backendDescription, reason: error.description), context: context)
        } catch {
            self.fail(UpstreamError(kind: .protocolError, backend: self.backendDescription, reason: "invalid HTTP response: \(error)"), context: context)
        }
    }

    private func parse() throws {
        while true {
            if case .body = self.phase {} else if self.buffer.readableBytes == 0 { break }
            guard let delegate = self.delegate, let connection = self.connection else {
                // Bytes on an idle connection: the upstream broke the protocol.
                throw HTTPFramingError.bad("bytes received with no request outstanding")
            }
            switch self.phase {
            case .idle:
                throw HTTPFramingError.bad("bytes received after the response ended")
            case .head(let headRequest, let scanned):
                // The limit holds whether the head's end has arrived or not: checked only
                // while it had not, a 118,928-byte head read in one go went through.
                guard let end = HTTP1Parser.headEnd(in: self.buffer, from: scanned) else {
                    guard self.buffer.readableBytes <= self.maxHeadBytes else { throw ResponseHeadTooLarge(limit: self.maxHeadBytes) }
                    self.phase = .head(headRequest: headRequest, scanned: max(0, self.buffer.readableBytes - 3))
                    return
                }
                guard end <= self.maxHeadBytes else { throw ResponseHeadTooLarge(limit: self.maxHeadBytes) }
                // Parsed in this connection's head storage, which the delegate borrows
                // for the length of its call (below) and the next response reuses.
                self.responseHead.refill(reading: end, from: &self.buffer)
                try HTTP1Parser.parseResponse(&self.responseHead)
                let status = self.responseHead.status
                if status < 200 && !(status == 101 && self.upgradeRequested) {
                    // Interim responses (100, 103) are dropped; 101 only answers an upgrade.
                    guard status != 101 else { throw HTTPFramingError.bad("unexpected 101 Switching Protocols") }
                    self.phase = .head(headRequest: headRequest, scanned: 0)
                    continue
                }
                let framer: BodyFramer
                if status == 101 {
                    // The WebSocket handshake succeeded: from here on the connection
                    // carries the protocol's bytes both ways until one side closes.
                    framer = .untilClose
                    self.responseReusable = false
                    self.phase = .body(.untilClose)
                } else {
                    framer = self.responseHead.responseFramer(toHead: headRequest)
                    self.responseReusable = self.responseHead.keepAlive && framer.state != .untilClose
                    self.phase = framer.isDone ? .idle : .body(framer)
                }
                // The head moves into the part and back (the delegate uses it before it
                // returns): no copy, no reference counting of its arrays and strings.
                var head = HTTPHead(bytes: [])
                swap(&head, &self.responseHead)
                let part = UpstreamResponsePart.head(consume head)
                delegate.upstreamReceived(part, from: connection)
                // A large head's storage is not kept (idle connections would hold it).
                if case .head(let used) = consume part, used.bytes.capacity <= 4_096, used.fields.capacity <= 64 {
                    self.responseHead = used
                }
                if framer.isDone { self.delegate?.upstreamReceived(.end(trailers: []), from: connection) }
            case .body(var framer):
                guard let piece = try framer.next(from: &self.buffer) else {
                    self.phase = .body(framer)
                    self.releaseBufferIfReadOut()
                    return
                }
                switch piece {
                case .data(let data):
                    self.phase = .body(framer)
                    delegate.upstreamReceived(.body(data), from: connection)
                case .end(let trailers):
                    self.phase = .idle
                    delegate.upstreamReceived(.end(trailers: trailers), from: connection)
                }
            }
        }
        self.releaseBufferIfReadOut()
    }

    /// Read out, in any phase: a tunnel or a long response waiting for its next read keeps
    /// no buffer (the next read is adopted as it comes), and the read's buffer is free for
    /// the thread's next read (`ReceiveBuffers.recycle`).
    private func releaseBufferIfReadOut() {
        if self.buffer.readableBytes == 0, self.buffer.capacity > 0 {
            self.buffer = ByteBuffer()
        }
    }

    private func fail(_ error: UpstreamError, context: ChannelHandlerContext) {
        self.retired = true
        self.buffer = ByteBuffer()
        self.ownerLoses(error)
        context.close(promise: nil)
    }

    /// The connection failed or closed: the exchange using it hears why, or the pool it
    /// idles in lets go of it at once. (A failed idle connection stayed pooled while a TLS
    /// close waited up to three seconds for the backend's close_notify, active and the
    /// warmest of its stack: the next request was written into the closing connection and
    /// dropped, and waited for the close to be retried.)
    private func ownerLoses(_ error: Error) {
        guard let connection = self.connection else { return }
        switch self.owner {
        case .exchange(let delegate):
            self.owner = .none
            delegate.upstreamFailed(error, from: connection)
        case .pool(let pool):
            self.owner = .none
            pool.closed(connection)
        case .none:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        self.delegate?.upstreamReadComplete()
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        let wrapped: Error
        if let tls = error as? TLSError, self.needsHandshake, !self.handshakeDone {
            let failure = tls.upstreamFailure ?? (tls.isHandshakeTimeout ? .timeout : tls.isEOFDuringHandshake ? .closed : .other)
            wrapped = UpstreamError(kind: .tlsHandshake, backend: self.backendDescription, reason: tls.description, tlsFailure: failure)
        } else if let io = error as? IOError, self.needsHandshake, !self.handshakeDone, isLocalResourceError(io) {
            // The gateway's own shortage (ENOBUFS, ENOMEM): never the backend's (503, as at connect).
            wrapped = UpstreamError(kind: .localResources, backend: self.backendDescription,
                                    reason: "out of local resources during the TLS handshake: \(String(cString: strerror(io.errnoCode)))")
        } else if let io = error as? IOError, self.needsHandshake, !self.handshakeDone {
            wrapped = UpstreamError(kind: .tlsHandshake, backend: self.backendDescription,
                                    reason: "connection broken during the TLS handshake: \(String(cString: strerror(io.errnoCode))) (errno \(io.errnoCode))",
                                    tlsFailure: .closed)
        } else {
            wrapped = Self.describe(error, backend: self.backendDescription)
        }
        self.ready.fail(wrapped)
        self.ownerLoses(wrapped)
        context.close(promise: nil)
    }

    /// An error of a connection past its handshake, named with the backend.
    static func describe(_ error: Error, backend: String) -> Error {
        if let tls = error as? TLSError, let failure = tls.upstreamFailure {
            // Refused by an alert after our side of the handshake (TLS 1.3 checks our
            // client certificate then), before any response byte: the upstream never
            // read the request, and the backend is as unusable as after a failed handshake.
            return UpstreamError(kind: .tlsHandshake, backend: backend, reason: tls.description, tlsFailure: failure)
        } else if let tls = error as? TLSError {
            return UpstreamError(kind: .tlsFailed, backend: backend, reason: tls.description)
        } else if let io = error as? IOError {
            // Named with the backend and read as strerror says it (NIO's own description
            // of an IOError names neither the peer nor closes its parenthesis).
            return UpstreamError(kind: .closedEarly, backend: backend,
                                 reason: "connection broken: \(String(cString: strerror(io.errnoCode))) (errno \(io.errnoCode))")
        }
        return error
    }

    func channelInactive(context: ChannelHandlerContext) {
        self.retired = true
        if case .body(var framer) = self.phase, framer.endOfStream(), let delegate = self.delegate, let connection = self.connection {
            // A response delimited by the connection's end is complete now.
            self.phase = .idle
            delegate.upstreamReceived(.end(trailers: []), from: connection)
        }
        let error = UpstreamError(kind: .closedEarly, backend: self.backendDescription, reason: "connection closed by the upstream")
        self.ready.fail(error)
        self.ownerLoses(error)
        self.connection = nil
        context.fireChannelInactive()
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        self.delegate?.upstreamWritabilityChanged(self.connection?.isWritable ?? context.channel.isWritable)
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if let delegate = self.delegate, !delegate.downstreamWritable {
            self.readPending = true
            return
        }
        context.read()
    }

    func resumeRead() {
        guard self.readPending, let context = self.context else { return }
        self.readPending = false
        context.read()
    }
}

/// What identifies interchangeable upstream connections: one backend entry of one
/// group (its `BackendState`, held so its identity cannot be reused while the key
/// exists), and the client certificate generation. Keyed by the entry, not the
/// address: two entries that resolve to one address (`localhost:P`, `127.0.0.1:P`)
/// or two groups on one address have their own names, TLS options and figures, and
/// sharing connections counted each one's idle connections and requests against the
/// other.
struct PoolKey: Hashable {
    let backend: BackendState
    /// The backend's address, for messages.
    let address: SocketAddress
    /// The client certificate's generation: a rotated client certificate never
    /// reuses connections made with the old one.
    var generation: Int

    static func == (lhs: PoolKey, rhs: PoolKey) -> Bool {
        lhs.backend === rhs.backend && lhs.generation == rhs.generation
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(ObjectIdentifier(self.backend))
        hasher.combine(self.generation)
    }
}


/// "Connection refused" rather than NIO's nested error descriptions.
/// Whether a connect failed for want of the gateway's own resources: descriptors
/// (EMFILE, ENFILE), socket buffers or memory (ENOBUFS, ENOMEM), local ports
/// (EADDRNOTAVAIL). Counted against the backend, a 0.2 s descriptor spike ejected a
/// healthy backend and turned into 9.3 s of 503 for every client.
func isLocalResourceError(_ error: Error) -> Bool {
    var underlying = error
    if let connection = error as? NIOConnectionError, let first = connection.connectionErrors.first {
        underlying = first.error
    }
    guard let io = underlying as? IOError else { return false }
    return [EMFILE, ENFILE, ENOBUFS, ENOMEM, EADDRNOTAVAIL].contains(io.errnoCode)
}

func connectFailureReason(_ error: Error) -> String {
    var underlying = error
    if let connection = error as? NIOConnectionError, let first = connection.connectionErrors.first {
        underlying = first.error
    }
    if let io = underlying as? IOError {
        return String(cString: strerror(io.errnoCode))
    }
    if case ChannelError.connectTimeout(let amount) = underlying {
        return "timed out after \(amount.nanoseconds / 1_000_000) ms"
    }
    return "\(underlying)"
}
