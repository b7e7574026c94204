#if canImport(Glibc)
import Glibc
#endif
import Logging
import NIOCore

/// The kernel limits the gateway adapts to at start: how many descriptors it may hold
/// and how long a listen queue may be.
enum SystemLimits {
    /// Raises the soft descriptor limit to the hard one (nginx's `worker_rlimit_nofile`,
    /// what Envoy does at start): each client connection and each upstream connection is
    /// a descriptor, and distributions start services with a soft limit of 1,024.
    /// Returns the limit in force.
    @discardableResult
    static func raiseDescriptorLimit(logger: Logger) -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return -1 }
        let before = limit.rlim_cur
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 {
                limit = raised
            } else {
                logger.warning("cannot raise the open files limit", metadata: [
                    "limit": "\(limit.rlim_cur)", "hard": "\(limit.rlim_max)", "error": "\(String(cString: strerror(errno)))",
                ])
            }
        }
        logger.info("open files limit", metadata: ["limit": "\(limit.rlim_cur)", "was": "\(before)", "hard": "\(limit.rlim_max)"])
        return Int(limit.rlim_cur)
    }

    /// The soft descriptor limit now.
    static var descriptorLimit: Int {
        var limit = rlimit()
        return getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 ? Int(limit.rlim_cur) : -1
    }

    /// Descriptors this process has open (entries of /proc/self/fd), for the log line of
    /// an accept that failed for lack of them; -1 when it cannot be read.
    static var openDescriptors: Int {
        // Out of descriptors, there is none to read the directory with: all are open.
        guard let dir = opendir("/proc/self/fd") else { return errno == EMFILE ? Self.descriptorLimit : -1 }
        defer { closedir(dir) }
        var count = -3  // ".", ".." and the directory's own descriptor
        while readdir(dir) != nil { count += 1 }
        return count
    }

    /// `net.core.somaxconn`: the kernel silently shortens any listen queue to it.
    static var maxListenBacklog: Int? {
        let fd = open("/proc/sys/net/core/somaxconn", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes = [UInt8](repeating: 0, count: 32)
        let count = read(fd, &bytes, bytes.count)
        guard count > 0 else { return nil }
        return Int(String(decoding: bytes[0..<count], as: UTF8.self).trimmingCharacters(in: "\n"))
    }
}

/// The accepting of one listening socket: accept errors pause it, and reloads turn it
/// off and on (`Gateway.setAccepting`).
///
/// Out of descriptors, `accept` fails with EMFILE while the connection waits in the
/// queue, and the socket stays readable: the listener retried in a loop, one core at
/// 100 % and nothing logged. NIO's `AcceptBackoffHandler` does not stop that here: the
/// failed accept leaves the channel's read pending, so the socket stays registered for
/// reading and the handler never sees a read to delay. Turning `autoRead` off takes the
/// socket out of the poll set until the pause ends. Each error is counted and logged at
/// most once a second with the descriptor limit and how many are open (nginx logs
/// `accept4() failed (24: Too many open files)` and waits 500 ms).
final class AcceptPacing: ChannelInboundHandler {
    typealias InboundIn = Channel

    /// How long accepting pauses after an error: short, so the listener is back within
    /// a second of descriptors being freed.
    static let pause = TimeAmount.milliseconds(250)

    /// Whether the listener should accept at all (false while a reload hands it over).
    var accepting = true
    private var paused = false
    private let listener: String
    private let logger: Logger
    private let count: (@Sendable () -> Void)?
    private var lastLogged: NIODeadline?
    private var suppressed = 0

    init(listener: String, logger: Logger, count: (@Sendable () -> Void)? = nil) {
        self.listener = listener
        self.logger = logger
        self.count = count
    }

    /// Turns accepting on or off (`Gateway.setAccepting`); a pause in progress ends as planned.
    func setAccepting(_ accepting: Bool, channel: Channel) {
        self.accepting = accepting
        if !self.paused { try? channel.syncOptions?.setOption(.autoRead, value: accepting) }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // Only running out of something pauses accepting; an aborted connection or the
        // like goes on to the next handler, uncounted.
        guard let ioError = error as? IOError, [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(ioError.errnoCode) else {
            context.fireErrorCaught(error)
            return
        }
        self.count?()
        self.log(ioError)
        guard !self.paused else { return }
        self.paused = true
        let channel = context.channel
        try? channel.syncOptions?.setOption(.autoRead, value: false)
        context.eventLoop.assumeIsolated().scheduleTask(in: Self.pause) {
            self.paused = false
            if self.accepting { try? channel.syncOptions?.setOption(.autoRead, value: true) }
        }
    }

    private func log(_ error: IOError) {
        let now = NIODeadline.now()
        if let last = self.lastLogged, now < last + .seconds(1) {
            self.suppressed += 1
            return
        }
        self.lastLogged = now
        var metadata: Logger.Metadata = [
            "listener": "\(self.listener)", "error": "\(String(cString: strerror(error.errnoCode))) (errno \(error.errnoCode))",
            "open_files_limit": "\(SystemLimits.descriptorLimit)", "open_descriptors": "\(SystemLimits.openDescriptors)",
            "open_client_connections": "\(ListenerMetrics.openConnections.load(ordering: .relaxed))",
            "retry_in": "\(Self.pause.nanoseconds / 1_000_000)ms",
        ]
        if self.suppressed > 0 { metadata["not_logged_since_last"] = "\(self.suppressed)" }
        self.suppressed = 0
        self.logger.warning("cannot accept connections", metadata: metadata)
    }
}
