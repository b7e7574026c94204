import EdgeTLS
#if canImport(Glibc)
import Glibc
#endif

/// One validated version of a lineage: its chain, key and metadata.
///
/// Immutable; shared by every snapshot that serves this version.
package final class LoadedLineage: Sendable {
    package let name: String
    package let files: LineageFiles
    package let chain: [X509Certificate]
    let key: PrivateKey
    /// SHA-256 over the certificate and key files: unchanged content, same version.
    package let contentHash: String
    /// Names this lineage can serve (DNS SANs, or the CN when there is no SAN).
    package let serverNames: [String]
    /// When this version was loaded (seconds since the epoch).
    package let loadedAt: Int64
    /// The snapshot generation that first served this version.
    package let generation: Int
    /// nil when the served chain verifies against the trust store (or was not checked), else why not.
    package let chainProblem: String?
    /// False for an upstream client certificate with no CA named to check it against.
    package let chainChecked: Bool

    init(files: LineageFiles, chain: [X509Certificate], key: PrivateKey, contentHash: String, loadedAt: Int64, generation: Int,
         chainProblem: String?, chainChecked: Bool = true) {
        self.generation = generation
        self.chainProblem = chainProblem
        self.chainChecked = chainChecked
        self.name = files.name
        self.files = files
        self.chain = chain
        self.key = key
        self.contentHash = contentHash
        self.loadedAt = loadedAt
        let sans = chain[0].dnsNames
        if sans.isEmpty, let cn = chain[0].commonName {
            self.serverNames = [cn.lowercased()]
        } else {
            self.serverNames = sans
        }
    }

    package var leaf: X509Certificate { self.chain[0] }
}

/// What a lineage's chain is checked against.
package enum ChainCheck: Sendable, Hashable {
    /// A served chain: as a TLS client would, against the trust store.
    case served
    /// A client certificate for upstream mutual TLS: only against the CA the operator
    /// names for it (`client_ca_file`). Without one it is not checked: the upstream's
    /// CA is usually private, and a check against the system store only ever raised a
    /// false "broken chain" alarm.
    case clientCertificate(caFile: String?)

    var checks: Bool {
        if case .clientCertificate(nil) = self { return false }
        return true
    }
}

/// Reads and validates one lineage's files.
///
/// Every check runs before anything is published: the PEMs parse, the key
/// matches the leaf, each chain certificate issued the one before it.
enum LineageLoader {
    static func load(_ files: LineageFiles, now: Int64, generation: Int, trustCAFile: String?, chainCheck: ChainCheck = .served) throws -> LoadedLineage {
        if let busy = files.busyReason {
            throw CertificateLoadError(path: parentDirectory(files.certificatePath), reason: busy)
        }
        let certBytes = try readFile(files.certificatePath)
        let keyBytes = files.keyPath == files.certificatePath ? certBytes : try readFile(files.keyPath)
        let certBundle: PEMBundle
        do {
            certBundle = try PEMBundle.parse(certBytes)
        } catch let error as TLSError {
            throw CertificateLoadError(path: files.certificatePath, reason: error.reason)
        }
        guard !certBundle.certificates.isEmpty else {
            throw CertificateLoadError(path: files.certificatePath, reason: "no CERTIFICATE block found (not a PEM certificate file)")
        }
        let key: PrivateKey
        if files.keyPath == files.certificatePath {
            guard let k = certBundle.key else {
                throw CertificateLoadError(path: files.keyPath, reason: "no private key in the file (expected a PRIVATE KEY block after the chain)")
            }
            key = k
        } else {
            do {
                guard let k = try PEMBundle.parse(keyBytes).key else {
                    throw CertificateLoadError(path: files.keyPath, reason: "no PRIVATE KEY block found (not a PEM private key file)")
                }
                key = k
            } catch let error as TLSError {
                throw CertificateLoadError(path: files.keyPath, reason: error.reason)
            }
        }
        let chain = certBundle.certificates
        guard keyMatches(key, certificate: chain[0]) else {
            throw CertificateLoadError(
                path: files.keyPath,
                reason: "private key does not match the certificate in \(files.certificatePath) (serial \(chain[0].serialNumberHex))"
            )
        }
        for index in chain.indices.dropFirst() where !chain[index - 1].isIssued(by: chain[index]) {
            throw CertificateLoadError(
                path: files.certificatePath,
                reason: "chain out of order: certificate \(index + 1) (\(chain[index].subject)) did not issue certificate \(index) (\(chain[index - 1].subject))"
            )
        }
        let hash = sha256Hex(certBytes + Array(files.certificatePath.utf8) + keyBytes)
        let chainProblem: String?
        switch chainCheck {
        case .served:
            chainProblem = verifyServedChain(chain, caFile: trustCAFile)
        case .clientCertificate(let caFile):
            chainProblem = caFile.flatMap { verifyServedChain(chain, caFile: $0, clientCertificate: true) }
        }
        return LoadedLineage(files: files, chain: chain, key: key, contentHash: hash, loadedAt: now, generation: generation,
                             chainProblem: chainProblem, chainChecked: chainCheck.checks)
    }

    /// Just the content hash, to skip rebuilding unchanged lineages.
    static func contentHash(_ files: LineageFiles) -> String? {
        guard files.busyReason == nil, let cert = try? readFile(files.certificatePath) else { return nil }
        let key = files.keyPath == files.certificatePath ? cert : ((try? readFile(files.keyPath)) ?? [])
        return sha256Hex(cert + Array(files.certificatePath.utf8) + key)
    }
}

/// The wall clock in whole seconds since the epoch (certificate validity is in seconds).
package func currentEpochSeconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec)
}

extension LoadedLineage {
    /// The key, for configuring a client context (mutual TLS towards upstreams).
    /// Never logged or serialised.
    package var privateKeyForClientUse: PrivateKey { self.key }
}
