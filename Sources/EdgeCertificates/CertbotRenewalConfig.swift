/// What certbot's `renewal/<name>.conf` says about when it renews a lineage.
///
/// certbot writes the file itself and reads it with configobj: `key = value` lines (keys
/// case-sensitive), `#` comments, `[section]` headers; an unquoted value holding a comma
/// is a list. Three settings matter here:
/// - `renew_before_expiry` at the top: renew once expiry is closer than this;
/// - `version`: the certbot that last wrote the file (see `defaultRenewBefore`);
/// - `autorenew` under `[renewalparams]`: `False` takes the lineage out of `certbot renew`.
///
/// Parsing is pure (text in, value out) so the fuzz target and the unit tests need no
/// files; what certbot 2.1 was seen to make of each form is in `RenewalScheduleTests`.
package struct CertbotRenewalConfig: Sendable, Hashable {
    /// The setting as written, when present (at most 100 characters, control characters
    /// dropped: it is shown in logs and status views).
    package var renewBeforeText: String?
    /// The setting in seconds, as certbot reads it (negative: after expiry); nil when absent.
    package var renewBeforeSeconds: Int64?
    /// Why certbot will not renew by the setting, or not renew at all: a value it cannot
    /// read, or a file it cannot parse.
    package var problem: String?
    /// The `version` line: the certbot that last wrote the file.
    package var version: String?
    /// False when `[renewalparams]` has `autorenew = False`.
    package var autorenew = true

    package init() {}

    /// Reads the file's text. Unknown keys and sections are ignored, as certbot ignores them.
    package init(parsing text: String) {
        var section = ""
        var seen = Set<String>()
        var text = Substring(text)
        if text.hasPrefix("\u{FEFF}") { text = text.dropFirst() }  // configobj drops a BOM
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingWhitespace()
            if line.isEmpty || line.hasPrefix("#") { continue }
            if line.hasPrefix("[") {
                section = String(line.drop { $0 == "[" }.prefix { $0 != "]" }).trimmingWhitespace()
                continue
            }
            guard let equals = line.firstIndex(of: "=") else {
                self.fileProblem(line: number + 1, "no '=' in '\(shown(line))'")
                continue
            }
            let key = String(line[..<equals]).trimmingWhitespace()
            guard seen.insert(section + "\u{0}" + key).inserted else {
                self.fileProblem(line: number + 1, "'\(shown(key))' set twice")
                continue
            }
            let (value, isList) = Self.value(String(line[line.index(after: equals)...]))
            switch (section, key) {
            case ("", "renew_before_expiry"):
                self.renewBefore(value, isList: isList)
            case ("", "version"):
                self.version = shown(value)
            case ("renewalparams", "autorenew"):
                // configobj's as_bool; anything else is an error certbot stops on, read here as on.
                self.autorenew = !["false", "no", "off", "0"].contains(value.lowercased())
            default:
                continue
            }
        }
    }

    private mutating func renewBefore(_ value: String, isList: Bool) {
        let text = shown(value)
        self.renewBeforeText = text
        if isList {
            self.renewBeforeSeconds = 0
            self.problem = self.problem ?? "renew_before_expiry = \(text): an unquoted comma makes it a list, on which certbot fails: `certbot renew` does not renew this lineage"
        } else if let seconds = Self.interval(value) {
            self.renewBeforeSeconds = seconds
            if seconds < 0 {
                self.problem = self.problem ?? "renew_before_expiry = \(text) is negative: certbot renews only \(humanDuration(-seconds)) after expiry"
            }
        } else {
            self.renewBeforeSeconds = 0
            self.problem = self.problem ?? "renew_before_expiry = \(text) is not an interval certbot reads (such as '30 days' or '12 hours'): "
                + "certbot takes it as 0 and renews only once the certificate has expired"
        }
    }

    /// configobj refuses the whole file: certbot reports it broken and skips the lineage.
    private mutating func fileProblem(line: Int, _ what: String) {
        guard self.problem?.hasPrefix("line ") != true else { return }
        self.problem = "line \(line): \(what): certbot cannot parse this file and skips the lineage (`certbot renew` does not renew it)"
    }

    /// A value as configobj reads it: quotes dropped, an inline comment dropped, and
    /// whether an unquoted comma made it a list.
    private static func value(_ raw: String) -> (String, isList: Bool) {
        let value = raw.trimmingWhitespace()
        if let quote = value.first, quote == "\"" || quote == "'" {
            let body = value.dropFirst()
            if let end = body.firstIndex(of: quote) { return (String(body[..<end]), false) }
        }
        let unquoted = value.prefix { $0 != "#" }.trimmingWhitespace()
        return (unquoted, unquoted.contains(","))
    }

    /// The default certbot applies when the file sets no `renew_before_expiry`, in seconds
    /// before expiry for a certificate of `lifetime` seconds: 30 days before certbot 4.0;
    /// from 4.0, a third of the lifetime (half under 10 days). certbot applies the default of
    /// the version that runs, which may be newer than the one that last wrote the file (the
    /// `version` line changes at the next renewal): for an older file, the later of the two,
    /// so that an upgrade never makes a renewal look late.
    package func defaultRenewBefore(lifetime: Int64) -> Int64 {
        let fraction = lifetime < 10 * 86_400 ? lifetime / 2 : lifetime / 3
        return Self.isVersion4OrLater(self.version) ? fraction : min(30 * 86_400, fraction)
    }

    static func isVersion4OrLater(_ version: String?) -> Bool {
        guard let major = version?.split(separator: ".").first.flatMap({ Int($0) }) else { return false }
        return major >= 4
    }

    /// The longest interval read (a century); longer ones overflow in certbot, which then reads 0.
    package static let longestInterval: Int64 = 36_500 * 86_400

    /// An interval as certbot's parser (parsedatetime) reads the usual forms: a bare
    /// number of days (`10`), or amounts with units, possibly several (`3 days 12 hours`,
    /// `2 weeks`, `90 minutes`, `30days`, `12h`), negative with a leading `-`. A month
    /// counts 28 days and a year 365, the least parsedatetime's calendar makes of them:
    /// the renewal expected is then never earlier than certbot's. nil when certbot would
    /// not read it (it then takes 0).
    package static func interval(_ text: String) -> Int64? {
        var rest = Substring(text.trimmingWhitespace().lowercased())
        var sign = 1.0
        if rest.hasPrefix("-") {
            sign = -1
            rest = rest.dropFirst().drop { $0 == " " }
        }
        if !rest.isEmpty, rest.allSatisfy(\.isASCIIDigit) {
            guard rest.count <= 9, let days = Int64(rest), days * 86_400 <= Self.longestInterval else { return nil }
            return Int64(sign) * days * 86_400
        }
        var total = 0.0
        var parts = 0
        while true {
            rest = rest.drop { $0 == " " || $0 == "," || $0 == "\t" }
            if parts > 0, rest.hasPrefix("and ") { rest = rest.dropFirst(4).drop { $0 == " " } }
            if rest.isEmpty { break }
            let number = rest.prefix { $0.isASCIIDigit || $0 == "." }
            guard !number.isEmpty, number.count <= 12, let amount = Double(number) else { return nil }
            rest = rest.dropFirst(number.count).drop { $0 == " " }
            let word = rest.prefix { $0.isLetter }
            rest = rest.dropFirst(word.count)
            // "1d2h" is 0 to certbot: amounts are separated.
            guard let unit = Self.units[String(word)], rest.isEmpty || rest.first == " " || rest.first == "," || rest.first == "\t" else { return nil }
            total += amount * unit
            parts += 1
            guard total <= Double(Self.longestInterval) else { return nil }
        }
        return parts == 0 ? nil : Int64(sign * total)
    }

    private static let units: [String: Double] = {
        var units: [String: Double] = [:]
        for (names, seconds) in [
            (["s", "sec", "secs", "second", "seconds"], 1.0), (["m", "min", "mins", "minute", "minutes"], 60),
            (["h", "hr", "hour", "hours"], 3600), (["d", "day", "days"], 86_400), (["w", "wk", "week", "weeks"], 7 * 86_400),
            (["mth", "month", "months"], 28 * 86_400), (["y", "yr", "year", "years"], 365 * 86_400),
        ] {
            for name in names { units[name] = seconds }
        }
        return units
    }()

    /// certbot's file for a lineage of a `live/` directory: `<config dir>/renewal/<name>.conf`.
    package static func path(liveDirectory: String, lineage: String) -> String {
        parentDirectory(liveDirectory) + "/renewal/" + lineage + ".conf"
    }
}

/// A value from the file as logs and status views show it: control characters dropped,
/// at most 100 characters (the file is the operator's, its size is not).
private func shown<S: StringProtocol>(_ text: S) -> String {
    let clean = String(String.UnicodeScalarView(text.unicodeScalars.filter { $0.value >= 0x20 && $0.value != 0x7F }))
    return clean.count > 100 ? String(clean.prefix(100)) + "..." : clean
}

private extension StringProtocol {
    func trimmingWhitespace() -> String {
        String(self.drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed().drop { $0 == " " || $0 == "\t" || $0 == "\r" }.reversed())
    }
}

private extension Character {
    var isASCIIDigit: Bool { self >= "0" && self <= "9" }
}
