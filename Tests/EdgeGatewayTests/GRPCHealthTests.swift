@testable import EdgeProxy
import NIOCore
import XCTest

/// The gRPC health check's request and verdict as bytes, without a server.
final class GRPCHealthTests: XCTestCase {
    func message(_ bytes: [UInt8], flag: UInt8 = 0) -> ByteBuffer {
        var out = ByteBuffer()
        out.writeInteger(flag)
        out.writeInteger(UInt32(bytes.count))
        out.writeBytes(bytes)
        return out
    }

    func testTheRequestNamesTheServiceOrNone() {
        XCTAssertEqual(Array(GRPCHealth.requestBody(service: "").readableBytesView), [0, 0, 0, 0, 0])
        XCTAssertEqual(Array(GRPCHealth.requestBody(service: "echo").readableBytesView), [0, 0, 0, 0, 6, 0x0A, 4] + Array("echo".utf8))
        let long = String(repeating: "s", count: 200)  // a two-byte varint length
        XCTAssertEqual(Array(GRPCHealth.requestBody(service: long).readableBytesView.prefix(8)), [0, 0, 0, 0, 203, 0x0A, 0xC8, 0x01])
    }

    /// SERVING passes; everything else fails with a reason an operator can act on.
    func testOnlyAServingAnswerPasses() {
        XCTAssertNil(GRPCHealth.failure(httpStatus: 200, grpcStatus: "0", grpcMessage: nil, body: self.message([0x08, 0x01])))
        // Unknown fields around the status are skipped by their wire type.
        XCTAssertNil(GRPCHealth.failure(httpStatus: 200, grpcStatus: "0", grpcMessage: nil,
                                        body: self.message([0x12, 0x02, 0x61, 0x62, 0x08, 0x01, 0x1D, 1, 2, 3, 4])))
        let cases: [(Int, String?, String?, ByteBuffer, String)] = [
            (200, "0", nil, self.message([0x08, 0x02]), "the server says NOT_SERVING"),
            (200, "0", nil, self.message([0x08, 0x03]), "the server says SERVICE_UNKNOWN"),
            (200, "0", nil, self.message([]), "the server says UNKNOWN"),
            (200, "0", nil, self.message([0x08, 0x01], flag: 1), "not one uncompressed HealthCheckResponse message"),
            (200, "0", nil, ByteBuffer(bytes: [0, 0, 0]), "not one uncompressed HealthCheckResponse message"),
            (200, "12", "unknown service", ByteBuffer(), "grpc-status 12 (UNIMPLEMENTED: the server has no health service): unknown service"),
            (200, "5", nil, ByteBuffer(), "grpc-status 5"),
            (200, nil, nil, self.message([0x08, 0x01]), "no grpc-status: not a gRPC answer"),
            (503, "0", nil, self.message([0x08, 0x01]), "HTTP status 503, not a gRPC answer"),
        ]
        for (status, grpcStatus, grpcMessage, body, expected) in cases {
            XCTAssertEqual(GRPCHealth.failure(httpStatus: status, grpcStatus: grpcStatus, grpcMessage: grpcMessage, body: body), expected)
        }
    }
}
