@testable import EdgeCertificates
import EdgeTLS
import EdgeTestSupport
import Foundation
import Logging
import NIOConcurrencyHelpers
import XCTest

/// The watcher's reload policy, driven with made-up times (milliseconds): no inotify, no
/// sleeps. The end-to-end tests (RotationTests, HostileFilesTests) keep the real watcher.
final class WatchScheduleTests: XCTestCase {
    func schedule(debounce: Int = 200, rescan: Int = 60_000, immediate: Bool = true, now: Int64 = 0) -> WatchSchedule {
        WatchSchedule(policy: .init(WatcherConfiguration(debounceMilliseconds: debounce, rescanMilliseconds: rescan, immediate: immediate)), now: now)
    }

    /// Everything due at `now`, performing each early reload as taking `earlyTakes` ms and
    /// each rescan `rescanTakes`.
    func due(_ schedule: inout WatchSchedule, at now: Int64, earlyTakes: Int64 = 0, rescanTakes: Int64 = 0) -> [WatchSchedule.Action] {
        var actions: [WatchSchedule.Action] = []
        var now = now
        while let action = schedule.next(at: now) {
            actions.append(action)
            if action == .reloadEarly {
                now += earlyTakes
                schedule.earlyReloadDone(at: now)
            }
            if action == .rescan {
                now += rescanTakes
                schedule.rescanDone(at: now)
            }
            XCTAssertLessThan(actions.count, 10, "next(at:) keeps returning actions")
            if actions.count >= 10 { break }
        }
        return actions
    }

    let a = FileID(device: 1, inode: 10), b = FileID(device: 1, inode: 11)

    /// An event about another name (a directory, a link a certificate goes through, a log
    /// beside the certificates) starts the quiet time when none runs, but never extends it:
    /// a name that changes every 20 ms gives a settled reload every debounce, not never.
    /// Certificate files still extend it.
    func testOtherNamesStartTheQuietTimeButNeverExtendIt() {
        var s = schedule(debounce: 200)
        for t in stride(from: Int64(0), to: 200, by: 20) {
            s.eventsRead(at: t, sawEvent: false, sawOther: true, sawComplete: false)
            XCTAssertEqual(due(&s, at: t), [], "at \(t)")
        }
        XCTAssertEqual(due(&s, at: 200), [.reloadSettled], "a debounce after the first, however busy the name")
        s.eventsRead(at: 220, sawEvent: false, sawOther: true, sawComplete: false)
        XCTAssertEqual(due(&s, at: 419), [])
        XCTAssertEqual(due(&s, at: 420), [.reloadSettled], "the next busy period starts the next quiet time")

        var mixed = schedule(debounce: 200)
        mixed.eventsRead(at: 0, sawEvent: false, sawOther: true, sawComplete: false)
        mixed.eventsRead(at: 150, sawEvent: true, sawComplete: false)
        mixed.eventsRead(at: 300, sawEvent: false, sawOther: true, sawComplete: false)
        XCTAssertEqual(due(&mixed, at: 349), [], "a certificate file's event extends the quiet time")
        XCTAssertEqual(due(&mixed, at: 350), [.reloadSettled], "another name's does not")

        var quiet = schedule(debounce: 200)
        quiet.eventsRead(at: 0, sawEvent: false, sawOther: false, sawComplete: false)
        XCTAssertEqual(due(&quiet, at: 10_000), [], "nothing seen, nothing due (another file's writes)")
    }

    /// The parent of a source written with a trailing slash is its real parent (watched to
    /// see the source directory replaced), not the source itself.
    func testTheParentOfADirectoryWithATrailingSlash() {
        XCTAssertEqual(parentDirectory("/etc/edge/certs/"), "/etc/edge")
        XCTAssertEqual(parentDirectory("/etc/edge/certs//"), "/etc/edge")
        XCTAssertEqual(parentDirectory("/etc/edge/certs"), "/etc/edge")
        XCTAssertEqual(parentDirectory("certs/"), ".")
        XCTAssertEqual(parentDirectory("/certs/"), "/")
        XCTAssertEqual(parentDirectory("/"), "/")
        XCTAssertEqual(parentDirectory("/etc/ssl/site.crt"), "/etc/ssl")
    }

    func testNothingIsDueWithoutEventsUntilTheRescan() {
        var s = schedule(rescan: 60_000)
        XCTAssertEqual(due(&s, at: 0), [])
        XCTAssertEqual(s.timeout(at: 0), 60_000)
        XCTAssertEqual(s.timeout(at: 59_000), 1_000)
        XCTAssertEqual(due(&s, at: 59_999), [])
        XCTAssertEqual(due(&s, at: 60_000), [.rescan])
        XCTAssertEqual(s.timeout(at: 60_000), 60_000, "the next rescan is a period later")
        XCTAssertEqual(due(&s, at: 120_000), [.rescan])
    }

    /// A rescan slower than its period (a slow network file system) is not due again the
    /// moment it ends: the period runs from its end. Before, the watcher thread rescanned
    /// back to back and never read another event.
    func testARescanSlowerThanItsPeriodWaitsAFullPeriod() {
        var s = schedule(rescan: 100)
        XCTAssertEqual(due(&s, at: 100, rescanTakes: 250), [.rescan])
        XCTAssertEqual(s.timeout(at: 350), 100)
        XCTAssertEqual(due(&s, at: 449), [])
        XCTAssertEqual(due(&s, at: 450, rescanTakes: 250), [.rescan])
        XCTAssertEqual(schedule(rescan: 0).policy.rescan, 1, "a zero period is one millisecond, not a spin")
    }

    func testTheTimeoutStaysWithinAMinuteAndNeverNegative() {
        var s = schedule(rescan: 3_600_000)
        XCTAssertEqual(s.timeout(at: 0), 60_000)
        s.eventsRead(at: 0, sawEvent: true, sawComplete: false)
        XCTAssertEqual(s.timeout(at: 500), 0, "overdue: poll returns at once")
    }

    /// A settled reload follows the quiet time after the last event, not the first.
    func testTheSettledReloadWaitsForQuiet() {
        var s = schedule(debounce: 200)
        s.eventsRead(at: 0, sawEvent: true, sawComplete: false)
        XCTAssertEqual(s.timeout(at: 0), 200)
        XCTAssertEqual(due(&s, at: 150), [])
        s.eventsRead(at: 150, sawEvent: true, sawComplete: false)
        XCTAssertEqual(due(&s, at: 300), [], "the second event restarted the quiet time")
        XCTAssertEqual(s.timeout(at: 300), 50)
        XCTAssertEqual(due(&s, at: 350), [.reloadSettled])
        XCTAssertEqual(due(&s, at: 1_000), [], "one settled reload per burst")
        // A read that counted nothing (another file's writes) arms nothing.
        s.eventsRead(at: 2_000, sawEvent: false, sawComplete: false)
        XCTAssertEqual(due(&s, at: 5_000), [])
    }

    /// A complete file is published at once, then settled after the quiet time.
    func testACompleteFileReloadsEarlyThenSettles() {
        var s = schedule(debounce: 200)
        s.eventsRead(at: 0, sawEvent: true, sawComplete: true)
        XCTAssertEqual(s.timeout(at: 0), 0)
        XCTAssertEqual(due(&s, at: 0), [.reloadEarly])
        XCTAssertEqual(due(&s, at: 199), [])
        XCTAssertEqual(due(&s, at: 200), [.reloadSettled])
    }

    func testWithoutImmediateOnlyTheSettledReloadHappens() {
        var s = schedule(debounce: 200, immediate: false)
        s.eventsRead(at: 0, sawEvent: true, sawComplete: true)
        XCTAssertEqual(due(&s, at: 0), [])
        XCTAssertEqual(due(&s, at: 200), [.reloadSettled])
    }

    /// Early reloads are spaced by twice their duration (at least 10 ms), so a stream of
    /// complete-file events takes at most a third of the watcher's time.
    func testEarlyReloadsAreSpacedByTwiceTheirDuration() {
        var s = schedule(debounce: 10_000)
        s.eventsRead(at: 0, sawEvent: true, sawComplete: true)
        XCTAssertEqual(due(&s, at: 0, earlyTakes: 30), [.reloadEarly])  // ran 0...30: next at 90
        s.eventsRead(at: 40, sawEvent: true, sawComplete: true)
        XCTAssertEqual(due(&s, at: 40), [])
        XCTAssertEqual(s.timeout(at: 40), 50)
        XCTAssertEqual(due(&s, at: 90, earlyTakes: 1), [.reloadEarly])  // ran 90...91: next at 101 (10 ms floor)
        s.eventsRead(at: 95, sawEvent: true, sawComplete: true)
        XCTAssertEqual(due(&s, at: 100), [])
        XCTAssertEqual(due(&s, at: 101), [.reloadEarly])
    }

    /// A file being written holds its lineage from its first write to its close; the store
    /// is told each time the set changes, and a close arms the reloads.
    func testWritersAreHeldUntilTheyClose() {
        var s = schedule(debounce: 200)
        var lookups = 0
        s.fileModified("/c/a.pem", at: 0) { lookups += 1; return self.a }
        s.eventsRead(at: 0, sawEvent: true, sawComplete: false)
        XCTAssertEqual(s.timeout(at: 0), 0)
        XCTAssertEqual(due(&s, at: 0), [.publishBeingWritten([a])])
        s.fileModified("/c/a.pem", at: 100) { lookups += 1; return self.b }
        s.fileModified("/c/b.pem", at: 100) { lookups += 1; return self.b }
        s.eventsRead(at: 100, sawEvent: true, sawComplete: false)
        XCTAssertEqual(lookups, 2, "a file is looked up once per write streak")
        XCTAssertEqual(due(&s, at: 100), [.publishBeingWritten([a, b])])
        s.fileFinished("/c/a.pem")
        s.fileFinished("/c/b.pem")
        s.eventsRead(at: 150, sawEvent: true, sawComplete: true)
        XCTAssertEqual(due(&s, at: 150), [.publishBeingWritten([]), .reloadEarly])
        XCTAssertEqual(due(&s, at: 350), [.reloadSettled])
    }

    /// A file that is gone by its first write holds nothing.
    func testAWriteToAVanishedFileHoldsNothing() {
        var s = schedule()
        s.fileModified("/c/gone.pem", at: 0) { nil }
        s.eventsRead(at: 0, sawEvent: true, sawComplete: false)
        XCTAssertEqual(due(&s, at: 0), [])
    }

    /// A writer that keeps the file open and silent for `staleWrite` (ten debounces, at
    /// least 5 s) is taken as done: released and settled at once.
    func testAStaleWriterIsReleasedAndSettledAtOnce() {
        var s = schedule(debounce: 200)
        XCTAssertEqual(s.policy.staleWrite, 5_000)
        s.fileModified("/c/a.pem", at: 0) { self.a }
        s.eventsRead(at: 0, sawEvent: true, sawComplete: false)
        XCTAssertEqual(due(&s, at: 0), [.publishBeingWritten([a])])
        XCTAssertEqual(due(&s, at: 200), [.reloadSettled], "the settled reload runs, and keeps holding the file")
        XCTAssertEqual(s.timeout(at: 200), 4_800, "it wakes when the writer goes stale")
        XCTAssertEqual(due(&s, at: 4_999), [])
        XCTAssertEqual(due(&s, at: 5_000), [.publishBeingWritten([]), .reloadSettled])
        XCTAssertEqual(schedule(debounce: 1_000).policy.staleWrite, 10_000)
    }

    /// Several things due at once come in order: writers, early, settled, rescan.
    func testEverythingDueAtOnceComesOutInOrder() {
        var s = schedule(debounce: 200, rescan: 1_000)
        s.fileModified("/c/a.pem", at: 0) { self.a }
        s.eventsRead(at: 0, sawEvent: true, sawComplete: false)
        s.fileFinished("/c/a.pem")
        s.eventsRead(at: 0, sawEvent: true, sawComplete: true)
        XCTAssertEqual(due(&s, at: 1_000), [.reloadEarly, .reloadSettled, .rescan], "a writer opened and closed unseen is never published")
    }
}

/// The store's validity decisions with its clock moved instead of waiting (#31: the store
/// takes its clock as a parameter).
final class StoreClockTests: XCTestCase {
    func testANotYetValidRenewalIsHeldBackUntilTheClockReachesIt() throws {
        let pki = try TestPKI()
        let dir = TemporaryDirectory()
        let certs = dir.file("certs")
        let good = try pki.issue(["localhost"], into: certs, name: "site")
        // After the signing: a second that turned between the two made `good` not yet valid
        // at `now`, and the store rightly published the future one in its place.
        let now = Int64(Date().timeIntervalSince1970)
        let clock = NIOLockedValueBox(now)
        let store = try CertificateStore(
            configuration: CertificateSetConfiguration(sources: [.directory(certs)], policies: [TLSServerPolicy()]),
            logger: Logger(label: "test"), clock: { clock.withLockedValue { $0 } })
        XCTAssertEqual(store.snapshot.lineages.map(\.leaf.serialNumberHex), [good.serial])
        // A renewal that starts tomorrow, dropped in whole.
        let future = try pki.issue(["localhost"], notBefore: now + 86_400, notAfter: now + 30 * 86_400, into: dir.file("staging"), name: "future")
        try Shell.run(["mv", future.key, certs + "/site.key"])
        try Shell.run(["mv", future.fullchain, certs + "/site.crt"])
        store.reload(reason: "test")
        XCTAssertEqual(store.snapshot.lineages.map(\.leaf.serialNumberHex), [good.serial], "the valid one stays")
        XCTAssertTrue(store.problems.contains { $0.name == "site" && $0.error.contains("not yet valid") }, "\(store.problems)")
        // Tomorrow, the next reload (a rescan) publishes it.
        clock.withLockedValue { $0 = now + 86_401 }
        store.reload(reason: "periodic rescan")
        XCTAssertEqual(store.snapshot.lineages.map(\.leaf.serialNumberHex), [future.serial])
        XCTAssertEqual(store.problems.filter { $0.name == "site" }.count, 0, "\(store.problems)")
    }
}
