import EdgeTLS
import Logging
import NIOCore
import NIOTLS
#if canImport(Glibc)
import Glibc
#endif

/// The gateway's own answers on a client connection: a failed exchange's 502/503/504, a
/// body too large or too slow, a malformed request, a route's redirect or static file,
/// and the access log line of each. What an answer holds is `LocalAnswer`'s; here it is
/// written, and the connection goes on or closes.
extension ProxyHandler {
    func failExchange(_ exchange: Exchange, error: Error) {
        _ = exchange.state.abandon()  // answered here: no later event of this attempt counts
        exchange.leaveBackend()
        let status: Int
        let message: String
        var grpcStatus: GRPCAnswer.Status?
        switch (error as? UpstreamError)?.kind {
        case .connectTimeout, .readTimeout, .writeTimeout:
            (status, message) = (504, "upstream timed out")
        case .callDeadline:
            (status, message) = (504, "deadline exceeded (grpc-timeout)")
            grpcStatus = .deadlineExceeded
        case .noHealthyBackend:
            (status, message) = (503, "no healthy backend in upstream '\(exchange.group.name)'")
        case .responseHeadTooLarge:
            (status, message) = (502, "upstream response head too large")
        case .localResources:
            (status, message) = (503, "the gateway is out of connections to open; try again")
        case .streamsExhausted:
            (status, message) = (503, "every connection to upstream '\(exchange.group.name)' is busy; try again")
        case .protocolError:
            (status, message) = (502, "invalid response from upstream")
        case .cannotCarry:
            (status, message) = (502, "the request cannot be sent to this upstream over HTTP/2")
        default:
            (status, message) = (502, "upstream unavailable")
        }
        let kind = (error as? UpstreamError).map { "\($0.backend) \($0.kind)" } ?? "\(type(of: error))"
        if let more = self.listener.upstreamFaults.shouldLog("\(exchange.group.name) \(kind)") {
            self.logger.warning("upstream request failed", metadata: more.merging([
                "upstream": "\(exchange.group.name)", "status": "\(status)", "error": "\(error)",
                "method": "\(exchange.request.method)", "uri": "\(exchange.request.target)",
            ]) { a, _ in a })
        }
        self.exchange = nil
        var answer = LocalAnswer(status: status, message: message)
        answer.grpcStatus = grpcStatus
        self.answerLocally(answer, request: exchange.request, requestEnded: exchange.state.requestEnded, upstream: exchange.group.name)
    }

    /// A body without a declared length went past `maxBodyBytes`: the upstream request
    /// is abandoned and the client gets 413 (its body still arriving, the connection
    /// lingers or the stream is reset with NO_ERROR); with the response already under
    /// way, the connection (or stream) is closed instead.
    func bodyTooLarge() {
        let max = self.maxBodyBytes ?? 0
        self.requestBody = nil
        let request = self.exchange?.request
        self.logger.info("request body too large", metadata: self.peerMetadata.merging([
            "max_request_body_bytes": "\(max)", "uri": "\(request?.target ?? "?")",
        ]) { a, _ in a })
        guard self.abandonExchange() else { return }
        self.respondLocally(status: 413, message: "request body larger than \(max) bytes", request: request, requestEnded: false)
    }

    /// The client sent no body bytes for `timeouts.body`: a request that held its upstream
    /// connection for as long as the client liked (one byte every few seconds) is ended:
    /// 408 when the response has not started, else the connection (or stream) is closed.
    func bodyTimedOut() {
        self.timers.body = nil
        self.requestBody = nil
        let request = self.exchange?.request
        self.listener.clientFaults.report("client sent no request body data within the body timeout", reason: "", level: .info,
                                          peer: self.info.clientIP, metadata: self.peerMetadata.merging([
                                              "uri": "\(request?.target ?? "?")", "body_timeout": "\(self.limits.bodyTimeout)",
                                          ]) { a, _ in a }, listener: self.listener)
        guard self.abandonExchange() else { return }
        self.respondLocally(status: 408, message: "no request body data within the body timeout", request: request, requestEnded: false)
    }

    /// Drops the exchange in flight, if any, before the gateway answers the client
    /// itself: its upstream connection, holding an unfinished request, is closed. False
    /// when the response had already started: the client connection is closed instead
    /// and there is nothing left to answer.
    func abandonExchange() -> Bool {
        guard let exchange = self.exchange else { return true }
        self.stopReadTimer()
        let couldAnswer = exchange.state.abandon()
        self.dropExchange(exchange)
        guard couldAnswer else {
            self.closeAfterWhatIsWritten()
            return false
        }
        return true
    }

    /// A malformed request: 400 (431 for an oversized head), then the connection closes.
    func badRequest(_ error: HTTPFramingError) {
        self.listener.clientFaults.report("bad request from client", reason: error.reason, level: .info, peer: self.info.clientIP,
                                          metadata: self.peerMetadata.merging(["error": "\(error)"]) { a, _ in a }, listener: self.listener)
        // The body of a request in flight broke its framing: nothing can be trusted after it.
        guard self.abandonExchange() else { return }
        let status = error.kind == .headTooLarge ? 431 : 400
        self.respondLocally(status: status, message: error.reason, request: nil, requestEnded: false)
    }

    /// Answers from the gateway itself: a text body saying why, plus `fields` (header
    /// lines, each ending in CRLF).
    func respondLocally(status: Int, message: String, request: HTTPHead?, requestEnded: Bool, fields: String = "",
                                upstream: String? = nil) {
        self.answerLocally(LocalAnswer(status: status, message: message, fields: fields), request: request, requestEnded: requestEnded,
                           upstream: upstream)
    }

    /// Writes an answer of the gateway's own. A connection whose request was not fully
    /// read (or that asked for it) is closed after the answer.
    func answerLocally(_ answer: LocalAnswer, request: HTTPHead?, requestEnded: Bool, upstream: String? = nil) {
        guard let context = self.context else { return }
        // The status the access log and the metrics count: a gRPC call's error, told in
        // gRPC (`GRPCAnswer`, HTTP 200 on the wire), still counts as the 502 or 503 it
        // stands for, or an error-rate alert would never see a failing gRPC service.
        let status = answer.status
        let answer = answer.status >= 400 && request.map(GRPCAnswer.isGRPC) == true ? GRPCAnswer.answer(answer) : answer
        let close = LocalAnswer.closes(request: request, requestEnded: requestEnded, draining: self.state.draining)
        let out = answer.bytes(for: request, close: close, hsts: self.limits.strictTransportSecurity, allocator: context.channel.allocator)
        self.downstreamNeedsFlush = false
        let done = self.downstream.writeLocalAnswer(out, context: context)
        self.requests?.completed(status: status)
        if self.loop.accessLog != nil {
            if request == nil { self.requestStart = .now() }  // a head that never parsed: no duration
            self.logAccess(request, status: status, bodyBytes: request?.isHeadMethod == true ? 0 : answer.body.readableBytes, upstream: upstream)
        }
        if close {
            self.state.closeAfterWritten()
            self.requestBody = nil
            self.inbound = ByteBuffer()
            // A request whose body is still arriving (a 404 or 502 for an upload) ends as
            // when the upstream answers early: an HTTP/2 stream is reset with NO_ERROR, a
            // plain HTTP/1.1 connection lingers, so the answer is not lost to a reset. An
            // HTTP/2 stream frames its body itself, so a request whose head did not parse
            // (a 400) ends the same way; over HTTP/1.1 nothing after it can be framed.
            let bodyArriving = !requestEnded && (request != nil || self.stream.map { !$0.requestComplete } == true)
            done.assumeIsolated().whenComplete { result in
                guard bodyArriving, case .success = result, !self.state.isClosed else {
                    self.closeDownstream()
                    return
                }
                if !self.downstream.endRequestEarly() { self.lingerForRequestBody(context) }
            }
        } else {
            self.requestDone()
        }
    }

    /// One access log line (only called with an access log configured).
    func logAccess(_ request: HTTPHead?, status: Int, bodyBytes: Int, exchange: Exchange? = nil, upstream: String? = nil) {
        guard let log = self.loop.accessLog else { return }
        let proto = self.downstream.protocolName(of: request)
        log.record(AccessLogEntry(
            listener: self.listener.name, client: self.info.clientIP, proto: proto, request: request, status: status,
            bodyBytesSent: bodyBytes, duration: .now() - self.requestStart, upstream: upstream ?? exchange?.group.name,
            backend: exchange?.backendIndex.map { exchange!.group.backends[$0].description }
        ))
    }

    /// Why this request's host does not belong on this connection
    /// (`ServerNameSelector.misdirection`); nil when it does, or names no host.
    func misdirection(_ head: HTTPHead, _ serverNames: any ServerNameSelector) -> String? {
        guard let raw = head.first(.host) else { return nil }
        let host = Router.normalizedHost(raw)
        if host == self.info.serverName { return nil }  // the usual request: one comparison
        return serverNames.misdirection(serverName: self.info.serverName, host: host)
    }

    /// A `root` route's answer; a refused file is logged with the reason the client is not told.
    func serveFile(_ head: HTTPHead, from root: StaticRoot, requestEnded: Bool) {
        let answer = LocalAnswer.file(head, from: root, allocator: self.context?.channel.allocator ?? ByteBufferAllocator())
        if let reason = answer.refusal {
            self.logger.warning("static file not served", metadata: self.peerMetadata.merging([
                "uri": "\(head.target)", "reason": "\(reason)",
            ]) { a, _ in a })
        }
        self.answerLocally(answer, request: head, requestEnded: requestEnded)
    }
}
