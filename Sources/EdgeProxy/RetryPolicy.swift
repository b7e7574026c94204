/// Whether a request whose upstream attempt failed before any response byte goes again, and
/// where. The one place that decides, a pure function of the failure and the request
/// (RetryPolicyTests holds it as a table); ProxyHandler only counts the failure against the
/// backend, logs, and performs the decision.
///
/// The rule under every row: a request is sent again only when the upstream cannot have
/// acted on it, or when acting on it twice is harmless (an idempotent method, nginx's
/// `proxy_next_upstream error timeout`), and only when every byte sent so far is still
/// held to send again.
struct FailedAttempt: Equatable {
    enum Failure: Equatable {
        /// The connect was refused or timed out, or the TLS handshake failed: nothing was sent.
        case connect
        /// TLS 1.3: the upstream refused our client certificate after the handshake, and
        /// that alert was the first thing read: it read nothing of the request.
        case refusedAfterHandshake
        /// The upstream closed or reset the connection with the request in it.
        case broken
        /// The upstream said it did not process the request (HTTP/2's REFUSED_STREAM, or a
        /// stream above its GOAWAY's last stream ID).
        case notProcessed
        /// No response byte within the read timeout.
        case readTimeout
        /// Anything else before the response (a head too large, not HTTP): the upstream
        /// answered, so it may have acted on the request.
        case other
    }

    enum Decision: Equatable {
        /// The same backend on a new connection (a pooled connection the upstream closed
        /// while idle, which is routine); not counted as an attempt.
        case freshConnection
        /// The next backend the balancer picks, the failed ones excluded.
        case anotherBackend
        /// Answer the client with this failure.
        case fail
    }

    var failure: Failure
    var idempotent: Bool
    /// Every byte sent so far is still held (the request fits the retry buffer).
    var held: Bool
    /// The client has sent the whole request.
    var requestEnded: Bool
    /// The connection had served a request before this one.
    var reused: Bool
    /// This request already went to a fresh connection after a reused one broke.
    var retriedStale: Bool
    /// Times this request was not processed and went again to the same backend.
    var unprocessedRetries = 0
    /// Not processed this many times in all, it goes to another backend: on a busy
    /// HTTP/2 backend that ends its connections after a number of streams (nginx's
    /// `keepalive_requests`), one request can meet two GOAWAYs in a row, which is routine,
    /// not a failure; a backend that refuses every stream is not asked forever.
    static let maxUnprocessedRetries = 3
    /// Backends tried for this request, the failed one included.
    var attempts: Int
    /// The group's `max_connect_attempts`.
    var maxAttempts: Int
    /// Less than `timeouts.next_upstream` has passed since the first try began.
    var withinNextUpstream: Bool = true

    var decision: Decision {
        let backendLeft = self.attempts < self.maxAttempts
        switch self.failure {
        case .connect:
            return backendLeft ? .anotherBackend : .fail
        case .refusedAfterHandshake:
            return self.held && backendLeft ? .anotherBackend : .fail
        case .broken:
            // A whole small request, even a POST, may be replayed on a fresh connection
            // after a reused one broke: the upstream closed it idle, before reading it.
            if self.reused, !self.retriedStale, self.held, self.idempotent || self.requestEnded { return .freshConnection }
            return self.idempotent && self.held && backendLeft ? .anotherBackend : .fail
        case .notProcessed:
            // Nothing was acted on (RFC 9113 §8.7): any method goes again while all of it is
            // held, first on another connection to the same backend (a GOAWAY is routine).
            guard self.held else { return .fail }
            if self.unprocessedRetries < Self.maxUnprocessedRetries { return .freshConnection }
            return backendLeft ? .anotherBackend : .fail
        case .readTimeout:
            return self.idempotent && self.held && backendLeft && self.withinNextUpstream ? .anotherBackend : .fail
        case .other:
            return .fail
        }
    }
}
