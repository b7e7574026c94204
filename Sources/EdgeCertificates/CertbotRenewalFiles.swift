import EdgeTLS
import NIOConcurrencyHelpers
#if canImport(Glibc)
import Glibc
#endif

/// certbot's renewal files (and the pod annotations a Kubernetes source names) as last
/// read, re-read only when one changes.
///
/// Reports are built for every status request and metrics scrape, on the admin endpoint's
/// event loop: a file is looked at with one `stat` and parsed again only when its inode,
/// size or modification time moved, so an edit counts at the next look. A read that fails
/// for a passing reason (out of descriptors, a permission being changed) keeps the last
/// good reading rather than letting the state flap.
package final class CertbotRenewalFiles: Sendable {
    package static let shared = CertbotRenewalFiles()

    /// What is known of one file.
    package enum FileReading<Value: Sendable & Hashable>: Sendable, Hashable {
        case read(Value)
        /// No such file: for certbot's, `certbot renew` does not renew the lineage.
        case missing(path: String)
        /// The file is there but could not be read, and never was: the schedule is unknown.
        case unreadable(path: String, reason: String)
    }

    package typealias Reading = FileReading<CertbotRenewalConfig>

    private let renewalFiles = StampedReads<CertbotRenewalConfig>()
    private let annotationFiles = StampedReads<PodAnnotations>()

    package init() {}

    package func reading(liveDirectory: String, lineage: String) -> Reading {
        let path = CertbotRenewalConfig.path(liveDirectory: liveDirectory, lineage: lineage)
        // A renewal file is a few hundred bytes; 64 KiB is no certbot's.
        return self.renewalFiles.read(path, tooLarge: "larger than 64 KiB: not a certbot renewal file") { CertbotRenewalConfig(parsing: $0) }
    }

    /// The downward API's annotations file at `path` (Kubernetes caps an object's
    /// annotations at 256 KiB; quoted, as the kubelet writes them, they can grow up to four
    /// times in the worst case).
    package func annotations(path: String) -> FileReading<PodAnnotations> {
        self.annotationFiles.read(path, limit: 1 << 20, tooLarge: "larger than 1 MiB: not a downward API annotations file") { PodAnnotations(parsing: $0) }
    }
}

/// Parsed files keyed by path, with what `stat` said of each when it was parsed.
private final class StampedReads<Value: Sendable & Hashable>: Sendable {
    private struct Stamp: Hashable {
        var device: UInt64, inode: UInt64, size: Int64, seconds: Int, nanoseconds: Int
    }

    private let cache = NIOLockedValueBox<[String: (stamp: Stamp, value: Value)]>([:])

    func read(_ path: String, limit: Int = 64 << 10, tooLarge: String, parse: (String) -> Value) -> CertbotRenewalFiles.FileReading<Value> {
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
        if let cached = self.cache.withLockedValue({ $0[path] }), cached.stamp == stamp { return .read(cached.value) }
        do {
            let bytes = try readRegularFile(path, limit: limit)
            let value = parse(String(decoding: bytes, as: UTF8.self))
            self.cache.withLockedValue { $0[path] = (stamp, value) }
            return .read(value)
        } catch let error as FileReadError {
            return self.lastGood(path) ?? .unreadable(path: path, reason: info.st_size > limit ? tooLarge : error.reason)
        } catch {
            return self.lastGood(path) ?? .unreadable(path: path, reason: "\(error)")
        }
    }

    private func lastGood(_ path: String) -> CertbotRenewalFiles.FileReading<Value>? {
        self.cache.withLockedValue { $0[path] }.map { .read($0.value) }
    }
}
