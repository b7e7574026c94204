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
        case permissionDenied = 7
        case unimplemented = 12
        case `internal` = 13
        case unavailable = 14
        case unauthenticated = 16
    }

    /// Whether a request is a gRPC call: `content-type: application/grpc`, alone or with
    /// a `+format` or `;parameters` after it (grpc/doc/PROTOCOL-HTTP2.md).
    static func isGRPC(_ head: HTTPHead) -> Bool {
        guard let type = head.value(of: "content-type") else { return false }
        let prefix = "application/grpc".utf8
        let bytes = type.utf8
        guard bytes.count >= prefix.count,
              zip(bytes, prefix).allSatisfy({ $0 | ($0 &- 0x41 < 26 ? 0x20 : 0) == $1 }) else { return false }
        let next = bytes.dropFirst(prefix.count).first
        return next == nil || next == UInt8(ascii: "+") || next == UInt8(ascii: ";")
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
        let status = Self.status(forHTTP: answer.status)
        let message = answer.message ?? LocalAnswer.reasonPhrase(answer.status)
        var converted = LocalAnswer(status: 200, fields: "content-type: application/grpc\r\ngrpc-status: \(status.rawValue)\r\n"
            + "grpc-message: \(Self.percentEncoded(message))\r\n", body: .init())
        converted.message = message
        return converted
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
