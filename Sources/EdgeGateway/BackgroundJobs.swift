import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// What a configuration generation runs beside its listeners, as swift-service-lifecycle
/// `Service`s of a group of their own: the certificate watchers, the health checks, the
/// session-ticket keys (rotation or the shared key file), the client CA watch and the
/// heap trimmer. The group starts with the generation and is shut down gracefully with
/// it: a reload replaces the generation, and with it these jobs, without stopping the
/// process's group (`GatewayService`), which runs across generations.
///
/// Each is a small `Service` with one job; none blocks an event loop (the periodic ones
/// tick on the task pool, one tick at a time).
final class BackgroundJobs: Sendable {
    private let group: ServiceGroup
    private let running: Task<Void, Never>
    private let logger: Logger

    init(_ services: [(name: String, service: any Service)], logger: Logger) {
        // A job that ends, or fails, ends alone: the others, and the listeners, go on.
        let group = ServiceGroup(configuration: ServiceGroupConfiguration(
            services: services.map {
                .init(service: $0.service, successTerminationBehavior: .ignore, failureTerminationBehavior: .ignore, serviceName: $0.name)
            },
            logger: logger
        ))
        self.group = group
        self.logger = logger
        // Detached: the group ends with its generation only, not with whatever graceful
        // shutdown the task that started the generation (`GatewayService.run`, a SIGHUP
        // reload) belongs to.
        self.running = Task.detached {
            do {
                try await group.run()
            } catch {
                logger.error("background jobs stopped", metadata: ["error": "\(error)"])
            }
        }
    }

    /// Shuts every job down gracefully and waits until each has returned, or for `limit`:
    /// a tick stuck in a file system that stopped answering (a key file on a hung NFS
    /// mount) must not hold up the drain that follows. It is left to finish alone.
    func stop(within limit: Swift.Duration = .seconds(5)) async {
        await self.group.triggerGracefulShutdown()
        let (running, logger) = (self.running, self.logger)
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let waiting = NIOLockedValueBox<CheckedContinuation<Void, Never>?>(continuation)
            Task.detached {
                await running.value
                waiting.withLockedValue { $0.take() }?.resume()
            }
            Task.detached {
                try? await Task.sleep(for: limit)
                guard let continuation = waiting.withLockedValue({ $0.take() }) else { return }
                logger.warning("background jobs still stopping; draining without waiting for them", metadata: ["waited": "\(limit)"])
                continuation.resume()
            }
        }
    }
}

/// Runs `tick` every `interval` (the first after `interval` too) until graceful shutdown.
/// Ticks never overlap: one that overruns its interval is followed at once by the next,
/// and missed ticks are not made up.
struct PeriodicJob: Service {
    let interval: Swift.Duration
    let tick: @Sendable () async -> Void

    func run() async throws {
        try await cancelWhenGracefulShutdown {
            let clock = ContinuousClock()
            var next = clock.now + self.interval
            while !Task.isCancelled {
                try await Task.sleep(until: next, clock: clock)
                await self.tick()
                // On schedule, but never catching up a backlog of missed ticks.
                next = max(next + self.interval, clock.now)
            }
        }
    }
}

/// Something already started that has a blocking stop (a thread of its own, timers on
/// the event loops), held as a service: stopped on graceful shutdown, off the task pool's
/// threads. Started when the job is built, in `Gateway.start`, not when the group gets to
/// it: a certificate written the moment `start` returns is seen by a watch already in
/// place, and the first health probes go out with the listeners.
struct StopOnShutdown: Service {
    let stop: @Sendable () -> Void

    func run() async throws {
        try? await gracefulShutdown()
        do {
            try await NIOThreadPool.singleton.runIfActive(self.stop)
        } catch {
            self.stop()  // cancelled (or the pool is gone): stopped here, all the same
        }
    }
}

extension Gateway {
    /// The generation's background jobs, built from its plan (the watchers and health
    /// checks already started; see `StopOnShutdown`).
    func backgroundJobs(group: EventLoopGroup) -> [(name: String, service: any Service)] {
        var jobs: [(name: String, service: any Service)] = []
        let watch = self.config.certificates?.watch ?? WatchConfig()
        for (index, store) in self.stores.enumerated() {
            do {
                let watcher = try CertificateWatcher(
                    store: store,
                    configuration: WatcherConfiguration(
                        debounceMilliseconds: Int(watch.debounce.nanoseconds / 1_000_000),
                        rescanMilliseconds: max(100, Int(watch.rescanInterval.nanoseconds / 1_000_000)),
                        immediate: watch.immediate
                    ),
                    logger: self.logger
                )
                watcher.start()
                jobs.append(("certificate-watcher-\(index)", StopOnShutdown(stop: watcher.stop)))
            } catch {
                self.logger.error("certificate watching unavailable: renewed certificates are served only after SIGHUP or POST /reload",
                                  metadata: ["error": "\(error)"])
            }
        }
        let checker = HealthChecker(groups: self.groups, eventLoopGroup: group, logger: self.logger)
        checker.start()
        jobs.append(("health-checks", StopOnShutdown(stop: checker.stop)))
        jobs.append(("session-ticket-keys", self.ticketKeyJob()))
        if let caWatch = self.clientCAWatchJob() { jobs.append(("client-ca-watch", caWatch)) }
        let stapler = self.ocspStapler, stores = self.stores
        // Every second: cheap when nothing is due (a look at the snapshots' generations),
        // and a new lineage's first response is asked for within a second of its
        // publication. On a queue of its own, not the pool's threads: a responder that does
        // not answer holds the tick for its whole timeout, and the pool reads certificates.
        jobs.append(("ocsp-stapling", PeriodicJob(interval: .seconds(1)) {
            await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
                OCSPStapler.queue.async {
                    stapler.tick(stores: stores, now: Int64(currentTime()))
                    done.resume()
                }
            }
        }))
        if self.config.memoryTrimming {
            let logger = self.logger, metrics = self.metrics
            jobs.append(("heap-trimmer", PeriodicJob(interval: .seconds(1)) {
                HeapTrimmer.shared.tick(logger: logger) { metrics.heapTrimmed(bytes: $0) }
            }))
        }
        return jobs
    }

    /// Rotates session-ticket keys on schedule, or follows the shared key file (checked every second).
    private func ticketKeyJob() -> PeriodicJob {
        let logger = self.logger
        guard let file = self.sessionTickets.keyFile else {
            return PeriodicJob(interval: .nanoseconds(self.sessionTickets.rotateEvery.nanoseconds)) {
                TicketKeyRing.shared.rotate(keep: 2)
                logger.info("session ticket key rotated", metadata: ["encrypting_key_name": "\(TicketKeyRing.shared.current[0].nameHex)"])
            }
        }
        let stamp = NIOLockedValueBox(fileStamp(file))
        // The file is looked at on a thread of the pool, not of the task pool (see `stop`).
        return PeriodicJob(interval: .seconds(1)) {
            try? await NIOThreadPool.singleton.runIfActive {
                let now = fileStamp(file)
                guard now != nil, stamp.withLockedValue({ $0 != now }) else { return }
                stamp.withLockedValue { $0 = now }
                do {
                    let keys = try TicketKeyRing.parse(keyFile: try readTextFile(file))
                    TicketKeyRing.shared.install(keys)
                    logger.notice("session ticket keys reloaded", metadata: ["file": "\(file)", "keys": "\(keys.count)", "encrypting_key_name": "\(keys[0].nameHex)"])
                } catch {
                    logger.error("session ticket key file rejected; keeping the current keys", metadata: ["file": "\(file)", "error": "\(Self.reason(error))"])
                }
            }
        }
    }

    /// Rebuilds the contexts of every store whose policies name a client CA bundle or CRL
    /// file when that file changes (checked every second), so a new client CA or a new
    /// revocation applies to new handshakes (and, through the session-ID context, to
    /// resumptions). The files are looked at, the bundle read and the contexts built on a
    /// thread of the pool: neither a slow file system nor the store's reload lock, which a
    /// reload holds while it reads certificate files, ties up the task pool's threads.
    /// nil: no policy names a bundle.
    private func clientCAWatchJob() -> PeriodicJob? {
        var found: [String: [CertificateStore]] = [:]
        for store in self.stores {
            let files = store.configuration.policies.flatMap { [$0.clientCAFile, $0.clientCRLFile].compactMap { $0 } }
            for file in Set(files) { found[file, default: []].append(store) }
        }
        let files = found
        let caFiles = Set(self.stores.flatMap { $0.configuration.policies.compactMap(\.clientCAFile) })
        guard !files.isEmpty else { return nil }
        let stamps = NIOLockedValueBox(files.keys.reduce(into: [String: String?]()) { $0[$1] = fileStamp($1) })
        // Stores with a crl_strict policy, and whether their lists were stale when last looked at.
        let strict = self.stores.filter { $0.configuration.policies.contains { $0.clientCRLStrict } }
        let staleSeen = NIOLockedValueBox([ObjectIdentifier: Set<String>]())
        return PeriodicJob(interval: .seconds(1)) {
            try? await NIOThreadPool.singleton.runIfActive {
                for (file, stores) in files {
                    let now = fileStamp(file)
                    guard now != nil, stamps.withLockedValue({ $0[file] != now }) else { continue }
                    stamps.withLockedValue { $0[file] = now }
                    let kind = caFiles.contains(file) ? "client CA bundle" : "CRL file"
                    for store in stores { store.rebuildContexts(reason: "\(kind) \(file) changed") }
                }
                // A strict list going stale refuses every client from then on, and the
                // contexts are built again so that no session made before resumes.
                let now = Int64(currentTime())
                for store in strict {
                    // The strict lists by file: a lenient list already stale, or another
                    // strict one, must not hide one that goes stale now.
                    let strictFiles = Set(store.configuration.policies.filter(\.clientCRLStrict).compactMap(\.clientCRLFile))
                    let stale = Set(store.snapshot.revocationLists.filter { strictFiles.contains($0.lists.path) && $0.lists.isStale(now: now) }.map(\.lists.path))
                    let seen = staleSeen.withLockedValue { $0[ObjectIdentifier(store)] ?? [] }
                    // Built from the lists in use, not read again: only the stale bit of the
                    // session-ID context changes. Not rebuilt: tried again at the next tick.
                    if !stale.isSubset(of: seen),
                       !store.rebuildContexts(reason: "a CRL went past its next update (crl_strict: clients are refused until a fresh one)", rereadTrust: false) {
                        continue
                    }
                    staleSeen.withLockedValue { $0[ObjectIdentifier(store)] = stale }
                }
            }
        }
    }
}
