import Logging

#if canImport(Glibc)
import Glibc
#endif

/// Readable log lines on stderr: `time level label: message key=value ...`.
struct TextLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    init(label: String) { self.label = label }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = self.metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\(quoteIfNeeded("\($0.value)"))" }.joined(separator: " ")
        let line = "\(timestamp()) \(event.level.rawValue.uppercased()) \(event.message)\(fields.isEmpty ? "" : " " + fields)\n"
        writeStandardError(line)
    }
}

/// What `check` logs, said as its own problems are: `warning: message (key=value ...)`, no
/// timestamps. A rejected certificate is one of check's own errors, printed once by check.
struct CheckLogHandler: LogHandler {
    var logLevel: Logger.Level = .warning
    var metadata: Logger.Metadata = [:]

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        if event.level >= .error, "\(event.message)" == "certificate rejected" { return }
        var merged = self.metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\(quoteIfNeeded("\($0.value)"))" }.joined(separator: " ")
        let level = event.level >= .error ? "error" : "warning"
        writeStandardError("\(level): \(event.message)\(fields.isEmpty ? "" : " (\(fields))")\n")
    }
}

/// One JSON object per line on stderr.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]

    init(label: String) { self.label = label }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var merged = self.metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        var fields = ["\"time\":\(json(timestamp()))", "\"level\":\(json(event.level.rawValue))", "\"message\":\(json("\(event.message)"))"]
        for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
            fields.append("\(json(key)):\(json("\(value)"))")
        }
        writeStandardError("{" + fields.joined(separator: ",") + "}\n")
    }
}

private func quoteIfNeeded(_ text: String) -> String {
    text.contains(" ") || text.isEmpty ? json(text) : text
}

private func json(_ text: String) -> String {
    var out = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        default:
            if scalar.value < 0x20 { out += "\\u00" + (scalar.value < 16 ? "0" : "") + String(scalar.value, radix: 16) } else { out.unicodeScalars.append(scalar) }
        }
    }
    return out + "\""
}

private func timestamp() -> String {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    var tm = tm()
    var seconds = ts.tv_sec
    gmtime_r(&seconds, &tm)
    let ms = Int(ts.tv_nsec / 1_000_000)
    func pad(_ v: Int32, _ w: Int = 2) -> String { let s = String(v); return String(repeating: "0", count: max(0, w - s.count)) + s }
    return "\(pad(tm.tm_year + 1900, 4))-\(pad(tm.tm_mon + 1))-\(pad(tm.tm_mday))T\(pad(tm.tm_hour)):\(pad(tm.tm_min)):\(pad(tm.tm_sec)).\(pad(Int32(ms), 3))Z"
}

/// Writes straight to fd 2 (unbuffered, safe from any thread).
func writeStandardError(_ text: String) { writeAll(fd: 2, text) }

/// Writes straight to fd 1.
func writeStandardOutput(_ text: String) { writeAll(fd: 1, text) }

private func writeAll(fd: Int32, _ text: String) {
    var bytes = Array(text.utf8)
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeMutableBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if n <= 0 { if errno == EINTR { continue }; return }
        offset += n
    }
}
