import EdgeTLS
import NIOCore

/// Gives back the TLS record buffers of a loop's quiet upstream connections. One timer
/// for the loop, running while it has TLS connections: a busy connection keeps its
/// record buffers (a malloc and a free of 17 KB per direction and request spared), a
/// quiet one, pooled or in a long exchange, gives them back within two sweeps.
final class RecordBufferSweep {
    static let interval = TimeAmount.seconds(1)

    private let eventLoop: EventLoop
    /// Open TLS connections, pooled or in an exchange; closed ones leave at the next sweep.
    private var connections: [(channel: Channel, tls: OpenSSLHandler)] = []
    private var scheduled: Scheduled<Void>?

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    func track(_ channel: Channel, tls: OpenSSLHandler) {
        self.connections.append((channel, tls))
        if self.scheduled == nil { self.schedule() }
    }

    private func schedule() {
        self.scheduled = self.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: Self.interval) {
            self.sweep()
        }
    }

    private func sweep() {
        self.scheduled = nil
        var index = 0
        while index < self.connections.count {
            let connection = self.connections[index]
            if connection.channel.isActive {
                connection.tls.releaseRecordBuffersIfQuiet()
                index += 1
            } else {
                self.connections.swapAt(index, self.connections.count - 1)
                self.connections.removeLast()
            }
        }
        if !self.connections.isEmpty { self.schedule() }
    }
}

@available(*, unavailable)
extension RecordBufferSweep: Sendable {}
