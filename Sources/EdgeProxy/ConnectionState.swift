/// Where one client connection stands around its exchanges, and what each event makes of
/// it: a pure machine stored inline in `ProxyHandler`, which performs the actions it
/// returns. It holds no channel, buffer or clock (the deadlines' times are
/// `ClientDeadlines`'s, the exchange's phases `ExchangeState`'s); `ConnectionStateTests`
/// drive every event in every phase.
///
/// Before it, the same facts were seven flags of the handler (`closing`, `closed`,
/// `firstRequest`, `headStarted`, `quiescing`, `readPending`, `processing`), `closing`
/// written at five places and "between requests" spelled `exchange == nil && !closing`
/// wherever it was needed.
struct ConnectionState: Equatable {
    enum Phase: Hashable {
        /// A new connection waits for its first request head, under the header timeout
        /// from the accept.
        case awaitingFirstHead
        /// Between requests, waiting for a later head. `begun`: its first bytes arrived,
        /// so its header timeout runs instead of the idle timeout (nginx's
        /// `client_header_timeout`).
        case awaitingHead(begun: Bool)
        /// A head parsed: its exchange, or the gateway's own answer, is under way.
        case inRequest
        /// A response that ends the connection is written or being written: input is
        /// ignored, and the close follows what is written.
        case closing
        /// Answered before the request body ended, on plain HTTP: the rest of the body is
        /// read and dropped until the client pauses, so that the kernel's reset to unread
        /// bytes cannot overtake the answer (nginx's `lingering_close`).
        case lingering
        /// The channel is inactive: nothing happens any more.
        case closed
    }

    enum Action: Equatable {
        case none
        /// Consume the buffered client bytes: the body in flight, then the next head.
        case process
        /// Lingering: the client still sends, so the pause before the close starts again.
        case extendLinger
        /// A later head began: its header timeout starts.
        case startHeaderTimeout
        /// Between requests: the idle timeout starts.
        case startIdleTimeout
        /// Draining with nothing in flight: the quiet period starts, after which the
        /// connection closes unless a request began.
        case awaitDrainQuiet
        /// Pass the channel's read on: the client may send more.
        case read
    }

    /// An HTTP/2 stream: one request whose head arrives with it. It has no header or
    /// idle deadline of its own (its connection's idle timeout covers it).
    let singleRequest: Bool
    private(set) var phase = Phase.awaitingFirstHead
    /// The server is draining: the response in flight, or the next request's, is the last.
    private(set) var draining = false
    /// The gateway held back a read (the upstream was not ready for the body, or
    /// pipelined requests piled up): the next `readsMayResume` passes it on.
    private(set) var readHeld = false
    /// The handler is consuming buffered bytes: a request that finishes inside that
    /// (a local answer) must not start the consumption again, re-entrantly.
    private(set) var processing = false

    init(singleRequest: Bool) {
        self.singleRequest = singleRequest
    }

    // MARK: questions the handler and its deadlines ask

    /// Client bytes are still parsed: no closing answer went out.
    var acceptsInput: Bool {
        switch self.phase {
        case .awaitingFirstHead, .awaitingHead, .inRequest: return true
        case .closing, .lingering, .closed: return false
        }
    }

    /// No request in flight, and the connection is not closing.
    var betweenRequests: Bool {
        switch self.phase {
        case .awaitingFirstHead, .awaitingHead: return true
        case .inRequest, .closing, .lingering, .closed: return false
        }
    }

    /// The connection's first request head has not arrived yet. (False from the moment
    /// it parsed: the old `firstRequest` flag stayed true until the first response
    /// ended, but it was only ever asked between requests, where both agree.)
    var awaitsFirstHead: Bool { self.phase == .awaitingFirstHead }

    /// A head is awaited under the header timeout (rather than the idle timeout).
    var headAwaited: Bool {
        self.phase == .awaitingFirstHead || self.phase == .awaitingHead(begun: true)
    }

    var isClosed: Bool { self.phase == .closed }

    // MARK: events

    /// Client bytes were read.
    mutating func bytesArrived() -> Action {
        switch self.phase {
        case .awaitingFirstHead, .awaitingHead, .inRequest: return .process
        case .lingering: return .extendLinger
        case .closing, .closed: return .none
        }
    }

    /// The handler starts consuming buffered bytes; false when it already is (the call
    /// comes from inside that consumption, and returns to it).
    mutating func beginProcessing() -> Bool {
        guard !self.processing else { return false }
        self.processing = true
        return true
    }

    mutating func endProcessing() {
        self.processing = false
    }

    /// Part of a head is buffered, its end not yet.
    mutating func headIncomplete() -> Action {
        guard self.phase == .awaitingHead(begun: false), !self.singleRequest else { return .none }
        self.phase = .awaitingHead(begun: true)
        return .startHeaderTimeout
    }

    /// A request head parsed.
    mutating func headParsed() {
        guard self.betweenRequests else { return }
        self.phase = .inRequest
    }

    /// The request is answered, the connection stays open for the next one: the idle
    /// timeout starts (a stream has none). The handler then consumes what is buffered
    /// and, if nothing started, lets reads resume and asks `waitsOutDrain`.
    mutating func requestDone() -> Action {
        guard self.phase == .inRequest else { return .none }
        self.phase = .awaitingHead(begun: false)
        return self.singleRequest ? .none : .startIdleTimeout
    }

    /// Draining, and nothing is in flight: the quiet period is due (the handler checks
    /// that no request has begun on a new connection).
    var waitsOutDrain: Bool { self.draining && self.betweenRequests }

    /// The connection ends after what is written (an answer with `connection: close`,
    /// an idle or drain timeout, a failed response, a tunnel's end).
    mutating func closeAfterWritten() {
        guard self.phase != .closed else { return }
        self.phase = .closing
    }

    /// The closing answer went out before the request body ended, on plain HTTP.
    mutating func lingerStarted() {
        guard self.phase == .closing else { return }
        self.phase = .lingering
    }

    /// The server began to drain (a reload, a takeover, shutdown).
    mutating func quiesce() -> Action {
        guard !self.draining else { return .none }
        self.draining = true
        return self.betweenRequests ? .awaitDrainQuiet : .none
    }

    /// The TLS handshake completed: a drain that began during it starts its quiet period.
    func handshakeCompleted() -> Action {
        self.waitsOutDrain ? .awaitDrainQuiet : .none
    }

    /// The channel asks to read. `holding`: the gateway cannot take more yet (the
    /// upstream is connecting or full, or pipelined requests pile up).
    mutating func readAsked(holding: Bool) -> Action {
        guard holding else { return .read }
        self.readHeld = true
        return .none
    }

    /// What held the reads back is gone (the upstream connected or drained its buffer,
    /// the tunnel opened, the request finished).
    mutating func readsMayResume() -> Action {
        guard self.readHeld, self.phase != .closed else { return .none }
        self.readHeld = false
        return .read
    }

    /// The channel went inactive.
    mutating func inactive() {
        self.phase = .closed
        self.readHeld = false
    }
}
