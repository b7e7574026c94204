import COpenSSL

/// An error raised by the TLS engine.
///
/// A struct over a private enum so new cases can be added without breaking callers.
public struct TLSError: Error, Hashable, CustomStringConvertible, Sendable {
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
    public let reason: String
    /// Why an upstream handshake failed, for metrics; nil on server connections and
    /// for failures after the handshake.
    public let upstreamFailure: UpstreamHandshakeFailure?

    init(_ kind: Kind, _ reason: String, upstreamFailure: UpstreamHandshakeFailure? = nil) {
        self.kind = kind
        self.reason = reason
        self.upstreamFailure = upstreamFailure
    }

    public static func handshakeFailed(_ reason: String) -> TLSError { TLSError(.handshakeFailed, reason) }
    public static let handshakeTimeout = TLSError(.handshakeTimeout, "handshake timed out")
    public static let eofDuringHandshake = TLSError(.eofDuringHandshake, "connection closed during the handshake")
    public static let uncleanShutdown = TLSError(.uncleanShutdown, "connection closed without close_notify")
    public static func configuration(_ reason: String) -> TLSError { TLSError(.configuration, reason) }
    public static func invalidCertificate(_ reason: String) -> TLSError { TLSError(.invalidCertificate, reason) }
    public static func invalidKey(_ reason: String) -> TLSError { TLSError(.invalidKey, reason) }
    public static func keyMismatch(_ reason: String) -> TLSError { TLSError(.keyMismatch, reason) }

    public var isHandshakeFailure: Bool { self.kind == .handshakeFailed }
    public var isHandshakeTimeout: Bool { self.kind == .handshakeTimeout }
    public var isEOFDuringHandshake: Bool { self.kind == .eofDuringHandshake }
    public var isUncleanShutdown: Bool { self.kind == .uncleanShutdown }

    public var description: String {
        switch self.kind {
        case .handshakeFailed: return "TLS handshake failed: \(self.reason)"
        case .readFailed: return "TLS read failed: \(self.reason)"
        case .writeFailed: return "TLS write failed: \(self.reason)"
        default: return self.reason
        }
    }

    public static func == (lhs: TLSError, rhs: TLSError) -> Bool { lhs.kind == rhs.kind }
    public func hash(into hasher: inout Hasher) { hasher.combine(self.kind) }
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
