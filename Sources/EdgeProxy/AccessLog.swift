#if canImport(Glibc)
import Atomics
import Glibc
#endif
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// The access log's file (or standard output), shared by every event loop.
///
/// Each loop buffers its lines (`AccessLogBuffer`) and hands them over in batches:
/// one `write` of whole lines with `O_APPEND`, so lines of different loops never
/// interleave. A file that was renamed or deleted (logrotate's `create` mode) is
/// reopened at the next batch, at most a second late: no signal is needed, as for
/// certificates.
package final class AccessLogFile: @unchecked Sendable {
    package enum Format: String, Sendable, CaseIterable {
        /// nginx's `combined`, which log analysers read.
        case combined
        /// One JSON object per line, with the listener, upstream, backend and duration.
        case json
    }

    package let path: String
    package let format: Format
    private let logger: Logger
    private let lock = NIOLock()
    // Guarded by `lock`.
    private var fd: CInt
    private var identity: (dev: UInt64, ino: UInt64)?
    private var lastCheck: NIODeadline
    private var closed = false

    /// `path` `-` or `stdout` writes to standard output (containers), never reopened.
    package init(path: String, format: Format, logger: Logger) throws {
        self.path = path
        self.format = format
        self.logger = logger
        self.lastCheck = .now()
        if Self.isStandardOutput(path) {
            self.fd = STDOUT_FILENO
        } else {
            (self.fd, self.identity) = try Self.open(path)
        }
    }

    package static func isStandardOutput(_ path: String) -> Bool { path == "-" || path == "stdout" }

    /// Checks that `path` can be opened for appending, without opening or creating it
    /// (validating a configuration has no side effects): an existing file must be
    /// writable and not a directory, a new one needs a writable directory.
    package static func checkWritable(path: String) throws {
        if self.isStandardOutput(path) { return }
        var info = stat()
        if stat(path, &info) == 0 {
            if (info.st_mode & S_IFMT) == S_IFDIR { throw OpenError(description: "\(path): is a directory") }
            if access(path, W_OK) != 0 { throw OpenError(description: "\(path): \(String(cString: strerror(errno)))") }
            return
        }
        guard errno == ENOENT else { throw OpenError(description: "\(path): \(String(cString: strerror(errno)))") }
        let directory = path.lastIndex(of: "/").map { path[..<$0].isEmpty ? "/" : String(path[..<$0]) } ?? "."
        if access(directory, W_OK | X_OK) != 0 {
            throw OpenError(description: "\(path): cannot be created in \(directory): \(String(cString: strerror(errno)))")
        }
    }

    package struct OpenError: Error, CustomStringConvertible {
        package let description: String
    }

    private static func open(_ path: String) throws -> (CInt, (dev: UInt64, ino: UInt64)?) {
        let fd = Glibc.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw OpenError(description: "\(path): \(String(cString: strerror(errno)))") }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return (fd, nil) }
        return (fd, (UInt64(info.st_dev), UInt64(info.st_ino)))
    }

    /// Appends whole lines. Write errors (a full disk) are logged at most once a
    /// minute; the lines are dropped, the proxy carries on.
    func write(_ lines: ByteBuffer) {
        self.lock.withLock {
            guard !self.closed else { return }
            self.reopenIfMoved()
            var rest = lines
            while rest.readableBytes > 0 {
                let written = rest.withUnsafeReadableBytes { Glibc.write(self.fd, $0.baseAddress, $0.count) }
                if written < 0 && errno == EINTR { continue }
                guard written > 0 else {
                    self.failed(String(cString: strerror(errno)))
                    return
                }
                rest.moveReaderIndex(forwardBy: written)
            }
        }
    }

    private func reopenIfMoved() {
        guard let identity = self.identity else { return }
        let now = NIODeadline.now()
        guard now - self.lastCheck >= .seconds(1) else { return }
        self.lastCheck = now
        var info = stat()
        if stat(self.path, &info) == 0, UInt64(info.st_dev) == identity.dev, UInt64(info.st_ino) == identity.ino { return }
        do {
            let (fd, newIdentity) = try Self.open(self.path)
            Glibc.close(self.fd)
            (self.fd, self.identity) = (fd, newIdentity)
            self.logger.info("access log reopened", metadata: ["file": "\(self.path)"])
        } catch {
            self.failed("\(error)")
        }
    }

    /// When a write error was last logged, by any event loop's file (uptime nanoseconds):
    /// the same failing disk was reported once per loop.
    private static let lastErrorLogged = ManagedAtomic<Int64>(-1)

    private func failed(_ reason: String) {
        let now = Int64(NIODeadline.now().uptimeNanoseconds)
        let last = Self.lastErrorLogged.load(ordering: .relaxed)
        guard last < 0 || now - last >= 60_000_000_000,
              Self.lastErrorLogged.compareExchange(expected: last, desired: now, ordering: .relaxed).exchanged else { return }
        self.logger.error("access log not written; lines dropped", metadata: ["file": "\(self.path)", "error": "\(reason)"])
    }

    deinit {
        if !self.closed && !Self.isStandardOutput(self.path) { Glibc.close(self.fd) }
    }

    /// After the last flush: closes the file (standard output stays open).
    package func close() {
        self.lock.withLock {
            guard !self.closed else { return }
            self.closed = true
            if !Self.isStandardOutput(self.path) { Glibc.close(self.fd) }
        }
    }
}

/// What one request leaves in the access log.
struct AccessLogEntry {
    var listener: String
    var client: String?
    var proto: String
    var request: HTTPHead?
    var status: Int
    var bodyBytesSent: Int
    var duration: TimeAmount
    var upstream: String?
    var backend: String?
}

/// One event loop's access log lines, written out when 32 KiB are buffered or a
/// second after the first of a batch (nginx's `buffer=32k flush=1s`), and at shutdown.
/// Only touched on its loop.
package final class AccessLogBuffer {
    let file: AccessLogFile
    private let eventLoop: EventLoop
    private var buffer: ByteBuffer
    private var flushScheduled = false
    /// The current second, formatted once (combined: `28/Nov/2026:10:53:06 +0000`,
    /// JSON: `2026-11-28T10:53:06`).
    private var second = -1
    private var secondText = ""

    static let flushBytes = 32 * 1024

    package init(file: AccessLogFile, eventLoop: EventLoop) {
        self.file = file
        self.eventLoop = eventLoop
        self.buffer = ByteBuffer()
    }

    func record(_ entry: AccessLogEntry) {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        if now.tv_sec != self.second { self.formatSecond(now.tv_sec) }
        if self.buffer.capacity == 0 { self.buffer = ByteBufferAllocator().buffer(capacity: Self.flushBytes + 1024) }
        // Built in a local buffer: each access to the stored one is an exclusivity check.
        var out = ByteBuffer()
        swap(&out, &self.buffer)
        switch self.file.format {
        case .combined: self.appendCombined(entry, to: &out)
        case .json: self.appendJSON(entry, milliseconds: Int(now.tv_nsec / 1_000_000), to: &out)
        }
        swap(&out, &self.buffer)
        if self.buffer.readableBytes >= Self.flushBytes {
            self.flush()
        } else if !self.flushScheduled {
            self.flushScheduled = true
            self.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: .seconds(1)) { self.flush() }
        }
    }

    /// Hands the buffered lines to the file; on the loop.
    package func flush() {
        self.flushScheduled = false
        guard self.buffer.readableBytes > 0 else { return }
        self.file.write(self.buffer)
        self.buffer.clear()
    }

    private func formatSecond(_ seconds: Int) {
        var t = time_t(seconds)
        var tm = tm()
        gmtime_r(&t, &tm)
        func two(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let year = Int(tm.tm_year) + 1900
        switch self.file.format {
        case .combined:
            let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            self.secondText = "\(two(tm.tm_mday))/\(months[Int(tm.tm_mon)])/\(year):\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec)) +0000"
        case .json:
            self.secondText = "\(year)-\(two(tm.tm_mon + 1))-\(two(tm.tm_mday))T\(two(tm.tm_hour)):\(two(tm.tm_min)):\(two(tm.tm_sec))"
        }
        self.second = seconds
    }

    /// `$remote_addr - $remote_user [$time_local] "$request" $status $body_bytes_sent
    /// "$http_referer" "$http_user_agent"`, escaped as nginx escapes it.
    private func appendCombined(_ entry: AccessLogEntry, to out: inout ByteBuffer) {
        let request = entry.request
        out.writeString(entry.client ?? "-")
        out.writeStaticString(" - - [")
        out.writeString(self.secondText)
        out.writeStaticString("] \"")
        if let request {
            Self.writeEscaped(request.method, json: false, to: &out)
            out.writeStaticString(" ")
            Self.writeEscaped(request.target, json: false, to: &out)
            out.writeStaticString(" ")
            out.writeString(entry.proto)
        } else {
            out.writeStaticString("-")
        }
        out.writeStaticString("\" ")
        Self.writeDecimal(entry.status, to: &out)
        out.writeStaticString(" ")
        Self.writeDecimal(entry.bodyBytesSent, to: &out)
        out.writeStaticString(" \"")
        Self.writeField(request, "referer", json: false, to: &out)
        out.writeStaticString("\" \"")
        Self.writeField(request, "user-agent", json: false, to: &out)
        out.writeStaticString("\"\n")
    }

    private func appendJSON(_ entry: AccessLogEntry, milliseconds: Int, to out: inout ByteBuffer) {
        let request = entry.request
        out.writeStaticString("{\"time\":\"")
        out.writeString(self.secondText)
        out.writeString(milliseconds < 10 ? ".00\(milliseconds)Z" : milliseconds < 100 ? ".0\(milliseconds)Z" : ".\(milliseconds)Z")
        out.writeStaticString("\",\"listener\":")
        Self.writeJSONString(entry.listener, to: &out)
        out.writeStaticString(",\"client\":")
        Self.writeJSONString(entry.client, to: &out)
        out.writeStaticString(",\"protocol\":")
        Self.writeJSONString(entry.proto, to: &out)
        out.writeStaticString(",\"method\":")
        Self.writeJSONString(request?.method, to: &out)
        out.writeStaticString(",\"uri\":")
        Self.writeJSONString(request?.target, to: &out)
        out.writeStaticString(",\"host\":")
        Self.writeField(request, "host", json: true, to: &out)
        out.writeStaticString(",\"status\":")
        Self.writeDecimal(entry.status, to: &out)
        out.writeStaticString(",\"body_bytes_sent\":")
        Self.writeDecimal(entry.bodyBytesSent, to: &out)
        let micros = max(0, Int(entry.duration.nanoseconds / 1_000))
        out.writeStaticString(",\"duration_ms\":")
        Self.writeDecimal(micros / 1_000, to: &out)
        out.writeInteger(UInt8(ascii: "."))
        let fraction = micros % 1_000
        if fraction < 100 { out.writeInteger(UInt8(ascii: "0")) }
        if fraction < 10 { out.writeInteger(UInt8(ascii: "0")) }
        Self.writeDecimal(fraction, to: &out)
        out.writeStaticString(",\"upstream\":")
        Self.writeJSONString(entry.upstream, to: &out)
        out.writeStaticString(",\"backend\":")
        Self.writeJSONString(entry.backend, to: &out)
        out.writeStaticString(",\"referer\":")
        Self.writeField(request, "referer", json: true, to: &out)
        out.writeStaticString(",\"user_agent\":")
        Self.writeField(request, "user-agent", json: true, to: &out)
        out.writeStaticString("}\n")
    }

    private static func writeJSONString(_ value: String?, to out: inout ByteBuffer) {
        guard let value else {
            out.writeStaticString("null")
            return
        }
        out.writeStaticString("\"")
        Self.writeEscaped(value, json: true, to: &out)
        out.writeStaticString("\"")
    }

    /// A non-negative integer's digits, without a String.
    private static func writeDecimal(_ value: Int, to out: inout ByteBuffer) {
        guard value >= 10 else {
            out.writeInteger(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: max(0, value)))
            return
        }
        Self.writeDecimal(value / 10, to: &out)
        out.writeInteger(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: value % 10))
    }

    /// A request field's first value, escaped, from the head's bytes: in JSON quoted,
    /// or `null` without one; in the combined format `-` without one.
    private static func writeField(_ request: HTTPHead?, _ lowerName: StaticString, json: Bool, to out: inout ByteBuffer) {
        guard let request, let range = request.valueRange(named: lowerName) else {
            if json { out.writeStaticString("null") } else { out.writeStaticString("-") }
            return
        }
        if json { out.writeStaticString("\"") }
        request.bytes.withUnsafeBytes { Self.writeEscaped(UnsafeRawBufferPointer(rebasing: $0[range]), json: json, to: &out) }
        if json { out.writeStaticString("\"") }
    }

    private static let hex = Array("0123456789ABCDEF".utf8)

    private static func writeEscaped(_ value: String, json: Bool, to out: inout ByteBuffer) {
        var value = value
        value.withUTF8 { Self.writeEscaped(UnsafeRawBufferPointer($0), json: json, to: &out) }
    }

    /// JSON: `"` and `\` escaped, control bytes and bytes above 0x7E as `\u00XX` (a
    /// header value need not be UTF-8; the line stays valid JSON). Combined (nginx's
    /// escaping): `"`, `\`, control bytes and bytes above 0x7E as `\xXX`.
    private static func writeEscaped(_ value: UnsafeRawBufferPointer, json: Bool, to out: inout ByteBuffer) {
        // Runs of bytes that need no escaping are copied whole.
        var start = 0
        for (i, byte) in value.enumerated() where byte < 0x20 || byte >= 0x7f || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") {
            if start < i { out.writeBytes(UnsafeRawBufferPointer(rebasing: value[start..<i])) }
            start = i + 1
            if json && (byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\")) {
                out.writeInteger(UInt8(ascii: "\\"))
                out.writeInteger(byte)
                continue
            }
            out.writeStaticString(json ? "\\u00" : "\\x")
            out.writeInteger(Self.hex[Int(byte >> 4)])
            out.writeInteger(Self.hex[Int(byte & 0xf)])
        }
        if start < value.count { out.writeBytes(UnsafeRawBufferPointer(rebasing: value[start...])) }
    }
}

extension HTTPHead {
    /// Where the first value of a field is, by its lower-case name (for the access log).
    func valueRange(named lower: StaticString) -> Range<Int>? {
        self.bytes.withUnsafeBytes { p in
            self.fields.first { asciiCaseInsensitiveEquals(p, $0.name, lower) }?.value
        }
    }
}
