@testable import EdgeProxy
import XCTest

/// One exchange's machine (#31), driven by its events alone: no socket, no clock. The
/// end-to-end tests (ProxyTests, UpstreamTests, FaultTests) show the handler performs
/// the actions; these show which action each event leads to, in each phase.
final class ExchangeStateTests: XCTestCase {
    typealias A = ExchangeState.Action

    /// The retry policy's view of a failure; `requestEnded` and `retriedStale` are the
    /// machine's own, whatever is passed here.
    func attempt(_ failure: FailedAttempt.Failure, get: Bool = true, held: Bool = true, reused: Bool = false,
                 attempts: Int = 1, max: Int = 3) -> FailedAttempt {
        FailedAttempt(failure: failure, idempotent: get, held: held, requestEnded: false, reused: reused, retriedStale: false,
                      attempts: attempts, maxAttempts: max)
    }

    /// A GET: connected, the read deadline starts at once (nothing more to send); the head
    /// passes on, the end finishes it, and the upstream connection is pooled when reusable.
    func testARequestWithoutBodyRunsToItsFinish() {
        var state = ExchangeState(requestEnded: true)
        XCTAssertEqual(state.connected(), .armReadDeadline)
        XCTAssertEqual(state.phase, .awaitingResponse)
        XCTAssertEqual(state.responseHead(status: 200), .armReadDeadline)
        XCTAssertTrue(state.responseStarted)
        XCTAssertEqual(state.responseEnded(reusable: true), .finish(reuse: true))
        XCTAssertEqual(state.phase, .finished)
        XCTAssertFalse(state.inFlight)

        var closing = ExchangeState(requestEnded: true)
        _ = closing.connected()
        _ = closing.responseHead(status: 200)
        XCTAssertEqual(closing.responseEnded(reusable: false), .finish(reuse: false), "`connection: close` from the upstream")
    }

    /// A body: the read deadline waits for its end, whether that comes before or after
    /// the connection is ready.
    func testTheReadDeadlineStartsWhenTheWholeRequestIsSent() {
        var early = ExchangeState(requestEnded: false)
        XCTAssertEqual(early.connected(), .none)
        XCTAssertEqual(early.phase, .sending)
        XCTAssertEqual(early.requestBodyEnded(), .armReadDeadline)
        XCTAssertEqual(early.phase, .awaitingResponse)
        XCTAssertEqual(early.requestBodyEnded(), .none, "a second end is nothing")

        var beforeConnect = ExchangeState(requestEnded: false)
        XCTAssertEqual(beforeConnect.requestBodyEnded(), .none, "nothing sent yet: no deadline")
        XCTAssertEqual(beforeConnect.connected(), .armReadDeadline)
    }

    /// The upstream answers while the client still sends: the response streams, and when
    /// it ends first neither connection can be reused; when the body ends first, it is a
    /// normal finish.
    func testAnAnswerBeforeTheRequestEnds() {
        var state = ExchangeState(requestEnded: false)
        _ = state.connected()
        XCTAssertEqual(state.responseHead(status: 413), .armReadDeadline)
        XCTAssertEqual(state.phase, .streaming(requestEnded: false))
        XCTAssertEqual(state.responseEnded(reusable: true), .finishBeforeRequestEnded)

        var bodyFirst = ExchangeState(requestEnded: false)
        _ = bodyFirst.connected()
        _ = bodyFirst.responseHead(status: 200)
        XCTAssertEqual(bodyFirst.requestBodyEnded(), .armReadDeadline)
        XCTAssertEqual(bodyFirst.responseEnded(reusable: true), .finish(reuse: true))
    }

    /// A `101` opens a tunnel; the client's bytes after it have no end of their own; the
    /// upstream's close, or any failure, ends the tunnel rather than answering or aborting.
    func testATunnelEndsAsATunnel() {
        var state = ExchangeState(requestEnded: true)
        _ = state.connected()
        XCTAssertEqual(state.responseHead(status: 101), .openTunnel)
        XCTAssertTrue(state.isTunnel)
        XCTAssertFalse(state.requestEnded, "the client's bytes are the tunnel's now")
        XCTAssertEqual(state.requestBodyEnded(), .none)
        var closed = state
        XCTAssertEqual(closed.responseEnded(reusable: true), .endTunnel)
        for failure in [FailedAttempt.Failure.broken, .readTimeout, .other] {
            var failed = state
            XCTAssertEqual(failed.failed(attempt(failure)), .endTunnel, "\(failure)")
            XCTAssertEqual(failed.phase, .finished)
        }
    }

    /// Before the response: the retry policy decides, and a retry goes back to connecting.
    /// A reused connection that broke is replayed on a fresh one once only; the second
    /// time the request moves on to another backend.
    func testAFailureBeforeTheResponseIsRetriedOrAnswered() {
        var state = ExchangeState(requestEnded: true)
        _ = state.connected()
        XCTAssertEqual(state.failed(attempt(.broken, reused: true)), .retry(.freshConnection))
        XCTAssertEqual(state.phase, .connecting)
        XCTAssertTrue(state.retriedStale)
        XCTAssertEqual(state.connected(), .armReadDeadline)
        XCTAssertEqual(state.failed(attempt(.broken, reused: true)), .retry(.anotherBackend), "fresh once only")
        XCTAssertEqual(state.connected(), .armReadDeadline, "the retry's connection owes the response again")
        XCTAssertEqual(state.failed(attempt(.broken, attempts: 3)), .answer, "max_connect_attempts reached")
        XCTAssertEqual(state.phase, .finished)
        XCTAssertEqual(state.failed(attempt(.connect)), .none, "nothing after the answer")

        var connecting = ExchangeState(requestEnded: false)
        XCTAssertEqual(connecting.failed(attempt(.connect, get: false, held: false)), .retry(.anotherBackend), "nothing was sent")

        // The machine's own `requestEnded` is what the policy sees: a POST still sending
        // on a reused connection is not replayed unless it is all held.
        var sending = ExchangeState(requestEnded: false)
        _ = sending.connected()
        XCTAssertEqual(sending.failed(attempt(.broken, get: false, held: true, reused: true)), .answer)
        var sent = ExchangeState(requestEnded: false)
        _ = sent.connected()
        _ = sent.requestBodyEnded()
        XCTAssertEqual(sent.failed(attempt(.broken, get: false, held: true, reused: true)), .retry(.freshConnection))
    }

    /// The other failures before the response, each in the phase it happens in.
    func testEachFailureBeforeTheResponse() {
        var awaiting = ExchangeState(requestEnded: true)
        _ = awaiting.connected()
        XCTAssertEqual(awaiting.failed(attempt(.readTimeout)), .retry(.anotherBackend), "a held GET moves on")
        _ = awaiting.connected()
        let late = FailedAttempt(failure: .readTimeout, idempotent: true, held: true, requestEnded: true, reused: false,
                                 retriedStale: false, attempts: 2, maxAttempts: 3, withinNextUpstream: false)
        XCTAssertEqual(awaiting.failed(late), .answer, "past next_upstream")

        var refused = ExchangeState(requestEnded: false)
        _ = refused.connected()
        XCTAssertEqual(refused.phase, .sending)
        XCTAssertEqual(refused.failed(attempt(.refusedAfterHandshake, get: false)), .retry(.anotherBackend), "it read nothing")
        XCTAssertEqual(refused.phase, .connecting)

        var other = ExchangeState(requestEnded: true)
        _ = other.connected()
        XCTAssertEqual(other.failed(attempt(.other)), .answer, "an upstream that answered badly, or stopped reading")

        var upgradeWithBody = ExchangeState(requestEnded: false)
        _ = upgradeWithBody.connected()
        XCTAssertEqual(upgradeWithBody.responseHead(status: 101), .openTunnel, "a 101 while the request body still comes")
        XCTAssertFalse(upgradeWithBody.abandon(), "a tunnel cannot be answered instead")
    }

    /// Once the response has begun, any failure aborts it: the client's connection closes.
    func testAFailureMidResponseAborts() {
        for failure in [FailedAttempt.Failure.broken, .readTimeout, .other] {
            var state = ExchangeState(requestEnded: true)
            _ = state.connected()
            _ = state.responseHead(status: 200)
            XCTAssertEqual(state.failed(attempt(failure)), .abortResponse, "\(failure)")
            XCTAssertEqual(state.responseEnded(reusable: true), .none, "nothing after the abort")
        }
        var early = ExchangeState(requestEnded: false)
        _ = early.connected()
        _ = early.responseHead(status: 200)
        XCTAssertEqual(early.failed(attempt(.broken)), .abortResponse, "answered before the request ended, then broke")
    }

    /// The gateway answers itself (a body too large or too slow): it can while no response
    /// has begun; after that the client connection is closed.
    func testAbandoningAnswersOnlyBeforeTheResponse() {
        var before = ExchangeState(requestEnded: false)
        _ = before.connected()
        XCTAssertTrue(before.abandon())
        XCTAssertEqual(before.phase, .finished)
        var after = ExchangeState(requestEnded: false)
        _ = after.connected()
        _ = after.responseHead(status: 200)
        XCTAssertFalse(after.abandon())
    }

    /// Events that cannot happen in a phase change nothing (a late part of a dropped attempt).
    func testEventsOutOfPhaseChangeNothing() {
        var connecting = ExchangeState(requestEnded: true)
        XCTAssertEqual(connecting.responseHead(status: 200), .none)
        XCTAssertEqual(connecting.responseEnded(reusable: true), .none)
        XCTAssertEqual(connecting.phase, .connecting)
        var streaming = ExchangeState(requestEnded: true)
        _ = streaming.connected()
        _ = streaming.responseHead(status: 200)
        XCTAssertEqual(streaming.connected(), .none)
        XCTAssertEqual(streaming.responseHead(status: 200), .none)
        XCTAssertEqual(streaming.phase, .streaming(requestEnded: true))
    }
}
