import EdgeCertificates

#if canImport(Glibc)
import Glibc
#endif

/// The admin endpoint's HTML page: which certificate expires when, at a glance.
func statusPage(_ gateway: Gateway) -> String {
    let now = Int64(currentTime())
    let reports = gateway.certificateReports(now: now)
    let last = gateway.stores.map { $0.lastReload }.max { $0.time < $1.time }
    let colour: [CertificateState: String] = [
        .ok: "#2e7d32", .warning: "#ef6c00", .critical: "#c62828", .expired: "#6d0000", .notYetValid: "#616161",
    ]
    var rows = ""
    for r in reports.sorted(by: { $0.notAfter < $1.notAfter }) {
        // The chain certificate that expires first decides what is left.
        let first = r.chain.min { $0.notAfter < $1.notAfter }
        let firstNotAfter = first?.notAfter ?? r.notAfter
        let lifetime = Double(max(1, r.notAfter - r.notBefore))
        let left = min(max(0, 1 - r.lifetimeUsed), max(0, Double(firstNotAfter - now) / lifetime))
        let width = Int((left * 100).rounded())
        let earlier = first.flatMap { $0.notAfter < r.notAfter ? $0 : nil }
            .map { "<div class=\"note bad\">'\(html($0.subject))' in the chain expires first: \(isoDate($0.notAfter))</div>" } ?? ""
        let chainNote = r.chainProblem.map { "<div class=\"note bad\">chain: \(html($0))</div>" } ?? ""
        let rejectedNote = r.rejectedError.map { "<div class=\"note bad\">newest version rejected: \(html($0)) — still serving serial \(html(r.serial))</div>" } ?? ""
        rows += """
            <tr>
              <td><b>\(html(r.name))</b>\(r.isDefault ? " <span class=\"tag\">default</span>" : "")<div class="small">\(html(r.source))</div></td>
              <td>\(r.servedNames.map(html).joined(separator: "<br>"))</td>
              <td class="mono small">\(html(r.serial))</td>
              <td>\(isoDate(r.notAfter))</td>
              <td><div class="bar"><div style="width:\(width)%;background:\(colour[r.state] ?? "#999")"></div></div>
                  <div class="small">\(r.state == .expired ? "expired" : humanDuration(max(0, firstNotAfter - now)) + " left") · \(Int((r.lifetimeUsed * 100).rounded()))% of lifetime used</div>\(earlier)</td>
              <td><span class="state" style="background:\(colour[r.state] ?? "#999")">\(r.state.rawValue)</span>\(chainNote)\(rejectedNote)</td>
            </tr>

            """
    }
    let problems = gateway.stores.flatMap { $0.problems }
    let problemList = problems.isEmpty ? "<p>No rejected certificate versions.</p>" : "<ul>" + problems.map {
        "<li><b>\(html($0.name))</b>: \(html($0.error)) (since \(isoDate($0.since))\($0.servingPrevious ? ", previous version still served" : ""))</li>"
    }.joined() + "</ul>"
    return """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>edge-gateway certificates</title>
        <style>
          body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
          table { border-collapse: collapse; width: 100%; }
          th, td { text-align: left; padding: 8px 10px; border-bottom: 1px solid #ddd; vertical-align: top; }
          th { background: #f4f4f4; }
          .bar { width: 180px; height: 12px; background: #eee; border-radius: 6px; overflow: hidden; }
          .bar div { height: 100%; }
          .state { color: #fff; padding: 2px 8px; border-radius: 10px; font-size: 12px; }
          .tag { background: #e3f2fd; color: #0d47a1; padding: 1px 6px; border-radius: 8px; font-size: 11px; }
          .small { font-size: 12px; color: #666; }
          .mono { font-family: ui-monospace, monospace; }
          .note { font-size: 12px; margin-top: 4px; }
          .bad { color: #c62828; }
        </style></head>
        <body>
        <h1>edge-gateway \(gatewayVersion)</h1>
        <p>Certificates served now, soonest expiry first. Snapshot generation \(gateway.stores.map { $0.snapshot.generation }.max() ?? 0);
        last reload \(last.map { isoDate($0.time) + " UTC (" + html($0.result) + ")" } ?? "never").</p>
        <table>
        <tr><th>Lineage</th><th>Names</th><th>Serial</th><th>Not after (UTC)</th><th>Remaining</th><th>State</th></tr>
        \(rows)</table>
        <h2>Rejected versions</h2>
        \(problemList)
        <p class="small">JSON: <a href="/status/certificates">/status/certificates</a> · <a href="/status">/status</a> · Prometheus: <a href="/metrics">/metrics</a></p>
        </body></html>

        """
}

func html(_ text: String) -> String {
    var out = ""
    for ch in text {
        switch ch {
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "&": out += "&amp;"
        case "\"": out += "&quot;"
        default: out.append(ch)
        }
    }
    return out
}

/// `2026-11-27T10:00:00Z`: the RFC 3339 form JSON documents carry beside Unix times.
public func rfc3339(_ seconds: Int64) -> String {
    var t = time_t(seconds)
    var parts = tm()
    gmtime_r(&t, &parts)
    func pad(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday))T\(pad(parts.tm_hour)):\(pad(parts.tm_min)):\(pad(parts.tm_sec))Z"
}

/// `2026-11-27 10:00` in UTC.
public func isoDate(_ seconds: Int64) -> String {
    var t = time_t(seconds)
    var parts = tm()
    gmtime_r(&t, &parts)
    func pad(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return "\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday)) \(pad(parts.tm_hour)):\(pad(parts.tm_min))"
}
