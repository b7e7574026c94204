import EdgeCertificates

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
        return (sources, config.certificates?.caFile.map { resolvePath($0, base: base) }, config.expiry.policy, clients)
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

    /// 0: all ok; 1: some warning (or, with `strict`, a chain that does not verify);
    /// 2: some critical, expired, not yet valid or unreadable.
    package static func exitCode(_ entries: [CertificateInspector.Entry], strict: Bool = false) -> Int32 {
        var code: Int32 = 0
        for entry in entries {
            guard let report = entry.report else { return 2 }
            if strict && report.chainChecked && report.chainProblem != nil { code = max(code, 1) }
            switch report.state {
            case .ok: break
            case .warning: code = max(code, 1)
            case .critical, .expired, .notYetValid: code = 2
            }
        }
        return code
    }

    package static func table(_ entries: [CertificateInspector.Entry], now: Int64) -> String {
        var rows: [[String]] = [["NAME", "NAMES", "NOT AFTER (UTC)", "REMAINING", "STATE", "CHAIN"]]
        for entry in entries {
            if let r = entry.report {
                rows.append([r.name, r.servedNames.joined(separator: ","), isoDate(r.notAfter),
                             r.state == .expired ? "EXPIRED" : humanDuration((r.chain.map(\.notAfter).min() ?? r.notAfter) - now),
                             r.state.rawValue, !r.chainChecked ? "not checked" : r.chainProblem == nil ? "ok" : "INVALID"])
            } else {
                rows.append([entry.name, "-", "-", "-", "unreadable", "-"])
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
            if let problem = entry.report?.chainProblem { return "\(entry.name): chain: \(problem)" }
            return nil
        }
        if !details.isEmpty { out += "\n" + details.joined(separator: "\n") + "\n" }
        return out
    }

    package static func json(_ entries: [CertificateInspector.Entry]) -> String {
        let items = entries.map { entry -> String in
            if let report = entry.report { return certificateJSON(report) }
            return "{\"name\":\(jsonString(entry.name)),\"source\":{\"configured\":\(jsonString(entry.source))},\"state\":\"unreadable\",\"error\":\(jsonString(entry.error ?? ""))}"
        }
        return "{\"certificates\":[\(items.joined(separator: ","))]}\n"
    }
}

private func directoryExists(_ path: String) -> Bool {
    var st = stat()
    return stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
}

private func fileReadable(_ path: String) -> Bool {
    access(path, R_OK) == 0
}
