import NIOCore

/// The deadlines of one client connection, and which of them is due: the header timeout,
/// the idle timeout between requests, the body timeout, the upstream read timeout, the
/// drain's quiet period and the lingering close. No I/O and no clock: `ProxyHandler` says
/// where its connection stands and performs what is due; tests choose the times.
///
/// All of them wait in the loop's `LoopDeadlines` as one entry per connection, queued at
/// the earliest deadline that can act (`next`). Moving a deadline later leaves the entry
/// where it was; reached early, the connection re-queues at `next`, which counts every
/// deadline still running. (Before this, a connection reached early re-queued only the
/// deadline that woke it: a drain's quiet period that was due before the idle deadline
/// was lost, and a draining connection stayed open until its idle timeout.)
struct ClientDeadlines {
    /// The header timeout (the first request's head, or a later head that began), the
    /// idle timeout between requests, or the pause of a lingering close.
    var client: NIODeadline?
    /// When the upstream must have sent (more of) its response.
    var upstreamRead: NIODeadline?
    /// When the client must have sent more of the request body.
    var body: NIODeadline?
    /// Draining with no request in flight: when the connection closes unless one began.
    var drainQuietUntil: NIODeadline?
    /// Lingering after an early response: when it closes, however the client goes on.
    var lingerUntil: NIODeadline?

    /// Where the connection stands when a deadline is reached.
    struct Standing {
        /// A request body is being read, and the connection is not closing.
        var readingBody = false
        /// The gateway holds the client's reads (its upstream connects, or is full): the
        /// client is not the one who is late with the body.
        var gatewayHoldsReads = false
        /// A response, or more of it, is awaited from the upstream.
        var awaitingResponse = false
        /// No exchange, and the connection is not closing.
        var betweenRequests = false
        /// A request head is awaited under the header timeout: the first request's, or a
        /// later one whose first bytes arrived.
        var headAwaited = false
        /// Nothing of a next request has arrived: no byte buffered, no head or TLS
        /// handshake begun (only asked while draining).
        var quiet: () -> Bool = { true }
    }

    enum Due: Equatable {
        /// No request body byte within the body timeout: 408, or a close mid-response.
        case bodyTimeout
        /// No (more) response within the upstream's read timeout.
        case readTimeout
        /// Draining, and no request began in the quiet period: close.
        case drained
        /// The lingering close is over: close.
        case lingerOver
        /// No complete request head within the header timeout: 408.
        case headerTimeout
        /// Idle between requests for the idle timeout: close.
        case idleTimeout
    }

    /// The first deadline due at `now`, cleared as it is handed out; nil when none is.
    /// Called until it returns nil, with the standing as it is after each action.
    mutating func due(at now: NIODeadline, _ standing: Standing, bodyTimeout: TimeAmount) -> Due? {
        if let body = self.body {
            if !standing.readingBody {
                self.body = nil
            } else if standing.gatewayHoldsReads {
                self.body = now + bodyTimeout
            } else if now >= body {
                self.body = nil
                return .bodyTimeout
            }
        }
        if standing.awaitingResponse, let read = self.upstreamRead, now >= read {
            self.upstreamRead = nil
            return .readTimeout
        }
        if let quiet = self.drainQuietUntil, now >= quiet {
            // Spent either way: a request that began gets `connection: close` on its
            // response, a head or handshake under way keeps its own timeout.
            self.drainQuietUntil = nil
            if standing.betweenRequests, self.lingerUntil == nil, standing.quiet() { return .drained }
        }
        if self.lingerUntil != nil || standing.betweenRequests, let client = self.client, now >= client {
            self.client = nil
            if self.lingerUntil != nil {
                self.lingerUntil = nil
                return .lingerOver
            }
            return standing.headAwaited ? .headerTimeout : .idleTimeout
        }
        return nil
    }

    /// When the connection must be reached next: the earliest deadline that can act.
    func next(_ standing: Standing) -> NIODeadline? {
        var next: NIODeadline?
        func consider(_ deadline: NIODeadline?) {
            if let deadline, next.map({ deadline < $0 }) ?? true { next = deadline }
        }
        if standing.readingBody { consider(self.body) }
        if standing.awaitingResponse { consider(self.upstreamRead) }
        consider(self.drainQuietUntil)
        if self.lingerUntil != nil || standing.betweenRequests { consider(self.client) }
        return next
    }
}
