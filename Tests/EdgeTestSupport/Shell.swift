import Foundation
import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// The result of a finished process.
package struct ProcessResult: Sendable {
    package var status: Int32
    package var stdout: String
    package var stderr: String
}

package enum Shell {
    /// Runs a command to completion (bounded by `timeout`), capturing its output.
    ///
    /// Spawned and reaped here (posix_spawn, waitpid), not with Foundation's `Process`: on
    /// Linux that learns of a child's exit from a SIGCHLD that libdispatch reads through a
    /// signalfd, and a SIGCHLD sent to a thread that does not block it is discarded. A
    /// script that exits while the children it started in the background run on (the
    /// demo) then stayed a zombie, and the test waited for it forever.
    @discardableResult
    package static func run(_ arguments: [String], input: String? = nil, timeout: TimeInterval = 120, environment: [String: String]? = nil) throws -> ProcessResult {
        var environmentVariables = ProcessInfo.processInfo.environment
        if let environment { environmentVariables.merge(environment) { _, new in new } }
        let inPipe = try pipePair(), outPipe = try pipePair(), errPipe = try pipePair()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, inPipe.read, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe.write, 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe.write, 2)
        // Nothing else of ours reaches the child: a gateway's sockets that a curl held open
        // would stay open when the gateway closed them (Foundation's Process closes them too).
        posix_spawn_file_actions_addclosefrom(&actions, 3)
        // A default signal mask and dispositions, as Foundation's Process gives: a child of a
        // thread that blocks SIGTERM would otherwise ignore the `kill` that stops it.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t(), allSignals = sigset_t()
        sigemptyset(&noSignals)
        sigfillset(&allSignals)
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &allSignals)
        // A process group of its own, so that a timeout stops what it started too (an
        // apt-get under a script would otherwise go on holding the dpkg lock).
        posix_spawnattr_setpgroup(&attributes, 0)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETPGROUP))
        var pid: pid_t = 0
        let argv = (["/usr/bin/env"] + arguments).map { strdup($0) } + [nil]
        let envp = environmentVariables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        let spawned = posix_spawn(&pid, "/usr/bin/env", &actions, &attributes, argv, envp)
        close(inPipe.read)
        close(outPipe.write)
        close(errPipe.write)
        guard spawned == 0 else {
            [inPipe.write, outPipe.read, errPipe.read].forEach { close($0) }
            throw POSIXError(POSIXErrorCode(rawValue: spawned) ?? .EIO)
        }
        // Both pipes are drained from the start, so that neither a chatty child nor a large
        // input blocks the other side.
        let outData = DataBox(), errData = DataBox()
        let group = DispatchGroup()
        for (fd, box) in [(outPipe.read, outData), (errPipe.read, errData)] {
            group.enter()
            DispatchQueue.global().async {
                let handle = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
                box.set(handle.readDataToEndOfFile())
                group.leave()
            }
        }
        let stdinHandle = FileHandle(fileDescriptor: inPipe.write, closeOnDealloc: true)
        if let input { try? stdinHandle.write(contentsOf: Data(input.utf8)) }
        try? stdinHandle.close()
        let deadline = Date().addingTimeInterval(timeout)
        var status: Int32 = 0
        var exited = false
        while !exited {
            let reaped = waitpid(pid, &status, WNOHANG)
            if reaped == pid {
                exited = true
            } else if reaped < 0 && errno != EINTR {
                // Someone else reaped it: its status is unknown, never a success.
                throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .ECHILD)
            } else if Date() >= deadline {
                kill(-pid, SIGTERM)
                usleep(200_000)
                if waitpid(pid, &status, WNOHANG) != pid {
                    kill(-pid, SIGKILL)
                    while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
                }
                kill(-pid, SIGKILL)  // whatever of the group outlived its leader
                exited = true
            } else {
                usleep(10_000)
            }
        }
        // Output that a background grandchild still holds open is not waited for long.
        _ = group.wait(timeout: .now() + 5)
        let code: Int32 = (status & 0x7f) == 0 ? (status >> 8) & 0xff : 128 + (status & 0x7f)
        return ProcessResult(status: code, stdout: String(decoding: outData.get(), as: UTF8.self), stderr: String(decoding: errData.get(), as: UTF8.self))
    }

    /// glibc's posix_spawn_file_actions_addclosefrom_np (2.34), declared for _GNU_SOURCE
    /// only, which Swift's Glibc module does not define.
    private static func posix_spawn_file_actions_addclosefrom(_ actions: UnsafeMutablePointer<posix_spawn_file_actions_t>, _ from: Int32) {
        typealias AddCloseFrom = @convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32
        guard let symbol = dlsym(dlopen(nil, RTLD_NOW), "posix_spawn_file_actions_addclosefrom_np") else {
            fatalError("posix_spawn_file_actions_addclosefrom_np is missing (glibc older than 2.34)")
        }
        _ = unsafeBitCast(symbol, to: AddCloseFrom.self)(actions, from)
    }

    private static func pipePair() throws -> (read: Int32, write: Int32) {
        var fds: [Int32] = [0, 0]
        guard pipe(&fds) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        // pipe2 is not in Swift's Glibc; nothing else in a test process spawns meanwhile.
        for fd in fds { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }
        return (fds[0], fds[1])
    }

    /// Runs a shell snippet with bash.
    @discardableResult
    package static func bash(_ script: String, timeout: TimeInterval = 120) throws -> ProcessResult {
        try run(["bash", "-c", script], timeout: timeout)
    }
}

/// `openssl s_client -connect 127.0.0.1:PORT ARGUMENTS`, saving the session to `sessionOut`
/// or resuming `sessionIn`; what it printed, stderr included.
///
/// s_client reads its stdin only once the handshake is done, and quits when it ends. A session
/// is saved when it arrives, in TLS 1.3 with a ticket after the handshake; so with
/// `sessionOut` stdin stays open until the file is written (10 s at most), not for a fixed
/// pause that a loaded machine or the AddressSanitizer build outlasts. A `sessionIn` that
/// does not exist throws: "not resumed" would then prove nothing.
package func sClient(port: Int, _ arguments: String, sessionOut: String? = nil, sessionIn: String? = nil) throws -> String {
    if let input = sessionIn, !FileManager.default.fileExists(atPath: input) { throw MissingSession(path: input) }
    var flags = arguments
    var hold = "sleep 0.3"
    if let out = sessionOut {
        try? FileManager.default.removeItem(atPath: out)
        flags += " -sess_out '\(out)'"
        hold = "i=0; while [ ! -s '\(out)' ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done; sleep 0.1"
    }
    if let input = sessionIn { flags += " -sess_in '\(input)'" }
    // A process substitution, not a pipe: bash waits for s_client alone, so a refused
    // handshake does not wait out the loop (which ends on its own, writing nowhere; its
    // stderr goes first, or the captured stderr stays open until it ends).
    return try Shell.bash("timeout 30 openssl s_client -connect 127.0.0.1:\(port) \(flags) 2>&1 < <(exec 2>/dev/null; \(hold))").stdout
}

package struct MissingSession: Error, CustomStringConvertible {
    package let path: String
    package var description: String { "no TLS session saved at \(self.path) to resume" }
}

final class DataBox: @unchecked Sendable {
    // Written once by a reader thread; read after it, or after a wait that timed out.
    private let lock = NSLock()
    private var data = Data()
    func set(_ d: Data) { self.lock.withLock { self.data = d } }
    func get() -> Data { self.lock.withLock { self.data } }
}

/// A temporary directory removed on deinit.
package final class TemporaryDirectory: @unchecked Sendable {
    package let path: String

    package init() {
        let base = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
        var template = Array("\(base)/edge-gateway-test-XXXXXX".utf8CString)
        let result = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        self.path = String(cString: result!)
    }

    deinit {
        try? FileManager.default.removeItem(atPath: self.path)
    }

    package func file(_ name: String) -> String { self.path + "/" + name }

    package func write(_ name: String, _ contents: String) throws {
        let target = self.file(name)
        try FileManager.default.createDirectory(atPath: (target as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try contents.write(toFile: target, atomically: false, encoding: .utf8)
    }
}

/// The directory that holds the built products (the edge-gateway binary).
package func productsDirectory() -> String {
    for bundle in Bundle.allBundles where bundle.bundlePath.hasSuffix(".xctest") {
        return (bundle.bundlePath as NSString).deletingLastPathComponent
    }
    let argv0 = CommandLine.arguments[0]
    var dir = (argv0 as NSString).deletingLastPathComponent
    while !dir.isEmpty && dir != "/" {
        if FileManager.default.fileExists(atPath: dir + "/edge-gateway") { return dir }
        dir = (dir as NSString).deletingLastPathComponent
    }
    return FileManager.default.currentDirectoryPath + "/.build/debug"
}

/// Path of the gateway binary built with the tests.
package func gatewayBinary() -> String { productsDirectory() + "/edge-gateway" }

/// 127.0.0.1:`port` as a socket address.
package func loopbackAddress(port: Int) -> sockaddr_in {
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = in_port_t(UInt16(port).bigEndian)
    return addr
}

/// A socket listening on 127.0.0.1:`port` (the caller closes it), or -1.
package func listeningSocket(port: Int) -> CInt {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = loopbackAddress(port: port)
    let bound = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard bound == 0, listen(fd, 8) == 0 else {
        close(fd)
        return -1
    }
    return fd
}

/// A free TCP port on loopback (bound and released; good enough for tests that start processes).
package func freePort() -> Int {
    // Never the same port twice in one run: the kernel may hand a port just closed out
    // again, and a test that asked for three backends got two on one port (the second
    // upstream could not bind, and its health checks saw the first).
    for _ in 0..<50 {
        let port = kernelChosenPort()
        if handedOutPorts.withLockedValue({ $0.insert(port).inserted }) { return port }
    }
    return kernelChosenPort()
}

private let handedOutPorts = NIOLockedValueBox(Set<Int>())

private func kernelChosenPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = loopbackAddress(port: 0)
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// A TCP socket connected to 127.0.0.1:`port` (the caller closes it), or -1.
package func connectedSocket(port: Int) -> CInt {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    var addr = loopbackAddress(port: port)
    let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
    guard rc == 0 else {
        close(fd)
        return -1
    }
    return fd
}

/// Sends raw bytes to a loopback port and reads until EOF or `timeout`.
package func rawExchange(port: Int, send data: [UInt8], timeout: Double = 5) -> (response: String, closed: Bool) {
    let fd = connectedSocket(port: port)
    guard fd >= 0 else { return ("connect failed", true) }
    defer { close(fd) }
    var tv = timeval(tv_sec: Int(timeout), tv_usec: Int((timeout - Double(Int(timeout))) * 1e6))
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    var offset = 0
    while offset < data.count {
        let n = data.withUnsafeBytes { send(fd, $0.baseAddress! + offset, data.count - offset, Int32(MSG_NOSIGNAL)) }
        if n <= 0 { break }
        offset += n
    }
    var received: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    var closed = false
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n == 0 { closed = true; break }
        if n < 0 { break }  // timeout: still open
        received.append(contentsOf: buffer[0..<n])
    }
    return (String(decoding: received, as: UTF8.self), closed)
}

/// Whether this process runs under AddressSanitizer (scripts/sanitizers.sh): freed memory
/// waits in its quarantine and every allocation has shadow memory, so resident memory
/// says nothing about what the code under test holds.
package var underAddressSanitizer: Bool { dlsym(nil, "__asan_init") != nil }

/// Resident memory figures of a process, in KiB.
package func memoryOf(pid: Int32) -> (rss: Int, peak: Int) {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return (0, 0) }
    func field(_ name: String) -> Int {
        for line in text.split(separator: "\n") where line.hasPrefix(name + ":") {
            return Int(line.split(separator: " ").dropFirst().first { !$0.isEmpty }.map { $0.trimmingCharacters(in: .whitespaces) } ?? "0") ?? 0
        }
        return 0
    }
    return (field("VmRSS"), field("VmHWM"))
}

/// The repository root (for scripts under Tests/tools).
package func repositoryRoot(file: String = #filePath) -> String {
    var dir = (file as NSString).deletingLastPathComponent
    while !dir.isEmpty && dir != "/" {
        if FileManager.default.fileExists(atPath: dir + "/Package.swift") { return dir }
        dir = (dir as NSString).deletingLastPathComponent
    }
    return FileManager.default.currentDirectoryPath
}

/// Serial number (upper-case hex) of the certificate served for `serverName`, or nil when the handshake fails.
package func servedSerial(port: Int, serverName: String?, extra: [String] = []) -> String? {
    var args = ["openssl", "s_client", "-connect", "127.0.0.1:\(port)"] + extra
    if let serverName { args += ["-servername", serverName] } else { args += ["-noservername"] }
    guard let result = try? Shell.run(args, input: "", timeout: 10) else { return nil }
    guard let start = result.stdout.range(of: "-----BEGIN CERTIFICATE-----"),
          let end = result.stdout.range(of: "-----END CERTIFICATE-----") else { return nil }
    let pem = String(result.stdout[start.lowerBound..<end.upperBound])
    guard let serial = try? Shell.run(["openssl", "x509", "-noout", "-serial"], input: pem + "\n") else { return nil }
    let text = serial.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    return text.hasPrefix("serial=") ? String(text.dropFirst(7)) : nil
}

/// Polls (bounded) until `condition` holds; returns whether it did.
package func eventually(timeout: TimeInterval = 10, interval: TimeInterval = 0.05, _ condition: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if condition() { return true }
        Thread.sleep(forTimeInterval: interval)
    }
    return condition()
}

/// Sleeps the calling thread (usable from async tests that drive external processes).
package func pause(_ seconds: Double) {
    usleep(UInt32(seconds * 1_000_000))
}

/// The sum of every series of the metric `name` on the admin endpoint at `admin`
/// (`edge_requests_total` over listeners and classes, say); nil when the scrape fails or
/// has no such series; with `label` (`listener="https"`, say), only the series whose
/// labels include it. What a test waits on instead of a pause: requests answered,
/// events read.
package func metricSum(_ name: String, admin: Int, labelled label: String? = nil) -> Double? {
    guard let text = try? Shell.run(["curl", "-sS", "--max-time", "5", "http://127.0.0.1:\(admin)/metrics"]).stdout else { return nil }
    let values = text.split(separator: "\n").filter { $0.hasPrefix(name + " ") || $0.hasPrefix(name + "{") }
        .filter { label.map($0.contains) ?? true }
        .compactMap { Double($0.split(separator: " ").last ?? "") }
    return values.isEmpty ? nil : values.reduce(0, +)
}

/// Where the load scripts keep their stop and progress files: a subdirectory of the test's
/// directory that no certificate source watches.
private func loadDirectory(_ directory: TemporaryDirectory) -> String {
    let path = directory.file("loads")
    try? FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// `metricSum`, scraped until the scrape succeeds (five seconds at most): a baseline that a
/// test waits to see grow must not read as 0 because one scrape failed.
package func scrapedMetric(_ name: String, admin: Int) -> Double? {
    var value: Double?
    _ = eventually(timeout: 5) {
        value = metricSum(name, admin: admin)
        return value != nil
    }
    return value
}

/// Tests/tools/tls_load.py in the background: one keep-alive HTTPS connection plus a loop of
/// new handshakes against `port`, until `finish()`.
package final class TLSLoad {
    private let process = Process()
    private let output = Pipe()
    private let stopFile: String

    package init(port: Int, caFile: String, directory: TemporaryDirectory, limitSeconds: Int = 240, serverName: String = "localhost") throws {
        // In a directory of its own: the progress file is rewritten every 20 ms, and the
        // test directory is often the parent of a watched certificate directory.
        self.stopFile = loadDirectory(directory) + "/stop-load"
        self.process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        self.process.arguments = [repositoryRoot() + "/Tests/tools/tls_load.py", "\(port)", caFile, self.stopFile, "\(limitSeconds)", serverName]
        self.process.standardOutput = self.output
        try self.process.run()
    }

    package struct Stats {
        package var keepAliveOK: Int
        package var keepAliveErrors: [String]
        package var handshakesOK: Int
        package var handshakeErrors: [String]
        /// Certificate fingerprints seen by new handshakes, with counts.
        package var certificates: [String: Int]
    }

    /// Waits until both parts of the load have succeeded `count` times (the script's
    /// progress file): the keep-alive connection is open and serving, and new handshakes
    /// complete. A test acts on a load under way, not after a guessed pause.
    package func waitForSuccesses(_ count: Int = 1, timeout: TimeInterval = 10) -> Bool {
        eventually(timeout: timeout, interval: 0.02) {
            let parts = ((try? String(contentsOfFile: self.stopFile + ".progress", encoding: .utf8)) ?? "").split(separator: " ").compactMap { Int($0) }
            return parts.count == 2 && parts.allSatisfy { $0 >= count }
        }
    }

    /// Stops the load and returns what it saw.
    package func finish() throws -> Stats {
        _ = FileManager.default.createFile(atPath: self.stopFile, contents: nil)
        self.process.waitUntilExit()
        let object = try JSONSerialization.jsonObject(with: self.output.fileHandleForReading.readDataToEndOfFile()) as! [String: Any]
        return Stats(
            keepAliveOK: object["keepalive_ok"] as? Int ?? 0,
            keepAliveErrors: object["keepalive_errors"] as? [String] ?? ["no report"],
            handshakesOK: object["handshakes_ok"] as? Int ?? 0,
            handshakeErrors: object["handshake_errors"] as? [String] ?? ["no report"],
            certificates: object["serials"] as? [String: Int] ?? [:]
        )
    }
}

/// Tests/tools/http_load.py in the background: keep-alive HTTP load with timed failures.
package final class HTTPLoad {
    private let process = Process()
    private let output = Pipe()
    private let stopFile: String

    package init(port: Int, threads: Int, directory: TemporaryDirectory, path: String = "/", limitSeconds: Int = 120, newConnectionPerRequest: Bool = false) throws {
        self.stopFile = loadDirectory(directory) + "/stop-http-load-\(port)-\(newConnectionPerRequest)"
        self.process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        self.process.arguments = [repositoryRoot() + "/Tests/tools/http_load.py", "\(port)", "\(threads)", self.stopFile, "\(limitSeconds)", path,
                                  newConnectionPerRequest ? "close" : "keepalive"]
        self.process.standardOutput = self.output
        try self.process.run()
    }

    /// Waits until the load has had `count` successful requests (the script's progress
    /// file): a test acts on a load under way, not after a guessed pause.
    package func waitForSuccesses(_ count: Int, timeout: TimeInterval = 10) -> Bool {
        eventually(timeout: timeout, interval: 0.02) { self.successes >= count }
    }

    /// Successful requests so far, as the script last reported them (every 20 ms).
    package var successes: Int {
        Int((try? String(contentsOfFile: self.stopFile + ".progress", encoding: .utf8)) ?? "") ?? 0
    }

    /// Stops the load; returns the successes and each failure with its Unix time.
    package func finish() throws -> (ok: Int, errors: [(time: Double, message: String)]) {
        _ = FileManager.default.createFile(atPath: self.stopFile, contents: nil)
        self.process.waitUntilExit()
        let object = try JSONSerialization.jsonObject(with: self.output.fileHandleForReading.readDataToEndOfFile()) as! [String: Any]
        let errors = (object["errors"] as? [[Any]] ?? []).map { ($0[0] as? Double ?? 0, $0[1] as? String ?? "?") }
        return (object["ok"] as? Int ?? 0, errors)
    }

    deinit {
        if self.process.isRunning { self.process.terminate() }
    }
}

/// Sends and fetches 64 MiB through an HTTPS `port` with curl (`flags`, e.g. `--http2`) and
/// returns what differs from the expectation: upload hash, echo hash, download size. Empty when intact.
package func largeBodyProblems(port: Int, caFile: String, directory: TemporaryDirectory, flags: String = "") throws -> [String] {
    let file = directory.file("upload.bin")
    try Shell.run(["bash", "-c", "head -c 67108864 /dev/urandom > '\(file)'"])
    func run(_ script: String) throws -> String { try Shell.bash(script).stdout.trimmingCharacters(in: .whitespacesAndNewlines) }
    let curl = "curl -sS \(flags) --cacert '\(caFile)'"
    let expected = try run("sha256sum '\(file)' | cut -c1-64")
    var problems: [String] = []
    let upload = try run("\(curl) --data-binary @'\(file)' https://localhost:\(port)/sha256")
    if upload != expected { problems.append("upload hashed \(upload), sent \(expected)") }
    // Streamed both ways at once (chunked upload, echoed back).
    let echo = try run("\(curl) -H 'Transfer-Encoding: chunked' --data-binary @'\(file)' https://localhost:\(port)/echo | sha256sum | cut -c1-64")
    if echo != expected { problems.append("echo hashed \(echo), sent \(expected)") }
    let download = try run("\(curl) 'https://localhost:\(port)/bytes?n=67108864' | wc -c")
    if download != "67108864" { problems.append("download was \(download) bytes") }
    return problems
}
