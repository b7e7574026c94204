import EdgeTLS
import NIOCore
import NIOHTTP2
import NIOTLS

/// Waits for the TLS handshake on an `h2: true` listener, then installs HTTP/2
/// (each stream proxied by its own `ProxyHandler` over the HTTP/1.1 upstream pool)
/// or HTTP/1.1, as ALPN decided, and steps aside.
package final class ProtocolSwitch: ChannelInboundHandler, RemovableChannelHandler {
    package typealias InboundIn = ByteBuffer

    private let info: DownstreamInfo
    private let proxy: ProxyListener
    /// The gateway began draining during the handshake: the protocol's handlers drain
    /// as soon as they are installed.
    private var drainRequested = false

    package init(info: DownstreamInfo, proxy: ProxyListener) {
        self.info = info
        self.proxy = proxy
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // Draining before the handshake is done. Closing now would fail the request
            // this client is about to send (it connected to be served, and a client that
            // does not retry would see an error); the handshake finishes (within its
            // timeout), then the chosen protocol drains: HTTP/1.1 answers one request
            // with `connection: close`, HTTP/2 sends GOAWAY. A connection that has sent
            // nothing at all closes if it stays silent for the quiet period.
            self.drainRequested = true
            let tls = try? context.pipeline.syncOperations.handler(type: OpenSSLHandler.self)
            if let tls, !tls.hasReceivedBytes {
                context.eventLoop.assumeIsolated().scheduleTask(in: self.proxy.limits.drainQuietPeriod) {
                    if !tls.hasReceivedBytes { context.close(promise: nil) }
                }
            }
            return
        }
        guard let tls = event as? TLSUserEvent, case .handshakeCompleted(let negotiated) = tls else {
            context.fireUserInboundEventTriggered(event)
            return
        }
        let sync = context.pipeline.syncOperations
        do {
            if negotiated == "h2" {
                var info = self.info
                let tls = try? sync.handler(type: OpenSSLHandler.self)
                self.proxy.handshakeCompleted(tls, info: &info)
                tls?.coalesceFlushes()
                tls?.compactReads()
                try self.addHTTP2Handlers(sync, channel: context.channel, info: info)
            } else {
                try sync.addHandler(ProxyHandler(listener: self.proxy, info: self.info), name: "proxy")
            }
        } catch {
            self.proxy.logger.error("cannot set up the connection's protocol handlers", metadata: ["error": "\(error)"])
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
        if self.drainRequested { context.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
        sync.removeHandler(context: context, promise: nil)
    }

    private func addHTTP2Handlers(_ sync: ChannelPipeline.SynchronousOperations, channel: Channel, info: DownstreamInfo) throws {
        // The gateway's own HTTP/2 engine (frames, streams, windows, HPACK limits, the
        // abuse limits NIO's handler had), then the streams' table (with the idle timeout
        // and the drain).
        // Request header blocks are checked by HTTP2StreamBridge (HTTP2RequestCheck);
        // resets of open streams (rapid reset) are counted by HTTP2Downstream.
        let listener = self.proxy
        let engine = HTTP2ServerEngine(maxConcurrentStreams: listener.limits.http2MaxConcurrentStreams, maxHeaderListSize: listener.limits.maxHeadBytes) { reason in
            listener.clientFaults.report("HTTP/2 connection refused", reason: reason, level: .info, peer: info.clientIP,
                                         metadata: ["peer": "\(info.peer)", "listener": "\(listener.name)"], listener: listener)
        }
        try sync.addHandler(engine, name: "h2")
        let downstream = HTTP2Downstream(listener: self.proxy, info: info, strictTransportSecurity: self.proxy.limits.strictTransportSecurity,
                                         eventLoop: channel.eventLoop)
        engine.streams = downstream
        downstream.engine = engine
        try sync.addHandler(downstream, name: "http2-streams")
    }

    package func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let tls = error as? TLSError {
            reportClientTLSError(tls, info: self.info, listener: self.proxy)
        }
        context.close(promise: nil)
    }
}

extension EventLoop {
    /// Runs a channel initializer's synchronous set-up and returns the loop's cached
    /// succeeded future (or a failed one): `makeCompletedFuture` made a new future, a
    /// Result and a closure for every accepted connection and every HTTP/2 stream.
    package func initialized(_ setUp: () throws -> Void) -> EventLoopFuture<Void> {
        do {
            try setUp()
            return self.makeSucceededVoidFuture()
        } catch {
            return self.makeFailedFuture(error)
        }
    }
}
