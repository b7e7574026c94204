import EdgeTLS
import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// certbot's renewal files as last read, re-read only when one changes.
///
/// Reports are built for every status request and metrics scrape, on the admin endpoint's
/// event loop: a file is looked at with one `stat` and parsed again only when its inode,
/// size or modification time moved, so an edit counts at the next look. A read that fails
/// for a passing reason (out of descriptors, a permission being changed) keeps the last
/// good reading rather than letting the state flap.
package final class CertbotRenewalFiles: Sendable {
    package static let shared = CertbotRenewalFiles()

    /// What is known of one lineage's file.
    package enum Reading: Sendable, Hashable {
        case read(CertbotRenewalConfig)
        /// No such file: `certbot renew` does not renew the lineage.
        case missing(path: String)
        /// The file is there but could not be read, and never was: the schedule is unknown.
        case unreadable(path: String, reason: String)
    }

    private struct Stamp: Hashable {
        var device: UInt64, inode: UInt64, size: Int64, seconds: Int, nanoseconds: Int
    }

    private let cache = NIOLockedValueBox<[String: (stamp: Stamp, config: CertbotRenewalConfig)]>([:])

    package init() {}

    package func reading(liveDirectory: String, lineage: String) -> Reading {
        let path = CertbotRenewalConfig.path(liveDirectory: liveDirectory, lineage: lineage)
        var info = stat()
        guard stat(path, &info) == 0 else {
            let code = errno
            if code == ENOENT || code == ENOTDIR {
                self.cache.withLockedValue { $0[path] = nil }
                return .missing(path: path)
            }
            return self.lastGood(path) ?? .unreadable(path: path, reason: String(cString: strerror(code)))
        }
        let stamp = Stamp(device: UInt64(info.st_dev), inode: UInt64(info.st_ino), size: Int64(info.st_size),
                          seconds: info.st_mtim.tv_sec, nanoseconds: info.st_mtim.tv_nsec)
        if let cached = self.cache.withLockedValue({ $0[path] }), cached.stamp == stamp { return .read(cached.config) }
        do {
            // A renewal file is a few hundred bytes; 64 KiB is no certbot's.
            let bytes = try readRegularFile(path, limit: 64 << 10)
            let config = CertbotRenewalConfig(parsing: String(decoding: bytes, as: UTF8.self))
            self.cache.withLockedValue { $0[path] = (stamp, config) }
            return .read(config)
        } catch let error as FileReadError {
            let reason = info.st_size > 64 << 10 ? "larger than 64 KiB: not a certbot renewal file" : error.reason
            return self.lastGood(path) ?? .unreadable(path: path, reason: reason)
        } catch {
            return self.lastGood(path) ?? .unreadable(path: path, reason: "\(error)")
        }
    }

    private func lastGood(_ path: String) -> Reading? {
        self.cache.withLockedValue { $0[path] }.map { .read($0.config) }
    }
}
