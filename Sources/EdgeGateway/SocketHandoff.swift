import CSocketShims
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// Zero-downtime restart by handing listening sockets to the next process (as HAProxy's
/// `expose-fd listeners` and Envoy's hot restart do).
///
/// A running gateway with `handoff_socket` set serves that Unix socket. A new gateway
/// started with the same setting connects first and asks for the listening sockets; the
/// old process sends them with SCM_RIGHTS, stops accepting (the sockets stay open, so new
/// connections wait in the kernel's accept queue) and says `PAUSED`; the new process
/// serves on them and says `DRAIN`, and the old one drains as on SIGTERM. Only one process
/// accepts at any time and the sockets are never closed in between: no connection is
/// refused or reset. If the new process goes away before `DRAIN`, the old one accepts again.
///
/// The socket hands out every listening socket, so both ends check who is at the other
/// (`SO_PEERCRED`: the same user, or root), the socket is mode 0600 from the moment its
/// name exists, and every read has a timeout: a peer that connects and says nothing
/// cannot hold the handoff thread.
enum SocketHandoff {
    /// How long the running process waits for a connected peer's request: a new gateway
    /// sends it at once, and a peer that says nothing must not delay a real takeover.
    static let requestTimeoutSeconds = 2
    /// How long the new process waits for the sockets and for `PAUSED`.
    static let replyTimeoutSeconds = 10
    struct Inherited {
        /// Listener name → (address text, descriptor).
        var sockets: [String: (address: String, fd: CInt)]
        /// The connection to the previous process, for `DRAIN`.
        var connection: CInt
    }

    /// Asks a running gateway for its listening sockets; nil when none answers.
    static func takeOver(path: String, logger: Logger) -> Inherited? {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        guard connectUnix(fd, path: path) else {
            close(fd)
            return nil
        }
        if let refusal = peerRefusal(fd) {
            logger.warning("not taking sockets from the process at the handoff socket", metadata: ["handoff_socket": "\(path)", "reason": "\(refusal)"])
            close(fd)
            return nil
        }
        setReadTimeout(fd, seconds: Self.replyTimeoutSeconds)
        guard writeAll(fd, "LISTENERS\n") else {
            close(fd)
            return nil
        }
        var payload = [UInt8](repeating: 0, count: 65536)
        var fds = [CInt](repeating: -1, count: 64)
        let (bytes, count) = receive(fd, into: &payload, fds: &fds)
        guard bytes > 0 else {
            close(fd)
            return nil
        }
        // The old process stops accepting before we start: one acceptor at a time.
        var reply = [UInt8](repeating: 0, count: 16)
        let n = read(fd, &reply, reply.count)
        guard n > 0, String(decoding: reply[0..<n], as: UTF8.self).hasPrefix("PAUSED") else {
            logger.warning("the running gateway did not pause accepting; starting without its sockets", metadata: ["handoff_socket": "\(path)"])
            for index in 0..<count { close(fds[index]) }
            close(fd)
            return nil
        }
        // One line per socket: name, tab, address; in the order of the descriptors.
        let lines = String(decoding: payload[0..<bytes], as: UTF8.self).split(separator: "\n")
        var sockets: [String: (String, CInt)] = [:]
        for (index, line) in lines.enumerated() where index < count {
            let parts = line.split(separator: "\t", maxSplits: 1).map(String.init)
            guard parts.count == 2 else { continue }
            sockets[parts[0]] = (parts[1], fds[index])
        }
        logger.notice("took over listening sockets from the running gateway", metadata: [
            "handoff_socket": "\(path)", "sockets": "\(sockets.keys.sorted())",
        ])
        return Inherited(sockets: sockets, connection: fd)
    }

    /// Tells the previous process to drain and exit.
    static func releasePrevious(_ inherited: Inherited) {
        _ = writeAll(inherited.connection, "DRAIN\n")
        close(inherited.connection)
    }

    /// Serves `path` on a thread of its own: hands out `sockets()` and drains on request.
    final class Server: @unchecked Sendable {
        private let fd: CInt
        private let path: String
        private let thread: Thread
        private let stopped = NIOLockedValueBox(false)

        init(path: String, sockets: @escaping @Sendable () -> [(name: String, address: String, fd: CInt)],
             pause: @escaping @Sendable () -> Void, resume: @escaping @Sendable () -> Void,
             drain: @escaping @Sendable () -> Void, logger: Logger) throws {
            // Bound under a temporary name, made 0600, then renamed into place: the
            // handoff socket's name never exists with a wider mode.
            let temporary = "\(path).\(getpid()).tmp"
            unlink(temporary)
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0, bindUnix(fd, path: temporary), chmod(temporary, 0o600) == 0, listen(fd, 4) == 0,
                  rename(temporary, path) == 0 else {
                let reason = String(cString: strerror(errno))
                if fd >= 0 { close(fd) }
                unlink(temporary)
                throw ConfigError(path: "handoff_socket", message: "cannot listen on \(path): \(reason)")
            }
            self.fd = fd
            self.path = path
            let stopped = self.stopped
            self.thread = Thread {
                while !stopped.withLockedValue({ $0 }) {
                    let client = accept(fd, nil, nil)
                    if client < 0 {
                        if errno == EINTR { continue }
                        return
                    }
                    if let refusal = SocketHandoff.peerRefusal(client) {
                        logger.warning("handoff socket: refused a connection", metadata: ["reason": "\(refusal)"])
                        close(client)
                        continue
                    }
                    SocketHandoff.setReadTimeout(client, seconds: SocketHandoff.requestTimeoutSeconds)
                    var buffer = [UInt8](repeating: 0, count: 64)
                    let n = read(client, &buffer, buffer.count)
                    guard n > 0, String(decoding: buffer[0..<n], as: UTF8.self).hasPrefix("LISTENERS") else {
                        close(client)
                        continue
                    }
                    let list = sockets()
                    let text = list.map { "\($0.name)\t\($0.address)" }.joined(separator: "\n")
                    send(client, text, fds: list.map(\.fd))
                    pause()
                    _ = write(client, "PAUSED\n", 7)
                    logger.notice("handed listening sockets to a new gateway process; not accepting meanwhile", metadata: ["sockets": "\(list.map(\.name))"])
                    // Wait for the new process to be ready, then drain. No timeout: accepting
                    // again while the new process is still starting would leave two
                    // acceptors once it is up; its exit (EOF) is what resumes this one.
                    SocketHandoff.setReadTimeout(client, seconds: 0)
                    let m = read(client, &buffer, buffer.count)
                    close(client)
                    if m > 0, String(decoding: buffer[0..<m], as: UTF8.self).hasPrefix("DRAIN") {
                        logger.notice("the new gateway process is serving; draining this one")
                        drain()
                        return
                    }
                    resume()
                    logger.warning("the new gateway process went away before taking over; accepting again")
                }
            }
            self.thread.name = "edge-gateway-handoff"
            self.thread.start()
        }

        func stop() {
            self.stopped.withLockedValue { $0 = true }
            shutdown(self.fd, Int32(SHUT_RDWR))
            close(self.fd)
        }
    }

    // MARK: plumbing

    /// Why the process at the other end of a Unix socket may not take part in a handoff
    /// (nil: it runs as this process's user, or as root).
    fileprivate static func peerRefusal(_ fd: CInt) -> String? {
        var credentials = [Int32](repeating: -1, count: 3)  // struct ucred: pid, uid, gid
        var length = socklen_t(MemoryLayout<Int32>.size * 3)
        guard getsockopt(fd, SOL_SOCKET, edge_SO_PEERCRED(), &credentials, &length) == 0 else {
            return "cannot read the peer's credentials: \(String(cString: strerror(errno)))"
        }
        let uid = uid_t(bitPattern: credentials[1])
        if uid == geteuid() || uid == 0 { return nil }
        return "peer process \(credentials[0]) runs as uid \(uid), not \(geteuid())"
    }

    fileprivate static func setReadTimeout(_ fd: CInt, seconds: Int) {
        var timeout = timeval(tv_sec: seconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    private static func withUnixAddress<T>(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
    }

    private static func connectUnix(_ fd: CInt, path: String) -> Bool {
        withUnixAddress(path) { connect(fd, $0, $1) == 0 } ?? false
    }

    fileprivate static func bindUnix(_ fd: CInt, path: String) -> Bool {
        withUnixAddress(path) { bind(fd, $0, $1) == 0 } ?? false
    }

    private static func writeAll(_ fd: CInt, _ text: String) -> Bool {
        let bytes = Array(text.utf8)
        return bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) == bytes.count }
    }

    /// Runs `body` with a one-buffer `msghdr` over `payload` and a control buffer for `fdCount` descriptors.
    private static func withMessage<T>(_ payload: inout [UInt8], fdCount: Int, _ body: (inout msghdr) -> T) -> T {
        var control = [UInt8](repeating: 0, count: edge_CMSG_SPACE(fdCount * MemoryLayout<CInt>.size))
        return payload.withUnsafeMutableBytes { data in
            control.withUnsafeMutableBytes { controlBuffer in
                var vector = iovec(iov_base: data.baseAddress, iov_len: data.count)
                return withUnsafeMutablePointer(to: &vector) { vectorPointer in
                    var message = msghdr()
                    message.msg_iov = vectorPointer
                    message.msg_iovlen = 1
                    message.msg_control = controlBuffer.baseAddress
                    message.msg_controllen = controlBuffer.count
                    return body(&message)
                }
            }
        }
    }

    /// One message: `text` plus `fds` as SCM_RIGHTS.
    fileprivate static func send(_ socket: CInt, _ text: String, fds: [CInt]) {
        var payload = Array(text.utf8)
        if payload.isEmpty { payload = [0] }
        let fdBytes = fds.count * MemoryLayout<CInt>.size
        withMessage(&payload, fdCount: fds.count) { message in
            if let header = edge_CMSG_FIRSTHDR(&message) {
                header.pointee.cmsg_level = SOL_SOCKET
                header.pointee.cmsg_type = edge_SCM_RIGHTS()
                header.pointee.cmsg_len = edge_CMSG_LEN(fdBytes)
                let data = UnsafeMutableRawPointer(edge_CMSG_DATA(header)!)
                for (i, fd) in fds.enumerated() { data.storeBytes(of: fd, toByteOffset: i * MemoryLayout<CInt>.size, as: CInt.self) }
            }
            _ = sendmsg(socket, &message, 0)
        }
    }

    /// Receives one message and up to `fds.count` descriptors; returns (bytes, descriptors).
    private static func receive(_ socket: CInt, into payload: inout [UInt8], fds: inout [CInt]) -> (Int, Int) {
        var received = 0
        var count = 0
        let capacity = fds.count
        var found: [CInt] = []
        withMessage(&payload, fdCount: capacity) { message in
            received = recvmsg(socket, &message, Int32(MSG_CMSG_CLOEXEC))
            guard received > 0, let header = edge_CMSG_FIRSTHDR(&message),
                  header.pointee.cmsg_level == SOL_SOCKET, header.pointee.cmsg_type == edge_SCM_RIGHTS() else { return }
            count = (Int(header.pointee.cmsg_len) - edge_CMSG_LEN(0)) / MemoryLayout<CInt>.size
            let data = UnsafeRawPointer(edge_CMSG_DATA(header)!)
            for i in 0..<min(count, capacity) {
                found.append(data.load(fromByteOffset: i * MemoryLayout<CInt>.size, as: CInt.self))
            }
        }
        for (i, fd) in found.enumerated() { fds[i] = fd }
        return (max(0, received), count)
    }
}

/// A listening TCP socket made by hand, so its descriptor can be handed over later.
func makeListeningSocket(_ address: SocketAddress, backlog: Int32 = 1024) throws -> CInt {
    let family: Int32 = address.protocol == .inet6 ? AF_INET6 : AF_INET
    let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
    guard fd >= 0 else { throw SocketCallError(call: "socket", code: errno) }
    var one: CInt = 1
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<CInt>.size))
    let bound = address.withSockAddr { bind(fd, $0, socklen_t($1)) }
    guard bound == 0 else {
        let code = errno
        close(fd)
        throw SocketCallError(call: "bind", code: code)
    }
    guard listen(fd, backlog) == 0 else {
        let code = errno
        close(fd)
        throw SocketCallError(call: "listen", code: code)
    }
    return fd
}

/// A failed socket call, as operators read it: "bind: Address already in use (errno 98)".
/// (NIO's `IOError` prints a stray parenthesis in this NIO version.)
struct SocketCallError: Error, CustomStringConvertible {
    let call: String
    let code: CInt

    var description: String { "\(self.call): \(String(cString: strerror(self.code))) (errno \(self.code))" }
}
