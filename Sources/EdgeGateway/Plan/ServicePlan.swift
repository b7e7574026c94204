import EdgeCertificates
import EdgeProxy
import EdgeTLS
import Logging
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

extension PlanBuilder {
    /// Session-ticket settings and, with `key_file`, its keys: parsed here, installed by
    /// `start`, so a rejected reload (or `check`) leaves the live keys as they are.
    mutating func sessionTickets(_ settings: SessionTicketsConfig?) -> (SessionTicketsConfig, [TicketKey]?) {
        var tickets = settings ?? SessionTicketsConfig()
        tickets.keyFile = tickets.keyFile.map(resolve)
        // Validating has no side effects: the keys are parsed now and installed by `start`,
        // so a rejected reload (or `check`) leaves the live keys as they are.
        var ticketKeys: [TicketKey]?
        if let file = tickets.keyFile {
            do {
                ticketKeys = try TicketKeyRing.parse(keyFile: try readTextFile(file))
            } catch {
                problems.append("session_tickets.key_file: \(file): \(Gateway.reason(error))")
            }
        } else if tickets.rotateEvery.nanoseconds < 60_000_000_000 {
            problems.append("session_tickets.rotate_every: must be at least 1m")
        }
        return (tickets, ticketKeys)
    }

    /// The access log to open when the generation starts, its path checked for writing.
    mutating func accessLog() -> (path: String, format: AccessLogFile.Format)? {
        var accessLogPlan: (path: String, format: AccessLogFile.Format)?
        if let log = config.accessLog {
            let path = AccessLogFile.isStandardOutput(log.path) ? log.path : resolve(log.path)
            do {
                try AccessLogFile.checkWritable(path: path)
                accessLogPlan = (path, log.format)
            } catch {
                problems.append("access_log.path: \(error)")
            }
        }
        return accessLogPlan
    }

    /// `ocsp.cache_dir`, looked at without creating it: when it exists it must be a
    /// directory this process can write (it is created at the first response otherwise).
    mutating func checkOCSPCacheDirectory() {
        guard let dir = config.ocsp.cacheDir else { return }
        let path = resolve(dir)
        var st = stat()
        guard stat(path, &st) == 0 else { return }
        if (st.st_mode & S_IFMT) != S_IFDIR {
            problems.append("ocsp.cache_dir: \(path) is not a directory")
        } else if access(path, W_OK | X_OK) != 0 {
            problems.append("ocsp.cache_dir: \(path): \(String(cString: strerror(errno))) (the gateway keeps verified OCSP responses there)")
        }
    }

    /// The admin endpoint's address: loopback unless explicitly opened.
    mutating func adminAddress() -> SocketAddress {
        var adminAddress = try! SocketAddress(ipAddress: "127.0.0.1", port: 9901)
        do {
            let (host, port) = try parseAddress(config.admin.address)
            adminAddress = try SocketAddress.makeAddressResolvingHost(host, port: port)
            let loopback = isLoopbackHost(host)
            if !loopback && !config.admin.allowNonLoopback {
                problems.append("admin.address: '\(config.admin.address)' is not a loopback address; set admin.allow_non_loopback: true to expose the admin endpoint")
            } else if !loopback {
                logger.warning("admin endpoint bound beyond loopback", metadata: ["address": "\(config.admin.address)"])
            }
        } catch {
            problems.append("admin.address: \(Gateway.reason(error))")
        }
        for (key, value) in [("header", config.admin.timeouts.header), ("idle", config.admin.timeouts.idle)] where value.nanoseconds <= 0 {
            problems.append("admin.timeouts.\(key): must be more than 0 (every admin connection would be closed at once)")
        }
        return adminAddress
    }
}
