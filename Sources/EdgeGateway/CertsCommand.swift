import EdgeCertificates
import EdgeTLS
import NIOCore

#if canImport(Glibc)
import Glibc
#endif

/// What `edge-gateway certs` reads and prints, without a running gateway.
package enum CertsInspection {
    /// The certificate sources a configuration file names (the shared set and every listener pair),
    /// and its upstream client certificates with the CA each is checked against.
    package static func sources(configPath: String) throws -> (sources: [CertificateSource], trustCAFile: String?, policy: ExpiryPolicy,
                                                              clientCertificates: [(source: CertificateSource, caFile: String?)]) {
        let (config, base) = try GatewayConfig.load(path: configPath)
        // A misspelt key may be a certificate setting: refused, as `run` and `check` refuse it.
        if !config.decodingProblems.isEmpty { throw ConfigProblems(problems: config.decodingProblems) }
        var sources = (config.certificates?.sources ?? []).compactMap { $0.source(base: base) }
        for listener in config.listeners {
            if let cert = listener.tls?.certificate, let key = listener.tls?.key {
                sources.append(.pair(name: listener.name, certificate: resolvePath(cert, base: base), key: resolvePath(key, base: base)))
            }
        }
        let clients = config.upstreams.sorted { $0.key < $1.key }.compactMap { name, upstream -> (source: CertificateSource, caFile: String?)? in
            guard let tls = upstream.tls, let cert = tls.clientCertificate, let key = tls.clientKey else { return nil }
            return (.pair(name: "upstream-\(name)-client", certificate: resolvePath(cert, base: base), key: resolvePath(key, base: base)),
                    tls.clientCAFile.map { resolvePath($0, base: base) })
        }
        return (sources, config.certificates?.caFile.map { resolvePath($0, base: base) }, config.expiryPolicy(base: base), clients)
    }

    /// A TLS listener of a configuration, as `certs --check-served` reaches it: over
    /// loopback for a wildcard address, with a PROXY header if it expects one. `pair`:
    /// the listener's own certificate (a lineage named after it), else the shared set.
    package struct ServedTarget: Sendable {
        package var listener: String
        package var host: String
        package var port: Int
        package var proxyHeader: Bool
        package var pair: String?
        /// `ocsp.stapling`: off, a certificate served without a staple is as configured.
        package var stapling = true
    }

    package static func servedTargets(configPath: String) throws -> [ServedTarget] {
        let (config, _) = try GatewayConfig.load(path: configPath)
        return try config.listeners.compactMap { listener in
            guard let tls = listener.tls else { return nil }
            let (host, port) = try parseAddress(listener.address)
            // Resolved as `run` resolves it when it binds.
            let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
            return ServedTarget(listener: listener.name, host: ServedProof.loopbackHost(for: address), port: port, proxyHeader: listener.proxyProtocol,
                                pair: tls.certificate != nil && tls.key != nil ? listener.name : nil, stapling: config.ocsp.stapling)
        }
    }

    /// One lineage on one listener, as `--check-served` found it.
    package typealias ServedResult = (lineage: String, check: ServedProof.Check)

    /// Handshakes with each listener for each certificate it serves from these files (its
    /// own pair, or every lineage of the shared set), asking for a name only that lineage
    /// claims, and compares the chain served with the files' chain: does the running
    /// gateway serve what is on disk? A lineage whose every name another one of the same
    /// key type claims too is not checked (which one the gateway serves is its choice); an
    /// ECDSA and an RSA certificate for one name are each asked for as a client that can
    /// take only that one. A listener on port 0 is not checked: its port is chosen at start.
    package static func checkServed(_ entries: [CertificateInspector.Entry], targets: [ServedTarget], now: Int64) -> [ServedResult] {
        let pairs = Set(targets.compactMap(\.pair))
        var results: [ServedResult] = []
        for target in targets {
            let reports = entries.compactMap(\.report).filter { report in
                if let pair = target.pair { return report.name == pair }
                return !pairs.contains(report.name)
            }
            func isRSA(_ report: CertificateReport) -> Bool { report.keyType.hasPrefix("RSA") }
            var claims: [String: (rsa: Int, other: Int)] = [:]
            for report in reports {
                for name in Set(report.servedNames) {
                    if isRSA(report) { claims[name, default: (0, 0)].rsa += 1 } else { claims[name, default: (0, 0)].other += 1 }
                }
            }
            for report in reports {
                let expected = report.chain.map(\.sha256Fingerprint)
                var check = ServedProof.Check(listener: target.listener, serverName: "", checkedAt: now, expected: expected)
                let own = report.servedNames.filter { (isRSA(report) ? claims[$0]?.rsa : claims[$0]?.other) == 1 }
                guard target.port != 0, let name = ServedProof.probeName(own, isDefault: false) else {
                    check.error = target.port == 0 ? "not checked: the listener's port (0) is chosen when it starts"
                        : "not checked: every name of it is claimed by another certificate too"
                    results.append((report.name, check))
                    continue
                }
                check.serverName = name
                let shared = claims[name].map { $0.rsa > 0 && $0.other > 0 }
                    ?? own.contains { claims[$0].map { $0.rsa > 0 && $0.other > 0 } ?? false }
                switch ServedProbe.handshake(host: target.host, port: target.port, serverName: name, proxyHeader: target.proxyHeader,
                                             signatureAlgorithms: shared ? ServedProof.signatureAlgorithms(forKey: report.keyType) : nil) {
                case .success(let seen):
                    check.seen = seen.chain
                    (check.staple, check.stapleProblem) = stapleSummary(seen, now: now, stapling: target.stapling) ?? (nil, 0)
                case .failure(let failure): check.error = failure.description
                }
                results.append((report.name, check))
            }
        }
        return results
    }

    /// What the listener stapled for a served leaf that names an OCSP responder: the
    /// verified status and until when, "none", or why it does not verify, with its grade
    /// (`Check.stapleProblem`); nil for a leaf without a responder (nothing to staple).
    /// A must-staple certificate served without a valid response fails every client that
    /// enforces it, so that is as bad as a revoked one; without must-staple, no staple is a
    /// warning, unless stapling is configured off (as the status views grade it).
    static func stapleSummary(_ seen: ServedProbe.Seen, now: Int64, stapling: Bool) -> (String, Int)? {
        guard let leaf = seen.certificates.first, !OCSPCheck.responderURLs(of: leaf).isEmpty else { return nil }
        let missing = OCSPCheck.mustStaple(leaf) ? 2 : stapling ? 1 : 0
        guard let staple = seen.staple else { return ("none", missing) }
        guard let issuer = OCSPCheck.issuer(of: leaf, in: seen.certificates) else { return ("not checked: no issuer in the chain", 1) }
        do {
            let response = try OCSPCheck.verify(staple, leaf: leaf, issuer: issuer, now: now)
            let problem = switch response.status {
            case .good: 0
            case .revoked: 2
            case .unknown: missing
            }
            return (response.status.name + (response.nextUpdate.map { " until " + isoDate($0) } ?? ""), problem)
        } catch {
            return ("INVALID: \(Gateway.reason(error))", 2)
        }
    }

    /// 3 when a listener serves another chain than the files; 2 when a staple is revoked or
    /// invalid, or missing (or `unknown`) for a must-staple certificate; 1 when a chain could
    /// not be checked, or a certificate with a responder was served without a staple (with
    /// stapling on) or with one that could not be checked (no issuer in the chain); else 0.
    package static func servedExitCode(_ results: [ServedResult]) -> Int32 {
        if results.contains(where: { $0.check.matches == false }) { return 3 }
        let staple = Int32(results.map(\.check.stapleProblem).max() ?? 0)
        return max(staple, results.contains { $0.check.matches == nil } ? 1 : 0)
    }

    package static func servedTable(_ results: [ServedResult]) -> String {
        // The OCSP column only when some certificate names a responder.
        let stapling = results.contains { $0.check.staple != nil }
        var rows: [[String]] = [["NAME", "LISTENER", "SERVER NAME", "SERVED"] + (stapling ? ["OCSP STAPLE"] : []) + ["SEEN"]]
        for (lineage, check) in results {
            let state = check.matches.map { $0 ? "ok" : "MISMATCH" } ?? "unverified"
            let seen = check.seen?.first.map { String($0.prefix(23)) + "..." } ?? (check.error ?? "-")
            rows.append([lineage, check.listener, check.serverName.isEmpty ? "-" : check.serverName, state] + (stapling ? [check.staple ?? "-"] : []) + [seen])
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return "\n" + rows.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
    }

    /// Guesses a directory's kind: certbot (`live/`), Kubernetes (`tls.crt`), or plain pairs.
    package static func source(forDirectory path: String) -> CertificateSource {
        let trimmed = path.count > 1 && path.hasSuffix("/") ? String(path.dropLast()) : path
        if trimmed.hasSuffix("/live") || trimmed == "live" || (try? readTextFile(trimmed + "/live/README")) != nil || directoryExists(trimmed + "/live") {
            return .certbot(trimmed)
        }
        if fileReadable(trimmed + "/tls.crt") { return .kubernetes(trimmed) }
        return .directory(trimmed)
    }

    /// 0: all ok; 1: some warning, overdue renewal or renewal problem (or, with `strict`, a
    /// chain that does not verify); 2: some critical, expired, not yet valid or unreadable.
    package static func exitCode(_ entries: [CertificateInspector.Entry], strict: Bool = false) -> Int32 {
        var code: Int32 = 0
        for entry in entries {
            guard let report = entry.report else { return 2 }
            if strict && report.chainChecked && report.chainProblem != nil { code = max(code, 1) }
            // Late, or the agent will not renew as expected (a file certbot cannot read).
            if report.renewal?.state == .overdue || report.renewal?.problem != nil { code = max(code, 1) }
            switch report.state {
            case .ok: break
            case .warning: code = max(code, 1)
            case .critical, .expired, .notYetValid: code = 2
            }
        }
        return code
    }

    package static func table(_ entries: [CertificateInspector.Entry], now: Int64) -> String {
        var rows: [[String]] = [["NAME", "NAMES", "NOT AFTER (UTC)", "REMAINING", "STATE", "RENEWAL", "CHAIN"]]
        for entry in entries {
            if let r = entry.report {
                rows.append([r.name, r.servedNames.joined(separator: ","), isoDate(r.notAfter),
                             r.state == .expired ? "EXPIRED" : humanDuration((r.chain.map(\.notAfter).min() ?? r.notAfter) - now),
                             r.state.rawValue, renewalCell(r.renewal, now: now), !r.chainChecked ? "not checked" : r.chainProblem == nil ? "ok" : "INVALID"])
            } else {
                rows.append([entry.name, "-", "-", "-", "unreadable", "-", "-"])
            }
        }
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        var out = rows.map { row in
            row.enumerated().map { index, cell in
                index == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[index] - cell.count)
            }.joined(separator: "  ")
        }.joined(separator: "\n") + "\n"
        let details = entries.compactMap { entry -> String? in
            if let error = entry.error { return "\(entry.name): \(error)" }
            var lines: [String] = []
            if let problem = entry.report?.chainProblem { lines.append("\(entry.name): chain: \(problem)") }
            if let renewal = entry.report?.renewal {
                if renewal.state == .overdue { lines.append("\(entry.name): \(renewal.message(lineage: entry.name, now: now))") }
                if let problem = renewal.problem { lines.append("\(entry.name): renewal: \(problem)") }
            }
            return lines.isEmpty ? nil : lines.joined(separator: "\n")
        }
        if !details.isEmpty { out += "\n" + details.joined(separator: "\n") + "\n" }
        return out
    }

    package static func json(_ entries: [CertificateInspector.Entry], served: [ServedResult]? = nil, now: Int64) -> String {
        let items = entries.map { entry -> String in
            if let report = entry.report {
                return certificateJSON(report, served: served.map { results in results.filter { $0.lineage == report.name }.map(\.check) }, now: now)
            }
            return "{\"name\":\(jsonString(entry.name)),\"source\":{\"configured\":\(jsonString(entry.source))},\"state\":\"unreadable\",\"error\":\(jsonString(entry.error ?? ""))}"
        }
        return "{\"certificates\":[\(items.joined(separator: ","))]}\n"
    }
}

/// The RENEWAL column: when the agent renews, or how late it is.
private func renewalCell(_ renewal: RenewalExpectation?, now: Int64) -> String {
    guard let renewal else { return "-" }
    switch renewal.state {
    case .scheduled: return "in " + humanDuration(renewal.expectedAt - now)
    case .due: return "due " + humanDuration(renewal.lateSeconds(now: now)) + " ago"
    case .overdue: return "OVERDUE " + humanDuration(renewal.lateSeconds(now: now))
    case .disabled: return "autorenew off"
    case .unknown: return "unknown"
    }
}

private func directoryExists(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}

private func fileReadable(_ path: String) -> Bool {
    access(path, R_OK) == 0
}
