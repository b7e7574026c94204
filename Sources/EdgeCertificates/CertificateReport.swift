import EdgeTLS
#if canImport(Glibc)
import Glibc
#endif

/// Everything an operator asks about one served lineage. No key material.
package struct CertificateReport: Sendable {
    package struct ChainEntry: Sendable {
        package var subject: String
        package var issuer: String
        package var serial: String
        package var notBefore: Int64
        package var notAfter: Int64
        package var state: CertificateState
        /// SHA-256 of the certificate (colon-separated hex): what a handshake shows it by.
        package var sha256Fingerprint: String
    }

    package var name: String
    package var source: String
    package var certificateFile: String
    package var keyFile: String
    package var resolvedCertificateFile: String
    package var resolvedKeyFile: String
    /// SNI names this lineage answers in the current snapshot.
    package var servedNames: [String]
    package var isDefault: Bool
    package var serial: String
    package var subject: String
    package var issuer: String
    package var subjectAlternativeNames: [String]
    package var keyType: String
    package var sha256Fingerprint: String
    package var notBefore: Int64
    package var notAfter: Int64
    package var secondsRemaining: Int64
    package var lifetimeUsed: Double
    /// Worst state over the chain.
    package var state: CertificateState
    package var chain: [ChainEntry]
    /// nil when the served chain verifies (or was not checked), else the reason.
    package var chainProblem: String?
    /// False when the chain was not checked (an upstream client certificate without `client_ca_file`).
    package var chainChecked: Bool
    package var loadedAt: Int64
    package var generation: Int
    /// The newest version on disk was rejected: why, since when; this report shows the version still served.
    package var rejectedError: String?
    package var rejectedSince: Int64?
    /// When the renewing agent should renew the served certificate, and whether it is late;
    /// nil when nothing is known to renew it (a plain pair or directory without `renew_before`).
    package var renewal: RenewalExpectation?
}

extension CertificateReport {
    /// A report for one loaded lineage version.
    package init(lineage: LoadedLineage, servedNames: [String], isDefault: Bool, problem: CertificateProblem?, policy: ExpiryPolicy, now: Int64) {
        let leaf = lineage.leaf
        let lifetime = Double(max(1, leaf.notAfter - leaf.notBefore))
        let chain = lineage.chain.map { cert in
            ChainEntry(
                subject: cert.subject, issuer: cert.issuer, serial: cert.serialNumberHex,
                notBefore: cert.notBefore, notAfter: cert.notAfter,
                state: policy.state(notBefore: cert.notBefore, notAfter: cert.notAfter, now: now),
                sha256Fingerprint: cert.sha256Fingerprint
            )
        }
        self.init(
            name: lineage.name,
            source: lineage.files.source.description,
            certificateFile: lineage.files.certificatePath,
            keyFile: lineage.files.keyPath,
            resolvedCertificateFile: resolvedPath(lineage.files.certificatePath),
            resolvedKeyFile: resolvedPath(lineage.files.keyPath),
            servedNames: servedNames,
            isDefault: isDefault,
            serial: leaf.serialNumberHex,
            subject: leaf.subject,
            issuer: leaf.issuer,
            subjectAlternativeNames: leaf.subjectAlternativeNames.map { name in
                switch name {
                case .dns(let v): return "DNS:\(v)"
                case .ip(let v): return "IP:\(v)"
                case .uri(let v): return "URI:\(v)"
                case .email(let v): return "email:\(v)"
                }
            },
            keyType: leaf.keyDescription,
            sha256Fingerprint: leaf.sha256Fingerprint,
            notBefore: leaf.notBefore,
            notAfter: leaf.notAfter,
            secondsRemaining: max(0, leaf.notAfter - now),
            lifetimeUsed: min(1, max(0, Double(now - leaf.notBefore) / lifetime)),
            state: chain.map(\.state).max() ?? .ok,
            chain: chain,
            chainProblem: lineage.chainProblem,
            chainChecked: lineage.chainChecked,
            loadedAt: lineage.loadedAt,
            generation: lineage.generation,
            rejectedError: problem?.error,
            rejectedSince: problem?.since,
            renewal: policy.renewal.expectation(source: lineage.files.source, lineage: lineage.name, notBefore: leaf.notBefore, notAfter: leaf.notAfter,
                                                rejectedVersion: problem?.error, now: now)
        )
    }
}

extension CertificateStore {
    /// Reports for every lineage of the current snapshot, by name.
    package func reports(policy: ExpiryPolicy, now: Int64) -> [CertificateReport] {
        let snapshot = self.snapshot
        let problems = Dictionary(self.problems.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        let names = snapshot.servedNames
        return snapshot.lineages.enumerated().map { index, lineage in
            CertificateReport(
                lineage: lineage, servedNames: names[index], isDefault: snapshot.defaultIndex == index,
                problem: problems[lineage.name], policy: policy, now: now
            )
        }
    }
}

/// Reads certificate sources once, without serving: for `edge-gateway certs`.
package enum CertificateInspector {
    package struct Entry: Sendable {
        package var name: String
        package var source: String
        package var report: CertificateReport?
        /// Why the lineage could not be read or validated.
        package var error: String?
    }

    package static func inspect(sources: [CertificateSource], trustCAFile: String?, chainCheck: ChainCheck = .served, policy: ExpiryPolicy, now: Int64) -> [Entry] {
        var entries: [Entry] = []
        for source in sources {
            let files: [LineageFiles]
            do {
                files = try source.scan()
            } catch {
                entries.append(Entry(name: source.description, source: source.description, report: nil, error: "\(error)"))
                continue
            }
            for file in files {
                do {
                    let lineage = try LineageLoader.load(file, now: now, generation: 0, trustCAFile: trustCAFile, chainCheck: chainCheck)
                    let report = CertificateReport(lineage: lineage, servedNames: lineage.serverNames, isDefault: false, problem: nil, policy: policy, now: now)
                    entries.append(Entry(name: file.name, source: source.description, report: report, error: nil))
                } catch {
                    entries.append(Entry(name: file.name, source: source.description, report: nil, error: "\(error)"))
                }
            }
        }
        return entries
    }
}

func resolvedPath(_ path: String) -> String {
    guard let resolved = realpath(path, nil) else { return path }
    defer { free(resolved) }
    return String(cString: resolved)
}
