import Yams

/// A configuration problem, naming the key path and the reason.
package struct ConfigError: Error, CustomStringConvertible, Sendable, Hashable {
    package var path: String
    package var message: String

    package init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    package var description: String { self.path.isEmpty ? self.message : "\(self.path): \(self.message)" }

    /// "file: key: reason", or "file:line:column: reason" (as compilers say it, which editors
    /// and terminals turn into a link) when the path is a position in the file.
    func inFile(_ file: String) -> String {
        let isPosition = !self.path.isEmpty && self.path.allSatisfy { $0.isNumber || $0 == ":" }
        return isPosition ? "\(file):\(self)" : "\(file): \(self)"
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int?
    init(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) {
        self.stringValue = "\(intValue)"
        self.intValue = intValue
    }
}

func keyPath(_ path: [any CodingKey]) -> String {
    var result = ""
    for key in path {
        if let index = key.intValue {
            result += "[\(index)]"
        } else {
            result += result.isEmpty ? key.stringValue : "." + key.stringValue
        }
    }
    return result
}

/// Every problem the decoding of one file found, so that `check` and `run` list them all
/// at once instead of the first (a misspelt key, then the next after it is fixed). Passed
/// in the decoder's user info: unknown keys are recorded and decoding goes on; an
/// optional key whose value does not decode is recorded and takes its default
/// (`decodeRecorded`); a listener, route or upstream whose required key is missing or bad
/// is recorded and left out (`Recorded`), so the rest of the file is still read. With
/// unknown keys only, nothing is left out, so the gateway's own checks (addresses,
/// references, certificate files) run too and add theirs; once a value is missing they
/// would report its absence or its default, and are not run.
final class DecodingProblems {
    static let key = CodingUserInfoKey(rawValue: "edge-gateway.decoding-problems")!
    private(set) var errors: [ConfigError] = []
    /// Something failed to decode and was left out of the configuration.
    private(set) var incomplete = false

    func record(_ error: any Error) {
        if let refused = error as? RefusedChoice {
            // A word outside a key's choices: the key's default stands in, nothing is left
            // out, and the gateway's own checks still run (as with an unknown key).
            self.add(refused.error)
            return
        }
        self.incomplete = true
        self.add(describe(decodingError: error))
    }

    func recordUnknownKey(_ error: ConfigError) {
        self.add(error)
    }

    private func add(_ problem: ConfigError) {
        if !self.errors.contains(problem) { self.errors.append(problem) }
    }
}

/// Several problems in one file, one line each.
package struct ConfigErrors: Error, CustomStringConvertible, Sendable {
    package var errors: [ConfigError]
    package var description: String { self.errors.map(\.description).joined(separator: "\n") }
}

/// A value that records why it could not be decoded instead of failing what holds it.
struct Recorded<T: Decodable>: Decodable {
    var value: T?

    init(from decoder: any Decoder) throws {
        guard let problems = decoder.problems else {
            self.value = try T(from: decoder)
            return
        }
        do {
            self.value = try T(from: decoder)
        } catch {
            problems.record(error)
            self.value = nil
        }
    }
}

extension KeyedDecodingContainer {
    /// The value for `key`, nil when absent (`decodeIfPresent`); when it does not decode
    /// and problems are being collected, the problem is recorded and the value is nil, so
    /// the key's default stands in while the rest of the file is read.
    func decodeRecorded<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T? {
        try self.decodeIfPresent(Recorded<T>.self, forKey: key)?.value
    }
}

extension Decoder {
    var problems: DecodingProblems? { self.userInfo[DecodingProblems.key] as? DecodingProblems }

    /// Rejects keys the type does not know, so a typo is an error and never ignored:
    /// recorded, every one of them, when problems are collected, else thrown.
    func rejectUnknownKeys<K: CodingKey & CaseIterable>(_ known: K.Type) throws {
        guard let container = try? self.container(keyedBy: AnyKey.self) else { return }
        let allowed = K.allCases.map(\.stringValue)
        for key in container.allKeys where !allowed.contains(key.stringValue) {
            let hint = allowed.min { editDistance($0, key.stringValue) < editDistance($1, key.stringValue) }
            var message = "unknown key '\(key.stringValue)'"
            if let hint, editDistance(hint, key.stringValue) <= 2 { message += " (did you mean '\(hint)'?)" }
            message += "; allowed: \(allowed.joined(separator: ", "))"
            let error = ConfigError(path: keyPath(self.codingPath + [key]), message: message)
            guard let problems = self.problems else { throw error }
            problems.recordUnknownKey(error)
        }
    }
}

private func editDistance(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var previous = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in 1...max(b.count, 1) where !b.isEmpty {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return a.isEmpty ? b.count : previous[b.count]
}

/// A time span written like `200ms`, `10s`, `5m`, `12h` or a number of seconds.
package struct Duration: Decodable, Sendable, Hashable, CustomStringConvertible {
    package var nanoseconds: Int64

    package init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }
    package static func seconds(_ s: Int64) -> Duration { Duration(nanoseconds: s * 1_000_000_000) }
    package static func milliseconds(_ ms: Int64) -> Duration { Duration(nanoseconds: ms * 1_000_000) }

    package init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let seconds = try? container.decode(Double.self) {
            guard let parsed = Duration(seconds: seconds, scale: 1e9) else {
                throw ConfigError(path: keyPath(decoder.codingPath), message: "invalid duration \(seconds) (a number of seconds from 0 to 100 years)")
            }
            self = parsed
            return
        }
        let text = try container.decode(String.self)
        guard let parsed = Duration.parse(text) else {
            throw ConfigError(path: keyPath(decoder.codingPath), message: "invalid duration '\(text)' (use e.g. 500ms, 10s, 5m, 12h)")
        }
        self = parsed
    }

    package static func parse(_ text: String) -> Duration? {
        let units: [(String, Double)] = [("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9), ("d", 86400e9)]
        let trimmed = text.trimmingCharacters(in: " ")
        for (suffix, scale) in units where trimmed.hasSuffix(suffix) {
            let number = trimmed.dropLast(suffix.count)
            // "ms" must not be read as minutes + "s".
            if suffix == "s", number.hasSuffix("m") { continue }
            return Double(number).flatMap { Duration(seconds: $0, scale: scale) }
        }
        return Double(trimmed).flatMap { Duration(seconds: $0, scale: 1e9) }
    }

    /// `value` units of `scale` nanoseconds; nil when negative, not a number, or beyond
    /// 100 years (`inf`, `1e30s`: converting them to nanoseconds would trap; found by
    /// the configuration fuzz target).
    init?(seconds value: Double, scale: Double) {
        let nanoseconds = value * scale
        guard nanoseconds >= 0, nanoseconds <= 100 * 365 * 86400e9 else { return nil }
        self.init(nanoseconds: Int64(nanoseconds))
    }

    package var description: String {
        if self.nanoseconds % 1_000_000_000 == 0 { return "\(self.nanoseconds / 1_000_000_000)s" }
        return "\(self.nanoseconds / 1_000_000)ms"
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var s = Substring(self)
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return String(s)
    }
}

/// Turns Yams and Decodable errors into one line naming the key.
func describe(decodingError error: any Error) -> ConfigError {
    switch error {
    case let error as ConfigError:
        return error
    case let refused as RefusedChoice:
        return refused.error
    case let DecodingError.keyNotFound(key, context):
        return ConfigError(path: keyPath(context.codingPath + [key]), message: "required key is missing")
    case let DecodingError.typeMismatch(type, context):
        return ConfigError(path: keyPath(context.codingPath), message: "expected \(friendly(type))")
    case let DecodingError.valueNotFound(type, context):
        return ConfigError(path: keyPath(context.codingPath), message: "expected \(friendly(type)), found nothing")
    case let DecodingError.dataCorrupted(context):
        if let underlying = context.underlyingError as? ConfigError { return underlying }
        // Yams wraps its syntax errors (with their position) in dataCorrupted.
        if let underlying = context.underlyingError as? YamlError { return describe(yamlError: underlying) }
        return ConfigError(path: keyPath(context.codingPath), message: context.debugDescription)
    case let error as YamlError:
        return describe(yamlError: error)
    default:
        return ConfigError(path: "", message: "\(error)")
    }
}

private func friendly(_ type: Any.Type) -> String {
    switch type {
    case is String.Type: return "a string"
    case is Int.Type, is Double.Type: return "a number"
    case is Bool.Type: return "true or false"
    default:
        let name = "\(type)"
        if name.hasPrefix("Array") { return "a list" }
        if name.hasPrefix("Dictionary") { return "a mapping" }
        return "a mapping (\(name))"
    }
}

/// A YAML text's lines, CRLF or LF (Swift reads "\r\n" as one character, not a "\n").
func yamlLines(_ yaml: String) -> [Substring] {
    yaml.split(omittingEmptySubsequences: false) { $0 == "\n" || $0 == "\r\n" }
}

/// Where a block mapping's key that first appears at `first` appears again: the next line
/// at the same indentation that starts with the key (bare or quoted) before the mapping
/// ends. Nil for what this cannot see (a flow mapping's `{ a: 1, a: 2 }`).
func repeatedKey(_ key: String, after first: Mark, in yaml: String) -> (line: Int, column: Int)? {
    let lines = yamlLines(yaml)
    let indent = first.column - 1
    guard first.line >= 1, first.line < lines.count else { return nil }
    for index in first.line..<lines.count {
        let line = lines[index]
        let content = line.drop { $0 == " " }
        if content.isEmpty || content.hasPrefix("#") { continue }
        let column = line.count - content.count
        if column < indent { return nil }  // the mapping ended
        for written in [key, "\"\(key)\"", "'\(key)'"] where content.hasPrefix(written + ":") {
            // `a:` but not `a:b:` (a key of its own): the colon ends the key before a space or the line's end.
            let after = content.dropFirst(written.count + 1)
            if column == indent, after.isEmpty || after.first == " " || after.first == "\t" { return (index + 1, column + 1) }
        }
    }
    return nil
}

/// A YAML syntax error as `line:column: invalid YAML: reason`, then the offending line and
/// a caret under the column (the caller puts the file name first).
func describe(yamlError error: YamlError) -> ConfigError {
    func located(_ line: Int, _ column: Int, _ reason: String, _ yaml: String) -> ConfigError {
        let lines = yamlLines(yaml)
        var message = "invalid YAML: \(reason)"
        if line >= 1, line <= lines.count {
            // A tab shown as one space, so that the caret stays under its column.
            let text = lines[line - 1].replacingOccurrences(of: "\t", with: " ")
            message += "\n  \(text)\n  \(String(repeating: " ", count: max(0, column - 1)))^"
        }
        return ConfigError(path: "\(line):\(column)", message: message)
    }
    func reason(_ context: YamlError.Context?, _ problem: String) -> String {
        guard let context else { return problem }
        return "\(problem) (\(context.text) at line \(context.mark.line), column \(context.mark.column))"
    }
    switch error {
    case let .scanner(context, problem, mark, yaml), let .parser(context, problem, mark, yaml), let .composer(context, problem, mark, yaml):
        return located(mark.line, mark.column, reason(context, problem), yaml)
    case let .reader(problem, offset, _, yaml):
        guard let offset else { return ConfigError(path: "", message: "invalid YAML: \(problem)") }
        let before = yaml.utf8.prefix(offset)
        let line = before.filter { $0 == 0x0A }.count + 1
        let column = before.count - (before.lastIndex(of: 0x0A).map { before.distance(from: before.startIndex, to: $0) + 1 } ?? 0) + 1
        return located(line, column, problem, yaml)
    case let .duplicatedKeysInMapping(duplicates, context):
        // Yams marks the first of the two and carries the whole file as its context: point
        // at the second, where the mistake usually is, and name the first.
        let keys = duplicates.sorted()
        let key = keys.first ?? ""
        let others = keys.count > 1 ? "; also duplicated: " + keys.dropFirst().map { "'\($0)'" }.joined(separator: ", ") : ""
        let first = context.mark
        guard let second = repeatedKey(key, after: first, in: context.text) else {
            return located(first.line, first.column, "duplicate key '\(key)'\(others)", context.text)
        }
        return located(second.line, second.column, "duplicate key '\(key)' (first at line \(first.line))\(others)", context.text)
    default:
        return ConfigError(path: "", message: "invalid YAML: \(error)")
    }
}
