import EdgeProxy
import EdgeTLS

/// A key whose value is one of a few words, decoded as an enum: a word outside them is a
/// decoding problem naming the key and the choices, and nothing after decoding compares
/// strings.
protocol ConfigChoice: RawRepresentable<String>, CaseIterable, Sendable {
    /// Other spellings taken for a case (nginx's `least_conn` beside `least_connections`).
    static var aliases: [String: Self] { get }
    /// Why `text` was refused, after the key's path.
    static func refusal(_ text: String) -> String
}

extension ConfigChoice {
    static var aliases: [String: Self] { [:] }
    static func refusal(_ text: String) -> String {
        "'\(text)' is not one of \(Self.allCases.map(\.rawValue).joined(separator: ", "))"
    }
}

/// Decodes a `ConfigChoice` (`decodeRecorded(Choice<T>.self, ...)?.value`). A wrapper, so
/// that types with a decoding of their own (`TLSVersion`) can be choices too.
struct Choice<Value: ConfigChoice>: Decodable {
    let value: Value

    init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let value = Value(rawValue: text) ?? Value.aliases[text] else {
            throw RefusedChoice(error: ConfigError(path: keyPath(decoder.codingPath), message: Value.refusal(text)))
        }
        self.value = value
    }
}

/// A value outside a key's choices. Recorded without marking the file incomplete: the
/// key's default stands in (`DecodingProblems.record`).
struct RefusedChoice: Error, CustomStringConvertible {
    let error: ConfigError
    var description: String { self.error.description }
}

/// `upstreams.<name>.balance`.
package enum BalanceChoice: String, ConfigChoice {
    /// Weighted (smooth) round robin.
    case roundRobin = "round_robin"
    /// The same as round_robin, by its other name.
    case weightedRoundRobin = "weighted_round_robin"
    case random
    case leastConn = "least_conn"
    case consistentHash = "consistent_hash"

    static var aliases: [String: BalanceChoice] { ["least_connections": .leastConn, "ketama": .consistentHash] }
}

/// `upstreams.<name>.protocol`: the HTTP version spoken to the backends.
extension UpstreamProtocol: ConfigChoice {
    /// HAProxy's `proto h2`, Pingora's `H2` and the HTTP/1.1 names operators write.
    static var aliases: [String: UpstreamProtocol] { ["http/1.1": .http1, "http1.1": .http1, "http2": .h2] }
}

/// `listeners[].tls.profile`: Mozilla's server-side TLS profiles.
package enum TLSProfile: String, ConfigChoice {
    case intermediate
    /// TLS 1.3 only.
    case modern
}

/// `client_auth.mode`.
package enum ClientAuthMode: String, ConfigChoice {
    case required
    case optional
}

/// `client_auth.crl_check`: which certificates of a client's chain are looked up in the CRLs.
package enum CRLCheck: String, ConfigChoice {
    /// The client's own certificate (nginx's `ssl_crl`, HAProxy's `crl-file`).
    case leaf
    /// Every certificate of its chain up to the CA (each issuer needs a CRL in the file).
    case chain
}

/// `routes[].redirect.scheme`.
package enum RedirectScheme: String, ConfigChoice {
    case https
    case http

    static func refusal(_ text: String) -> String { "must be https or http, got '\(text)'" }
}

extension TLSVersion: ConfigChoice {}

extension AccessLogFile.Format: ConfigChoice {
    static func refusal(_ text: String) -> String {
        "must be \(Self.allCases.map(\.rawValue).joined(separator: " or ")), got '\(text)'"
    }
}
