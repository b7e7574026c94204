import COpenSSL

/// An error raised by the TLS engine.
///
/// A struct over a private enum so new cases can be added without breaking callers.
package struct TLSError: Error, Hashable, CustomStringConvertible, Sendable {
    enum Kind: Hashable, Sendable {
        case handshakeFailed
        case handshakeTimeout
        case eofDuringHandshake
        case uncleanShutdown
        case readFailed
        case writeFailed
        case configuration
        case invalidCertificate
        case invalidKey
        case keyMismatch
        case rejectedServerName
    }

    let kind: Kind
    /// OpenSSL's reason (or ours), fit for a log line.
    package let reason: String
    /// Why an upstream handshake failed, for metrics; nil on server connections and
    /// for failures after the handshake.
    package let upstreamFailure: UpstreamHandshakeFailure?

    init(_ kind: Kind, _ reason: String, upstreamFailure: UpstreamHandshakeFailure? = nil) {
        self.kind = kind
        self.reason = reason
        self.upstreamFailure = upstreamFailure
    }

    package static func handshakeFailed(_ reason: String) -> TLSError { TLSError(.handshakeFailed, reason) }
    package static let handshakeTimeout = TLSError(.handshakeTimeout, "handshake timed out")
    package static let eofDuringHandshake = TLSError(.eofDuringHandshake, "connection closed during the handshake")
    package static let uncleanShutdown = TLSError(.uncleanShutdown, "connection closed without close_notify")
    package static func configuration(_ reason: String) -> TLSError { TLSError(.configuration, reason) }
    package static func invalidCertificate(_ reason: String) -> TLSError { TLSError(.invalidCertificate, reason) }
    package static func invalidKey(_ reason: String) -> TLSError { TLSError(.invalidKey, reason) }
    package static func keyMismatch(_ reason: String) -> TLSError { TLSError(.keyMismatch, reason) }

    package var isHandshakeFailure: Bool { self.kind == .handshakeFailed }
    package var isHandshakeTimeout: Bool { self.kind == .handshakeTimeout }
    package var isEOFDuringHandshake: Bool { self.kind == .eofDuringHandshake }
    package var isUncleanShutdown: Bool { self.kind == .uncleanShutdown }

    package var description: String {
        switch self.kind {
        case .handshakeFailed: return "TLS handshake failed: \(self.reason)"
        case .readFailed: return "TLS read failed: \(self.reason)"
        case .writeFailed: return "TLS write failed: \(self.reason)"
        default: return self.reason
        }
    }

    package static func == (lhs: TLSError, rhs: TLSError) -> Bool { lhs.kind == rhs.kind }
    package func hash(into hasher: inout Hasher) { hasher.combine(self.kind) }
}

/// Drains OpenSSL's thread-local error queue into one readable line.
func openSSLErrorQueueDescription(fallback: String = "unknown OpenSSL error") -> String {
    var reasons: [String] = []
    while true {
        let code = ERR_get_error()
        if code == 0 { break }
        if let reason = ERR_reason_error_string(code) {
            reasons.append(String(cString: reason))
        } else {
            var buffer = [CChar](repeating: 0, count: 256)
            ERR_error_string_n(code, &buffer, buffer.count)
            reasons.append(String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }
    return reasons.isEmpty ? fallback : reasons.joined(separator: "; ")
}
