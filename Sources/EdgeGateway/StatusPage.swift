import EdgeCertificates

#if canImport(Glibc)
import Glibc
#endif

/// The admin endpoint's HTML page: the page an operator keeps open during a renewal. Which
/// certificate expires when (each chain certificate too), the listeners, the upstream
/// groups' health, and the latest publications with what changed and what was rejected.
/// One self-contained response (no external assets, every value escaped); it refreshes its
/// content every 10 s by fetching itself, without reloading the page.
func statusPage(_ gateway: Gateway) -> String {
    let now = Int64(currentTime())
    let reports = gateway.certificateReports(now: now)
    let last = gateway.stores.map { $0.lastReload }.max { $0.time < $1.time }
    var rows = ""
    for r in reports.sorted(by: { $0.notAfter < $1.notAfter }) {
        // The chain certificate that expires first decides what is left.
        let first = r.chain.min { $0.notAfter < $1.notAfter }
        let firstNotAfter = first?.notAfter ?? r.notAfter
        let lifetime = Double(max(1, r.notAfter - r.notBefore))
        let left = min(max(0, 1 - r.lifetimeUsed), max(0, Double(firstNotAfter - now) / lifetime))
        let width = Int((left * 100).rounded())
        let earlier = first.flatMap { $0.notAfter < r.notAfter ? $0 : nil }
            .map { "<div class=\"note bad\">'\(html($0.subject))' in the chain expires first: \(isoDate($0.notAfter)) UTC</div>" } ?? ""
        let chainNote = r.chainProblem.map { "<div class=\"note bad\">chain: \(html($0))</div>" } ?? ""
        let rejectedNote = r.rejectedError.map { "<div class=\"note bad\">newest version rejected: \(html($0)) — still serving serial \(html(r.serial))</div>" } ?? ""
        // What the listeners served for it when last checked (`ServedProof`).
        let servedNote = gateway.servedProof.checks(for: r.name).map { check -> String in
            switch check.matches {
            case true?: return "<div class=\"note small\">served on \(html(check.listener)) ✓ \(isoDate(check.checkedAt)) UTC</div>"
            case false?:
                return "<div class=\"note bad\">served on \(html(check.listener)): ANOTHER certificate (\(html(String((check.seen?.first ?? "").prefix(23))))…), "
                    + "not the published one</div>"
            case nil: return "<div class=\"note small\">served on \(html(check.listener)): not checked (\(html(check.error ?? "")))</div>"
            }
        }.joined()
        // When the renewing agent should renew it (`RenewalExpectation`).
        let renewalNote = r.renewal.map { renewal -> String in
            switch renewal.state {
            case .scheduled:
                return "<div class=\"note small\">renewal expected \(isoDate(renewal.expectedAt)) UTC (in \(humanDuration(renewal.expectedAt - now)))</div>"
            case .due:
                return "<div class=\"note small\">renewal due since \(isoDate(renewal.expectedAt)) UTC; "
                    + "overdue in \(humanDuration(renewal.expectedAt + renewal.graceSeconds - now))</div>"
            case .overdue:
                return "<div class=\"note bad\">RENEWAL OVERDUE: \(html(renewal.message(lineage: r.name, now: now)))</div>"
            case .disabled:
                return "<div class=\"note small\">renewal off (\(html(renewal.basis.agent)) autorenew = False)</div>"
            case .unknown:
                return "<div class=\"note small\">renewal time unknown</div>"
            }
        }.map { note in note + (r.renewal?.problem.map { "<div class=\"note bad\">renewal: \(html($0))</div>" } ?? "") } ?? ""
        // OCSP stapling, for a certificate whose AIA names a responder (`OCSPStapler`).
        let ocspNote = gateway.ocspStapler.state(fingerprint: r.sha256Fingerprint).map { stapling -> String in
            let (level, reason) = stapling.level(now: now)
            if let stapled = stapling.stapled(now: now), level == .ok {
                return "<div class=\"note small\">OCSP stapled (\(html(stapling.source?.rawValue ?? ""))), next update "
                    + "\(stapled.nextUpdate.map { isoDate($0) + " UTC" } ?? "none")</div>"
            }
            guard let reason else { return "<div class=\"note small\">OCSP: \(html(stapling.state(now: now)))</div>" }
            return "<div class=\"note \(level == .critical ? "bad" : "warn")\">OCSP \(level == .critical ? "CRITICAL" : "warning"): \(html(reason))</div>"
        } ?? ""
        let chain = r.chain.map {
            "<li>\(html($0.subject)) <span class=\"small\">— not after \(isoDate($0.notAfter)) UTC, \(html($0.state.rawValue))</span></li>"
        }.joined()
        rows += """
            <tr>
              <td><b>\(html(r.name))</b>\(r.isDefault ? " <span class=\"tag\">default</span>" : "")<div class="small">\(html(r.source))</div></td>
              <td>\(r.servedNames.map(html).joined(separator: "<br>"))</td>
              <td class="mono small">\(html(r.serial))</td>
              <td>\(isoDate(r.notAfter))<details data-key="\(html(r.name))"><summary class="small">chain (\(r.chain.count))</summary><ul class="small">\(chain)</ul></details></td>
              <td><div class="bar"><div style="width:\(width)%;background:\(stateColour(r.state))"></div></div>
                  <div class="small">\(r.state == .expired ? "expired" : humanDuration(max(0, firstNotAfter - now)) + " left") · \(Int((r.lifetimeUsed * 100).rounded()))% of lifetime used</div>\(earlier)</td>
              <td><span class="state" style="background:\(stateColour(r.state))">\(r.state.rawValue)</span>\(chainNote)\(rejectedNote)\(renewalNote)\(ocspNote)\(servedNote)</td>
            </tr>

            """
    }
    // CRLs: a stale one is a warning (`RevocationListStatus`).
    let crls = RevocationListStatus.files(gateway.stores, groups: gateway.groups)
    let crlList = crls.isEmpty ? "" : "<h2>Revocation lists</h2><ul>" + crls.map { file in
        let lists = file.lists.lists.map { list -> String in
            let next = list.nextUpdate.map { "next update \(isoDate($0)) UTC" } ?? "no next update"
            let stale = list.isStale(now: now) ? " <span class=\"bad\">STALE: past its next update\(file.strict ? (file.usedBy == "client_auth" ? ", clients refused" : ", upstream refused") + " (crl_strict)" : "")</span>" : ""
            return "\(html(list.issuer)): \(list.revokedCount) revoked, \(next)\(stale)"
        }.joined(separator: "; ")
        return "<li><b>\(html(file.path))</b> (\(html(file.usedBy)), \(file.chain ? "chain" : "leaf")): \(lists)</li>"
    }.joined() + "</ul>"
    let problems = gateway.stores.flatMap { $0.problems }
    let problemList = problems.isEmpty ? "<p>No rejected certificate versions.</p>" : "<ul>" + problems.map {
        if $0.isAwaitedDirectory {
            return "<li><b>\(html($0.name))</b>: waiting for certbot (no such directory yet; watched for, since \(isoDate($0.since)) UTC)</li>"
        }
        return "<li><b>\(html($0.name))</b>: \(html($0.error)) (since \(isoDate($0.since)) UTC\($0.servingPrevious ? ", previous version still served" : ""))</li>"
    }.joined() + "</ul>"
    let configReload = gateway.configStatus.lastOutcome.map {
        "; configuration reload \(isoDate($0.time)) UTC: \(html($0.result))" + ($0.error.map { " <span class=\"bad\">\(html($0))</span>" } ?? "")
    } ?? ""
    return """
        <!doctype html>
        <html lang="en"><head><meta charset="utf-8"><title>edge-gateway status</title>
        <style>
          body { font: 14px system-ui, sans-serif; margin: 24px; color: #222; }
          table { border-collapse: collapse; width: 100%; margin-bottom: 12px; }
          th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #ddd; vertical-align: top; }
          th { background: #f4f4f4; }
          h2 { margin-top: 28px; font-size: 18px; }
          .bar { width: 180px; height: 12px; background: #eee; border-radius: 6px; overflow: hidden; }
          .bar div { height: 100%; }
          .state { color: #fff; padding: 2px 8px; border-radius: 10px; font-size: 12px; }
          .tag { background: #e3f2fd; color: #0d47a1; padding: 1px 6px; border-radius: 8px; font-size: 11px; }
          .small { font-size: 12px; color: #666; }
          .mono { font-family: ui-monospace, monospace; }
          .note { font-size: 12px; margin-top: 4px; }
          .bad { color: #c62828; }
          .warn { color: #e65100; }
          .up { color: #2e7d32; }
          ul { margin: 4px 0; padding-left: 18px; }
        </style></head>
        <body>
        <div id="live">
        <h1>edge-gateway \(gatewayVersion)</h1>
        <p>Up \(humanDuration(Int64(currentTime() - gateway.startTime))), \(gateway.isReady ? "ready" : "<span class=\"bad\">not ready</span>").
        Snapshot generation \(gateway.stores.map { $0.snapshot.generation }.max() ?? 0);
        last certificate reload \(last.map { isoDate($0.time) + " UTC (" + html($0.result) + ")" } ?? "never")\(configReload).
        <span class="small">Generated \(isoDate(now)) UTC; refreshed every 10 s.</span></p>
        <h2>Certificates, soonest expiry first</h2>
        <table>
        <tr><th>Lineage</th><th>Names</th><th>Serial</th><th>Not after (UTC)</th><th>Remaining</th><th>State</th></tr>
        \(rows)</table>
        <h2>Rejected versions</h2>
        \(problemList)
        \(crlList)
        <h2>Latest publications</h2>
        \(publicationsTable(gateway))
        <h2>Listeners</h2>
        \(listenersTable(gateway))
        <h2>Upstreams</h2>
        \(upstreamsTable(gateway))
        <p class="small">JSON: <a href="/status/certificates">/status/certificates</a> · <a href="/status/upstreams">/status/upstreams</a> · <a href="/status">/status</a> · Prometheus: <a href="/metrics">/metrics</a></p>
        </div>
        <script>
        // Same origin, no external assets: the page fetches itself and swaps its content in,
        // keeping open what the reader opened; the next fetch is set once this one is done.
        function refresh() {
          fetch(location.pathname, { cache: "no-store" }).then(function (r) { return r.ok ? r.text() : null; }).then(function (text) {
            var next = text && new DOMParser().parseFromString(text, "text/html").getElementById("live");
            if (!next) return;
            var open = {};
            document.querySelectorAll("details[open]").forEach(function (d) { open[d.dataset.key] = true; });
            document.getElementById("live").innerHTML = next.innerHTML;
            document.querySelectorAll("details").forEach(function (d) { if (open[d.dataset.key]) d.open = true; });
          }).catch(function () {}).then(function () { setTimeout(refresh, 10000); });
        }
        setTimeout(refresh, 10000);
        </script>
        </body></html>

        """
}

private func stateColour(_ state: CertificateState) -> String {
    switch state {
    case .ok: return "#2e7d32"
    case .warning: return "#ef6c00"
    case .critical: return "#c62828"
    case .expired: return "#6d0000"
    case .notYetValid: return "#616161"
    }
}

/// The latest 20 publications of every store, newest first: when, what started it, what changed.
private func publicationsTable(_ gateway: Gateway) -> String {
    // Each store's list is oldest first; within one second its order decides.
    let publications = gateway.stores.flatMap { $0.publications.enumerated() }
        .sorted { ($0.element.time, $0.offset) > ($1.element.time, $1.offset) }.map(\.element).prefix(20)
    guard !publications.isEmpty else { return "<p>None yet.</p>" }
    var rows = ""
    for p in publications {
        var changes: [String] = []
        if !p.added.isEmpty { changes.append("added " + p.added.map(html).joined(separator: ", ")) }
        if !p.updated.isEmpty { changes.append("renewed " + p.updated.map(html).joined(separator: ", ")) }
        if !p.removed.isEmpty { changes.append("removed " + p.removed.map(html).joined(separator: ", ")) }
        let rejected = p.rejected.map { "<div class=\"note bad\">rejected \(html($0.name)): \(html($0.error))</div>" }.joined()
        rows += "<tr><td>\(isoDate(p.time)) UTC</td><td>\(html(p.trigger))</td><td>\(p.generation)</td>"
            + "<td>\(changes.isEmpty ? "nothing published" : changes.joined(separator: "; "))\(rejected)</td></tr>\n"
    }
    return "<table><tr><th>Time</th><th>Trigger</th><th>Generation</th><th>What changed</th></tr>\n\(rows)</table>"
}

private func listenersTable(_ gateway: Gateway) -> String {
    var rows = ""
    for plan in gateway.listeners {
        let port = gateway.boundPort(listener: plan.name).map(String.init) ?? "—"
        let profile = plan.tlsContext == nil ? "plain HTTP" : "TLS, " + html(gateway.config.listeners.first { $0.name == plan.name }?.tls?.profile.rawValue ?? "intermediate")
        rows += "<tr><td><b>\(html(plan.name))</b></td><td class=\"mono\">\(html(plan.host)):\(port)</td><td>\(profile)</td>"
            + "<td>\(plan.h2 ? "yes" : "no")</td><td>\(plan.mutualTLS ? "yes" : "no")</td><td>\(plan.proxyProtocol ? "yes" : "no")</td></tr>\n"
    }
    return "<table><tr><th>Listener</th><th>Address</th><th>Protocol</th><th>HTTP/2</th><th>Mutual TLS</th><th>PROXY protocol</th></tr>\n\(rows)</table>"
}

private func upstreamsTable(_ gateway: Gateway) -> String {
    guard !gateway.groups.isEmpty else { return "<p>No upstream groups.</p>" }
    var rows = ""
    for group in gateway.groups {
        for (index, (backend, state)) in zip(group.backends, group.states).enumerated() {
            let requests = state.requests.load(ordering: .relaxed)
            let opened = state.connectionsOpened.load(ordering: .relaxed)
            let reuse = requests > 0 ? Int((max(0, 1 - Double(opened) / Double(requests)) * 100).rounded()) : 0
            let health = state.isEjected ? "<span class=\"bad\">ejected</span>" : (state.isHealthyByCheck ? "<span class=\"up\">up</span>" : "<span class=\"bad\">down</span>")
            let name = index == 0 ? "<b>\(html(group.name))</b><div class=\"small\">\(html(group.algorithm.description))\(group.tls != nil ? ", TLS" : "")</div>" : ""
            rows += "<tr><td>\(name)</td><td class=\"mono\">\(html(backend.description))</td><td>\(health)</td>"
                + "<td>\(state.active.load(ordering: .relaxed))</td><td>\(requests)</td><td>\(reuse)%</td>"
                + "<td class=\"small\">\(state.lastErrorDescription.map(html) ?? "")</td></tr>\n"
        }
    }
    return "<table><tr><th>Group</th><th>Backend</th><th>Health</th><th>In flight</th><th>Requests</th><th>Reused</th><th>Last error</th></tr>\n\(rows)</table>"
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
package func rfc3339(_ seconds: Int64) -> String {
    let t = utc(seconds)
    return "\(t.date)T\(t.minutes):\(t.seconds)Z"
}

/// `2026-11-27 10:00` in UTC.
package func isoDate(_ seconds: Int64) -> String {
    let t = utc(seconds)
    return "\(t.date) \(t.minutes)"
}

/// A Unix time in UTC: `2026-11-27`, `10:00` and `00`.
private func utc(_ seconds: Int64) -> (date: String, minutes: String, seconds: String) {
    var t = time_t(seconds)
    var parts = tm()
    gmtime_r(&t, &parts)
    func pad(_ v: Int32) -> String { v < 10 ? "0\(v)" : "\(v)" }
    return ("\(parts.tm_year + 1900)-\(pad(parts.tm_mon + 1))-\(pad(parts.tm_mday))", "\(pad(parts.tm_hour)):\(pad(parts.tm_min))", pad(parts.tm_sec))
}
