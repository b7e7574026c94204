import Atomics
import CSocketShims
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// Gives the free pages inside malloc's heap back to the kernel once a burst of client
/// connections is over (`malloc_trim`), as HAProxy does when it releases its pools
/// (its `no-memory-trimming` turns that off; `memory_trimming: false` does here).
///
/// A TLS handshake allocates and frees tens of kilobytes (OpenSSL's handshake and
/// record buffers) around the few kilobytes a connection keeps, and a closed connection
/// frees its state wherever it was. glibc returns only the top of its heap to the kernel,
/// so after a burst the freed space between live connections' memory stays resident.
/// Measured with 4,000 idle TLS connections: 18.9 KiB of RSS each, 17.6 KiB after a trim.
///
/// The trim runs on a thread of its own, never on an event loop, at most once a second:
/// after a second with no connection opened or closed that follows one with activity, or
/// after 30 s of uninterrupted activity (a steady stream of new connections).
final class HeapTrimmer: Sendable {
    static let shared = HeapTrimmer()

    /// Client connections opened and closed, process-wide.
    private let connectionEvents = ManagedAtomic<Int>(0)

    private struct State {
        var seen = 0
        /// When activity began that no trim has followed yet.
        var activeSince: NIODeadline?
        var running = false
    }

    private let state = NIOLockedValueBox(State())

    /// A client connection opened or closed (one relaxed atomic increment).
    @inline(__always)
    func noteConnectionEvent() {
        self.connectionEvents.wrappingIncrement(ordering: .relaxed)
    }

    /// Decides, once a second, whether a trim is due; `trimmed` gets the bytes of
    /// resident memory the trim gave back (the duration is logged).
    func tick(logger: Logger, trimmed: @escaping @Sendable (_ releasedBytes: Int) -> Void) {
        let events = self.connectionEvents.load(ordering: .relaxed)
        let now = NIODeadline.now()
        let due = self.state.withLockedValue { state -> Bool in
            guard !state.running else { return false }
            if events != state.seen {
                state.seen = events
                let since = state.activeSince ?? now
                state.activeSince = since
                guard now - since >= .seconds(30) else { return false }  // still busy
            } else if state.activeSince == nil {
                return false  // quiet, and trimmed since the last activity
            }
            state.activeSince = nil
            state.running = true
            return true
        }
        guard due else { return }
        let thread = Thread {
            let before = Self.residentBytes()
            let started = DispatchTime.now().uptimeNanoseconds
            _ = edge_malloc_trim(0)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - started) / 1e9
            let released = max(0, before - Self.residentBytes())
            self.state.withLockedValue { $0.running = false }
            logger.debug("heap trimmed", metadata: ["released_kib": "\(released / 1024)", "took_ms": "\(String(format: "%.1f", seconds * 1000))"])
            trimmed(released)
        }
        thread.name = "heap-trim"
        thread.start()
    }

    /// Resident set size from /proc/self/statm, in bytes (0 if unreadable).
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .ascii),
              let pages = text.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
