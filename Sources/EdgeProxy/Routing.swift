#if canImport(Glibc)
import Glibc
#endif
import NIOCore

/// Listener/host/path routing. First matching route wins.
package struct Router: Sendable {
    /// One route: what it matches and what it does with a matching request.
    package final class Route: Sendable {
        /// nil: any listener; otherwise the listener's name.
        package let listener: String?
        /// nil: any host. `*.example.com` matches exactly one more label.
        package let host: String?
        package let pathPrefix: String?
        package let action: Action
        /// Overrides the listener's `max_request_body_bytes` for this route.
        package let maxBodyBytes: Int?

        package enum Action: Sendable {
            /// Proxied to an upstream group.
            case upstream(UpstreamGroup)
            /// Answered with a redirect (nginx's `return 301 https://$host$request_uri`).
            case redirect(Redirect)
            /// Answered with a file under a directory (nginx's `root`), for ACME HTTP-01
            /// challenges (certbot `--webroot`) and small static files.
            case root(StaticRoot)
        }

        package init(listener: String? = nil, host: String?, pathPrefix: String?, action: Action, maxBodyBytes: Int? = nil) {
            self.listener = listener
            self.host = host?.lowercased()
            self.pathPrefix = pathPrefix
            self.action = action
            self.maxBodyBytes = maxBodyBytes
        }

        package var upstream: UpstreamGroup? {
            if case .upstream(let group) = self.action { return group }
            return nil
        }

        func matches(listener: String, host: String, path: Substring) -> Bool {
            if let name = self.listener, name != listener { return false }
            if let pattern = self.host {
                if pattern.hasPrefix("*.") {
                    guard let dot = host.firstIndex(of: "."), host[host.index(after: dot)...] == pattern.dropFirst(2),
                          dot != host.startIndex else { return false }
                } else if pattern != host {
                    return false
                }
            }
            // Bytes, as nginx compares a location prefix (String's hasPrefix is Unicode-aware).
            if let prefix = self.pathPrefix, !Self.hasBytePrefix(path, prefix) { return false }
            return true
        }

        /// `path.utf8.starts(with: prefix.utf8)` as one memcmp over both strings' UTF-8
        /// storage (the generic sequence compare cost more than the rest of routing).
        static func hasBytePrefix(_ path: Substring, _ prefix: String) -> Bool {
            let p = prefix.utf8, s = path.utf8
            guard !p.isEmpty else { return true }
            guard s.count >= p.count else { return false }
            let compared = s.withContiguousStorageIfAvailable { sb in
                p.withContiguousStorageIfAvailable { pb in memcmp(sb.baseAddress!, pb.baseAddress!, pb.count) == 0 }
            }
            if let compared, let equal = compared { return equal }
            return s.starts(with: p)
        }
    }

    package let routes: [Route]
    /// Whether any route looks at the Host; when none does, the host is not even normalised.
    private let readsHost: Bool

    package init(routes: [Route]) {
        self.routes = routes
        self.readsHost = routes.contains { $0.host != nil }
    }

    /// The route for a request, from the listener it arrived on, its Host (port
    /// stripped) and path. `rawHost` is only evaluated when some route matches on the host.
    package func route(listener: String, host rawHost: @autoclosure () -> String?, uri: String) -> Route? {
        let host = self.readsHost ? Self.normalizedHost(rawHost()) : ""
        let path = uri[..<(uri.utf8.firstIndex(of: UInt8(ascii: "?")) ?? uri.endIndex)]
        return self.routes.first { $0.matches(listener: listener, host: host, path: path) }
    }

    /// Every distinct group the routes reach, in route order.
    package var groups: [UpstreamGroup] {
        var seen = Set<ObjectIdentifier>()
        return self.routes.compactMap { route in route.upstream.flatMap { seen.insert(ObjectIdentifier($0)).inserted ? $0 : nil } }
    }

    /// A Host as routes and server names compare it: lower-cased, without its port, its
    /// IPv6 brackets or a trailing dot.
    static func normalizedHost(_ raw: String?) -> String {
        guard let raw else { return "" }
        // The usual Host is ASCII: handled byte by byte, with one allocation at most.
        // (`lowercased()` and the Character scans below cost about 2,900 instructions,
        // 5 % of a keep-alive request, for every request on a TLS listener, which asks
        // for the host to check it against the SNI.)
        if let ascii = raw.utf8.withContiguousStorageIfAvailable({ Self.normalizedASCIIHost($0) }), let ascii { return ascii }
        return Self.normalizedUnicodeHost(raw)
    }

    /// `normalizedHost` of an all-ASCII host; nil when a byte is not ASCII.
    private static func normalizedASCIIHost(_ bytes: UnsafeBufferPointer<UInt8>) -> String? {
        var start = 0, end = bytes.count
        for byte in bytes where byte >= 0x80 { return nil }
        if end > 0, bytes[0] == UInt8(ascii: "[") {
            if let close = bytes.firstIndex(of: UInt8(ascii: "]")) { (start, end) = (1, close) }
        } else if let colon = bytes.lastIndex(of: UInt8(ascii: ":")) {
            end = colon
        }
        if end > start, bytes[end - 1] == UInt8(ascii: ".") { end -= 1 }
        return String(unsafeUninitializedCapacity: end - start) { out in
            for index in start..<end {
                let byte = bytes[index]
                out[index - start] = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            }
            return end - start
        }
    }

    /// `normalizedHost` for any host, by Characters (Unicode lower case).
    static func normalizedUnicodeHost(_ raw: String) -> String {
        var host = raw.lowercased()
        if host.hasPrefix("[") {
            if let end = host.firstIndex(of: "]") { host = String(host[host.index(after: host.startIndex)..<end]) }
        } else if let colon = host.lastIndex(of: ":") {
            host = String(host[..<colon])
        }
        if host.hasSuffix(".") { host.removeLast() }
        return host
    }
}

/// A redirect answer: the same path and query on another scheme, host or port.
package struct Redirect: Sendable, Equatable {
    /// `https` or `http`.
    package var scheme: String
    /// nil: the request's own host (port stripped).
    package var host: String?
    /// nil: the scheme's default port (left out of the location).
    package var port: Int?
    /// 301, 302, 303, 307 or 308.
    package var status: Int

    package static let statuses: Set<Int> = [301, 302, 303, 307, 308]

    package init(scheme: String = "https", host: String? = nil, port: Int? = nil, status: Int = 301) {
        self.scheme = scheme
        self.host = host
        self.port = port
        self.status = status
    }

    /// The `location` for a request; nil when it has no usable host (no Host header,
    /// or one that is not a DNS name or an IP address) and none is configured.
    package func location(requestHost: String?, target: String) -> String? {
        var host = self.host ?? Router.normalizedHost(requestHost)
        guard !host.isEmpty, host.utf8.allSatisfy(Self.isHostByte) else { return nil }
        if host.utf8.contains(UInt8(ascii: ":")) { host = "[\(host)]" }  // an IPv6 literal
        var location = "\(self.scheme)://\(host)"
        if let port = self.port, port != (self.scheme == "https" ? 443 : 80) { location += ":\(port)" }
        return location + Self.pathAndQuery(target)
    }

    private static func isHostByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: ":"), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }

    /// The path and query of a request target: as it is in origin form, after the
    /// authority in absolute form, `/` for `*`.
    static func pathAndQuery(_ target: String) -> Substring {
        if target.hasPrefix("/") { return target[...] }
        if let colon = target.firstIndex(of: ":"), target[colon...].hasPrefix("://") {
            let rest = target[target.index(colon, offsetBy: 3)...]
            if let slash = rest.firstIndex(of: "/") { return rest[slash...] }
            if let query = rest.firstIndex(of: "?") { return "/" + rest[query...] }
        }
        return "/"
    }
}

/// Files under a directory, for GET and HEAD: the request path (percent-decoded) is
/// appended to the directory, as nginx's `root` does. Only regular files up to
/// `maxFileBytes` are served; they are read on the event loop, which suits ACME
/// challenge tokens and small static files, not downloads.
package struct StaticRoot: Sendable, Equatable {
    package var directory: String
    package static let maxFileBytes = 1 << 20

    package init(directory: String) {
        self.directory = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
    }

    /// Why `path` cannot be a static root (nil when it can): it must be a directory.
    package static func directoryProblem(_ path: String) -> String? {
        var info = stat()
        guard stat(path, &info) == 0 else { return String(cString: strerror(errno)) }
        return (info.st_mode & S_IFMT) == S_IFDIR ? nil : "not a directory"
    }

    package enum Answer {
        case file(ByteBuffer, contentType: String)
        /// No such file, not a regular file, or a path that leaves the directory.
        case notFound
        /// The file exists but is not served; the reason names it.
        case refused(String)
        /// A malformed percent-encoding.
        case badPath
    }

    /// Reads the file a request target names.
    package func answer(target: String, allocator: ByteBufferAllocator) -> Answer {
        let rawPath = target[..<(target.firstIndex(of: "?") ?? target.endIndex)]
        guard rawPath.hasPrefix("/") else { return .notFound }
        guard let decoded = Self.percentDecoded(rawPath) else { return .badPath }
        // Every segment stays inside the directory: no `.` or `..`, no NUL.
        guard !decoded.contains(0) else { return .badPath }
        for segment in decoded.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: true) {
            if segment.elementsEqual([UInt8(ascii: ".")]) || segment.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) { return .notFound }
        }
        let path = self.directory + String(decoding: decoded, as: UTF8.self)
        // O_NONBLOCK: opening a FIFO someone left there must not stall the loop.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else {
            let error = errno
            if error == EACCES { return .refused("\(path): \(String(cString: strerror(error)))") }
            return .notFound
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, (info.st_mode & S_IFMT) == S_IFREG else { return .notFound }
        // A link inside the root may lead anywhere (to certbot's private keys, which the
        // gateway can read): the file opened must lie under the root's real path. The
        // opened descriptor's path is asked for, so a link swapped after the check cannot
        // change what is served.
        guard let opened = Self.realPath(ofDescriptor: fd), let root = Self.realPath(self.directory),
              opened.hasPrefix(root.hasSuffix("/") ? root : root + "/") else {
            return .refused("\(path): a symbolic link leads outside the root")
        }
        let size = Int(info.st_size)
        guard size <= Self.maxFileBytes else {
            return .refused("\(path): \(size) bytes, more than a static root serves (\(Self.maxFileBytes))")
        }
        var body = allocator.buffer(capacity: size)
        var remaining = size
        while remaining > 0 {
            let count = body.writeWithUnsafeMutableBytes(minimumWritableBytes: remaining) { out in
                max(0, read(fd, out.baseAddress, remaining))
            }
            if count == 0 { break }  // shrank while read: serve what is there
            remaining -= count
        }
        return .file(body, contentType: Self.contentType(path))
    }

    static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }

    static func realPath(ofDescriptor fd: CInt) -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let count = readlink("/proc/self/fd/\(fd)", &buffer, Int(PATH_MAX))
        guard count > 0 else { return nil }
        return String(decoding: buffer[0..<count].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func percentDecoded(_ path: Substring) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(path.utf8.count)
        var bytes = path.utf8.makeIterator()
        while let byte = bytes.next() {
            guard byte == UInt8(ascii: "%") else {
                out.append(byte)
                continue
            }
            guard let high = bytes.next().flatMap(PathNormalization.hexValue), let low = bytes.next().flatMap(PathNormalization.hexValue) else { return nil }
            out.append(high << 4 | low)
        }
        return out
    }

    /// nginx's `mime.types` for the common kinds; everything else (ACME tokens have no
    /// extension) is `application/octet-stream`, nginx's `default_type`.
    static func contentType(_ path: String) -> String {
        guard let dot = path.lastIndex(of: "."), !path[dot...].contains("/") else { return "application/octet-stream" }
        switch path[path.index(after: dot)...].lowercased() {
        case "html", "htm": return "text/html; charset=utf-8"
        case "txt": return "text/plain; charset=utf-8"
        case "css": return "text/css"
        case "js": return "application/javascript"
        case "json": return "application/json"
        case "xml": return "text/xml"
        case "svg": return "image/svg+xml"
        case "png": return "image/png"
        case "jpg", "jpeg": return "image/jpeg"
        case "gif": return "image/gif"
        case "ico": return "image/x-icon"
        case "webp": return "image/webp"
        case "pdf": return "application/pdf"
        default: return "application/octet-stream"
        }
    }
}
