import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// Counts changes of one file (a CRL an upstream context was built from), looked at no
/// more than once a second: the count is read for every new upstream connection, and a
/// changed count makes the context be built again from the file.
package final class FileChangeCounter: Sendable {
    private struct State {
        var stamp: String?
        var changes = 0
        var lookedAt: UInt64 = 0
    }

    package let path: String
    private let state: NIOLockedValueBox<State>

    package init(path: String) {
        self.path = path
        self.state = NIOLockedValueBox(State(stamp: Self.stamp(path), lookedAt: Self.monotonicNanoseconds()))
    }

    /// How many times the file changed since this counter was made.
    package var changes: Int {
        self.state.withLockedValue { state in
            // Read under the lock: a reading from before another thread's would move it back.
            let now = Self.monotonicNanoseconds()
            guard now &- state.lookedAt >= 1_000_000_000 else { return state.changes }
            state.lookedAt = now
            let stamp = Self.stamp(self.path)
            // A file gone for a moment (replaced by a rename) is not a change; its replacement is.
            if let stamp, stamp != state.stamp {
                state.stamp = stamp
                state.changes += 1
            }
            return state.changes
        }
    }

    private static func stamp(_ path: String) -> String? {
        var st = stat()
        guard stat(path, &st) == 0 else { return nil }
        return "\(st.st_dev)-\(st.st_ino)-\(st.st_size)-\(st.st_mtim.tv_sec).\(st.st_mtim.tv_nsec)"
    }

    private static func monotonicNanoseconds() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}
