import NIOCore

/// When an idle HTTP/2 upstream connection is PINGed, and when its silence means it is
/// dead (Envoy's `connection_keepalive`, gRPC's keepalive): a pure schedule, driven by
/// the session's one timer, tested without a socket or a clock.
///
/// Why: a backend that vanished without a FIN or RST (its host powered off, a NAT or
/// firewall that forgot the flow, a process stopped) leaves its idle connections looking
/// alive, and the next request leased on one waits for the read timeout and, if it is
/// not idempotent, fails rather than going again. A PING every `interval` while idle,
/// answered within `timeout`, proves the connection before a request needs it; one not
/// answered closes it while nothing depends on it.
///
/// Only idle connections are PINGed (a busy one proves itself by its responses, and a
/// dead one is found by the read timeout); a PING already sent keeps its deadline when a
/// stream is leased meanwhile, since a connection that sends nothing back is dead either
/// way. Any frame from the backend counts as the answer.
struct HTTP2PingLiveness {
    let interval: TimeAmount
    let timeout: TimeAmount
    /// The PING sent and not yet acknowledged: its payload and when its ACK is due.
    private(set) var awaiting: (payload: UInt64, due: NIODeadline)?
    /// When the connection last showed it was alive: it became idle (it had just
    /// answered), or it acknowledged a PING.
    private var alive: NIODeadline
    private var sent: UInt64 = 0

    enum Step: Equatable {
        /// Send a PING with this payload and look again when its ACK is due.
        case ping(UInt64, due: NIODeadline)
        /// Nothing to do before then.
        case wait(until: NIODeadline)
        /// The ACK did not come in time: close the connection.
        case dead(reason: String)
        /// Busy and no PING outstanding: no timer until the connection idles again.
        case stop
    }

    init(interval: TimeAmount, timeout: TimeAmount, now: NIODeadline) {
        self.interval = interval
        self.timeout = timeout
        self.alive = now
    }

    /// The connection's last stream ended (or it was opened and not used): the first PING
    /// is due one interval later, or the outstanding one's deadline stands.
    mutating func idled(at now: NIODeadline) -> NIODeadline {
        if let awaiting = self.awaiting { return awaiting.due }
        self.alive = now
        return now + self.interval
    }

    /// A frame came from the backend (the PING's ACK, or anything else: a connection busy
    /// sending a response is alive, and its ACK may be queued behind the response).
    mutating func heard(at now: NIODeadline) {
        guard self.awaiting != nil else { return }
        self.awaiting = nil
        self.alive = now
    }

    /// The timer fired (or the session asks what is next).
    mutating func check(at now: NIODeadline, idle: Bool) -> Step {
        if let awaiting = self.awaiting {
            guard now >= awaiting.due else { return .wait(until: awaiting.due) }
            return .dead(reason: "no PING ACK within \(self.timeout.nanoseconds / 1_000_000) ms (ping_timeout)")
        }
        guard idle else { return .stop }
        let next = self.alive + self.interval
        guard now >= next else { return .wait(until: next) }
        self.sent &+= 1
        let due = now + self.timeout
        self.awaiting = (self.sent, due)
        return .ping(self.sent, due: due)
    }
}
