import EdgeTLS
import XCTest

/// The stapling schedule and levels (`OCSPStapleState`), without a responder or a clock.
final class OCSPStapleStateTests: XCTestCase {
    func response(_ status: OCSPCertificateStatus = .good, thisUpdate: Int64 = 1_000, nextUpdate: Int64? = 1_000 + 86_400) -> VerifiedOCSPResponse {
        VerifiedOCSPResponse(der: [0x30], status: status, thisUpdate: thisUpdate, nextUpdate: nextUpdate)
    }

    func testARefreshIsDueHalfWayThroughTheValidityAndFailuresBackOff() {
        var state = OCSPStapleState(mustStaple: false, responderURL: "http://ocsp.test", now: 1_000)
        XCTAssertTrue(state.due(now: 1_000), "the first fetch is due at once")
        state.fetched(response(), now: 1_001)
        XCTAssertEqual(state.nextFetchAt, 1_000 + 43_200, "half of a day's validity after thisUpdate")
        XCTAssertFalse(state.due(now: 43_000))
        XCTAssertNotNil(state.stapled(now: 43_000))
        // Failures retry after 5, 10, 20 ... seconds, never more than 5 minutes apart.
        state.failed("down", now: 44_200)
        XCTAssertEqual(state.nextFetchAt, 44_205)
        state.failed("down", now: 44_205)
        XCTAssertEqual(state.nextFetchAt, 44_215)
        for _ in 0..<10 { state.failed("down", now: 50_000) }
        XCTAssertEqual(state.nextFetchAt, 50_300)
        // The response held stays stapled until its next update, then is never stapled.
        XCTAssertNotNil(state.stapled(now: 87_399))
        XCTAssertNil(state.stapled(now: 87_400))
        // A response already past its half-way point when it comes (a pre-signed one the
        // responder hands out again) is asked for again in half its remaining time, and
        // never sooner than a minute: no fetch every second or every tick.
        state.fetched(response(thisUpdate: 10_000, nextUpdate: 90_400), now: 90_000)
        XCTAssertEqual(state.nextFetchAt, 90_200)
        state.fetched(response(thisUpdate: 10_000, nextUpdate: 90_010), now: 90_000)
        XCTAssertEqual(state.nextFetchAt, 90_060)
        // Without a next update: an hour after it was obtained, and used for a week at most.
        state.fetched(response(thisUpdate: 100_000, nextUpdate: nil), now: 100_000)
        XCTAssertEqual(state.nextFetchAt, 103_600)
        XCTAssertNotNil(state.stapled(now: 100_000 + 7 * 86_400 - 1))
        XCTAssertNil(state.stapled(now: 100_000 + 7 * 86_400), "no next update: a week at most")
        // A fix (the issuer added to the chain) makes the next fetch due at once.
        state.failed("no issuer", now: 200_000)
        state.fetchNow(now: 200_001)
        XCTAssertTrue(state.due(now: 200_001))
        XCTAssertEqual(state.failures, 0)
    }

    func testLevelsWarnThenGoCriticalForMustStapleAndNeverForACurrentResponse() {
        var mustStaple = OCSPStapleState(mustStaple: true, responderURL: "http://ocsp.test", now: 1_000)
        XCTAssertEqual(mustStaple.level(now: 1_000).level, .warning, "the first fetch is pending")
        XCTAssertEqual(mustStaple.state(now: 1_000), "pending")
        mustStaple.failed("refused", now: 1_001)
        XCTAssertEqual(mustStaple.level(now: 1_001).level, .critical)
        XCTAssertTrue(mustStaple.level(now: 1_001).reason!.contains("refused"))
        mustStaple.fetched(response(), now: 1_010)
        XCTAssertEqual(mustStaple.level(now: 1_010).level, .ok)
        // A refresh failing before the half-way point is not yet worth a word; after it, a warning.
        mustStaple.failed("timeout", now: 2_000)
        XCTAssertEqual(mustStaple.level(now: 2_000).level, .ok)
        XCTAssertEqual(mustStaple.level(now: 44_300).level, .warning)
        XCTAssertEqual(mustStaple.level(now: 87_400).level, .critical, "past its next update: nothing to staple")

        var plain = OCSPStapleState(mustStaple: false, responderURL: "http://ocsp.test", now: 1_000)
        XCTAssertEqual(plain.level(now: 1_000).level, .ok, "pending, and clients do not require it")
        plain.failed("refused", now: 1_001)
        XCTAssertEqual(plain.level(now: 1_001).level, .warning)
        plain.fetched(response(.revoked(at: 900, reason: "keyCompromise")), now: 1_100)
        XCTAssertEqual(plain.level(now: 1_100).level, .critical)
        XCTAssertNotNil(plain.stapled(now: 1_100), "a revoked response is stapled as it is")
        XCTAssertEqual(plain.state(now: 1_100), "revoked")
        plain.fetched(response(.unknown), now: 1_200)
        XCTAssertNil(plain.stapled(now: 1_200), "an unknown answer is not")
        XCTAssertEqual(plain.state(now: 1_200), "unknown_to_responder")
        XCTAssertEqual(plain.level(now: 1_200).level, .warning)

        let off = OCSPStapleState(mustStaple: true, responderURL: "http://ocsp.test", off: true, now: 1_000)
        XCTAssertFalse(off.due(now: 5_000))
        XCTAssertEqual(off.level(now: 5_000).level, .critical, "must-staple with stapling off")
    }

    func testACachedResponseIsStapledAtOnceAndRefreshedAtItsHalfWayPoint() {
        var early = OCSPStapleState(mustStaple: false, responderURL: "http://ocsp.test", now: 2_000)
        early.loadedFromCache(response(), now: 2_000)
        XCTAssertEqual(early.nextFetchAt, 1_000 + 43_200, "before its half-way point: refreshed at that point, not now")
        XCTAssertFalse(early.due(now: 2_000))
        var state = OCSPStapleState(mustStaple: false, responderURL: "http://ocsp.test", now: 50_000)
        state.loadedFromCache(response(), now: 50_000)
        XCTAssertEqual(state.source, .cache)
        XCTAssertNotNil(state.stapled(now: 50_000))
        XCTAssertEqual(state.nextFetchAt, 50_000, "its half-way point has passed: refreshed now")
        var expired = OCSPStapleState(mustStaple: false, responderURL: "http://ocsp.test", now: 90_000)
        expired.loadedFromCache(response(), now: 90_000)
        XCTAssertNil(expired.source, "an expired cached response is not taken")
    }
}
