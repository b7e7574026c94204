import Logging
import NIOConcurrencyHelpers

/// Keeps every log line of an in-process gateway so tests can check what was logged and why.
package final class LogCapture: Sendable {
    private let lines = NIOLockedValueBox<[String]>([])

    package init() {}

    /// One line per message: `level message key=value ...`.
    package var all: [String] { self.lines.withLockedValue { $0 } }

    package func contains(_ text: String) -> Bool { self.all.contains { $0.contains(text) } }

    func append(_ line: String) { self.lines.withLockedValue { $0.append(line) } }

    package func logger(level: Logger.Level = .info) -> Logger {
        var logger = Logger(label: "edge-gateway-test") { _ in CaptureHandler(capture: self) }
        logger.logLevel = level
        return logger
    }
}

private struct CaptureHandler: LogHandler {
    let capture: LogCapture
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { self.metadata[key] }
        set { self.metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let merged = self.metadata.merging(event.metadata ?? [:]) { _, new in new }
        let fields = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
        self.capture.append("\(event.level) \(event.message) \(fields)")
    }
}
