@testable import EdgeProxy
import XCTest

/// One client connection's machine (#31), driven by its events alone: no socket, no
/// clock. Every event is sent in every phase, the ones that should not happen included;
/// the end-to-end tests (ProxyTests, RequestHardeningTests, GatewayLifecycleTests) show
/// that the handler performs the actions.
final class ConnectionStateTests: XCTestCase {
    typealias Phase = ConnectionState.Phase

    /// A connection in `phase`, reached by events only.
    func connection(in phase: Phase, singleRequest: Bool = false) -> ConnectionState {
        var state = ConnectionState(singleRequest: singleRequest)
        switch phase {
        case .awaitingFirstHead:
            break
        case .awaitingHead(let begun):
            state.headParsed()
            _ = state.requestDone()
            if begun { _ = state.headIncomplete() }
        case .inRequest:
            state.headParsed()
        case .closing:
            state.closeAfterWritten()
        case .lingering:
            state.headParsed()
            state.closeAfterWritten()
            state.lingerStarted()
        case .closed:
            state.inactive()
        }
        XCTAssertEqual(state.phase, phase, "setting up \(phase)")
        return state
    }

    /// Waiting for a head, the first or a later one.
    static func waiting(_ phase: Phase) -> Bool {
        switch phase {
        case .awaitingFirstHead, .awaitingHead: return true
        case .inRequest, .closing, .lingering, .closed: return false
        }
    }

    static let phases: [Phase] = [.awaitingFirstHead, .awaitingHead(begun: false), .awaitingHead(begun: true), .inRequest, .closing, .lingering, .closed]

    /// Client bytes: parsed while the connection takes input; a lingering connection only
    /// moves its pause; a closing or closed one drops them.
    func testBytesArrivingInEachPhase() {
        let expected: [Phase: ConnectionState.Action] = [
            .awaitingFirstHead: .process, .awaitingHead(begun: false): .process, .awaitingHead(begun: true): .process, .inRequest: .process,
            .closing: .none, .lingering: .extendLinger, .closed: .none,
        ]
        for phase in Self.phases {
            for singleRequest in [false, true] where phase != .awaitingHead(begun: true) || !singleRequest {
                var state = self.connection(in: phase, singleRequest: singleRequest)
                XCTAssertEqual(state.bytesArrived(), expected[phase], "\(phase)")
                XCTAssertEqual(state.phase, phase, "bytes change no phase (\(phase))")
                XCTAssertEqual(state.acceptsInput, expected[phase] == .process, "\(phase)")
            }
        }
    }

    /// A partial head starts the header timeout only for a later request whose head had
    /// not begun: the first has had it since the accept, a begun one keeps its own (bytes
    /// trickling in do not extend it), and an HTTP/2 stream has none.
    func testAPartialHeadInEachPhase() {
        for phase in Self.phases {
            var state = self.connection(in: phase)
            let action = state.headIncomplete()
            if phase == .awaitingHead(begun: false) {
                XCTAssertEqual(action, .startHeaderTimeout)
                XCTAssertEqual(state.phase, .awaitingHead(begun: true))
                XCTAssertTrue(state.headAwaited)
            } else {
                XCTAssertEqual(action, .none, "\(phase)")
                XCTAssertEqual(state.phase, phase, "\(phase)")
            }
        }
        var stream = self.connection(in: .awaitingHead(begun: false), singleRequest: true)
        XCTAssertEqual(stream.headIncomplete(), .none)
        XCTAssertFalse(stream.headAwaited)
    }

    /// A parsed head moves only a connection awaiting one; the request's end moves only a
    /// connection in a request, and starts the idle timeout (not on a stream).
    func testAHeadAndTheEndOfItsRequestInEachPhase() {
        for phase in Self.phases {
            var state = self.connection(in: phase)
            state.headParsed()
            if Self.waiting(phase) {
                XCTAssertEqual(state.phase, .inRequest, "\(phase)")
            } else {
                XCTAssertEqual(state.phase, phase, "\(phase)")
            }

            var done = self.connection(in: phase)
            let action = done.requestDone()
            if phase == .inRequest {
                XCTAssertEqual(action, .startIdleTimeout)
                XCTAssertEqual(done.phase, .awaitingHead(begun: false))
                XCTAssertFalse(done.awaitsFirstHead)
                XCTAssertFalse(done.headAwaited, "between requests the idle timeout runs, not the header timeout")
            } else {
                XCTAssertEqual(action, .none, "\(phase)")
                XCTAssertEqual(done.phase, phase, "a request's end outside a request changes nothing (\(phase))")
            }
        }
        var stream = self.connection(in: .inRequest, singleRequest: true)
        XCTAssertEqual(stream.requestDone(), .none, "a stream has no idle timeout of its own")
        XCTAssertTrue(stream.betweenRequests)
    }

    /// Which deadline a waiting connection is under.
    func testTheQuestionsTheDeadlinesAsk() {
        for phase in Self.phases {
            let state = self.connection(in: phase)
            XCTAssertEqual(state.betweenRequests, Self.waiting(phase), "\(phase)")
            XCTAssertEqual(state.awaitsFirstHead, phase == .awaitingFirstHead, "\(phase)")
            XCTAssertEqual(state.headAwaited, phase == .awaitingFirstHead || phase == .awaitingHead(begun: true), "\(phase)")
            XCTAssertEqual(state.isClosed, phase == .closed, "\(phase)")
        }
    }

    /// Closing follows any phase but `closed`; lingering follows only closing.
    func testClosingAndLingeringInEachPhase() {
        for phase in Self.phases {
            var state = self.connection(in: phase)
            state.closeAfterWritten()
            XCTAssertEqual(state.phase, phase == .closed ? .closed : .closing, "\(phase)")
            XCTAssertFalse(state.acceptsInput)
            XCTAssertFalse(state.betweenRequests)

            var linger = self.connection(in: phase)
            linger.lingerStarted()
            XCTAssertEqual(linger.phase, phase == .closing ? .lingering : phase, "\(phase)")
        }
    }

    /// A drain waits out its quiet period at once only between requests; a request in
    /// flight finishes first (`waitsOutDrain` afterwards); a second drain is nothing. A
    /// drain that began during a handshake starts its period when it completes.
    func testDrainingInEachPhase() {
        for phase in Self.phases {
            for singleRequest in [false, true] where phase != .awaitingHead(begun: true) || !singleRequest {
                var state = self.connection(in: phase, singleRequest: singleRequest)
                XCTAssertEqual(state.handshakeCompleted(), .none, "not draining (\(phase))")
                let between = state.betweenRequests
                XCTAssertEqual(state.quiesce(), between ? .awaitDrainQuiet : .none, "\(phase)")
                XCTAssertTrue(state.draining)
                XCTAssertEqual(state.waitsOutDrain, between, "\(phase)")
                XCTAssertEqual(state.quiesce(), .none, "a second drain (\(phase))")
                XCTAssertEqual(state.handshakeCompleted(), between ? .awaitDrainQuiet : .none, "\(phase)")
                XCTAssertEqual(state.phase, phase, "draining changes no phase (\(phase))")
            }
        }
        var inFlight = self.connection(in: .inRequest)
        XCTAssertEqual(inFlight.quiesce(), .none)
        XCTAssertFalse(inFlight.waitsOutDrain)
        _ = inFlight.requestDone()
        XCTAssertTrue(inFlight.waitsOutDrain, "the request finished: now the quiet period")
    }

    /// A held read is passed on once, when its cause is gone; never after the close.
    func testHeldReadsInEachPhase() {
        for phase in Self.phases {
            var state = self.connection(in: phase)
            XCTAssertEqual(state.readAsked(holding: false), .read, "\(phase)")
            XCTAssertEqual(state.readsMayResume(), .none, "nothing held (\(phase))")
            XCTAssertEqual(state.readAsked(holding: true), .none, "\(phase)")
            XCTAssertTrue(state.readHeld)
            XCTAssertEqual(state.readsMayResume(), phase == .closed ? .none : .read, "\(phase)")
            XCTAssertEqual(state.readsMayResume(), .none, "once only (\(phase))")
        }
        var closed = self.connection(in: .inRequest)
        _ = closed.readAsked(holding: true)
        closed.inactive()
        XCTAssertFalse(closed.readHeld, "a closed connection holds nothing")
        XCTAssertEqual(closed.readsMayResume(), .none)
    }

    /// The consumption of buffered bytes does not start again from inside itself.
    func testProcessingIsNotReentered() {
        for phase in Self.phases {
            var state = self.connection(in: phase)
            XCTAssertTrue(state.beginProcessing(), "\(phase)")
            XCTAssertFalse(state.beginProcessing(), "a request finishing inside the consumption returns to it (\(phase))")
            XCTAssertEqual(state.phase, phase)
            state.endProcessing()
            XCTAssertTrue(state.beginProcessing(), "\(phase)")
        }
    }

    /// `inactive` ends every phase, and nothing moves a closed connection.
    func testInactiveEndsEveryPhase() {
        for phase in Self.phases {
            var state = self.connection(in: phase)
            state.inactive()
            XCTAssertEqual(state.phase, .closed, "\(phase)")
            state.headParsed()
            XCTAssertEqual(state.requestDone(), .none, "no idle timeout on a closed connection (\(phase))")
            XCTAssertEqual(state.headIncomplete(), .none, "no header timeout on a closed connection (\(phase))")
            XCTAssertEqual(state.bytesArrived(), .none)
            XCTAssertEqual(state.quiesce(), .none, "no quiet period on a closed connection (\(phase))")
            state.closeAfterWritten()
            state.lingerStarted()
            XCTAssertEqual(state.phase, .closed, "\(phase)")
        }
    }

    /// A connection's life in order: first head, keep-alive, a second head arriving in
    /// parts, an answer that closes while the body still arrives, the linger, the end.
    func testAConnectionsLife() {
        var state = ConnectionState(singleRequest: false)
        XCTAssertTrue(state.awaitsFirstHead)
        XCTAssertEqual(state.headIncomplete(), .none, "the first head's timeout runs from the accept")
        state.headParsed()
        XCTAssertEqual(state.requestDone(), .startIdleTimeout)
        XCTAssertEqual(state.headIncomplete(), .startHeaderTimeout)
        XCTAssertEqual(state.headIncomplete(), .none, "trickling bytes do not extend it")
        state.headParsed()
        state.closeAfterWritten()
        XCTAssertEqual(state.bytesArrived(), .none)
        state.lingerStarted()
        XCTAssertEqual(state.bytesArrived(), .extendLinger)
        state.inactive()
        XCTAssertEqual(state.bytesArrived(), .none)
    }
}
