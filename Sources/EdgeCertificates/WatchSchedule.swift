/// When the certificate watcher re-reads its store: the debounce, early-reload, stale-writer
/// and rescan policy as a value, fed with what inotify said and the time, and returning what
/// to do. No clock, no I/O: `CertificateWatcher` reads the events and the monotonic clock
/// (milliseconds) and performs the actions; the tests drive it with made-up times.
///
/// - A settled reload follows `debounce` of quiet after the last event about a certificate
///   file: it removes what is gone and records what is rejected. An event about another name
///   (a directory, a symbolic link a certificate may point through, a log beside the
///   certificates) starts that quiet time when none is running but never extends it: a file
///   rewritten every few milliseconds in a watched directory held the settled reload off
///   for as long as it went on, and ignoring such names would miss a swap of a link
///   (`active -> releases/43`) that a certificate's path goes through.
/// - An early reload follows an event that says a file is complete (with `immediate`),
///   spaced so that a stream of such events (a log written in a watched directory) takes
///   at most a third of the watcher's time and one every 10 ms at most.
/// - A file modified and not yet closed is "being written": the store keeps serving what
///   the file's lineage had. A writer silent for `staleWrite` counts as done, and a settled
///   reload follows at once.
/// - A full rescan catches what inotify cannot see, `rescan` after the end of the last one.
struct WatchSchedule {
    struct Policy {
        var debounce: Int64
        var rescan: Int64
        var immediate: Bool
        /// A writer that keeps a file open without writing for this long is taken as done.
        var staleWrite: Int64

        init(_ configuration: WatcherConfiguration) {
            self.debounce = Int64(configuration.debounceMilliseconds)
            self.rescan = Int64(max(1, configuration.rescanMilliseconds))
            self.immediate = configuration.immediate
            self.staleWrite = Int64(max(5_000, 10 * configuration.debounceMilliseconds))
        }
    }

    enum Action: Equatable {
        /// Tell the store which files are being written now (it keeps their lineages).
        case publishBeingWritten(Set<FileID>)
        /// Re-read now, publishing what validates; then call `earlyReloadDone`.
        case reloadEarly
        /// Re-read after the quiet time (and watch directories that appeared).
        case reloadSettled
        /// The periodic full rescan (and watch directories that appeared); then call `rescanDone`.
        case rescan
    }

    let policy: Policy
    /// The first event since the last settled reload, nil when none is pending.
    private var pendingSince: Int64?
    private var lastEvent: Int64 = 0
    private var earlyPending = false
    private var earlyStartedAt: Int64 = 0
    private var earlyAllowedAt: Int64 = 0
    private var nextRescan: Int64
    /// Files modified and not yet closed, by watched path, with the time of their last write.
    private var writing: [String: (id: FileID, last: Int64)] = [:]
    /// What the store was last told is being written.
    private var published = Set<FileID>()

    init(policy: Policy, now: Int64) {
        self.policy = policy
        self.nextRescan = now + policy.rescan
    }

    /// How long the watcher may wait for events before `next` has something due
    /// (milliseconds, 0 to 60 s).
    func timeout(at now: Int64) -> Int64 {
        var timeout = self.nextRescan - now
        if self.pendingSince != nil { timeout = min(timeout, self.lastEvent + self.policy.debounce - now) }
        if self.earlyPending { timeout = min(timeout, self.earlyAllowedAt - now) }
        if let oldest = self.writing.values.map(\.last).min() { timeout = min(timeout, oldest + self.policy.staleWrite - now) }
        if self.published != self.beingWritten { timeout = 0 }
        return max(0, min(timeout, 60_000))
    }

    /// A file a lineage may use was written to (IN_MODIFY); `id` names it (read once per
    /// write streak: the file may have gone by then, and then nothing is held).
    mutating func fileModified(_ path: String, at now: Int64, id: () -> FileID?) {
        if let id = self.writing[path]?.id ?? id() { self.writing[path] = (id, now) }
    }

    /// A file a lineage may use was closed after writing, deleted or moved away.
    mutating func fileFinished(_ path: String) {
        self.writing[path] = nil
    }

    /// One read of inotify's queue ended: `sawEvent` when an event was about a certificate
    /// file (or had no name: a watched directory itself went, the queue overflowed),
    /// `sawOther` when one was about another name (not another file's writes), `sawComplete`
    /// when one said a certificate file is complete.
    mutating func eventsRead(at now: Int64, sawEvent: Bool, sawOther: Bool = false, sawComplete: Bool) {
        if sawEvent {
            self.lastEvent = now
            if self.pendingSince == nil { self.pendingSince = now }
        } else if sawOther, self.pendingSince == nil {
            self.lastEvent = now
            self.pendingSince = now
        }
        if sawComplete && self.policy.immediate { self.earlyPending = true }
    }

    /// The next action due at `now`, nil when nothing is. Call again after performing
    /// one (with the time then): several may be due at once.
    mutating func next(at now: Int64) -> Action? {
        if self.writing.contains(where: { now - $0.value.last >= self.policy.staleWrite }) {
            self.writing = self.writing.filter { now - $0.value.last < self.policy.staleWrite }
            self.lastEvent = now - self.policy.debounce  // a settled reload now
            if self.pendingSince == nil { self.pendingSince = self.lastEvent }
        }
        let beingWritten = self.beingWritten
        if beingWritten != self.published {
            self.published = beingWritten
            return .publishBeingWritten(beingWritten)
        }
        if self.earlyPending, now >= self.earlyAllowedAt {
            self.earlyPending = false
            self.earlyStartedAt = now
            return .reloadEarly
        }
        if self.pendingSince != nil, now - self.lastEvent >= self.policy.debounce {
            self.pendingSince = nil
            return .reloadSettled
        }
        if now >= self.nextRescan {
            // rescanDone moves it on from the rescan's end, so that one slower than its period
            // is not due again the moment it ends; from its start if nobody calls it.
            self.nextRescan = now + self.policy.rescan
            return .rescan
        }
        return nil
    }

    /// The early reload `next` asked for ended at `now`: the next one waits twice as long
    /// as this one took, and at least 10 ms.
    mutating func earlyReloadDone(at now: Int64) {
        self.earlyAllowedAt = now + max(10, 2 * (now - self.earlyStartedAt))
    }

    /// The rescan `next` asked for ended at `now`: the next one is a period later.
    mutating func rescanDone(at now: Int64) {
        self.nextRescan = now + self.policy.rescan
    }

    private var beingWritten: Set<FileID> { Set(self.writing.values.map(\.id)) }
}
