import NIOCore

/// When a client's HTTP/2 connection ends on its own, decided without a channel or a
/// clock (the times come in with the events): the idle timeout, and the gateway's drain.
///
/// Idle: with no open stream for the listener's idle timeout (nginx's
/// `keepalive_timeout` for HTTP/2), GOAWAY with NO_ERROR, then the close. Streams in
/// flight keep the connection open however long they take; their own timeouts are the
/// proxy's.
///
/// Drain (shutdown, a restart's handoff, a reload): GOAWAY in two steps, as RFC 9113
/// §6.8 describes. The first names the largest stream ID, so the client stops opening
/// streams without losing one it is sending at that moment; a PING follows, and once
/// its ACK is back (a round trip, at most a second) a second GOAWAY names the last
/// stream that will be answered. The connection closes when that stream and those
/// before it are done. A single GOAWAY with the last stream seen so far refused the
/// streams already on their way, which a client that does not retry counts as failed.
///
/// It counts the streams the engine reported created and not yet closed: a stream closed
/// without being created (a request the engine refused, as one with a malformed
/// content-length) counts for nothing, or the connection looked idle while a stream was
/// still open.
struct HTTP2ConnectionLifetime {
    enum Action: Equatable {
        case none
        /// Idle too long: GOAWAY naming `lastStream`, then the close once it is written
        /// (or, unwritten, after `goAwayWait`: `close`).
        case goAwayAndClose(lastStream: UInt32)
        /// The drain's first step: GOAWAY with the largest stream ID (2^31-1), then a PING
        /// carrying `ping`.
        case announceDrain(ping: UInt64)
        /// The drain's second GOAWAY, naming `lastStream`; then the close if `close`.
        case finalGoAway(lastStream: UInt32, close: Bool)
        /// The drained connection's last stream is done: the close.
        case close
    }

    /// How long a drain waits for its PING's ACK before the final GOAWAY.
    static let pingWait = TimeAmount.seconds(1)
    /// How long the idle timeout's GOAWAY may take to go out before the close comes
    /// anyway: a client that reads nothing would otherwise keep it, and the connection,
    /// waiting for ever (nothing else closes an idle connection; a drain ignores one
    /// that is closing).
    static let goAwayWait = TimeAmount.seconds(5)

    private let timeout: TimeAmount
    /// The open streams: a few at a time (the client's concurrency).
    private var open: [UInt32] = []
    /// The highest stream ID created: what a GOAWAY names.
    private(set) var lastStream: UInt32 = 0
    private enum Phase: Equatable {
        /// Serving; idle since the deadline minus the timeout when no stream is open.
        case serving(idleDeadline: NIODeadline?)
        /// The first GOAWAY and a PING went out; the final GOAWAY at the ACK or `until`.
        case announced(ping: UInt64, until: NIODeadline)
        /// The final GOAWAY went out: the connection closes with its last stream.
        case final
        /// The close was asked for; if `until`, it comes then whatever is still unwritten.
        case closing(until: NIODeadline?)
    }
    private var phase: Phase

    /// A connection that has just started, with no stream open.
    init(timeout: TimeAmount, now: NIODeadline) {
        self.timeout = timeout
        self.phase = .serving(idleDeadline: now + timeout)
    }

    /// When the owner must be told the time (`deadlineReached`), if at all.
    var deadline: NIODeadline? {
        switch self.phase {
        case .serving(let idle): return idle
        case .announced(_, let until): return until
        case .closing(let until): return until
        case .final: return nil
        }
    }

    mutating func streamOpened(_ id: UInt32) {
        self.open.append(id)
        self.lastStream = max(self.lastStream, id)
        // A deadline already queued finds the connection busy and lapses.
        if case .serving = self.phase { self.phase = .serving(idleDeadline: nil) }
    }

    mutating func streamClosed(_ id: UInt32, now: NIODeadline) -> Action {
        guard let index = self.open.firstIndex(of: id) else { return .none }
        self.open.remove(at: index)
        guard self.open.isEmpty else { return .none }
        switch self.phase {
        case .serving:
            self.phase = .serving(idleDeadline: now + self.timeout)
            return .none
        case .announced, .closing:
            return .none  // streams may still come until the final GOAWAY
        case .final:
            self.phase = .closing(until: nil)
            return .close
        }
    }

    /// The gateway drains (`ChannelShouldQuiesceEvent`); `ping` is the PING's payload.
    mutating func quiesce(now: NIODeadline, ping: UInt64) -> Action {
        guard case .serving = self.phase else { return .none }
        self.phase = .announced(ping: ping, until: now + Self.pingWait)
        return .announceDrain(ping: ping)
    }

    /// A PING ACK from the client.
    mutating func pingAcknowledged(_ data: UInt64) -> Action {
        guard case .announced(let ping, _) = self.phase, ping == data else { return .none }
        return self.finalGoAway()
    }

    mutating func deadlineReached(now: NIODeadline) -> Action {
        switch self.phase {
        case .serving(let idle?) where idle <= now && self.open.isEmpty:
            self.phase = .closing(until: now + Self.goAwayWait)
            return .goAwayAndClose(lastStream: self.lastStream)
        case .announced(_, let until) where until <= now:
            return self.finalGoAway()
        case .closing(let until?) where until <= now:
            self.phase = .closing(until: nil)
            return .close
        default:
            return .none  // not yet (the owner queues itself again for `deadline`), or nothing to wait for
        }
    }

    private mutating func finalGoAway() -> Action {
        let close = self.open.isEmpty
        self.phase = close ? .closing(until: nil) : .final
        return .finalGoAway(lastStream: self.lastStream, close: close)
    }
}
