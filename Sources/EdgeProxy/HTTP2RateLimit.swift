import NIOCore

/// At most `limit` events in any `window`, as a client's HTTP/2 connection is allowed
/// resets, stream errors and control frames (rapid reset, CVE-2023-44487, and its kin):
/// a pure counter, tested without a clock.
///
/// Why not NIO's own limiters: each keeps a timestamp per event in its window, and
/// reserves room for `limit` of them when the connection opens: 200 resets' worth was
/// 1.6 kB of the 40.5 kB an idle HTTP/2 connection held. This one is two counts, by the
/// sliding-window estimate (the previous fixed window's count, weighted by how much of it
/// the sliding window still covers, plus the current one's). A burst of `limit` passes
/// and one more does not, and the rate it allows over time is the same; it is not exact
/// where NIO's was: events bunched at the end of one fixed window and the start of the
/// next can pass up to about twice `limit` in some 30 s, and right after a full burst it
/// allows less than NIO did until the burst's window has slid by.
struct HTTP2RateLimit {
    let limit: Int
    let window: TimeAmount
    private var start: NIODeadline?
    private var current = 0
    private var previous = 0

    init(limit: Int, window: TimeAmount) {
        self.limit = limit
        self.window = window
    }

    /// Records an event at `now`; true when it takes the count over the limit.
    mutating func exceeded(at now: NIODeadline) -> Bool {
        let length = max(self.window.nanoseconds, 1)
        let start = self.start ?? now
        var elapsed = max((now - start).nanoseconds, 0)
        if elapsed >= length {
            let windows = elapsed / length
            self.previous = windows == 1 ? self.current : 0
            self.current = 0
            self.start = start + .nanoseconds(windows * length)
            elapsed -= windows * length
        } else {
            self.start = start
        }
        self.current += 1
        let stillCovered = Double(length - elapsed) / Double(length)
        return Double(self.previous) * stillCovered + Double(self.current) > Double(self.limit)
    }
}
