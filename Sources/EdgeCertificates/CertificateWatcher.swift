import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// Timing of the watcher.
package struct WatcherConfiguration: Sendable {
    /// Quiet time after the last event before the sources are re-read.
    package var debounceMilliseconds: Int = 200
    /// Full rescan period: catches what inotify cannot see (NFS, lost events).
    package var rescanMilliseconds: Int = 60_000
    /// Publish a lineage as soon as a file event says a file is complete (renamed in,
    /// closed after writing, deleted, a link created) and the pair then validates,
    /// instead of only after the quiet time.
    package var immediate: Bool = true

    package init(debounceMilliseconds: Int = 200, rescanMilliseconds: Int = 60_000, immediate: Bool = true) {
        self.debounceMilliseconds = debounceMilliseconds
        self.rescanMilliseconds = rescanMilliseconds
        self.immediate = immediate
    }
}

/// Watches the directories behind a certificate store with inotify(7) and
/// reloads the store.
///
/// Two reloads follow a change. An early one as soon as an event says a file is
/// complete: it publishes what validates and reads the same twice, and stays
/// silent about the rest (a certificate renamed in before its key). A settled one
/// after the debounce (quiet time): it removes what is gone and records and logs
/// what is rejected. A file still being written is not read by either: from its
/// first IN_MODIFY until its IN_CLOSE_WRITE (or its deletion, or a quiet
/// `staleWriteMilliseconds` for a writer that keeps it open) its lineage keeps what
/// it serves, so a chain written in two steps is never published half-way.
///
/// inotify is called directly through Glibc (not libinotifytools: GPL-2,
/// process-global state, `select()`, no descriptor to share). It runs on one
/// dedicated thread that blocks in `poll` on the inotify descriptor and a wake-up
/// pipe. Directories are watched, never the files behind symlinks, because
/// certbot and Kubernetes replace links and directories rather than files.
package final class CertificateWatcher: Sendable {
    private let store: CertificateStore
    private let configuration: WatcherConfiguration
    private let logger: Logger
    private let inotify: Int32
    private let wakeRead: Int32
    private let wakeWrite: Int32
    private let stopped = NIOLockedValueBox(false)
    /// Set by the watcher thread as it ends; `stop()` waits on it instead of polling.
    private let finished = ConditionLock(value: false)
    /// Watch descriptor to directory, to tell what an IN_CREATE created.
    private let watched = NIOLockedValueBox([Int32: String]())
    /// Names besides `*.crt`, `*.key`, `*.pem` and `..data` whose change can complete a
    /// lineage: explicit pairs' files and the sources' own directories.
    private let lineageNames: Set<String>

    static let directoryEvents: UInt32 = UInt32(IN_CREATE | IN_DELETE | IN_MOVED_TO | IN_MOVED_FROM | IN_CLOSE_WRITE
        | IN_MODIFY | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR)

    package init(store: CertificateStore, configuration: WatcherConfiguration, logger: Logger) throws {
        self.store = store
        self.configuration = configuration
        self.logger = logger
        let fd = inotify_init1(Int32(IN_NONBLOCK | IN_CLOEXEC))
        guard fd >= 0 else {
            throw CertificateLoadError(path: "inotify", reason: "inotify_init1 failed: \(String(cString: strerror(errno)))")
        }
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else {
            close(fd)
            throw CertificateLoadError(path: "pipe", reason: String(cString: strerror(errno)))
        }
        for end in pipeFDs {
            _ = fcntl(end, F_SETFL, fcntl(end, F_GETFL) | O_NONBLOCK)
            _ = fcntl(end, F_SETFD, FD_CLOEXEC)
        }
        var names = Set<String>()
        for source in store.configuration.sources {
            if case .pair(_, let cert, let key) = source { names.formUnion([baseName(cert), baseName(key)]) }
            names.formUnion(source.watchRoots.map(baseName))
        }
        self.lineageNames = names
        self.inotify = fd
        self.wakeRead = pipeFDs[0]
        self.wakeWrite = pipeFDs[1]
    }

    deinit {
        close(self.inotify)
        close(self.wakeRead)
        close(self.wakeWrite)
    }

    /// Starts the watcher thread.
    package func start() {
        _ = self.addWatches()
        let box = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let rc = pthread_create(&thread, nil, { arg in
            let watcher = Unmanaged<CertificateWatcher>.fromOpaque(arg!).takeRetainedValue()
            watcher.loop()
            return nil
        }, box.toOpaque())
        if rc == 0 {
            pthread_detach(thread)
        } else {
            box.release()
            self.logger.error("certificate watcher thread could not start; relying on SIGHUP", metadata: ["errno": "\(rc)"])
        }
    }

    /// Stops the watcher thread (bounded wait).
    package func stop() {
        self.stopped.withLockedValue { $0 = true }
        var byte: UInt8 = 1
        _ = write(self.wakeWrite, &byte, 1)
        // Bounded: a reload in progress (a slow disk) finishes first; a second at most.
        if self.finished.lock(whenValue: true, timeoutSeconds: 1) { self.finished.unlock() }
    }

    /// The directories to watch now: each source's roots, their parents (to see a
    /// root deleted and recreated), certbot's lineage directories and `archive/`.
    func desiredDirectories() -> Set<String> {
        var result = Set<String>()
        for source in self.store.configuration.sources {
            for root in source.watchRoots {
                result.insert(root)
                result.insert(parentDirectory(root))
                if case .certbot = source {
                    let archive = parentDirectory(root) + "/archive"
                    for dir in [root, archive] {
                        result.insert(dir)
                        for name in (try? listDirectory(dir)) ?? [] {
                            var isDir = false
                            if fileExists(dir + "/" + name, isDirectory: &isDir), isDir { result.insert(dir + "/" + name) }
                        }
                    }
                }
            }
        }
        return result
    }

    /// Adds a watch on every desired directory that exists (inotify ignores repeats).
    @discardableResult
    func addWatches() -> Int {
        var added = 0
        for dir in self.desiredDirectories() {
            var isDir = false
            guard fileExists(dir, isDirectory: &isDir), isDir else { continue }
            let wd = inotify_add_watch(self.inotify, dir, Self.directoryEvents)
            if wd >= 0 {
                added += 1
                self.watched.withLockedValue { $0[wd] = dir }
            }
        }
        return added
    }

    private func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// The watched path of the event's file, for a name a lineage may use (nil for others:
    /// a log file written in a watched directory).
    private func lineagePath(_ event: inotify_event, name: UnsafeMutableRawPointer, length: Int) -> String? {
        guard length > 0 else { return nil }
        let file = String(cString: name.assumingMemoryBound(to: CChar.self))
        guard file.hasSuffix(".pem") || file.hasSuffix(".crt") || file.hasSuffix(".key") || self.lineageNames.contains(file),
              let dir = self.watched.withLockedValue({ $0[event.wd] }) else { return nil }
        return dir + "/" + file
    }

    /// A name a lineage may use: a certificate or key file, Kubernetes' `..data`, an
    /// explicit pair's file or a source's own directory.
    private func isLineageFile(_ file: String) -> Bool {
        file.hasSuffix(".pem") || file.hasSuffix(".crt") || file.hasSuffix(".key") || file == "..data" || self.lineageNames.contains(file)
    }

    /// True when the event says a file a lineage may use is complete: renamed in, closed
    /// after writing, deleted, or a symbolic link created (a link is whole when it
    /// appears; a regular file created is still being written). Other files in a watched
    /// directory (a log written there) do not cause early reloads.
    private func isComplete(_ event: inotify_event, name: UnsafeMutableRawPointer, length: Int) -> Bool {
        guard length > 0 else { return false }
        let file = String(cString: name.assumingMemoryBound(to: CChar.self))
        guard self.isLineageFile(file) else { return false }
        if event.mask & UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE) != 0 { return true }
        guard event.mask & UInt32(IN_CREATE) != 0, let dir = self.watched.withLockedValue({ $0[event.wd] }) else { return false }
        var info = stat()
        return lstat(dir + "/" + file, &info) == 0 && (info.st_mode & S_IFMT) == S_IFLNK
    }

    /// The watcher thread: reads inotify's events into the schedule and performs what it
    /// says is due (WatchSchedule holds the policy: debounce, early reloads, writers, rescans).
    private func loop() {
        defer {
            self.finished.lock()
            self.finished.unlock(withValue: true)
        }
        var schedule = WatchSchedule(policy: WatchSchedule.Policy(self.configuration), now: self.now())
        let bufferSize = 64 * 1024  // far above one event (a smaller buffer makes read fail with EINVAL)
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: bufferSize, alignment: 8)
        defer { buffer.deallocate() }
        while !self.stopped.withLockedValue({ $0 }) {
            var fds = [pollfd(fd: self.inotify, events: Int16(POLLIN), revents: 0), pollfd(fd: self.wakeRead, events: Int16(POLLIN), revents: 0)]
            let ready = poll(&fds, 2, Int32(schedule.timeout(at: self.now())))
            if ready < 0 && errno != EINTR { usleep(100_000) }
            if fds[0].revents & Int16(POLLIN) != 0 {
                self.readEvents(into: &schedule, buffer: buffer, size: bufferSize)
            }
            while !self.stopped.withLockedValue({ $0 }), let action = schedule.next(at: self.now()) {
                switch action {
                case .publishBeingWritten(let files):
                    // The store holds the set, so every reload (SIGHUP's too) honours it.
                    self.store.setFilesBeingWritten(files)
                case .reloadEarly:
                    self.store.reload(reason: "file change", settled: false)
                    schedule.earlyReloadDone(at: self.now())
                case .reloadSettled:
                    self.addWatches()
                    self.store.reload(reason: "file change")
                case .rescan:
                    self.addWatches()
                    self.store.reload(reason: "periodic rescan")
                    schedule.rescanDone(at: self.now())
                }
            }
        }
    }

    /// Reads every queued inotify event and tells the schedule what they mean.
    private func readEvents(into schedule: inout WatchSchedule, buffer: UnsafeMutableRawPointer, size bufferSize: Int) {
        var sawEvent = false
        var sawOther = false
        var sawComplete = false
        var counted = 0
        while true {
            let n = read(self.inotify, buffer, bufferSize)
            if n <= 0 { break }
            var offset = 0
            while offset + MemoryLayout<inotify_event>.size <= n {
                let event = buffer.load(fromByteOffset: offset, as: inotify_event.self)
                let length = Int(event.len)
                let namePointer = buffer + offset + MemoryLayout<inotify_event>.size
                offset += MemoryLayout<inotify_event>.size + length
                if event.mask & UInt32(IN_Q_OVERFLOW) != 0 {
                    self.logger.warning("inotify queue overflowed; rescanning everything")
                }
                if event.mask & UInt32(IN_ISDIR) != 0, event.mask & UInt32(IN_CREATE | IN_MOVED_TO) != 0 {
                    // A new directory (a first certbot issuance): watch it now, then rescan:
                    // files created before the watch produce no event.
                    _ = self.addWatches()
                }
                // Another name in a watched directory: a directory, a link a certificate's
                // path may go through, a log or a temporary file beside the certificates.
                // It may start the quiet time, never extend it (WatchSchedule); another
                // file's writes change nothing at all. Directories count in the metric.
                if length > 0, !self.isLineageFile(String(cString: namePointer.assumingMemoryBound(to: CChar.self))) {
                    if event.mask & UInt32(IN_ISDIR) != 0 { counted += 1 }
                    if event.mask & UInt32(IN_MODIFY) == 0 { sawOther = true }
                    continue
                }
                counted += 1
                if event.mask & UInt32(IN_MODIFY | IN_CLOSE_WRITE | IN_DELETE | IN_MOVED_FROM) != 0 {
                    if let path = self.lineagePath(event, name: namePointer, length: length) {
                        if event.mask & UInt32(IN_MODIFY) != 0 {
                            schedule.fileModified(path, at: self.now()) { FileID(path: path) }
                        } else {
                            schedule.fileFinished(path)
                        }
                    }
                }
                sawEvent = true
                if !sawComplete, self.configuration.immediate {
                    sawComplete = self.isComplete(event, name: namePointer, length: length)
                }
            }
        }
        schedule.eventsRead(at: self.now(), sawEvent: sawEvent, sawOther: sawOther, sawComplete: sawComplete)
        if counted > 0 { self.store.countFileEvents(counted) }
    }
}
