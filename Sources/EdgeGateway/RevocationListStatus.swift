import EdgeCertificates
import EdgeProxy
import EdgeTLS
import NIOConcurrencyHelpers

/// The CRL files the listeners check clients against and the upstream groups check
/// upstreams against, as the status views and the metrics
/// show them: each list's issuer, this and next update, how many certificates it revokes,
/// and whether it is stale (past its next update: revocations since are not in it).
///
/// A file is parsed again only when its stamp changed: CRLs can be large, and the status
/// page asks every 10 s.
final class RevocationListStatus: Sendable {
    struct List: Sendable {
        var issuer: String
        var thisUpdate: Int64
        var nextUpdate: Int64?
        var revoked: Int
    }

    struct File: Sendable {
        var path: String
        /// What checks against it: `client_auth` or `upstream <name>`.
        var usedBy: String
        var chain: Bool
        var strict: Bool
        var lists: [List]
        /// The file as it is now could not be read (the contexts keep the last good one).
        var error: String?

        func stale(_ list: List, now: Int64) -> Bool { list.nextUpdate.map { now >= $0 } ?? false }
        func isStale(now: Int64) -> Bool { self.lists.contains { self.stale($0, now: now) } }
    }

    private let cache = NIOLockedValueBox<[String: (stamp: String, lists: [List]?, error: String?)]>([:])

    /// Every CRL file the listeners' client authentication and the upstream groups name, once each.
    func files(_ stores: [CertificateStore], groups: [UpstreamGroup]) -> [File] {
        var seen = Set<String>()
        var files: [File] = []
        var named: [(path: String, usedBy: String, chain: Bool, strict: Bool)] = stores.flatMap(\.configuration.policies).compactMap { policy in
            policy.clientCRLFile.map { ($0, "client_auth", policy.clientCRLChain, policy.clientCRLStrict) }
        }
        named += groups.compactMap { group in group.tls?.revocation.map { ($0.file, "upstream \(group.name)", $0.chain, $0.strict) } }
        for entry in named where seen.insert(entry.usedBy + "\u{0}" + entry.path).inserted {
            let (lists, error) = self.read(entry.path)
            files.append(File(path: entry.path, usedBy: entry.usedBy, chain: entry.chain, strict: entry.strict, lists: lists ?? [], error: error))
        }
        return files
    }

    private func read(_ path: String) -> (lists: [List]?, error: String?) {
        let stamp = fileStamp(path) ?? "missing"
        if let cached = self.cache.withLockedValue({ $0[path] }), cached.stamp == stamp { return (cached.lists, cached.error) }
        var result: (lists: [List]?, error: String?)
        do {
            let parsed = try RevocationListFile.parse(try readRegularFile(path), path: path)
            result = (parsed.map { List(issuer: $0.issuer, thisUpdate: $0.thisUpdate, nextUpdate: $0.nextUpdate, revoked: $0.revokedCount) }, nil)
        } catch let error as TLSError {
            result = (nil, error.reason)
        } catch {
            result = (nil, "\(error)")
        }
        self.cache.withLockedValue { $0[path] = (stamp, result.lists, result.error) }
        return result
    }
}

/// One CRL file on `/status/certificates`.
func revocationListJSON(_ file: RevocationListStatus.File, now: Int64) -> String {
    let lists = file.lists.map { list in
        "{\"issuer\":\(jsonString(list.issuer)),\"this_update\":\(list.thisUpdate),\"this_update_rfc3339\":\(jsonString(rfc3339(list.thisUpdate))),"
            + "\"next_update\":\(list.nextUpdate.map(String.init) ?? "null"),"
            + "\"next_update_rfc3339\":\(list.nextUpdate.map { jsonString(rfc3339($0)) } ?? "null"),"
            + "\"revoked\":\(list.revoked),\"state\":\(file.stale(list, now: now) ? "\"stale\"" : "\"ok\"")}"
    }
    let state = file.error != nil ? "unreadable" : file.isStale(now: now) ? "stale" : "ok"
    return "{\"file\":\(jsonString(file.path)),\"used_by\":\(jsonString(file.usedBy)),\"crl_check\":\(file.chain ? "\"chain\"" : "\"leaf\""),\"crl_strict\":\(file.strict),"
        + "\"state\":\"\(state)\",\"lists\":[\(lists.joined(separator: ","))],\"error\":\(file.error.map(jsonString) ?? "null")}"
}
