import EdgeTLS
#if canImport(Glibc)
import Glibc
#endif

/// Where certificate lineages come from.
package enum CertificateSource: Sendable, Hashable {
    /// One explicit pair: a chain PEM (leaf first) and a key PEM (may be the same file).
    case pair(name: String, certificate: String, key: String)
    /// A certbot `live/` directory (or the config directory holding `live/`): every `live/<name>/` is a lineage.
    case certbot(String)
    /// A Kubernetes secret volume: `tls.crt` and `tls.key` behind `..data`.
    case kubernetes(String)
    /// A plain directory: `<name>.crt` + `<name>.key`, or one `<name>.pem` with chain and key.
    case directory(String)

    package var description: String {
        switch self {
        case .pair(_, let cert, _): return cert
        case .certbot(let path): return "certbot:\(path)"
        case .kubernetes(let path): return "kubernetes:\(path)"
        case .directory(let path): return "directory:\(path)"
        }
    }

    /// The directories a watcher must watch for this source.
    package var watchRoots: [String] {
        switch self {
        case .pair(_, let cert, let key):
            return Array(Set([parentDirectory(cert), parentDirectory(key)])).sorted()
        case .certbot(let path):
            return [certbotLiveDirectory(path)]
        case .kubernetes(let path), .directory(let path):
            return [path]
        }
    }
}

/// The files that make one lineage, found by scanning a source.
package struct LineageFiles: Sendable, Hashable {
    package var name: String
    package var source: CertificateSource
    package var certificatePath: String
    package var keyPath: String
    /// Why the lineage must not be read right now (certbot renewal in progress).
    package var busyReason: String?

    /// Whether the certificate or key file (the file itself, links followed) is among
    /// `writing`, files written to and not yet closed. Compared by device and inode, so a
    /// link or another spelling of a directory names the same file.
    func isBeingWritten(_ writing: Set<FileID>) -> Bool {
        for path in Set([self.certificatePath, self.keyPath]) {
            if let id = FileID(path: path), writing.contains(id) { return true }
        }
        return false
    }
}

/// A file as the kernel knows it: device and inode.
package struct FileID: Hashable, Sendable {
    let device: UInt64
    let inode: UInt64

    init(device: UInt64, inode: UInt64) {
        self.device = device
        self.inode = inode
    }

    /// The file at `path`, links followed; nil when there is none.
    init?(path: String) {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        self.device = UInt64(info.st_dev)
        self.inode = UInt64(info.st_ino)
    }
}

func parentDirectory(_ path: String) -> String {
    // A directory written with a trailing slash (`certs/`) has the parent `certs` has:
    // taken as its own parent, the directory's replacement (a rename, a link switched)
    // went unseen until the rescan.
    var path = Substring(path)
    while path.count > 1, path.hasSuffix("/") { path = path.dropLast() }
    guard let slash = path.lastIndex(of: "/") else { return "." }
    let parent = String(path[..<slash])
    return parent.isEmpty ? "/" : parent
}

/// The last component of a path ("site.crt" for "/etc/ssl/site.crt").
func baseName(_ path: String) -> String {
    let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
    guard let slash = trimmed.lastIndex(of: "/") else { return trimmed }
    return String(trimmed[trimmed.index(after: slash)...])
}

func certbotLiveDirectory(_ path: String) -> String {
    let trimmed = path.hasSuffix("/") && path.count > 1 ? String(path.dropLast()) : path
    if trimmed.hasSuffix("/live") || trimmed == "live" { return trimmed }
    var isDir = false
    if fileExists(trimmed + "/live", isDirectory: &isDir), isDir { return trimmed + "/live" }
    return trimmed
}

func fileExists(_ path: String, isDirectory: inout Bool) -> Bool {
    var st = stat()
    guard stat(path, &st) == 0 else { return false }
    isDirectory = (st.st_mode & S_IFMT) == S_IFDIR
    return true
}

/// Names in a directory, sorted; throws with errno text.
func listDirectory(_ path: String) throws -> [String] {
    guard let dir = opendir(path) else {
        throw CertificateLoadError(path: path, reason: String(cString: strerror(errno)))
    }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(cString: raw.baseAddress!.assumingMemoryBound(to: CChar.self))
        }
        if name == "." || name == ".." { continue }
        names.append(name)
    }
    return names.sorted()
}

/// Reads a whole certificate or key file, never blocking (`readRegularFile`); throws
/// with the path and the reason.
func readFile(_ path: String, limit: Int = maxPEMFileBytes) throws -> [UInt8] {
    do {
        return try readRegularFile(path, limit: limit)
    } catch let error as FileReadError {
        throw CertificateLoadError(path: error.path, reason: error.reason)
    }
}

/// A problem with one file or lineage, naming the file and the reason.
package struct CertificateLoadError: Error, CustomStringConvertible, Sendable, Hashable {
    package var path: String
    package var reason: String
    package var description: String { "\(self.path): \(self.reason)" }
}

extension CertificateSource {
    /// The lineages this source holds right now.
    ///
    /// A source whose root is missing or unreadable throws; lineages whose files
    /// are incomplete are still listed so validation reports them by name.
    package func scan() throws -> [LineageFiles] {
        switch self {
        case .pair(let name, let cert, let key):
            return [LineageFiles(name: name, source: self, certificatePath: cert, keyPath: key)]
        case .kubernetes(let path):
            var isDir = false
            guard fileExists(path, isDirectory: &isDir) else {
                throw CertificateLoadError(path: path, reason: "no such directory")
            }
            guard isDir else { throw CertificateLoadError(path: path, reason: "not a directory") }
            let name = path.split(separator: "/").last.map(String.init) ?? path
            return [LineageFiles(name: name, source: self, certificatePath: path + "/tls.crt", keyPath: path + "/tls.key")]
        case .certbot(let path):
            let live = certbotLiveDirectory(path)
            var isDir = false
            guard fileExists(live, isDirectory: &isDir) else {
                // Only a directory that is not there yet is "no such directory" (awaited: certbot
                // makes it); one the gateway may not reach says why (a parent it cannot read).
                let reason = errno == ENOENT ? "no such directory" : String(cString: strerror(errno))
                throw CertificateLoadError(path: live, reason: reason)
            }
            guard isDir else { throw CertificateLoadError(path: live, reason: "not a directory") }
            var result: [LineageFiles] = []
            for name in try listDirectory(live) {
                let dir = live + "/" + name
                var sub = false
                guard fileExists(dir, isDirectory: &sub), sub else { continue }
                let entries = (try? listDirectory(dir)) ?? []
                let busy = entries.contains { $0.hasPrefix("previous_") }
                result.append(LineageFiles(
                    name: name, source: self,
                    certificatePath: dir + "/fullchain.pem", keyPath: dir + "/privkey.pem",
                    busyReason: busy ? "certbot renewal in progress (previous_*.pem present)" : nil
                ))
            }
            return result
        case .directory(let path):
            var isDir = false
            guard fileExists(path, isDirectory: &isDir) else {
                throw CertificateLoadError(path: path, reason: "no such directory")
            }
            guard isDir else { throw CertificateLoadError(path: path, reason: "not a directory") }
            let names = try listDirectory(path).filter { !$0.hasPrefix(".") }
            let set = Set(names)
            var result: [LineageFiles] = []
            for file in names {
                if file.hasSuffix(".crt") {
                    let base = String(file.dropLast(4))
                    // A missing <name>.key is reported by validation, naming the file.
                    result.append(LineageFiles(name: base, source: self, certificatePath: path + "/" + file, keyPath: path + "/" + base + ".key"))
                } else if file.hasSuffix(".pem") {
                    let base = String(file.dropLast(4))
                    if set.contains(base + ".crt") { continue }
                    result.append(LineageFiles(name: base, source: self, certificatePath: path + "/" + file, keyPath: path + "/" + file))
                }
            }
            return result
        }
    }
}
