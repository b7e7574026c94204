import Logging

/// Decides which renewal lines to log: when a lineage becomes overdue, then once per
/// repeat interval while it stays so, and once when that ends; a problem with the
/// renewing agent's settings once per lineage and problem. A pure state machine, like
/// `ExpiryMonitor`: the caller passes the time.
package struct RenewalMonitor: Sendable {
    package struct Line: Sendable, Equatable {
        package var level: Logger.Level
        package var name: String
        package var message: String
    }

    package var repeatSeconds: Int64 = 86_400
    private var overdueSince: [String: (serial: String, loggedAt: Int64)] = [:]
    private var problems: [String: String] = [:]

    package init() {}

    /// `observations`: each lineage's name, served serial and expectation (nil: not watched).
    package mutating func evaluate(_ observations: [(name: String, serial: String, expectation: RenewalExpectation?)], now: Int64) -> [Line] {
        var lines: [Line] = []
        var seen = Set<String>()
        for (name, serial, expectation) in observations.sorted(by: { $0.name < $1.name }) {
            seen.insert(name)
            if let problem = expectation?.problem, self.problems[name] != problem {
                lines.append(Line(level: .warning, name: name, message: "renewal of \(name): \(problem)"))
            }
            self.problems[name] = expectation?.problem
            let previous = self.overdueSince[name]
            guard let expectation, expectation.state == .overdue else {
                guard let previous else { continue }
                self.overdueSince[name] = nil
                let message: String
                if previous.serial != serial {
                    message = "\(name) renewed (serial \(serial)); renewal back on schedule"
                } else {
                    message = "\(name) no longer overdue (\(expectation.map { "renewal \($0.state.rawValue)" } ?? "not watched"))"
                }
                lines.append(Line(level: .notice, name: name, message: message))
                continue
            }
            if let previous, previous.serial == serial, now - previous.loggedAt < self.repeatSeconds { continue }
            self.overdueSince[name] = (serial, now)
            lines.append(Line(level: .warning, name: name, message: expectation.message(lineage: name, now: now)))
        }
        for name in self.overdueSince.keys where !seen.contains(name) { self.overdueSince[name] = nil }
        for name in self.problems.keys where !seen.contains(name) { self.problems[name] = nil }
        return lines
    }
}
