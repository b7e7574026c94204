import NIOCore

/// An answer of the gateway's own (an error page, a redirect, a static file), built as a
/// value from what decides it; `ProxyHandler` writes its bytes and ends the exchange.
struct LocalAnswer {
    var status: Int
    /// Header lines, each ending in CRLF.
    var fields: String
    var body: ByteBuffer
    /// Why a static file was refused, for the log (the client is told only "not served").
    var refusal: String?
    /// A text answer's reason, as `grpc-message` tells it to a gRPC client.
    var message: String?
    /// The `grpc-status` a gRPC client gets, where gRPC's mapping of the HTTP status
    /// would say less (a passed deadline is DEADLINE_EXCEEDED, not UNAVAILABLE).
    var grpcStatus: GRPCAnswer.Status?

    init(status: Int, fields: String, body: ByteBuffer, refusal: String? = nil) {
        self.status = status
        self.fields = fields
        self.body = body
        self.refusal = refusal
    }

    /// A text answer saying why: `404 Not Found: no such file`.
    init(status: Int, message: String, fields: String = "") {
        self.init(status: status, fields: "content-type: text/plain; charset=utf-8\r\n" + fields,
                  body: ByteBuffer(string: "\(status) \(Self.reasonPhrase(status)): \(message)\n"))
        self.message = message
    }

    /// A `redirect` route's answer: the same path and query at the configured scheme, host
    /// and port.
    static func redirect(_ head: HTTPHead, to redirect: Redirect) -> LocalAnswer {
        guard let location = redirect.location(requestHost: head.first(.host), target: head.target) else {
            return LocalAnswer(status: 400, message: "a redirect needs a Host header holding a DNS name or an IP address")
        }
        return LocalAnswer(status: redirect.status, message: location, fields: "location: \(location)\r\n")
    }

    /// A `root` route's answer: the file the path names, for GET and HEAD.
    static func file(_ head: HTTPHead, from root: StaticRoot, allocator: ByteBufferAllocator) -> LocalAnswer {
        guard head.method == "GET" || head.isHeadMethod else {
            return LocalAnswer(status: 405, message: "a static root answers GET and HEAD", fields: "allow: GET, HEAD\r\n")
        }
        switch root.answer(target: head.target, allocator: allocator) {
        case .file(let body, let contentType):
            return LocalAnswer(status: 200, fields: "content-type: \(contentType)\r\n", body: body)
        case .notFound:
            return LocalAnswer(status: 404, message: "no such file")
        case .refused(let reason):
            var answer = LocalAnswer(status: 403, message: "not served")
            answer.refusal = reason
            return answer
        case .badPath:
            return LocalAnswer(status: 400, message: "malformed percent-encoding in the path")
        }
    }

    /// Whether the connection closes after the answer: a request not fully read, one that
    /// did not ask to keep the connection, or a connection that is draining.
    static func closes(request: HTTPHead?, requestEnded: Bool, draining: Bool) -> Bool {
        !requestEnded || !(request?.keepAlive ?? false) || draining
    }

    /// The answer as the client gets it, in the request's HTTP version (HTTP/1.1 when no
    /// head parsed); HEAD gets the head alone.
    func bytes(for request: HTTPHead?, close: Bool, hsts: String?, allocator: ByteBufferAllocator) -> ByteBuffer {
        var out = allocator.buffer(capacity: 160 + self.fields.utf8.count + self.body.readableBytes)
        out.writeString(request?.minorVersion == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
        out.writeString("\(self.status) \(Self.reasonPhrase(self.status))\r\n")
        out.writeString(self.fields)
        if let hsts { out.writeString("strict-transport-security: \(hsts)\r\n") }
        out.writeString("content-length: \(self.body.readableBytes)\r\n")
        if close { out.writeStaticString("connection: close\r\n") }
        out.writeStaticString("\r\n")
        if request?.method != "HEAD" { out.writeImmutableBuffer(self.body) }
        return out
    }

    static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 200: return "OK"
        case 301: return "Moved Permanently"
        case 302: return "Found"
        case 303: return "See Other"
        case 307: return "Temporary Redirect"
        case 308: return "Permanent Redirect"
        case 400: return "Bad Request"
        case 403: return "Forbidden"
        case 404: return "Not Found"
        case 405: return "Method Not Allowed"
        case 408: return "Request Timeout"
        case 413: return "Content Too Large"
        case 421: return "Misdirected Request"
        case 431: return "Request Header Fields Too Large"
        case 502: return "Bad Gateway"
        case 503: return "Service Unavailable"
        case 504: return "Gateway Timeout"
        default: return "Error"
        }
    }
}
