import NIOCore
import NIOHPACK
import NIOHTTP2

/// One stream of an HTTP/2 upstream connection: the request the proxy writes as
/// HTTP/1.1 bytes (head, framed body, trailers) becomes HEADERS, DATA and a trailer
/// HEADERS frame, and the stream's response frames become the parts the proxy takes from
/// any upstream (`UpstreamResponsePart`): a parsed head, body pieces as they came, the end
/// with its trailers. Pure: bytes and frames in, frames and parts out;
/// `HTTP2UpstreamSession` does the I/O for every stream of a connection.
///
/// Why HTTP/1.1 bytes on the request side, and not a second proxy engine: every rule of
/// the proxy (head rewriting, forwarding headers, retries, timeouts) is written once
/// against them, as the downstream `HTTP2StreamBridge` does it for clients. The response
/// needs no second pass: its head is written once as HTTP/1.1 for the proxy's parser (so
/// the same checks hold), and its body goes through as the DATA frames' bytes.
struct HTTP2UpstreamTranslation {
    /// A message that cannot be carried or that the upstream sent malformed.
    struct Malformed: Error, CustomStringConvertible {
        let reason: String
        var description: String { self.reason }
    }

    /// How much response body is still to come.
    enum ResponseBody: Equatable {
        /// No body bytes at all (HEAD, 204, 304).
        case none
        /// The upstream sent a content-length; this many bytes are still to come.
        case length(Int)
        /// No length: the body ends with the stream (and may have trailers).
        case untilEnd
    }

    private enum Request {
        /// Waiting for the head's end; `scanned` bytes were searched already.
        case head(scanned: Int)
        case body(BodyFramer)
        /// END_STREAM sent: bytes written after it go nowhere.
        case sent
    }

    private enum Response: Equatable {
        case head
        case body(ResponseBody)
        case ended
    }

    /// What a response frame gives the proxy.
    struct ResponseStep {
        var part: UpstreamResponsePart?
        /// Flow-controlled bytes the frame took from the windows, to give back.
        var consumed = 0
        /// The response ended with this frame (its END_STREAM): after a part other than
        /// `.end`, an `.end` without trailers follows it.
        var ended = false
    }

    let scheme: String
    /// `:authority` when the request has no Host field.
    let defaultAuthority: String
    /// The group's `max_response_head_bytes`, counted on the head as HTTP/1.1.
    let maxHeadBytes: Int
    private var request = Request.head(scanned: 0)
    private var response = Response.head
    private var pending = ByteBuffer()
    private var requestIsHead = false
    /// The stream's ID, taken when the request's head was complete.
    private(set) var streamID: HTTP2StreamID?

    init(scheme: String, defaultAuthority: String, maxHeadBytes: Int = 64 * 1024) {
        self.scheme = scheme
        self.defaultAuthority = defaultAuthority
        self.maxHeadBytes = maxHeadBytes
    }

    /// Whether the request's END_STREAM was sent.
    var requestEnded: Bool {
        if case .sent = self.request { return true }
        return false
    }

    /// Whether the response's END_STREAM came.
    var responseEnded: Bool { self.response == .ended }

    // MARK: request: HTTP/1.1 bytes to frames

    /// The frames that request bytes make (possibly none yet: a head not complete).
    /// `newStream` gives the stream its ID when the head is complete: the connection
    /// hands them out in the order the HEADERS frames go out, as HTTP/2 requires.
    mutating func requestFrames(_ bytes: ByteBuffer, newStream: () throws -> HTTP2StreamID) throws -> [HTTP2Frame] {
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
                var head = HTTPHead(bytes: [])
                head.refill(reading: end, from: &self.pending)
                try HTTP1Parser.parseRequest(&head)
                let (headers, framer) = try self.requestHeaders(head)
                let stream = try newStream()
                self.streamID = stream
                self.requestIsHead = head.isHeadMethod
                frames.append(HTTP2Frame(streamID: stream, payload: .headers(.init(headers: headers, endStream: framer == nil))))
                self.request = framer.map { .body($0) } ?? .sent
            case .body(var framer):
                let stream = self.streamID!
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
                    self.request = last ? .sent : .body(framer)
                    frames.append(HTTP2Frame(streamID: stream, payload: .data(.init(data: .byteBuffer(data), endStream: last))))
                case .end(let trailers):
                    self.request = .sent
                    let fields = trailers.isEmpty ? nil : HTTP2StreamBridge.trailerFields(trailers)
                    if let fields, !HTTP2StreamBridge.fitsOneHeadersFrame(fields) {
                        throw Malformed(reason: "the request trailers do not fit one HTTP/2 HEADERS frame")
                    }
                    let payload: HTTP2Frame.FramePayload = fields.map { .headers(.init(headers: $0, endStream: true)) }
                        ?? .data(.init(data: .byteBuffer(ByteBuffer()), endStream: true))
                    frames.append(HTTP2Frame(streamID: stream, payload: payload))
                }
            case .sent:
                // The request is over (or the response ended first and the proxy is
                // letting go of the stream): what it writes now goes nowhere.
                self.pending.moveReaderIndex(to: self.pending.writerIndex)
                break loop
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

    // MARK: response: frames to parts

    /// The part a frame of this stream makes. The response ends with the stream's
    /// END_STREAM (RFC 9113 §8.1), so trailers after a body with a length still come
    /// through, and the stream is closed when the proxy lets go of it.
    mutating func responseStep(_ payload: HTTP2Frame.FramePayload) throws -> ResponseStep {
        switch (payload, self.response) {
        case (.headers(let headers), .head):
            return try self.responseHead(headers)
        case (.headers(let headers), .body(let body)):
            guard headers.endStream else { throw Malformed(reason: "a HEADERS frame in the middle of the response body") }
            if case .length(let remaining) = body, remaining > 0 {
                throw Malformed(reason: "the response body ended before its content-length")
            }
            let trailers = try Self.trailerSection(headers.headers)
            self.response = .ended
            return ResponseStep(part: .end(trailers: trailers), ended: true)
        case (.data(let data), .body(let body)):
            var step = ResponseStep(consumed: Self.flowControlledLength(data))
            guard case .byteBuffer(let piece) = data.data else { return step }
            switch body {
            case .none:
                break  // HEAD, 204, 304: nothing to pass on
            case .length(let remaining):
                guard piece.readableBytes <= remaining else { throw Malformed(reason: "more response body than its content-length") }
                guard piece.readableBytes == remaining || !data.endStream else {
                    throw Malformed(reason: "the response body ended before its content-length")
                }
                self.response = .body(.length(remaining - piece.readableBytes))
                if piece.readableBytes > 0 { step.part = .body(piece) }
            case .untilEnd:
                if piece.readableBytes > 0 { step.part = .body(piece) }
            }
            if data.endStream {
                self.response = .ended
                step.ended = true
            }
            return step
        case (.data(let data), .ended):
            return ResponseStep(consumed: Self.flowControlledLength(data))
        case (.data, .head):
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

    /// The trailer section as the proxy carries a chunked body's (`TrailerSection`), with
    /// the same checks: a field that must not be a trailer, or one the gateway writes
    /// itself, makes the response malformed; so does a section over its size.
    static func trailerSection(_ headers: HPACKHeaders) throws -> [UInt8] {
        guard let lines = HTTP2StreamBridge.trailerLines(headers) else { throw Malformed(reason: "malformed response trailers") }
        guard lines.count <= TrailerSection.maxBytes else { throw Malformed(reason: "trailer section too large") }
        var start = 0
        while start < lines.count, let cr = lines[start...].firstIndex(of: 0x0D) {
            do {
                try TrailerSection.check(Array(lines[start..<cr]))
            } catch {
                throw Malformed(reason: "\(error)")
            }
            start = cr + 2
        }
        return lines
    }

    /// The response head: `:status`, then the fields, checked as RFC 9113 §8.2 and §8.3.2
    /// ask (a pseudo-header other than `:status` or after a field, an upper-case or
    /// connection-specific name, CR, LF or NUL in a value: malformed); NIO's own check is
    /// off (`UpstreamPool.addHTTP2`). Written as HTTP/1.1 and parsed by the proxy's own
    /// parser, so the head the proxy gets is the one an HTTP/1.1 upstream's would be; a
    /// body without a length is marked chunked, which is how the proxy frames it for
    /// HTTP/1.1 clients. Interim responses (1xx) are dropped. A response whose HEADERS end
    /// the stream gives its head with `ended`: its `.end` follows at once.
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
            body = .untilEnd
            out.writeStaticString("transfer-encoding: chunked\r\n")
        }
        out.writeStaticString("\r\n")
        guard out.readableBytes <= self.maxHeadBytes else { throw ResponseHeadTooLarge(limit: self.maxHeadBytes) }
        var head = HTTPHead(bytes: [])
        head.refill(reading: out.readableBytes, from: &out)
        try HTTP1Parser.parseResponse(&head)
        self.response = frame.endStream ? .ended : .body(body)
        return ResponseStep(part: .head(head), ended: frame.endStream)
    }
}
