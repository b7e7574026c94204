/// Where one proxied request stands, and what each event makes of it: a pure machine,
/// stored inline in the exchange, that returns what the handler is to do. It holds no
/// connection, buffer or clock; `ExchangeStateTests` drive it as a table.
///
/// Before it, the same facts were six independent flags (`requestEnded`,
/// `responseStarted`, `responseEnded`, `upstreamKeepAlive`, `tunnel`, `retriedStale`)
/// set at a dozen places,
/// and each failure path (a broken connection, a read or a write timeout) decided on
/// its own whether to retry, answer or close. A tunnel whose upstream stopped reading
/// was closed as a response that failed half-way; here it ends as a tunnel.
struct ExchangeState: Equatable {
    enum Phase: Equatable {
        /// Choosing a backend or opening a connection; request bytes read so far are held.
        case connecting
        /// Connected; the request body is still coming.
        case sending
        /// The whole request is sent: the response head is due within the read timeout.
        case awaitingResponse
        /// The response head went to the client; its body follows. `requestEnded` false:
        /// the upstream answered before the client finished sending.
        case streaming(requestEnded: Bool)
        /// A `101`: bytes flow both ways, unframed, until one side closes or it idles out.
        case tunnel
        /// Answered, aborted or closed: no event changes anything any more.
        case finished
    }

    enum Action: Equatable {
        case none
        /// The upstream owes bytes: its read deadline starts (or moves) now.
        case armReadDeadline
        /// The request is answered and both directions are complete: the upstream
        /// connection goes back to the pool when `reuse`, else it closes; the client
        /// connection goes on to its next request.
        case finish(reuse: Bool)
        /// The response ended before the request did: the upstream connection holds an
        /// unfinished request and closes; the client's remaining body is drained
        /// (lingering) or its stream reset, then the client connection closes.
        case finishBeforeRequestEnded
        /// The upstream accepted the upgrade: the tunnel opens.
        case openTunnel
        /// One side of the tunnel closed, or it stalled: the other closes after what is in flight.
        case endTunnel
        /// Try again, as the retry policy decided: the same backend on a fresh connection,
        /// or another backend; the held request bytes are sent again.
        case retry(FailedAttempt.Decision)
        /// No response began: the client gets the gateway's own answer for the failure.
        case answer
        /// Part of the response is out: the only honest signal left is to close the client.
        case abortResponse
    }

    private(set) var phase = Phase.connecting
    /// The client has sent the whole request (its body ended, or it had none).
    private(set) var requestEnded: Bool
    /// This request already went to a fresh connection after a reused one broke: once only.
    private(set) var retriedStale = false
    /// Times the request was not processed and went again to the same backend.
    private(set) var unprocessedRetries = 0

    init(requestEnded: Bool) {
        self.requestEnded = requestEnded
    }

    /// The response head reached the client and the exchange is still on: the gateway can
    /// no longer answer instead. (A finished exchange has left its handler.)
    var responseStarted: Bool {
        switch self.phase {
        case .streaming, .tunnel: return true
        case .connecting, .sending, .awaitingResponse, .finished: return false
        }
    }

    var isTunnel: Bool { self.phase == .tunnel }

    /// Not finished: the exchange holds its client connection (connecting, sending,
    /// awaiting or streaming the response, or tunnelling).
    var inFlight: Bool { self.phase != .finished }

    /// An upstream connection is attached and the request head written to it.
    mutating func connected() -> Action {
        guard self.phase == .connecting else { return .none }
        self.phase = self.requestEnded ? .awaitingResponse : .sending
        return self.requestEnded ? .armReadDeadline : .none
    }

    /// The client's request body ended. The read deadline starts if the request went out.
    mutating func requestBodyEnded() -> Action {
        guard !self.requestEnded else { return .none }
        switch self.phase {
        case .connecting:
            self.requestEnded = true
            return .none
        case .sending:
            self.requestEnded = true
            self.phase = .awaitingResponse
            return .armReadDeadline
        case .streaming:
            self.requestEnded = true
            self.phase = .streaming(requestEnded: true)
            return .armReadDeadline
        case .awaitingResponse, .tunnel, .finished:
            return .none  // a tunnel's client bytes have no end but its close
        }
    }

    /// The upstream's response head, passed on to the client (a `101` opens a tunnel).
    mutating func responseHead(status: Int) -> Action {
        switch self.phase {
        case .sending, .awaitingResponse:
            if status == 101 {
                self.phase = .tunnel
                self.requestEnded = false  // the client's bytes from now on are the tunnel's
                return .openTunnel
            }
            self.phase = .streaming(requestEnded: self.requestEnded)
            return .armReadDeadline
        case .connecting, .streaming, .tunnel, .finished:
            return .none
        }
    }

    /// The upstream's response ended (for a tunnel: the upstream closed it).
    /// `reusable`: the upstream connection may carry another request.
    mutating func responseEnded(reusable: Bool) -> Action {
        switch self.phase {
        case .streaming(let requestEnded):
            self.phase = .finished
            return requestEnded ? .finish(reuse: reusable) : .finishBeforeRequestEnded
        case .tunnel:
            self.phase = .finished
            return .endTunnel
        case .connecting, .sending, .awaitingResponse, .finished:
            return .none
        }
    }

    /// The attempt failed: the connect, the connection, or the upstream's pace (a read
    /// or write timeout). `attempt` is the policy's view of it; its `requestEnded` and
    /// `retriedStale` are taken from here, whatever the caller put in, so that the
    /// policy and the phase never disagree. The policy is asked only while the gateway
    /// may still answer.
    mutating func failed(_ attempt: FailedAttempt) -> Action {
        switch self.phase {
        case .finished:
            return .none
        case .tunnel:
            self.phase = .finished
            return .endTunnel
        case .streaming:
            self.phase = .finished
            return .abortResponse
        case .connecting, .sending, .awaitingResponse:
            var attempt = attempt
            attempt.requestEnded = self.requestEnded
            attempt.retriedStale = self.retriedStale
            attempt.unprocessedRetries = self.unprocessedRetries
            let decision = attempt.decision
            switch decision {
            case .freshConnection:
                self.retriedStale = true
                if attempt.failure == .notProcessed { self.unprocessedRetries += 1 }
                self.phase = .connecting
            case .anotherBackend:
                self.phase = .connecting
            case .fail:
                self.phase = .finished
                return .answer
            }
            return .retry(decision)
        }
    }

    /// The gateway answers the client itself (a body too large, a body timeout, a broken
    /// request framing) and drops the exchange. False when the response had begun: the
    /// client connection is closed instead.
    mutating func abandon() -> Bool {
        let couldAnswer = !self.responseStarted
        self.phase = .finished
        return couldAnswer
    }
}
