import NIOCore

/// The gateway's error answers as a gRPC client reads them.
///
/// A gRPC client takes neither an HTTP error status nor a text body for an answer: it
/// makes up a status from the HTTP one and reports "Received http2 header with status:
/// 502", the gateway's reason lost. Envoy answers a gRPC request's local errors in gRPC
/// instead, and so does this: HTTP 200 and a trailers-only response (RFC 9113 HEADERS
/// with END_STREAM holding `grpc-status` and `grpc-message`, no body), the status mapped
/// from the HTTP one by gRPC's own table (doc/http-grpc-status-mapping.md), which is what
/// the client would have made up.
enum GRPCAnswer {
    /// gRPC status codes (grpc/doc/statuscodes.md) that the gateway's answers use.
    enum Status: Int {
        case unknown = 2
        case deadlineExceeded = 4
        case permissionDenied = 7
        case unimplemented = 12
        case `internal` = 13
        case unavailable = 14
        case unauthenticated = 16
    }

    /// Whether a request is a gRPC call: `content-type: application/grpc`, alone or with
    /// a `+format` or `;parameters` after it (grpc/doc/PROTOCOL-HTTP2.md).
    /// Looked up in the head's bytes, without a copy: it runs for every HTTP/2 request.
    /// (`asciiCaseInsensitiveEquals` folds case only: `/` matches no other byte the
    /// parser lets into a value.)
    static func isGRPC(_ head: HTTPHead) -> Bool {
        guard let range = head.valueRange(named: "content-type") else { return false }
        let prefix: StaticString = "application/grpc"
        let length = prefix.utf8CodeUnitCount
        return head.bytes.withUnsafeBytes { p in
            guard range.count >= length, asciiCaseInsensitiveEquals(p, range.lowerBound..<range.lowerBound + length, prefix) else { return false }
            guard range.count > length else { return true }
            let next = p[range.lowerBound + length]
            return next == UInt8(ascii: "+") || next == UInt8(ascii: ";")
        }
    }

    /// A gRPC call's `grpc-timeout` (grpc/doc/PROTOCOL-HTTP2.md: one to eight digits and
    /// a unit, H M S m u n); nil when the request has none or it is malformed (then the
    /// call has no deadline the gateway knows of, as with no header).
    static func timeout(_ value: String) -> TimeAmount? {
        let bytes = Array(value.utf8)
        guard bytes.count >= 2, bytes.count <= 9, let unit = bytes.last else { return nil }
        var amount: Int64 = 0
        for digit in bytes.dropLast() {
            guard digit >= UInt8(ascii: "0"), digit <= UInt8(ascii: "9") else { return nil }
            amount = amount * 10 + Int64(digit - UInt8(ascii: "0"))
        }
        switch unit {
        case UInt8(ascii: "H"): return .hours(amount)
        case UInt8(ascii: "M"): return .minutes(amount)
        case UInt8(ascii: "S"): return .seconds(amount)
        case UInt8(ascii: "m"): return .milliseconds(amount)
        case UInt8(ascii: "u"): return .microseconds(amount)
        case UInt8(ascii: "n"): return .nanoseconds(amount)
        default: return nil
        }
    }

    /// gRPC's mapping of an HTTP status.
    static func status(forHTTP status: Int) -> Status {
        switch status {
        case 400: return .internal
        case 401: return .unauthenticated
        case 403: return .permissionDenied
        case 404: return .unimplemented
        case 429, 502, 503, 504: return .unavailable
        default: return .unknown
        }
    }

    /// `answer` (an error, 400 or above) as a trailers-only gRPC response.
    static func answer(_ answer: LocalAnswer) -> LocalAnswer {
        let status = answer.grpcStatus ?? Self.status(forHTTP: answer.status)
        let message = answer.message ?? LocalAnswer.reasonPhrase(answer.status)
        var converted = LocalAnswer(status: 200, fields: "content-type: application/grpc\r\ngrpc-status: \(status.rawValue)\r\n"
            + "grpc-message: \(Self.percentEncoded(message))\r\n", body: .init())
        converted.message = message
        return converted
    }

    /// A status as trailer field lines (`TrailerSection`), to end a response that began.
    static func trailerLines(_ status: Status, message: String) -> [UInt8] {
        Array("grpc-status: \(status.rawValue)\r\ngrpc-message: \(Self.percentEncoded(message))\r\n".utf8)
    }

    /// `grpc-message` is percent-encoded UTF-8: every byte outside printable ASCII, and
    /// `%` itself, as %XX (grpc/doc/PROTOCOL-HTTP2.md). It cannot end the field line.
    static func percentEncoded(_ message: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(message.utf8.count)
        for byte in message.utf8 {
            if byte >= 0x20, byte <= 0x7E, byte != UInt8(ascii: "%") {
                out.append(byte)
            } else {
                out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
