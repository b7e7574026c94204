#if canImport(Glibc)
import Glibc
#endif

/// Why a file the gateway reads (a certificate, a key, a CA bundle) could not be read.
package struct FileReadError: Error, CustomStringConvertible, Sendable, Hashable {
    package var path: String
    package var reason: String
    package var description: String { "\(self.path): \(self.reason)" }
}

/// The largest certificate, key or CA bundle file read: far above any real PEM
/// (a CA bundle of every public root is about 200 KiB).
package let maxPEMFileBytes = 1 << 20

/// Reads a whole regular file without ever blocking.
///
/// A watched directory is writable by others (certbot, a secret mount, an operator),
/// and a FIFO or a device named `site.crt` must not stop the thread that reads it:
/// the file is opened non-blocking (a FIFO with no writer opens at once), its type
/// checked before and after opening (no read from a FIFO, device, socket or directory),
/// and its size capped before a byte is read.
package func readRegularFile(_ path: String, limit: Int = maxPEMFileBytes) throws -> [UInt8] {
    var info = stat()
    // stat first, so a device or FIFO is refused without being opened at all.
    if stat(path, &info) != 0 { throw FileReadError(path: path, reason: describeErrno(errno)) }
    try checkRegular(info, path: path, limit: limit)
    let fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
    guard fd >= 0 else { throw FileReadError(path: path, reason: describeErrno(errno)) }
    defer { close(fd) }
    // fstat again: the name may have been replaced between stat and open.
    guard fstat(fd, &info) == 0 else { throw FileReadError(path: path, reason: describeErrno(errno)) }
    try checkRegular(info, path: path, limit: limit)
    var result: [UInt8] = []
    result.reserveCapacity(Int(info.st_size))
    var chunk = [UInt8](repeating: 0, count: 16_384)
    while true {
        let n = read(fd, &chunk, chunk.count)
        if n < 0 {
            if errno == EINTR { continue }
            throw FileReadError(path: path, reason: describeErrno(errno))
        }
        if n == 0 { break }
        result.append(contentsOf: chunk[0..<n])
        if result.count > limit {
            throw FileReadError(path: path, reason: "grew past \(limit) bytes while being read")
        }
    }
    return result
}

private func checkRegular(_ info: stat, path: String, limit: Int) throws {
    let kind: String
    switch info.st_mode & S_IFMT {
    case S_IFREG:
        if Int(info.st_size) > limit {
            throw FileReadError(path: path, reason: "is \(info.st_size) bytes; a certificate, key or CA file may hold at most \(limit)")
        }
        return
    case S_IFIFO: kind = "a FIFO"
    case S_IFCHR: kind = "a character device"
    case S_IFBLK: kind = "a block device"
    case S_IFSOCK: kind = "a socket"
    case S_IFDIR: kind = "a directory"
    default: kind = "not a regular file"
    }
    throw FileReadError(path: path, reason: "is \(kind), not a regular file; not read")
}

private func describeErrno(_ code: Int32) -> String {
    if code == ELOOP { return "too many levels of symbolic links (a symlink loop?)" }
    return String(cString: strerror(code))
}
