import EdgeCertificates
import EdgeProxy
import EdgeTLS

/// The CRLs the listeners check clients against and the upstream groups check upstreams
/// against, as the status views and the metrics show them: the lists installed in the
/// contexts in use (a file on disk that could not be loaded is in the log, and the last
/// good lists stay), each list's issuer, this and next update, how many certificates it
/// revokes, and whether it is stale (past its next update: revocations since are not in it).
enum RevocationListStatus {
    struct File: Sendable {
        var lists: RevocationListFile
        /// What checks against it: `client_auth` or `upstream <name>`.
        var usedBy: String
        var chain: Bool
        var strict: Bool

        var path: String { self.lists.path }
    }

    static func files(_ stores: [CertificateStore], groups: [UpstreamGroup]) -> [File] {
        var files: [File] = []
        var seen = Set<String>()
        for store in stores {
            for (index, lists) in store.snapshot.revocationLists where seen.insert("client_auth\u{0}" + lists.path).inserted {
                let policy = store.configuration.policies[index]
                // Strict when any policy naming the file is (a lenient listener may come first).
                let strict = store.configuration.policies.contains { $0.clientCRLFile == lists.path && $0.clientCRLStrict }
                files.append(File(lists: lists, usedBy: "client_auth", chain: policy.clientCRLChain, strict: strict))
            }
        }
        for group in groups {
            guard let tls = group.tls, let lists = tls.installedContext.revocation, let settings = tls.revocation else { continue }
            files.append(File(lists: lists, usedBy: "upstream \(group.name)", chain: settings.chain, strict: settings.strict))
        }
        return files
    }
}

/// One CRL file on `/status/certificates`.
func revocationListJSON(_ file: RevocationListStatus.File, now: Int64) -> String {
    let lists = file.lists.lists.map { list in
        "{\"issuer\":\(jsonString(list.issuer)),\"this_update\":\(list.thisUpdate),\"this_update_rfc3339\":\(jsonString(rfc3339(list.thisUpdate))),"
            + "\"next_update\":\(list.nextUpdate.map(String.init) ?? "null"),"
            + "\"next_update_rfc3339\":\(list.nextUpdate.map { jsonString(rfc3339($0)) } ?? "null"),"
            + "\"revoked\":\(list.revokedCount),\"state\":\(list.isStale(now: now) ? "\"stale\"" : "\"ok\"")}"
    }
    return "{\"file\":\(jsonString(file.path)),\"used_by\":\(jsonString(file.usedBy)),\"crl_check\":\(file.chain ? "\"chain\"" : "\"leaf\""),"
        + "\"crl_strict\":\(file.strict),\"state\":\(file.lists.isStale(now: now) ? "\"stale\"" : "\"ok\""),\"lists\":[\(lists.joined(separator: ","))]}"
}
