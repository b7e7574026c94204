import NIOCore

/// The standard gRPC health check (`grpc.health.v1.Health/Check`, grpc/doc/health-checking.md)
/// as bytes, without protobuf: the request is one length-prefixed HealthCheckRequest
/// naming the service, and a backend passes when the call ends with `grpc-status: 0` and
/// its HealthCheckResponse says SERVING. Envoy's `grpc_health_check`, HAProxy's and
/// Kubernetes' gRPC probes ask the same question.
enum GRPCHealth {
    static let path = "/grpc.health.v1.Health/Check"

    /// The request body: the gRPC message prefix (not compressed, 4-byte length) and a
    /// HealthCheckRequest whose field 1 (`service`, a string) is `service`, left out
    /// when empty (the server as a whole).
    static func requestBody(service: String) -> ByteBuffer {
        var message: [UInt8] = []
        if !service.isEmpty {
            message.append(0x0A)  // field 1, length-delimited
            Self.appendVarint(UInt64(service.utf8.count), to: &message)
            message += service.utf8
        }
        var out = ByteBuffer()
        out.writeInteger(UInt8(0))
        out.writeInteger(UInt32(message.count))
        out.writeBytes(message)
        return out
    }

    /// The serving statuses of HealthCheckResponse (field 1, an enum).
    static let statusNames = ["UNKNOWN", "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN"]

    /// Why a finished call does not say "serving", or nil when it does. `grpcStatus` is
    /// the call's `grpc-status` (from the trailers, or from the head of a trailers-only
    /// answer); `body` the response body (one length-prefixed message).
    static func failure(httpStatus: Int, grpcStatus: String?, grpcMessage: String?, body: ByteBuffer) -> String? {
        guard httpStatus == 200 else { return "HTTP status \(httpStatus), not a gRPC answer" }
        guard let grpcStatus else { return "no grpc-status: not a gRPC answer" }
        guard grpcStatus == "0" else {
            let hint = grpcStatus == "12" ? " (UNIMPLEMENTED: the server has no health service)" : ""
            return "grpc-status \(grpcStatus)\(hint)" + (grpcMessage.map { ": \($0)" } ?? "")
        }
        var body = body
        guard let flag = body.readInteger(as: UInt8.self), let length = body.readInteger(as: UInt32.self),
              flag == 0, let message = body.readBytes(length: Int(length)) else {
            return "not one uncompressed HealthCheckResponse message"
        }
        let status = Self.servingStatus(message)
        guard status == 1 else {
            let name = status < Self.statusNames.count ? Self.statusNames[Int(status)] : "status \(status)"
            return "the server says \(name)"
        }
        return nil
    }

    /// Field 1 of a HealthCheckResponse (proto3: absent means 0, UNKNOWN); other fields
    /// are skipped by their wire type.
    static func servingStatus(_ message: [UInt8]) -> UInt64 {
        var i = 0
        var status: UInt64 = 0
        while i < message.count {
            guard let key = Self.varint(message, &i) else { return 0 }
            switch key & 7 {
            case 0:
                guard let value = Self.varint(message, &i) else { return 0 }
                if key >> 3 == 1 { status = value }
            case 1: i += 8
            case 2:
                guard let length = Self.varint(message, &i), length <= UInt64(message.count) else { return 0 }
                i += Int(length)
            case 5: i += 4
            default: return 0
            }
        }
        return status
    }

    private static func varint(_ bytes: [UInt8], _ i: inout Int) -> UInt64? {
        var value: UInt64 = 0
        var shift: UInt64 = 0
        while i < bytes.count, shift < 64 {
            let byte = bytes[i]
            i += 1
            value |= UInt64(byte & 0x7F) << shift
            if byte & 0x80 == 0 { return value }
            shift += 7
        }
        return nil
    }

    private static func appendVarint(_ value: UInt64, to out: inout [UInt8]) {
        var value = value
        while value >= 0x80 {
            out.append(UInt8(value & 0x7F) | 0x80)
            value >>= 7
        }
        out.append(UInt8(value))
    }
}
