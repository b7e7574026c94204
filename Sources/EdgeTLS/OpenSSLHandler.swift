import Atomics
import NIOCore
import NIOTLS

/// Tunables of the handler.
package struct TLSHandlerConfiguration: Sendable {
    /// Slow or silent peers are dropped after this long without a finished handshake.
    package var handshakeTimeout: TimeAmount = .seconds(10)
    /// How long to wait for the peer's close_notify after sending ours.
    package var shutdownTimeout: TimeAmount = .seconds(3)
    /// The channel reads as `ReceiveBuffers.configure` sets up, and this handler is
    /// first in its pipeline: it holds the first read buffer (`ReceiveBufferPin`).
    package var holdsFirstRead = false
    /// Told when the connection closes (when this handler leaves its pipeline, which
    /// it does only then): the connection's first handler counts it closed, without a
    /// callback on the channel's close future (a closure and a callback-list entry on
    /// the heap of every open connection).
    package var closeObserver: (any ConnectionCloseObserver)?

    package init() {}
}

/// Counts connections closing (a listener's open-connection gauge).
package protocol ConnectionCloseObserver: AnyObject, Sendable {
    func connectionClosed()
}

/// TLS for a NIO channel on the system OpenSSL, server or client side.
///
/// Ciphertext flows through a BIO over ByteBuffers (see `TLSConnection`). Writes
/// are buffered until `flush` and encrypted in one batch with one `writeAndFlush`. `read` is passed
/// through untouched, so an application that stops reading stops the socket
/// too. Fires `TLSUserEvent.handshakeCompleted(negotiatedProtocol:)` like
/// swift-nio-ssl does, so NIO's ALPN and HTTP/2 handlers work unchanged.
package final class OpenSSLHandler: ChannelDuplexHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer
    package typealias InboundOut = ByteBuffer
    package typealias OutboundIn = ByteBuffer
    package typealias OutboundOut = ByteBuffer

    private enum State {
        case idle
        case handshaking
        case active
        case closing(Scheduled<Void>?)
        case closed
    }

    private struct BufferedWrite {
        var data: ByteBuffer
        var promise: EventLoopPromise<Void>?
    }

    private let connection: TLSConnection
    private let configuration: TLSHandlerConfiguration
    private var state: State = .idle
    private var bufferedWrites: [BufferedWrite] = []
    /// The other half of a double buffer for `bufferedWrites`: swapped in while a batch is
    /// encrypted, so the array storage is reused instead of reallocated per flush.
    private var spareWrites: [BufferedWrite] = []
    /// Where small writes are joined into one record; owned, so joining never reallocates.
    private var staging = ByteBuffer()
    /// See `coalesceFlushes()`.
    private var flushesCoalesced = false
    private var flushScheduled = false
    private var handshakeTimer: Scheduled<Void>?
    private var closePromise: EventLoopPromise<Void>?
    private var receivedAnyBytes = false
    private var deliveredData = false
    /// `compactReads()`: plaintext is handed on in a buffer of its own size.
    private var readsCompacted = false
    private var firstRead: ReceiveBufferPin
    /// OpenSSL's record buffers as `releaseRecordBuffersIfQuiet` sees them: records moved
    /// since it last looked, none moved (the buffers may be held), or given back.
    private enum RecordBuffers {
        case moved
        case quiet
        case released
    }
    private var recordBuffers = RecordBuffers.moved
    /// Record buffers given back, by every connection of the process: what tells a test
    /// exactly that each quiet connection gave its buffers back, where the heap, shared
    /// with everything else the process does, can only say roughly how much.
    private static let releases = ManagedAtomic(0)
    package static var recordBufferReleases: Int { Self.releases.load(ordering: .relaxed) }

    /// A server-side handler for connections accepted on `context`'s listener.
    package init(serverContext context: TLSContext, configuration: TLSHandlerConfiguration = .init()) throws {
        precondition(context.isServer, "serverContext must be a server context")
        self.connection = try TLSConnection(context: context)
        self.configuration = configuration
        self.firstRead = ReceiveBufferPin(enabled: configuration.holdsFirstRead)
    }

    /// A client-side handler: sends `serverName` as SNI and accepts a certificate
    /// for any of `verifyHostnames` (when the context verifies), each checked on its own
    /// against the subject alternative names (and the CN of a certificate without any,
    /// with `allowCommonName`). `alpn` replaces the context's ALPN offer for this
    /// connection only.
    package init(
        clientContext context: TLSContext,
        serverName: String?,
        verifyHostnames: [String],
        allowCommonName: Bool = false,
        sessionSlot: TLSSessionSlot? = nil,
        alpn: [String]? = nil,
        configuration: TLSHandlerConfiguration = .init()
    ) throws {
        precondition(!context.isServer, "clientContext must be a client context")
        self.connection = try TLSConnection(context: context, serverName: serverName, verifyHostnames: verifyHostnames,
                                            allowCommonName: allowCommonName, sessionSlot: sessionSlot, alpn: alpn)
        self.configuration = configuration
        self.firstRead = ReceiveBufferPin(enabled: configuration.holdsFirstRead)
    }

    /// The peer's certificate (valid after `handshakeCompleted`).
    package var peerCertificate: X509Certificate? { self.connection.peerCertificate }
    /// The SNI name the client sent, as sent; nil without one.
    package var serverName: String? { self.connection.serverName }

    /// Whether the handshake resumed an earlier session (valid after `handshakeCompleted`).
    package var sessionReused: Bool { self.connection.sessionReused }

    /// TLS 1.3: the server asked for our certificate and, since our side of the handshake
    /// ended, has sent neither a session ticket (it accepted it) nor an alert (it refused it).
    package var awaitsClientCertificateVerdict: Bool { self.connection.awaitsClientCertificateVerdict }

    /// Whether the peer has sent anything yet (a draining gateway closes a connection
    /// that stays silent, and lets one whose ClientHello has begun finish).
    package var hasReceivedBytes: Bool { self.receivedAnyBytes }

    /// The handshake is done (the connection carries application data, or is closing).
    package var handshakeCompleted: Bool {
        switch self.state {
        case .active, .closing: return true
        case .idle, .handshaking, .closed: return false
        }
    }

    /// For a context that keeps OpenSSL's record buffers (a client context: see
    /// `TLSContext.client`): gives them back if no record was read or written since the
    /// last call. Called every second, so a connection quiet for one to two seconds, idle
    /// in the pool or in a long exchange (a WebSocket, a slow response), holds none.
    /// On the channel's event loop.
    package func releaseRecordBuffersIfQuiet() {
        guard case .active = self.state else { return }
        switch self.recordBuffers {
        case .moved:
            self.recordBuffers = .quiet
        case .quiet:
            self.recordBuffers = .released
            self.connection.releaseRecordBuffers()
            Self.releases.wrappingIncrement(ordering: .relaxed)
        case .released:
            break
        }
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive {
            self.startHandshake(context: context)
        }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.handshakeTimer?.cancel()
        self.handshakeTimer = nil
        self.failBufferedWrites(ChannelError.ioOnClosedChannel)
        self.configuration.closeObserver?.connectionClosed()
    }

    package func channelActive(context: ChannelHandlerContext) {
        self.startHandshake(context: context)
        context.fireChannelActive()
    }

    private func startHandshake(context: ChannelHandlerContext) {
        guard case .idle = self.state else { return }
        self.state = .handshaking
        let timeout = self.configuration.handshakeTimeout
        self.handshakeTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: timeout) {
            guard case .handshaking = self.state else { return }
            self.fail(context: context, error: .handshakeTimeout)
        }
        if !self.connection.context.isServer {
            self.doHandshake(context: context)
        }
    }

    package func channelInactive(context: ChannelHandlerContext) {
        self.handshakeTimer?.cancel()
        self.handshakeTimer = nil
        switch self.state {
        case .idle, .handshaking:
            if self.receivedAnyBytes || !self.connection.context.isServer {
                context.fireErrorCaught(TLSError.eofDuringHandshake)
            }
        case .active:
            context.fireErrorCaught(TLSError.uncleanShutdown)
        case .closing(let timer):
            timer?.cancel()
        case .closed:
            break
        }
        self.state = .closed
        self.failBufferedWrites(ChannelError.ioOnClosedChannel)
        if let promise = self.closePromise {
            self.closePromise = nil
            promise.succeed(())
        }
        context.fireChannelInactive()
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // `self.unwrapInboundIn` and `NIOAny(_:)`, not NIO's static `Self.unwrapInboundIn` /
        // `Self.wrapOutboundOut`: with this toolchain the static forms stay unspecialised
        // (a dynamic cast and two metadata lookups per call, ~5 % of a proxied request).
        let buffer = self.unwrapInboundIn(data)
        self.firstRead.hold(buffer)
        defer { self.firstRead.recycle(buffer) }
        self.receivedAnyBytes = true
        switch self.state {
        case .closed:
            return
        case .idle:
            self.state = .handshaking
            self.connection.consume(buffer)
            self.doHandshake(context: context)
        case .handshaking:
            self.connection.consume(buffer)
            self.doHandshake(context: context)
        case .active, .closing:
            self.recordBuffers = .moved
            self.connection.consume(buffer)
            self.decrypt(context: context)
        }
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        // Deliver read-complete only after plaintext was delivered; during the
        // handshake the application has nothing to complete.
        if self.deliveredData {
            self.deliveredData = false
            context.fireChannelReadComplete()
        }
    }

    private func doHandshake(context: ChannelHandlerContext) {
        switch self.connection.doHandshake() {
        case .incomplete:
            self.sendOutbound(context: context)
        case .failed(let reason):
            self.fail(context: context, error: TLSError(.handshakeFailed, reason, upstreamFailure: self.connection.upstreamFailure))
        case .complete:
            self.handshakeTimer?.cancel()
            self.handshakeTimer = nil
            self.state = .active
            self.sendOutbound(context: context)
            context.fireUserInboundEventTriggered(TLSUserEvent.handshakeCompleted(negotiatedProtocol: self.connection.negotiatedProtocol))
            // Writes issued while handshaking go out now; then any early data.
            self.encryptBufferedWrites(context: context)
            self.decrypt(context: context)
        }
    }

    private func decrypt(context: ChannelHandlerContext) {
        readLoop: while true {
            switch self.connection.read() {
            case .data(let plaintext):
                if case .active = self.state {
                    self.deliveredData = true
                    if self.readsCompacted {
                        context.fireChannelRead(NIOAny(context.channel.allocator.buffer(bytes: plaintext.readableBytesView)))
                    } else {
                        context.fireChannelRead(NIOAny(plaintext))
                    }
                }
                if case .closed = self.state { return }
                // Another SSL_read would only report want-read, after allocating and
                // freeing a record buffer (SSL_MODE_RELEASE_BUFFERS).
                if !self.connection.hasBufferedInput { break readLoop }
            case .wantMore:
                break readLoop
            case .closeNotify:
                self.receivedCloseNotify(context: context)
                return
            case .failed(let reason):
                // An upstream's refusal of our client certificate after our side of the
                // TLS 1.3 handshake: the handshake's failure (`classifyPostHandshakeRefusal`).
                let refusal = self.connection.postHandshakeRefusal
                self.fail(context: context, error: TLSError(.readFailed, reason, upstreamFailure: refusal))
                return
            }
            if case .closed = self.state { return }
        }
        // TLS 1.3 tickets, key updates and alerts can appear after any read.
        self.sendOutbound(context: context)
    }

    private func receivedCloseNotify(context: ChannelHandlerContext) {
        switch self.state {
        case .closing(let timer):
            timer?.cancel()
            _ = self.connection.shutdown()
            self.sendOutbound(context: context)
            self.state = .closed
            context.close(promise: self.takeClosePromise())
        case .active:
            // Answer the peer's close_notify with ours, then close.
            _ = self.connection.shutdown()
            self.encryptBufferedWrites(context: context)
            self.sendOutbound(context: context)
            self.state = .closed
            if self.deliveredData {
                self.deliveredData = false
                context.fireChannelReadComplete()
            }
            context.close(promise: nil)
        default:
            break
        }
    }

    package func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch self.state {
        case .closed, .closing:
            promise?.fail(ChannelError.ioOnClosedChannel)
        default:
            self.bufferedWrites.append(BufferedWrite(data: self.unwrapOutboundIn(data), promise: promise))
        }
    }

    package func flush(context: ChannelHandlerContext) {
        guard case .active = self.state else { return }
        guard self.flushesCoalesced else {
            self.encryptBufferedWrites(context: context)
            return
        }
        guard !self.flushScheduled else { return }
        self.flushScheduled = true
        context.eventLoop.assumeIsolatedUnsafeUnchecked().execute {
            self.flushScheduled = false
            if case .active = self.state { self.encryptBufferedWrites(context: context) }
        }
    }

    /// Flushes from now on are carried out once the event loop has handled the I/O
    /// events at hand: for HTTP/2, where every stream flushes the connection, the
    /// responses that arrived together (from as many upstream connections) leave as
    /// one batch of TLS records and one write, not a record and a write per stream.
    /// Not for HTTP/1.1, whose one response per flush would only wait for nothing.
    package func coalesceFlushes() {
        self.flushesCoalesced = true
    }

    /// Plaintext goes on in a buffer of its own size from now on, not in the loop's
    /// shared plaintext buffer (at least 1 KiB, up to a record's 16 KiB): for HTTP/2,
    /// whose frame decoder keeps the last buffer it was given while the connection
    /// idles, so an idle connection holds its last read's bytes rather than a buffer
    /// sized for a record. It costs a copy of each read, and saves what it costs: the
    /// shared buffer is then free for the next read instead of copied on write.
    package func compactReads() {
        self.readsCompacted = true
    }

    package func read(context: ChannelHandlerContext) {
        context.read()
    }

    package func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all else {
            context.close(mode: mode, promise: promise)
            return
        }
        switch self.state {
        case .idle, .handshaking:
            self.state = .closed
            self.handshakeTimer?.cancel()
            self.failBufferedWrites(ChannelError.ioOnClosedChannel)
            context.close(promise: promise)
        case .active:
            self.encryptBufferedWrites(context: context)
            let result = self.connection.shutdown()
            self.sendOutbound(context: context)
            if case .complete = result {
                self.state = .closed
                context.close(promise: promise)
                return
            }
            self.closePromise = promise
            let timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: self.configuration.shutdownTimeout) {
                guard case .closing = self.state else { return }
                self.state = .closed
                context.close(promise: self.takeClosePromise())
            }
            self.state = .closing(timer)
        case .closing:
            if let existing = self.closePromise {
                promise.map { existing.futureResult.cascade(to: $0) }
            } else {
                self.closePromise = promise
            }
        case .closed:
            context.close(promise: promise)
        }
    }

    private func takeClosePromise() -> EventLoopPromise<Void>? {
        defer { self.closePromise = nil }
        return self.closePromise
    }

    /// Encrypts every buffered write and sends the ciphertext in one write.
    private func encryptBufferedWrites(context: ChannelHandlerContext) {
        guard !self.bufferedWrites.isEmpty else { return }
        self.recordBuffers = .moved
        // Moved, not copied: a shared array storage would be copied on the next append.
        var writes: [BufferedWrite] = []
        swap(&writes, &self.spareWrites)
        swap(&writes, &self.bufferedWrites)
        defer {
            writes.removeAll(keepingCapacity: true)
            self.spareWrites = writes
        }
        // One promise for the batch: every caller's promise completes with the one write.
        var promise: EventLoopPromise<Void>? = nil
        for write in writes {
            guard let p = write.promise else { continue }
            if let existing = promise { existing.futureResult.cascade(to: p) } else { promise = p }
        }
        // Small writes (a response head, a short body, a chunk trailer) are joined so
        // they leave as one TLS record, not one record each.
        var failure: String? = nil
        func encrypt(_ data: ByteBuffer) {
            guard failure == nil else { return }
            if case .failed(let reason) = self.connection.write(data) { failure = reason }
        }
        self.staging.clear()
        for write in writes {
            let size = write.data.readableBytes
            if size < 4096 && self.staging.readableBytes + size <= 16_384 {
                self.staging.writeImmutableBuffer(write.data)
            } else {
                if self.staging.readableBytes > 0 {
                    encrypt(self.staging)
                    self.staging.clear()
                }
                encrypt(write.data)
            }
        }
        if self.staging.readableBytes > 0 { encrypt(self.staging) }
        // Kept for the next small response; a large one's room is not held by an idle connection.
        if self.staging.capacity > 4096 { self.staging = ByteBuffer() } else { self.staging.clear() }
        if let failure {
            let error = TLSError(.writeFailed, failure)
            promise?.fail(error)
            self.fail(context: context, error: error)
            return
        }
        if let ciphertext = self.connection.takeOutbound() {
            context.writeAndFlush(NIOAny(ciphertext), promise: promise)
        } else {
            promise?.succeed(())
        }
    }

    private func sendOutbound(context: ChannelHandlerContext) {
        if let ciphertext = self.connection.takeOutbound() {
            context.writeAndFlush(NIOAny(ciphertext), promise: nil)
        }
    }

    private func fail(context: ChannelHandlerContext, error: TLSError) {
        self.handshakeTimer?.cancel()
        self.handshakeTimer = nil
        if case .closed = self.state { return }
        self.state = .closed
        // Send any alert OpenSSL queued, then close.
        self.sendOutbound(context: context)
        self.failBufferedWrites(error)
        context.fireErrorCaught(error)
        context.close(promise: self.takeClosePromise())
    }

    private func failBufferedWrites(_ error: Error) {
        guard !self.bufferedWrites.isEmpty else { return }
        let writes = self.bufferedWrites
        self.bufferedWrites.removeAll()
        for write in writes { write.promise?.fail(error) }
    }
}

@available(*, unavailable)
extension OpenSSLHandler: Sendable {}
