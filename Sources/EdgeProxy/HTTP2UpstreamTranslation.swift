import NIOCore
import NIOHPACK
import NIOHTTP2

/// An h2 or h2c upstream connection's translation between the proxy's HTTP/1.1 bytes
/// and HTTP/2 frames: the request the proxy writes (head, framed body, trailers) becomes
/// HEADERS, DATA and a trailer HEADERS frame on a new stream, and the stream's response
/// frames become HTTP/1.1 response bytes for `UpstreamHandler`'s parser. Pure: frames
/// and bytes in, frames and bytes out; `HTTP2UpstreamHandler` does the I/O.
///
/// Why bytes, and not a second proxy engine: every rule of the proxy (head rewriting,
/// forwarding headers, response head limits, trailer checks, retries, timeouts) is
/// written once against HTTP/1.1 bytes, as the downstream `HTTP2StreamBridge` does it for
/// clients. The price is one more pass over each head; the frame-level engine that #32
/// plans removes it for both sides at once.
///
/// One exchange at a time: the next request starts a new stream once the previous
/// response ended, as on an HTTP/1.1 keep-alive connection. Stream IDs grow by two.
struct HTTP2UpstreamTranslation {
    /// A message that cannot be carried or that the upstream sent malformed.
    struct Malformed: Error, CustomStringConvertible {
        let reason: String
        var description: String { self.reason }
    }

    /// The connection has started its last stream: the request goes elsewhere, unsent.
    struct StreamIDsUsedUp: Error, CustomStringConvertible {
        var description: String { "the connection has used its stream IDs" }
    }

    /// How the response body is framed for the HTTP/1.1 parser.
    enum ResponseBody: Equatable {
        /// No body bytes at all (HEAD, 204, 304, or the stream ended with its HEADERS).
        case none
        /// Raw bytes: the upstream sent a content-length; this many are still to come.
        case length(Int)
        /// Chunked: the length is unknown, and trailers can follow.
        case chunked
    }

    private enum Request {
        /// Waiting for the head's end; `scanned` bytes were searched already.
        case head(scanned: Int)
        case body(BodyFramer)
    }

    private enum Response: Equatable {
        case idle
        case head
        case body(ResponseBody)
    }

    /// What a response frame gives the HTTP/1.1 parser.
    struct ResponseStep {
        /// HTTP/1.1 bytes to pass on (head, body, the chunked body's end).
        var bytes: ByteBuffer?
        /// Flow-controlled bytes the frame took from the windows, to give back.
        var consumed = 0
        /// The response ended with this frame: the connection may take the next request.
        var ended = false
    }

    let scheme: String
    /// `:authority` when the request has no Host field.
    let defaultAuthority: String
    private var request = Request.head(scanned: 0)
    private var response = Response.idle
    private var pending = ByteBuffer()
    private var requestIsHead = false
    /// The stream of the exchange in progress, from its request head to its response's end.
    private(set) var streamID: HTTP2StreamID?
    /// The stream the next request starts.
    private(set) var nextStreamID = HTTP2StreamID(1)

    init(scheme: String, defaultAuthority: String, firstStreamID: HTTP2StreamID = 1) {
        self.scheme = scheme
        self.defaultAuthority = defaultAuthority
        self.nextStreamID = firstStreamID
    }

    /// Whether an exchange is in progress (its request begun, its response not ended).
    var inExchange: Bool { self.streamID != nil }

    /// Whether a request's body is still being written (its END_STREAM not yet sent).
    var requestInProgress: Bool {
        if case .body = self.request { return true }
        return false
    }

    // MARK: request: HTTP/1.1 bytes to frames

    /// The frames that request bytes make (possibly none yet: a head not complete).
    mutating func requestFrames(_ bytes: ByteBuffer) throws -> [HTTP2Frame] {
        if self.pending.readableBytes == 0 {
            self.pending = bytes
        } else {
            var bytes = bytes
            self.pending.writeBuffer(&bytes)
        }
        var frames: [HTTP2Frame] = []
        loop: while true {
            switch self.request {
            case .head(let scanned):
                guard self.pending.readableBytes > 0 else { break loop }
                guard let end = HTTP1Parser.headEnd(in: self.pending, from: scanned) else {
                    self.request = .head(scanned: max(0, self.pending.readableBytes - 3))
                    break loop
                }
                guard self.streamID == nil else { throw Malformed(reason: "a request before the previous response ended") }
                var head = HTTPHead(bytes: [])
                head.refill(reading: end, from: &self.pending)
                try HTTP1Parser.parseRequest(&head)
                let (headers, framer) = try self.requestHeaders(head)
                let stream = self.nextStreamID
                guard Int(stream) < Int(Int32.max) else { throw StreamIDsUsedUp() }
                self.nextStreamID = HTTP2StreamID(Int(stream) + 2)
                self.streamID = stream
                self.requestIsHead = head.isHeadMethod
                self.response = .head
                frames.append(HTTP2Frame(streamID: stream, payload: .headers(.init(headers: headers, endStream: framer == nil))))
                self.request = framer.map { .body($0) } ?? .head(scanned: 0)
            case .body(var framer):
                guard let stream = self.streamID else {
                    // The response ended before the request: the proxy abandons the
                    // connection; what it wrote meanwhile goes nowhere.
                    self.pending.moveReaderIndex(to: self.pending.writerIndex)
                    break loop
                }
                guard let piece = try framer.next(from: &self.pending) else {
                    self.request = .body(framer)  // a chunk line read: the framer moved on
                    break loop
                }
                switch piece {
                case .data(let data):
                    // A length-delimited body's last piece carries END_STREAM itself.
                    var last = false
                    if framer.state == .ending {
                        _ = try framer.next(from: &self.pending)
                        last = true
                    }
                    self.request = last ? .head(scanned: 0) : .body(framer)
                    frames.append(HTTP2Frame(streamID: stream, payload: .data(.init(data: .byteBuffer(data), endStream: last))))
                case .end(let trailers):
                    self.request = .head(scanned: 0)
                    let fields = trailers.isEmpty ? nil : HTTP2StreamBridge.trailerFields(trailers)
                    if let fields, !HTTP2StreamBridge.fitsOneHeadersFrame(fields) {
                        throw Malformed(reason: "the request trailers do not fit one HTTP/2 HEADERS frame")
                    }
                    let payload: HTTP2Frame.FramePayload = fields.map { .headers(.init(headers: $0, endStream: true)) }
                        ?? .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))
                    frames.append(HTTP2Frame(streamID: stream, payload: payload))
                }
            }
        }
        if self.pending.readableBytes == 0, self.pending.capacity > 0 { self.pending = ByteBuffer() }
        return frames
    }

    /// The request's HTTP/2 header block (RFC 9113 §8.3.1), and the framer of its body
    /// (nil: none). Connection-specific fields are left out (the head writer keeps only
    /// what HTTP/1.1 needs); Host becomes `:authority`; `te: trailers` says the gateway
    /// takes trailers, which it forwards.
    private func requestHeaders(_ head: HTTPHead) throws -> (HPACKHeaders, BodyFramer?) {
        if head.first(.upgrade) != nil {
            throw Malformed(reason: "a protocol upgrade (WebSocket) cannot go to an HTTP/2 upstream")
        }
        var headers = HPACKHeaders()
        headers.reserveCapacity(head.fields.count + 5)
        headers.add(name: ":method", value: head.method)
        headers.add(name: ":scheme", value: self.scheme)
        headers.add(name: ":authority", value: head.first(.host) ?? self.defaultAuthority)
        headers.add(name: ":path", value: head.target)
        for field in head.fields where !head.isHopByHop(field) && field.known != .host && field.known != .contentLength {
            headers.add(name: head.lowercasedName(field), value: head.string(field.value))
        }
        // One content-length, the parser's value: the head writer forwards a client's
        // fields as received, and `5` beside `05` (one length to HTTP/1.1) is two values
        // to NIO, which refuses the HEADERS frame.
        if !head.chunked, let length = head.contentLength { headers.add(name: "content-length", value: String(length)) }
        headers.add(name: "te", value: "trailers")
        // NIO's HTTP/2 handler sends no CONTINUATION frames (as on the client side,
        // `HTTP2StreamBridge.fitsOneHeadersFrame`).
        guard HTTP2StreamBridge.fitsOneHeadersFrame(headers) else {
            throw Malformed(reason: "the request head does not fit one HTTP/2 HEADERS frame (\(HTTP2StreamBridge.maxHeaderBlockBytes) bytes)")
        }
        if head.chunked { return (headers, .chunked) }
        if let length = head.contentLength, length > 0 { return (headers, BodyFramer(length: length)) }
        return (headers, nil)
    }

    // MARK: response: frames to HTTP/1.1 bytes

    /// The HTTP/1.1 bytes a frame of the current stream makes. Frames of the connection
    /// and of other streams give nothing but their DATA's flow-controlled length, which
    /// the connection's window needs back: a stream reset earlier, or one whose response
    /// the parser has already seen end (its content-length reached, or no body) while its
    /// END_STREAM is still to come, in an empty DATA frame or trailers.
    mutating func responseStep(_ frame: HTTP2Frame) throws -> ResponseStep {
        guard let stream = self.streamID, frame.streamID == stream else {
            guard case .data(let data) = frame.payload else { return ResponseStep() }
            return ResponseStep(consumed: Self.flowControlledLength(data))
        }
        switch (frame.payload, self.response) {
        case (.headers(let headers), .head):
            return try self.responseHead(headers)
        case (.headers(let headers), .body(let body)):
            guard headers.endStream else { throw Malformed(reason: "a HEADERS frame in the middle of the response body") }
            guard let lines = HTTP2StreamBridge.trailerLines(headers.headers) else { throw Malformed(reason: "malformed response trailers") }
            // Only a chunked body carries trailers in HTTP/1.1 (a body with a length ends
            // before them, above): a length that trailers end early is a short body.
            guard body == .chunked else { throw Malformed(reason: "the response body ended before its content-length") }
            self.ended()
            return ResponseStep(bytes: TrailerSection.lastChunk(lines), ended: true)
        case (.data(let data), .body(let body)):
            guard case .byteBuffer(let piece) = data.data else { return ResponseStep() }
            var step = ResponseStep(consumed: Self.flowControlledLength(data))
            switch body {
            case .none:
                break
            case .length(let remaining):
                guard piece.readableBytes <= remaining else { throw Malformed(reason: "more response body than its content-length") }
                guard piece.readableBytes == remaining || !data.endStream else {
                    throw Malformed(reason: "the response body ended before its content-length")
                }
                step.bytes = piece
                // The parser sees the response end with its last byte: the exchange is
                // over then, whenever the stream's END_STREAM follows.
                if piece.readableBytes == remaining {
                    self.ended()
                    step.ended = true
                    return step
                }
                self.response = .body(.length(remaining - piece.readableBytes))
            case .chunked:
                var out = ByteBuffer()
                out.reserveCapacity(piece.readableBytes + 12)
                out.writeChunk(piece)
                if data.endStream { out.writeImmutableBuffer(Chunked.lastChunk) }
                step.bytes = out
            }
            if data.endStream {
                self.ended()
                step.ended = true
            }
            return step
        case (.data, _):
            throw Malformed(reason: "DATA before the response's HEADERS")
        default:
            return ResponseStep()
        }
    }

    /// What a DATA frame takes from the flow-control windows: its data, its padding and
    /// the pad length byte (RFC 9113 §6.1).
    static func flowControlledLength(_ data: HTTP2Frame.FramePayload.Data) -> Int {
        let bytes: Int
        switch data.data {
        case .byteBuffer(let buffer): bytes = buffer.readableBytes
        case .fileRegion(let region): bytes = region.readableBytes
        }
        return bytes + (data.paddingBytes.map { $0 + 1 } ?? 0)
    }

    /// The response head: `:status`, then the fields, checked as RFC 9113 §8.2 and §8.3.2
    /// ask (a pseudo-header other than `:status` or after a field, an upper-case or
    /// connection-specific name, CR, LF or NUL in a value: malformed); NIO's own check is
    /// off (`UpstreamPool.addHTTP2`). Interim responses (1xx) are dropped.
    private mutating func responseHead(_ frame: HTTP2Frame.FramePayload.Headers) throws -> ResponseStep {
        var status: Int?
        var length: Int?
        var out = ByteBuffer()
        out.reserveCapacity(256)
        out.writeStaticString("HTTP/1.1 000 \r\n")  // the status line, completed below
        var regular = false
        for (name, value, _) in frame.headers {
            if name.utf8.first == UInt8(ascii: ":") {
                guard name == ":status", status == nil, !regular, value.utf8.count == 3, let code = Int(value), code >= 100 else {
                    throw Malformed(reason: "malformed response pseudo-header \(name)")
                }
                status = code
                continue
            }
            regular = true
            guard HTTP2RequestCheck.isFieldName(name), HTTP2RequestCheck.isFieldValue(value) else {
                throw Malformed(reason: "malformed response field")
            }
            switch name {
            case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te":
                throw Malformed(reason: "connection-specific field \(name) in an HTTP/2 response")
            case "content-length":
                // Digits only (no sign, as the HTTP/1.1 parser wants them), one value.
                guard !value.isEmpty, value.utf8.count <= 15, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = Int(value),
                      length == nil || length == n else {
                    throw Malformed(reason: "malformed response content-length")
                }
                length = n
            default:
                break
            }
            out.writeString(name)
            out.writeStaticString(": ")
            out.writeString(value)
            out.writeStaticString("\r\n")
        }
        guard let status else { throw Malformed(reason: "response without :status") }
        if status < 200 {
            guard !frame.endStream else { throw Malformed(reason: "an interim response ended the stream") }
            return ResponseStep()
        }
        let digits = HTTP2StreamBridge.statusString(status)
        out.setString(digits, at: 9)
        let body: ResponseBody
        if self.requestIsHead || status == 204 || status == 304 {
            body = .none
        } else if frame.endStream {
            guard (length ?? 0) == 0 else { throw Malformed(reason: "the response body ended before its content-length") }
            body = .none
            if length == nil { out.writeStaticString("content-length: 0\r\n") }
        } else if let length {
            body = .length(length)
        } else {
            body = .chunked
            out.writeStaticString("transfer-encoding: chunked\r\n")
        }
        out.writeStaticString("\r\n")
        // No body for the parser (or an empty one): the response ends with its head.
        if frame.endStream || body == .none || body == .length(0) {
            self.ended()
            return ResponseStep(bytes: out, ended: true)
        }
        self.response = .body(body)
        return ResponseStep(bytes: out)
    }

    private mutating func ended() {
        self.streamID = nil
        self.response = .idle
    }
}
