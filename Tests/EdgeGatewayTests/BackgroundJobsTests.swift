@testable import EdgeGateway
import Logging
import NIOConcurrencyHelpers
import ServiceLifecycle
import XCTest

/// A generation's background jobs as services of their own group: they tick until
/// graceful shutdown, a job that ends stops nothing else, and `stop()` returns only once
/// every job has returned. Waits on the jobs' own signals, never on a sleep.
final class BackgroundJobsTests: XCTestCase {
    private struct EndsAtOnce: Service {
        func run() async throws {}
    }

    private struct Fails: Service {
        struct Failure: Error {}
        func run() async throws { throw Failure() }
    }

    /// Runs `inner`, then says it returned.
    private struct Returning: Service {
        let inner: any Service
        let returned: @Sendable () -> Void
        func run() async throws {
            defer { self.returned() }
            try await self.inner.run()
        }
    }

    func testPeriodicJobsTickUntilShutdownAndAnEndedOrFailedJobStopsNothing() async throws {
        let (ticks, tick) = AsyncStream.makeStream(of: Int.self)
        let count = NIOLockedValueBox(0)
        let stopped = NIOLockedValueBox(false)
        let jobs = BackgroundJobs([
            ("ends", EndsAtOnce()),
            ("fails", Fails()),
            ("ticks", Returning(inner: PeriodicJob(interval: .milliseconds(5)) { tick.yield(count.withLockedValue { $0 += 1; return $0 }) },
                                returned: { tick.finish() })),
            ("held", StopOnShutdown { stopped.withLockedValue { $0 = true } }),
        ], logger: Logger(label: "test"))
        // Three ticks, though two of its neighbours returned at once (a job that ended
        // its group would end this one too, and the stream with it).
        for await n in ticks where n >= 3 { break }
        XCTAssertGreaterThanOrEqual(count.withLockedValue { $0 }, 3, "the periodic job was stopped by its neighbours")
        XCTAssertFalse(stopped.withLockedValue { $0 }, "nothing is stopped before shutdown")
        await jobs.stop()
        XCTAssertTrue(stopped.withLockedValue { $0 }, "a held job is stopped on shutdown, before stop() returns")
    }

    /// Stopped right after it was made (the group may or may not have started running):
    /// a held job is stopped all the same.
    func testStopRightAfterStartStillStopsHeldJobs() async {
        let stopped = NIOLockedValueBox(false)
        let jobs = BackgroundJobs([("held", StopOnShutdown { stopped.withLockedValue { $0 = true } })], logger: Logger(label: "test"))
        await jobs.stop()
        XCTAssertTrue(stopped.withLockedValue { $0 })
    }
}
