/// Annotations as Kubernetes' downward API mounts them (a `downwardAPI` volume item with
/// `fieldRef: metadata.annotations`): one `key="value"` a line, the value quoted as Go's
/// `strconv.Quote` quotes it. A Secret volume carries no annotations, so this file is
/// where the renewal watchdog can read cert-manager's renewal setting: the pod is
/// annotated with the `cert-manager.io/renew-before` (or `-percentage`) its Ingress or
/// Certificate has.
package struct PodAnnotations: Sendable, Hashable {
    package static let renewBeforeKey = "cert-manager.io/renew-before"
    package static let renewBeforePercentageKey = "cert-manager.io/renew-before-percentage"

    package private(set) var values: [String: String] = [:]

    package init(parsing text: String) {
        for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r\n" }) {
            guard let equals = line.firstIndex(of: "=") else { continue }
            let key = String(line[..<equals])
            let raw = line[line.index(after: equals)...]
            self.values[key] = Self.unquote(raw) ?? String(raw)
        }
    }

    /// When cert-manager renews a certificate of `lifetime` seconds, in seconds before its
    /// expiry, by cert-manager's own rule (`pki.RenewalTime`): `renew-before` when above zero
    /// and under the lifetime, else `renew-before-percentage` when within (0, 100), else a
    /// third. `setting` names what decided, nil for the default; `problem` says why a value
    /// that is present could not be used.
    package func renewBefore(lifetime: Int64) -> (seconds: Int64, setting: String?, problem: String?) {
        var problem: String?
        if let text = self.values[Self.renewBeforeKey] {
            if let seconds = Self.goDuration(text) {
                if seconds > 0, seconds < lifetime { return (seconds, "\(Self.renewBeforeKey)=\(Self.shown(text))", nil) }
            } else {
                problem = "\(Self.renewBeforeKey)=\(Self.shown(text)) is not a duration cert-manager reads (such as 360h or 720h0m0s), or is over a century"
            }
        }
        if let text = self.values[Self.renewBeforePercentageKey] {
            if let percent = Int64(text), percent > 0, percent < 100 {
                return (lifetime * percent / 100, "\(Self.renewBeforePercentageKey)=\(percent)", problem)
            }
            if Int64(text) == nil {
                problem = problem ?? "\(Self.renewBeforePercentageKey)=\(Self.shown(text)) is not a whole number"
            }
        }
        return (lifetime / 3, nil, problem)
    }

    /// A Go `time.Duration` string (`1h30m`, `360h0m0s`, `1.5h`, `-2h`, `0`) in seconds, a
    /// fraction rounded away from zero (a duration above zero stays above zero, as
    /// cert-manager compares it); nil for anything `time.ParseDuration` refuses, or more
    /// than a century either way.
    package static func goDuration(_ text: String) -> Int64? {
        var rest = Substring(text)
        var sign = 1.0
        if rest.first == "+" || rest.first == "-" {
            sign = rest.first == "-" ? -1 : 1
            rest = rest.dropFirst()
        }
        if rest == "0" { return 0 }
        guard !rest.isEmpty else { return nil }
        var total = 0.0
        while !rest.isEmpty {
            let number = rest.prefix { $0.isASCII && ($0.isNumber || $0 == ".") }
            guard !number.isEmpty, number != ".", number.filter({ $0 == "." }).count <= 1, let value = Double(number.hasPrefix(".") ? "0" + number : number)
            else { return nil }
            rest = rest.dropFirst(number.count)
            let unit = rest.prefix { !($0.isASCII && ($0.isNumber || $0 == ".")) }
            rest = rest.dropFirst(unit.count)
            let scale: Double
            switch unit {
            case "ns": scale = 1e-9
            case "us", "µs", "μs": scale = 1e-6
            case "ms": scale = 1e-3
            case "s": scale = 1
            case "m": scale = 60
            case "h": scale = 3600
            default: return nil
            }
            total += value * scale
            guard total <= Double(Self.longest) else { return nil }
        }
        return Int64(sign * total.rounded(.up))
    }

    /// A century: nothing renews further ahead.
    package static let longest: Int64 = 100 * 366 * 86_400

    /// What is shown of a value: short, without control characters.
    static func shown(_ text: String) -> String {
        let clean = String(String.UnicodeScalarView(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? "?" : $0 }))
        return clean.count > 40 ? String(clean.prefix(40)) + "..." : clean
    }

    /// A Go-quoted string's value; nil when `raw` is not one.
    static func unquote(_ raw: Substring) -> String? {
        guard raw.count >= 2, raw.first == "\"", raw.last == "\"" else { return nil }
        var out = String.UnicodeScalarView()
        var scalars = raw.dropFirst().dropLast().unicodeScalars.makeIterator()
        func hex(_ count: Int) -> Unicode.Scalar? {
            var value: UInt32 = 0
            for _ in 0..<count {
                guard let digit = scalars.next(), let nibble = UInt32(String(digit), radix: 16) else { return nil }
                value = value << 4 | nibble
            }
            return Unicode.Scalar(value)
        }
        while let scalar = scalars.next() {
            guard scalar == "\\" else { out.append(scalar); continue }
            guard let escaped = scalars.next() else { return nil }
            let decoded: Unicode.Scalar?
            switch escaped {
            case "\\", "\"", "'": decoded = escaped
            case "n": decoded = "\n"
            case "t": decoded = "\t"
            case "r": decoded = "\r"
            case "a": decoded = Unicode.Scalar(7)
            case "b": decoded = Unicode.Scalar(8)
            case "f": decoded = Unicode.Scalar(12)
            case "v": decoded = Unicode.Scalar(11)
            case "x": decoded = hex(2)
            case "u": decoded = hex(4)
            case "U": decoded = hex(8)
            default: decoded = nil
            }
            guard let decoded else { return nil }
            out.append(decoded)
        }
        return String(out)
    }
}
