import EdgeCertificates
import Foundation

/// `edge-gateway status`: the `/status` document as an operator reads it, beside `certs`'
/// table: listeners, certificates soonest expiry first with dates, upstream health, the
/// last reloads. `--json` prints the document itself.
package enum StatusSummary {
    struct Unreadable: Error, CustomStringConvertible {
        var description: String
    }

    package static func text(statusJSON: String, now: Int64) throws -> String {
        guard let status = try? JSONSerialization.jsonObject(with: Data(statusJSON.utf8)) as? [String: Any] else {
            throw Unreadable(description: "the admin endpoint's /status is not a JSON object")
        }
        var out: [String] = []
        let uptime = (status["uptime_seconds"] as? Int).map { humanDuration(Int64($0)) } ?? "?"
        out.append("edge-gateway \(status["version"] as? String ?? "?"), up \(uptime), \((status["ready"] as? Bool) == true ? "ready" : "NOT READY")")

        out.append("")
        out.append("LISTENERS")
        var rows: [[String]] = []
        for listener in status["listeners"] as? [[String: Any]] ?? [] {
            var kind = (listener["tls"] as? Bool) == true ? "TLS \(listener["tls_profile"] as? String ?? "")" : "plain HTTP"
            if (listener["h2"] as? Bool) == true { kind += ", h2" }
            if (listener["mutual_tls"] as? Bool) == true { kind += ", mutual TLS" }
            if (listener["proxy_protocol"] as? Bool) == true { kind += ", PROXY protocol" }
            let port = (listener["port"] as? Int).map { " (port \($0))" } ?? ""
            rows.append([listener["name"] as? String ?? "?", (listener["address"] as? String ?? "?") + port, kind])
        }
        out.append(contentsOf: table(rows))

        out.append("")
        out.append("CERTIFICATES (soonest expiry first)")
        let certificates = (status["certificates"] as? [[String: Any]] ?? []).sorted {
            ($0["not_after"] as? Int ?? 0) < ($1["not_after"] as? Int ?? 0)
        }
        rows = [["NAME", "NOT AFTER (UTC)", "REMAINING", "STATE", "RENEWAL"]]
        for certificate in certificates {
            let notAfter = Int64(certificate["not_after"] as? Int ?? 0)
            let state = certificate["state"] as? String ?? "?"
            let renewal = certificate["renewal"] as? [String: Any]
            // As `certs` shows it.
            let renewalCell = renewal.map { r -> String in
                let expected = Int64(r["expected_at"] as? Int ?? 0)
                switch r["state"] as? String {
                case "scheduled": return "in " + humanDuration(expected - now)
                case "due": return "due " + humanDuration(now - expected) + " ago"
                case "overdue": return "OVERDUE " + humanDuration(now - expected)
                case "disabled": return "autorenew off"
                case let other: return other ?? "?"
                }
            } ?? "-"
            rows.append([certificate["name"] as? String ?? "?", isoDate(notAfter), state == "expired" ? "EXPIRED" : humanDuration(notAfter - now), state, renewalCell])
        }
        out.append(contentsOf: certificates.isEmpty ? ["  none"] : table(rows))
        for certificate in certificates {
            let renewal = certificate["renewal"] as? [String: Any]
            if let message = renewal?["message"] as? String { out.append("  OVERDUE  \(message)") }
            if let problem = renewal?["problem"] as? String { out.append("  RENEWAL  \(certificate["name"] as? String ?? "?"): \(problem)") }
            let name = certificate["name"] as? String ?? "?"
            if let listeners = certificate["served_mismatch"] as? [String], !listeners.isEmpty {
                out.append("  MISMATCH \(name): \(listeners.joined(separator: ", ")) served another certificate than the one published")
            }
            if let ocsp = certificate["ocsp_problem"] as? [String: Any] {
                out.append("  OCSP     \(name): \((ocsp["level"] as? String ?? "?") == "critical" ? "CRITICAL" : "warning"): \(ocsp["reason"] as? String ?? "?")")
            }
        }
        for list in status["revocation_lists_stale"] as? [[String: Any]] ?? [] {
            let strict = (list["crl_strict"] as? Bool) == true ? ", refusing (crl_strict)" : ""
            out.append("  STALE    \(list["file"] as? String ?? "?") (\(list["used_by"] as? String ?? "?")): past its next update\(strict)")
        }
        for problem in status["certificate_problems"] as? [[String: Any]] ?? [] {
            let (name, error) = (problem["name"] as? String ?? "?", problem["error"] as? String ?? "?")
            if CertificateProblem.isAwaitedDirectory(name: name, error: error, servingPrevious: problem["serving_previous"] as? Bool == true) {
                out.append("  WAITING  \(name): no such directory yet; watched for, served once certbot creates it")
                continue
            }
            let previous = (problem["serving_previous"] as? Bool) == true ? " (serving the previous version)" : ""
            out.append("  REJECTED \(name): \(error)\(previous)")
        }

        out.append("")
        out.append("UPSTREAMS")
        rows = []
        for group in status["upstreams"] as? [[String: Any]] ?? [] {
            for backend in group["backends"] as? [[String: Any]] ?? [] {
                let requests = backend["requests"] as? Int ?? 0
                let reuse = backend["reuse_ratio"] as? Double ?? 0
                let error = (backend["last_error"] as? String).map { "last error: \($0)" } ?? ""
                rows.append([group["name"] as? String ?? "?", backend["address"] as? String ?? "?", backend["health"] as? String ?? "?",
                             "\(requests) requests, \(Int((reuse * 100).rounded())) % reused", error])
            }
        }
        out.append(contentsOf: rows.isEmpty ? ["  none"] : table(rows))

        out.append("")
        if let reload = status["last_reload"] as? [String: Any], let time = reload["time"] as? Int, time > 0 {
            out.append("Last certificate reload: \(isoDate(Int64(time))) UTC, \(reload["result"] as? String ?? "?")")
        } else {
            out.append("Last certificate reload: none since start")
        }
        if let reload = status["config_reload"] as? [String: Any], let time = reload["time"] as? Int {
            let error = (reload["error"] as? String).map { ": \($0)" } ?? ""
            out.append("Last configuration reload: \(isoDate(Int64(time))) UTC, \(reload["result"] as? String ?? "?")\(error)")
        } else {
            out.append("Last configuration reload: none since start")
        }
        return out.joined(separator: "\n") + "\n"
    }

    /// Columns padded to their widest cell, indented by two spaces.
    private static func table(_ rows: [[String]]) -> [String] {
        guard let columns = rows.map(\.count).max() else { return [] }
        let widths = (0..<columns).map { column in rows.map { column < $0.count ? $0[column].count : 0 }.max() ?? 0 }
        return rows.map { row in
            "  " + row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
            }.joined(separator: "  ").trimmingCharacters(in: .whitespaces)
        }
    }
}
