/// The path a request is routed and forwarded by: RFC 3986's normal form (§6.2.2),
/// so `/public/../internal` and `/public/%2e%2e/internal` are `/internal` to the router
/// and to the upstream alike. Matched raw, they reached the `/public` upstream, where a
/// normalising backend served `/internal` (Envoy's `normalize_path`; nginx matches its
/// locations on the normalised path too).
///
/// - Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, and the
///   hex digits of the other encodings upper-cased (§6.2.2.1, §6.2.2.2).
/// - Dot segments are removed (§5.2.4) after that decoding, so `%2e%2e` is a `..`.
/// - `%2F` stays encoded: it is data inside a segment, never a separator.
/// - A `%` not followed by two hex digits makes the path malformed (nginx answers 400).
///
/// Empty segments (`//`) are kept: RFC 3986 keeps them, and merging them is a policy of
/// some servers (nginx's `merge_slashes`), not normalisation.
///
/// A path that RFC 3986 calls normal can still climb out of a route at a backend that
/// reads more separators than `/`: nginx decodes `%2F` before it resolves `..`, Windows
/// and IIS take `\` for `/`, Tomcat and Spring drop `;parameters` (`/public/..;/internal`).
/// A segment that any of them would read as `.` or `..` makes the path `ambiguous`: 400,
/// as Envoy can be told to do (`path_with_escaped_slashes_action: REJECT_REQUEST`).
package enum PathNormalization {
    package enum Outcome: Equatable {
        /// Already normal: forward the target as received.
        case unchanged
        /// The normal form of the path, to route and forward instead.
        case normalized([UInt8])
        /// Not a path the gateway can read: a malformed percent-encoding.
        case malformed
        /// A dot segment behind `%2F`, `%5C`, `\` or a `;parameter`: backends disagree on it.
        case ambiguous
    }

    /// The normal form of `path` (an origin-form path without its query). Paths that
    /// contain no `%` and no `/.` are normal already and are not copied.
    package static func normalize(_ path: UnsafeRawBufferPointer) -> Outcome {
        guard needsWork(path) else { return .unchanged }
        guard let decoded = decodeUnreserved(path) else { return .malformed }
        let normal = removeDotSegments(decoded)
        if hasHiddenDotSegment(normal) { return .ambiguous }
        return normal.elementsEqual(path) ? .unchanged : .normalized(normal)
    }

    package static func normalize(_ path: [UInt8]) -> Outcome {
        path.withUnsafeBytes { normalize($0) }
    }

    /// Whether the path has a percent-encoding, a segment starting with a dot, a `\` or a
    /// `;`: the only places a path can differ from its normal form or be ambiguous.
    static func needsWork<Bytes: Sequence>(_ path: Bytes) -> Bool where Bytes.Element == UInt8 {
        var previous: UInt8 = 0
        for byte in path {
            switch byte {
            case UInt8(ascii: "%"), UInt8(ascii: "\\"), UInt8(ascii: ";"): return true
            case UInt8(ascii: ".") where previous == UInt8(ascii: "/"): return true
            default: previous = byte
            }
        }
        return false
    }

    /// Whether a normal path has a piece that a backend would read as `.` or `..`: pieces
    /// split at `/`, `\`, `%2F` and `%5C`, each without its `;parameters`.
    static func hasHiddenDotSegment(_ path: [UInt8]) -> Bool {
        var pieceStart = 0
        var i = 0
        func isDots(_ end: Int) -> Bool {
            var piece = path[pieceStart..<end]
            if let parameters = piece.firstIndex(of: UInt8(ascii: ";")) { piece = piece[..<parameters] }
            return piece.elementsEqual([0x2E]) || piece.elementsEqual([0x2E, 0x2E])
        }
        while i < path.count {
            let byte = path[i]
            var separator = 0
            if byte == UInt8(ascii: "/") || byte == UInt8(ascii: "\\") {
                separator = 1
            } else if byte == UInt8(ascii: "%"), i + 2 < path.count {
                // %2F or %5C, upper case as the normal form writes them
                let code = (path[i + 1], path[i + 2])
                if code == (UInt8(ascii: "2"), UInt8(ascii: "F")) || code == (UInt8(ascii: "5"), UInt8(ascii: "C")) { separator = 3 }
            }
            if separator > 0 {
                if isDots(i) { return true }
                i += separator
                pieceStart = i
            } else {
                i += 1
            }
        }
        return isDots(path.count)
    }

    /// The path with unreserved characters decoded and other encodings' hex upper-cased;
    /// nil for a `%` without two hex digits.
    static func decodeUnreserved(_ path: UnsafeRawBufferPointer) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(path.count)
        var i = 0
        while i < path.count {
            let byte = path[i]
            guard byte == UInt8(ascii: "%") else {
                out.append(byte)
                i += 1
                continue
            }
            guard i + 2 < path.count, let high = hexValue(path[i + 1]), let low = hexValue(path[i + 2]) else { return nil }
            let decoded = high << 4 | low
            if isUnreserved(decoded) {
                out.append(decoded)
            } else {
                out.append(UInt8(ascii: "%"))
                out.append(hexDigit(high))
                out.append(hexDigit(low))
            }
            i += 3
        }
        return out
    }

    /// RFC 3986 §5.2.4 for a path that starts with `/`, by segments: `.` is dropped, `..`
    /// drops the segment before it (never above the root), and a path that ended in one of
    /// them ends with `/`.
    static func removeDotSegments(_ path: [UInt8]) -> [UInt8] {
        var segments: [ArraySlice<UInt8>] = []
        let parts = path.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false).dropFirst()  // the empty one before the first /
        var endsInDirectory = false
        for part in parts {
            endsInDirectory = false
            if part.elementsEqual([UInt8(ascii: ".")]) {
                endsInDirectory = true
            } else if part.elementsEqual([UInt8(ascii: "."), UInt8(ascii: ".")]) {
                if !segments.isEmpty { segments.removeLast() }
                endsInDirectory = true
            } else {
                segments.append(part)
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(path.count)
        for segment in segments {
            out.append(UInt8(ascii: "/"))
            out.append(contentsOf: segment)
        }
        if endsInDirectory || out.isEmpty { out.append(UInt8(ascii: "/")) }
        return out
    }

    static func isUnreserved(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            return true
        default:
            return false
        }
    }

    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return byte - UInt8(ascii: "A") + 10
        default: return nil
        }
    }

    static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "A") + value - 10
    }
}
