@testable import EdgeProxy
import NIOCore
import NIOEmbedded
import XCTest

/// The pool's I/O shell around `PoolState`, on an embedded channel: what happens to an
/// idle connection whose close does not complete at once (a TLS close waits for the
/// backend's close_notify).
final class UpstreamPoolTests: XCTestCase {
    /// Takes a close and does not pass it on, as `OpenSSLHandler` does while it waits
    /// for close_notify: the channel stays active.
    final class HoldsClose: ChannelOutboundHandler {
        typealias OutboundIn = Any
        var closes = 0
        func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
            self.closes += 1
        }
    }

    struct Pooled {
        let channel: EmbeddedChannel
        let pool: UpstreamPool
        let group: UpstreamGroup
        let holds: HoldsClose
        var idle: Int { self.group.states[0].idleConnections.load(ordering: .relaxed) }
    }

    /// One connection to the group's only backend, idle in a pool.
    func pooledConnection() throws -> Pooled {
        let loop = EmbeddedEventLoop()
        let channel = EmbeddedChannel(loop: loop)
        let pool = UpstreamPool(eventLoop: loop, recordBuffers: RecordBufferSweep(eventLoop: loop))
        let group = UpstreamGroup(name: "app", backends: [try Backend(host: "127.0.0.1", port: 9)], tls: nil, timeouts: .init(), hostHeader: nil)
        let handler = UpstreamHandler(ready: loop.makePromise(), needsHandshake: false, backend: "127.0.0.1:9")
        let holds = HoldsClose()
        try channel.pipeline.syncOperations.addHandler(holds)
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 9)).wait()
        let key = PoolKey(backend: group.states[0], address: group.backends[0].address, generation: 0)
        let connection = UpstreamConnection(channel: channel, key: key, handler: handler, backendIndex: 0)
        handler.connection = connection
        pool.release(connection, group: group)
        XCTAssertEqual(pool.idle(group: group, backend: 0).count, 1)
        return Pooled(channel: channel, pool: pool, group: group, holds: holds)
    }

    func testAnIdleConnectionThatBreaksTheProtocolLeavesThePoolAtOnce() throws {
        let pooled = try self.pooledConnection()
        XCTAssertEqual(pooled.idle, 1)
        // Bytes with no request outstanding (a body longer than its content-length).
        try pooled.channel.writeInbound(ByteBuffer(string: "tail of a response\r\n"))
        XCTAssertEqual(pooled.holds.closes, 1)
        XCTAssertTrue(pooled.channel.isActive, "its close is still under way")
        XCTAssertNil(pooled.pool.takeIdle(group: pooled.group, backend: 0), "not handed to the next request while it closes")
        XCTAssertEqual(pooled.idle, 0)
    }

    func testAnIdleConnectionWithAnErrorLeavesThePoolAtOnce() throws {
        let pooled = try self.pooledConnection()
        pooled.channel.pipeline.fireErrorCaught(IOError(errnoCode: ECONNRESET, reason: "read"))
        XCTAssertEqual(pooled.holds.closes, 1)
        XCTAssertNil(pooled.pool.takeIdle(group: pooled.group, backend: 0))
        XCTAssertEqual(pooled.idle, 0)
        // The close completing later counts nothing twice.
        pooled.channel.pipeline.fireChannelInactive()
        XCTAssertEqual(pooled.idle, 0)
    }
}
