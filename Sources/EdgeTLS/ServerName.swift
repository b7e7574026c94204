/// SNI names as the selection compares them, and the one index both the certificate
/// choice and the per-name client-authentication policy look names up in.
///
/// DNS names in SNI are ASCII (an internationalised name travels as its A-label,
/// RFC 6066 §3), and certificates name hosts in ASCII too, so names are compared
/// with ASCII letters lower-cased and nothing else changed.
package enum ServerName {
    /// `bytes` with ASCII letters lower-cased, in one pass and one allocation.
    package static func normalized<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        String(unsafeUninitializedCapacity: bytes.count) { buffer in
            var i = 0
            for byte in bytes {
                buffer[i] = byte &- 0x41 < 26 ? byte | 0x20 : byte
                i += 1
            }
            return i
        }
    }

    /// `name` lower-cased, without a copy when it already is (the common case).
    package static func normalized(_ name: String) -> String {
        name.utf8.contains(where: { $0 &- 0x41 < 26 }) ? normalized(name.utf8) : name
    }
}

/// Values by server name: exact names first, then one-label wildcards
/// (`*.example.com` matches `a.example.com`, not `example.com` or `a.b.example.com`,
/// RFC 6125 §6.4.3). Lookups take names already `ServerName.normalized`.
package struct ServerNameIndex<Value: Sendable>: Sendable {
    package private(set) var exact: [String: Value] = [:]
    /// Keyed by what follows `*.`.
    package private(set) var wildcard: [String: Value] = [:]

    package init() {}

    package var isEmpty: Bool { self.exact.isEmpty && self.wildcard.isEmpty }

    /// Adds a name or a `*.suffix` pattern; a pattern given twice keeps the last value.
    package mutating func insert(_ pattern: String, _ value: Value) {
        let pattern = ServerName.normalized(pattern)
        if pattern.hasPrefix("*.") {
            self.wildcard[String(pattern.dropFirst(2))] = value
        } else {
            self.exact[pattern] = value
        }
    }

    /// The value for a normalized name: its exact entry, then its parent's wildcard.
    @inline(__always)
    package func match(_ name: String) -> Value? {
        if let value = self.exact[name] { return value }
        // By character, as the router splits a host: a dot followed by a combining mark
        // is one character, and a byte search would look up a different parent than the
        // route that matched (a Host the router sends to `*.example.com` must find that
        // pattern's client authentication here too).
        guard let dot = name.firstIndex(of: ".") else { return nil }
        return self.wildcard[String(name[name.index(after: dot)...])]
    }

    /// Every entry as the pattern it was inserted as (`*.suffix` for wildcards).
    package var patterns: [(pattern: String, value: Value)] {
        self.exact.map { ($0.key, $0.value) } + self.wildcard.map { ("*." + $0.key, $0.value) }
    }
}
