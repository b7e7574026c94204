import EdgeTLS
import Logging
import NIOCore
import NIOTLS
#if canImport(Glibc)
import Glibc
#endif

/// The upstream side of `ProxyHandler`: the exchange with its upstream connection
/// (choosing a backend, connecting, writing the request, streaming the response back),
/// its failures (retried, answered or aborted as `ExchangeState` decides) and WebSocket
/// tunnels. The client side and the connection's lifecycle are in `ProxyHandler.swift`.
extension ProxyHandler {
    final class Exchange {
        let request: HTTPHead
        let group: UpstreamGroup
        var connection: UpstreamConnection?
        /// Request body bytes read before a connection was ready.
        var pending: [ByteBuffer] = []
        /// Where the exchange stands; its events say what to do next.
        var state: ExchangeState
        /// The request body is sent chunked (it came chunked).
        let chunkedUpstream: Bool
        /// The backend chosen for this exchange, counted in its in-flight figure while set.
        var backendIndex: Int?
        /// Backends whose connect failed for this request, or whose connection broke with it.
        var tried: [Int] = []
        /// The broken connection's error, when the request moved on to another backend.
        var retryError: Error?
        /// When the first response was due (the first read deadline): how long the
        /// request has been trying backends, without a clock read of its own.
        var firstReadDeadline: NIODeadline?
        /// The request body as sent (framed), while it fits the retry buffer; nil once it does not.
        var replay: [ByteBuffer]? = []
        var replayBytes = 0
        var writeTimer: Scheduled<Void>?
        var closeDownstreamAfterResponse = false
        var status = 0
        /// Response body bytes passed to the client (the access log's `body_bytes_sent`).
        var bodyBytesSent = 0
        /// The client asked to switch to WebSocket; the upstream gets the handshake.
        let upgrade: Bool
        /// A gRPC call's deadline, from its `grpc-timeout`: the response is awaited until
        /// then at the latest (`armReadTimer`).
        var callDeadline: NIODeadline?

        init(request: consuming HTTPHead, group: UpstreamGroup, upgrade: Bool, requestEnded: Bool) {
            self.chunkedUpstream = request.chunked
            self.request = request
            self.group = group
            self.upgrade = upgrade
            self.state = ExchangeState(requestEnded: requestEnded)
        }

        /// Leaves the backend's in-flight count; called once when the exchange ends or moves on.
        func leaveBackend() {
            if let index = self.backendIndex {
                self.group.requestLeft(index)
                self.backendIndex = nil
            }
            self.writeTimer?.cancel()
            self.writeTimer = nil
        }
    }

    // MARK: upstream connection

    func connect(_ exchange: Exchange) {
        let group = exchange.group
        if exchange.backendIndex == nil {
            guard let chosen = group.select(UpstreamGroup.RequestKey(clientIP: self.info.clientIP, request: exchange.request), tried: exchange.tried) else {
                let reason = exchange.tried.isEmpty ? "every backend is down" : "no backend left to try"
                // A request moved on from a broken connection keeps that failure's answer.
                self.failExchange(exchange, error: exchange.retryError ?? UpstreamError(kind: .noHealthyBackend, backend: group.name, reason: reason))
                return
            }
            exchange.backendIndex = chosen
            group.requestBegan(on: chosen)
        }
        let index = exchange.backendIndex!
        // A WebSocket handshake to an auto group gets a fresh connection that offers
        // http/1.1 alone (an idle one may speak HTTP/2, which has no upgrade).
        let http1Only = exchange.upgrade && group.upstreamProtocol == .auto
        // After a stale reused connection, the retry always gets a fresh one.
        if !exchange.state.retriedStale, !http1Only, let idle = self.loop.pool.takeIdle(group: group, backend: index) {
            self.attach(idle, to: exchange)  // the common keep-alive case: no future, no hop
            return
        }
        self.loop.pool.open(group: group, backend: index, http1Only: http1Only, fresh: exchange.state.retriedStale).assumeIsolated().whenComplete { result in
            guard self.exchange === exchange, !self.state.isClosed else {
                if case .success(let connection) = result {
                    self.loop.pool.release(connection, group: group)
                }
                return
            }
            switch result {
            case .success(let connection):
                self.attach(connection, to: exchange)
            case .failure(let error):
                guard let upstream = error as? UpstreamError, upstream.isConnectFailure else {
                    self.failExchange(exchange, error: error)
                    return
                }
                self.connectFailed(exchange, backend: index, error: upstream, failure: .connect)
            }
        }
    }

    /// A connect to the exchange's backend failed: refused, timed out, or its TLS
    /// handshake failed (nginx counts that against the server too: the backend is not
    /// usable, whatever its TCP port says). Counted towards ejection, then the request
    /// moves on to another backend, a bounded number of times, as `FailedAttempt` decides.
    func connectFailed(_ exchange: Exchange, backend index: Int, error: UpstreamError, failure: FailedAttempt.Failure) {
        let group = exchange.group
        if let failure = error.tlsFailure, error.countsAgainstBackend { group.tlsHandshakeFailed(index, reason: failure) }
        if error.countsAgainstBackend, group.backendFailed(index, reason: "\(error)") {
            self.logger.warning("backend ejected after consecutive connect failures", metadata: [
                "upstream": "\(group.name)", "backend": "\(group.backends[index].description)",
                "fail_timeout": "\(group.passive.failTimeout.nanoseconds / 1_000_000_000)s", "error": "\(error)",
            ])
        }
        exchange.tried.append(index)
        exchange.leaveBackend()
        if case .retry = exchange.state.failed(self.attempt(exchange, failed: failure)) {
            exchange.retryError = error  // the answer if no backend is left to try
            self.logger.warning("upstream connect failed; trying another backend", metadata: ["upstream": "\(group.name)", "error": "\(error)"])
            self.connect(exchange)
            return
        }
        self.failExchange(exchange, error: error)
    }

    func attach(_ connection: UpstreamConnection, to exchange: Exchange) {
        if let field = HeadRewriting.unsafeAddedField(group: exchange.group, mutualTLS: self.listener.mutualTLS, info: self.info) {
            // The head writer writes no line a value could end early, whatever its source.
            self.loop.pool.release(connection, group: exchange.group)
            self.failExchange(exchange, error: UpstreamError(kind: .protocolError, backend: exchange.group.name,
                                                             reason: "refusing to send \(field): it holds CR, LF or NUL"))
            return
        }
        exchange.connection = connection
        // Before the first write: a flush that fails (a pooled connection the upstream had
        // reset) reports the failure before it returns, and the retry it leads to must find
        // the exchange sending, not still connecting.
        let connected = exchange.state.connected()
        connection.uses += 1
        exchange.group.requestSent(to: connection.backendIndex)
        connection.begin(for: self, headRequest: exchange.request.isHeadMethod, upgrade: exchange.upgrade)
        let head = HeadRewriting.upstreamHead(for: exchange.request, group: exchange.group, upgrade: exchange.upgrade,
                                              scheme: self.listener.scheme, mutualTLS: self.listener.mutualTLS, info: self.info,
                                              heads: &self.loop.requestHeads)
        connection.write(head)
        if !exchange.pending.isEmpty {
            for bytes in exchange.pending { connection.write(bytes) }
            exchange.pending.removeAll()
        }
        connection.flush()
        // Written and let go of by NIO unless the socket was full; a buffer still shared
        // is copied by the next `take`, never overwritten. (Kept by the exchange instead,
        // as before, the buffer was shared by every request in flight on the loop: one
        // allocation per request.)
        self.loop.requestHeads.keep(head)
        self.upstreamNeedsFlush = false
        guard exchange.connection === connection else { return }  // failed in the flush, and retried
        if connected == .armReadDeadline { self.armReadTimer(exchange) }
        if connection.isWritable { self.resumeReads() }
    }

    /// Pushes the read deadline out. The handler's entry in the loop's deadline heap is
    /// moved only when the new deadline is earlier; reached before a deadline that moved
    /// later, it re-queues itself, so a request costs a clock read and a comparison.
    func armReadTimer(_ exchange: Exchange) {
        var deadline = NIODeadline.now() + exchange.group.timeouts.read
        if exchange.firstReadDeadline == nil { exchange.firstReadDeadline = deadline }
        if let call = exchange.callDeadline, call < deadline { deadline = call }
        self.timers.upstreamRead = deadline
        if self.context != nil { self.loop.deadlines.schedule(self, at: deadline) }
    }

    /// The upstream sent nothing within the read timeout, or a gRPC call's deadline passed.
    func readTimedOut(_ exchange: Exchange) {
        self.timers.upstreamRead = nil
        if let call = exchange.callDeadline, NIODeadline.now() >= call {
            self.callDeadlinePassed(exchange)
            return
        }
        let backend = exchange.connection.map { $0.key.address.hostPort } ?? "?"
        exchange.connection?.abandon()
        exchange.connection = nil
        let group = exchange.group
        let stalled = exchange.state.responseStarted
        let error = UpstreamError(kind: .readTimeout, backend: backend,
                                  reason: stalled ? "the response stalled: no more of it within the read timeout" : "no response within the read timeout")
        // A backend that accepts and never answers is a failing backend (nginx's
        // `proxy_next_upstream timeout`): it counts towards ejection, shows as the
        // backend's last error, and an idempotent request whose body is held goes to
        // another backend, if the first try began less than `next_upstream` ago.
        if !stalled, let index = exchange.backendIndex, group.backendFailed(index, reason: "\(error)", connect: false) {
            self.logger.warning("backend ejected after consecutive failures", metadata: [
                "upstream": "\(group.name)", "backend": "\(group.backends[index].description)",
                "fail_timeout": "\(group.passive.failTimeout.nanoseconds / 1_000_000_000)s", "error": "\(error)",
            ])
        }
        let now = NIODeadline.now()
        let firstTry = (exchange.firstReadDeadline ?? now) - group.timeouts.read
        let attempt = self.attempt(exchange, failed: .readTimeout, counting: exchange.backendIndex,
                                   withinNextUpstream: now < firstTry + group.timeouts.nextUpstream)
        switch exchange.state.failed(attempt) {
        case .endTunnel:
            self.endTunnel(exchange, reason: "idle for the read timeout")
        case .abortResponse:
            self.abortMidResponse(exchange, error: error)
        case .retry:
            if let more = self.listener.upstreamFaults.shouldLog("\(group.name) \(backend) read timeout retry") {
                self.logger.warning("upstream sent no response within the read timeout; trying another backend", metadata: more.merging([
                    "upstream": "\(group.name)", "backend": "\(backend)", "method": "\(exchange.request.method)",
                ]) { a, _ in a })
            }
            self.sendElsewhere(exchange, after: error)
        case .answer, .none, .armReadDeadline, .finish, .finishBeforeRequestEnded, .openTunnel:
            self.failExchange(exchange, error: error)
        }
    }

    /// A gRPC call's deadline passed while its response was awaited: the client has given
    /// up (its own deadline is the same), so the upstream request is abandoned, and the
    /// call ends with DEADLINE_EXCEEDED (a trailers-only answer, `GRPCAnswer`), or with a
    /// reset of the stream when the response had begun. Not retried, and not counted
    /// against the backend: it was the caller's deadline, not the backend's failure.
    func callDeadlinePassed(_ exchange: Exchange) {
        let backend = exchange.connection.map { $0.key.address.hostPort } ?? "?"
        exchange.connection?.abandon()
        exchange.connection = nil
        let error = UpstreamError(kind: .callDeadline, backend: backend, reason: "the call's deadline (grpc-timeout) passed before its response")
        if exchange.state.responseStarted {
            _ = exchange.state.abandon()
            self.abortMidResponse(exchange, error: error)
        } else {
            self.failExchange(exchange, error: error)
        }
    }

    /// The request goes to another backend, as the retry policy decided after `error`:
    /// the failed backend is excluded, and the request bytes held are sent again.
    func sendElsewhere(_ exchange: Exchange, after error: Error) {
        guard let index = exchange.backendIndex else {
            self.failExchange(exchange, error: error)  // no backend to exclude: never retried without one
            return
        }
        exchange.tried.append(index)
        exchange.leaveBackend()
        exchange.retryError = error  // the answer if no backend is left to try
        exchange.pending = exchange.replay ?? []
        self.connect(exchange)
    }

    func stopReadTimer() {
        self.timers.upstreamRead = nil  // the heap entry, if due for it, finds nothing to do
    }

    func upstreamReceived(_ part: UpstreamResponsePart, from connection: UpstreamConnection?) {
        guard let exchange = self.exchange, let connection, exchange.connection === connection, let context = self.context else { return }
        // An HTTP/2 stream that ended before its response did (the client reset it) is gone,
        // and its proxy hears of it on the next turn of the loop: nothing more is written,
        // counted or logged as answered for it. (One that ended with its response, a 204's
        // HEADERS, still has its end to finish: the count, the log, the pooled connection.)
        if let port = self.stream?.port, port.finished, !port.responseEnded { return }
        switch part {
        case .head(let response):
            if response.status != 101 {
                switch self.downstream.responseHead(response, request: exchange.request, draining: self.state.draining,
                                                   hsts: self.limits.strictTransportSecurity, heads: &self.loop.responseHeads, context: context) {
                case .refused(let kind, let reason):
                    connection.abandon()
                    exchange.connection = nil
                    self.stopReadTimer()
                    self.failExchange(exchange, error: UpstreamError(kind: kind, backend: connection.key.address.hostPort, reason: reason))
                    return
                case .written(let closeAfter):
                    exchange.closeDownstreamAfterResponse = closeAfter
                }
            }
            exchange.status = response.status
            exchange.group.responseReceived(connection.backendIndex)
            self.armReadTimer(exchange)
            if exchange.state.responseHead(status: response.status) == .openTunnel {
                self.startTunnel(exchange, response: response, context: context)
            } else {
                self.downstreamNeedsFlush = true
            }
        case .body(let body):
            self.armReadTimer(exchange)
            exchange.bodyBytesSent &+= body.readableBytes
            // Flushed once per upstream read batch (upstreamReadComplete): one TLS
            // record and one syscall for a small response instead of one per part.
            self.downstream.responseBody(body, context: context)
            self.downstreamNeedsFlush = true
        case .end(let trailers):
            self.stopReadTimer()
            let action = exchange.state.responseEnded(reusable: connection.reusable)
            if action == .endTunnel {
                self.endTunnel(exchange, reason: "closed by the upstream")
                return
            }
            self.downstream.responseEnd(trailers: trailers, context: context)
            self.downstreamNeedsFlush = true
            self.requests?.completed(status: exchange.status)
            if self.loop.accessLog != nil { self.logAccess(exchange.request, status: exchange.status, bodyBytes: exchange.bodyBytesSent, exchange: exchange) }
            switch action {
            case .finish(let reuse):
                self.finish(exchange, reuseUpstream: reuse)
            case .finishBeforeRequestEnded:
                self.finishBeforeRequestEnded(exchange, context: context)
            case .none, .armReadDeadline, .openTunnel, .endTunnel, .retry, .answer, .abortResponse:
                break
            }
        }
    }

    /// The upstream accepted a WebSocket handshake: the client gets the `101` with the
    /// upgrade fields, then both connections carry the protocol's bytes unframed (the
    /// client's as a request body without end, the upstream's as a response body
    /// delimited by its close), with the usual back-pressure both ways. The upstream
    /// read timeout becomes the tunnel's idle timeout (HAProxy's `timeout tunnel`),
    /// reset by traffic either way.
    func startTunnel(_ exchange: Exchange, response: HTTPHead, context: ChannelHandlerContext) {
        self.downstream.beginTunnel()
        var out = context.channel.allocator.buffer(capacity: response.bytes.count + 64)
        out.writeStaticString("HTTP/1.1 ")
        response.writeBytes(9..<response.startLineEnd + 2, to: &out)
        response.writeFields(to: &out) { response.isHopByHop($0) }
        out.writeStaticString("connection: upgrade\r\nupgrade: ")
        out.writeString(response.first(.upgrade) ?? "websocket")
        out.writeStaticString("\r\n\r\n")
        context.write(NIOAny(out), promise: nil)
        self.downstreamNeedsFlush = true
        self.logger.debug("websocket tunnel open", metadata: self.peerMetadata.merging(["uri": "\(exchange.request.target)"]) { a, _ in a })
        // The client's bytes from now on (and any that came early) go upstream as they are.
        exchange.replay = nil
        self.requestBody = .untilClose
        self.timers.body = nil  // a tunnel idles out on the upstream's read timeout
        self.maxBodyBytes = nil
        self.process()
        if self.upstreamNeedsFlush {
            self.upstreamNeedsFlush = false
            exchange.connection?.flush()
        }
        if exchange.connection?.isWritable ?? false { self.resumeReads() }
    }

    /// One side of a WebSocket tunnel closed (or it idled out): the other is closed
    /// after what is in flight, and the exchange is logged as the `101` it was.
    func endTunnel(_ exchange: Exchange, reason: String) {
        self.logger.debug("websocket tunnel closed", metadata: self.peerMetadata.merging(["reason": "\(reason)"]) { a, _ in a })
        self.requests?.completed(status: 101)
        if self.loop.accessLog != nil { self.logAccess(exchange.request, status: 101, bodyBytes: exchange.bodyBytesSent, exchange: exchange) }
        self.stopReadTimer()
        self.dropExchange(exchange)
        self.requestBody = nil
        self.closeAfterWhatIsWritten()
    }

    /// Forgets the exchange and closes its upstream connection, which holds an
    /// unfinished exchange (a tunnel, a request cut short) and cannot be pooled.
    func dropExchange(_ exchange: Exchange) {
        exchange.connection?.abandon()
        exchange.connection = nil
        exchange.leaveBackend()
        self.exchange = nil
    }

    /// The upstream answered before the request body ended: neither side can be reused.
    func finishBeforeRequestEnded(_ exchange: Exchange, context: ChannelHandlerContext) {
        self.dropExchange(exchange)
        self.state.closeAfterWritten()
        self.flushDownstream()
        // An HTTP/2 stream is reset with NO_ERROR, not closed (CANCEL); a connection lingers.
        if !self.downstream.endRequestEarly() { self.lingerForRequestBody(context) }
    }

    /// Both directions are complete: the upstream connection goes back to the pool (or
    /// closes), and the client connection goes on to its next request (or closes).
    func finish(_ exchange: Exchange, reuseUpstream: Bool) {
        if let connection = exchange.connection {
            exchange.connection = nil
            if reuseUpstream {
                self.loop.pool.release(connection, group: exchange.group)
            } else {
                connection.abandon()
            }
        }
        exchange.leaveBackend()
        self.exchange = nil
        self.loop.recycle(exchange.request)
        // A stream whose request had nothing more to send (`content-length: 0`) but whose
        // client has not ended it: told to stop (NO_ERROR), or it stayed half open with no
        // deadline, and its connection never idled out.
        if let stream = self.stream, !stream.requestComplete { _ = self.downstream.endRequestEarly() }
        if exchange.closeDownstreamAfterResponse {
            self.closeAfterWhatIsWritten()
            return
        }
        self.requestDone()
    }

    func upstreamFailed(_ error: Error, from connection: UpstreamConnection?) {
        guard let exchange = self.exchange, let connection, exchange.connection === connection else { return }
        self.stopReadTimer()
        exchange.connection = nil
        connection.close()
        if !exchange.state.responseStarted, let upstream = error as? UpstreamError, upstream.kind == .tlsHandshake, let index = exchange.backendIndex {
            // TLS 1.3: the upstream refused our client certificate after our side of the
            // handshake ended; its alert is the first thing read. It read nothing of the
            // request, so any request whose bytes are all held may go to another backend.
            exchange.pending = exchange.replay ?? []
            self.connectFailed(exchange, backend: index, error: upstream, failure: .refusedAfterHandshake)
            return
        }
        // Before the response: a reused connection that died before any response byte
        // (the upstream closed it while idle) is replayed once on a fresh connection when
        // safe: everything sent so far is still held, and the method is idempotent or the
        // whole (small) request was held. Only a broken connection: a backend that
        // answered badly (a head too large, not HTTP) has acted on the request, and a
        // POST must not reach it twice. A backend that broke the connection with the
        // request in it (it died, restarted, or reset it): an idempotent request goes to
        // another backend, as nginx's default `proxy_next_upstream error` does, within
        // max_connect_attempts; a non-idempotent one may have been acted on and is not
        // repeated.
        let kind = (error as? UpstreamError)?.kind
        if kind == .cannotCarry, !exchange.state.responseStarted {
            self.failExchange(exchange, error: error)  // the request's shape, not the backend's failure
            return
        }
        let failure: FailedAttempt.Failure = kind == .refusedStream ? .notProcessed : Self.brokeConnection(error) ? .broken : .other
        // A reset stream is no idle connection the upstream closed before reading: it had
        // the request, which only an idempotent method may repeat.
        let action = exchange.state.failed(self.attempt(exchange, failed: failure, counting: exchange.backendIndex,
                                                        reused: connection.uses > 1 && kind != .streamReset))
        if action == .retry(.freshConnection) {
            exchange.pending = exchange.replay ?? []  // attach writes the head first
            self.logger.debug("retrying request on a fresh upstream connection", metadata: ["error": "\(error)"])
            self.connect(exchange)
            return
        }
        // Not the routine end of a pooled connection the backend closed while idle
        // (replayed above): a failure to show as the backend's last error.
        exchange.group.recordError(connection.backendIndex, reason: "\(error)")
        switch action {
        case .retry:
            self.logger.warning("upstream connection broke before the response; trying another backend", metadata: [
                "upstream": "\(exchange.group.name)", "error": "\(error)", "method": "\(exchange.request.method)",
            ])
            self.sendElsewhere(exchange, after: error)
        case .endTunnel:
            self.endTunnel(exchange, reason: "\(error)")
        case .abortResponse:
            self.abortMidResponse(exchange, error: error)
        case .answer, .none, .armReadDeadline, .finish, .finishBeforeRequestEnded, .openTunnel:
            self.failExchange(exchange, error: error)
        }
    }

    /// The exchange's failed attempt as the retry policy sees it; `counting`: the backend
    /// that failed when it is not in `tried` yet (it counts as an attempt).
    func attempt(_ exchange: Exchange, failed failure: FailedAttempt.Failure, counting backend: Int? = nil,
                         reused: Bool = false, withinNextUpstream: Bool = true) -> FailedAttempt {
        FailedAttempt(failure: failure, idempotent: exchange.request.isIdempotent, held: exchange.replay != nil,
                      requestEnded: exchange.state.requestEnded, reused: reused, retriedStale: exchange.state.retriedStale,
                      attempts: exchange.tried.count + (backend == nil ? 0 : 1), maxAttempts: exchange.group.maxConnectAttempts,
                      withinNextUpstream: withinNextUpstream)
    }

    /// The upstream connection broke (closed before the response, or reset), rather
    /// than answering badly or too slowly.
    static func brokeConnection(_ error: Error) -> Bool {
        if let upstream = error as? UpstreamError { return upstream.kind == .closedEarly || upstream.kind == .streamReset }
        return error is IOError
    }

    /// Part of the response is already out: the only honest signal is to close, unless
    /// the request is a gRPC call on an HTTP/2 stream (`endCallMidResponse`).
    func abortMidResponse(_ exchange: Exchange, error: Error) {
        if self.stream != nil, let context = self.context, GRPCAnswer.isGRPC(exchange.request) {
            self.endCallMidResponse(exchange, error: error, context: context)
            return
        }
        self.logger.warning("upstream failed mid-response; closing client connection", metadata: [
            "upstream": "\(exchange.group.name)", "error": "\(error)",
        ])
        if self.loop.accessLog != nil { self.logAccess(exchange.request, status: exchange.status, bodyBytes: exchange.bodyBytesSent, exchange: exchange) }
        exchange.leaveBackend()
        self.exchange = nil
        self.closeAfterWhatIsWritten()
    }

    /// A gRPC call whose response had begun ends with a status in trailers, as a gRPC
    /// server ends a failed stream: UNAVAILABLE when the upstream failed, DEADLINE_EXCEEDED
    /// when the call's deadline passed. A reset of the stream (CANCEL) told the client
    /// only that the call was cancelled, as if by itself.
    func endCallMidResponse(_ exchange: Exchange, error: Error, context: ChannelHandlerContext) {
        let deadline = (error as? UpstreamError)?.kind == .callDeadline
        self.logger.warning("upstream failed mid-response; ending the gRPC call with a status", metadata: [
            "upstream": "\(exchange.group.name)", "error": "\(error)",
        ])
        exchange.connection?.abandon()
        exchange.connection = nil
        let trailers = GRPCAnswer.trailerLines(deadline ? .deadlineExceeded : .unavailable,
                                               message: deadline ? "deadline exceeded (grpc-timeout)" : "upstream failed mid-response")
        self.downstream.responseEnd(trailers: trailers, context: context)
        self.downstreamNeedsFlush = true
        // Counted as the error the status stands for, as the gateway's own gRPC answers are
        // (`GRPCAnswer`): an error-rate alert sees the failed call, not the 200 it began with.
        let status = deadline ? 504 : 502
        self.requests?.completed(status: status)
        if self.loop.accessLog != nil { self.logAccess(exchange.request, status: status, bodyBytes: exchange.bodyBytesSent, exchange: exchange) }
        if exchange.state.requestEnded {
            self.finish(exchange, reuseUpstream: false)
        } else {
            self.finishBeforeRequestEnded(exchange, context: context)
        }
    }

    func upstreamReadComplete() {
        self.flushDownstream()
    }

    func upstreamWritabilityChanged(_ writable: Bool) {
        guard let exchange = self.exchange else { return }
        if writable {
            exchange.writeTimer?.cancel()
            exchange.writeTimer = nil
            self.resumeReads()
        } else if !exchange.state.requestEnded, exchange.writeTimer == nil, let context = self.context {
            // The upstream stopped taking the request body: it has the write timeout to resume.
            exchange.writeTimer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: exchange.group.timeouts.write) {
                exchange.writeTimer = nil
                guard self.exchange === exchange, let connection = exchange.connection, !connection.isWritable else { return }
                self.stopReadTimer()
                connection.abandon()
                exchange.connection = nil
                let error = UpstreamError(kind: .writeTimeout, backend: connection.key.address.hostPort, reason: "the upstream stopped reading the request body")
                switch exchange.state.failed(self.attempt(exchange, failed: .other)) {
                case .endTunnel:
                    self.endTunnel(exchange, reason: "the upstream stopped reading for the write timeout")
                case .abortResponse:
                    self.abortMidResponse(exchange, error: error)
                case .retry, .none, .armReadDeadline, .finish, .finishBeforeRequestEnded, .openTunnel:
                    assertionFailure("a write timeout (`.other`) is never retried")
                    self.failExchange(exchange, error: error)
                case .answer:
                    self.failExchange(exchange, error: error)
                }
            }
        }
    }

    var downstreamWritable: Bool {
        if let stream = self.stream { return stream.port?.isWritable ?? false }
        return self.context?.channel.isWritable ?? false
    }
}
