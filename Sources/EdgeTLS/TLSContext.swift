import COpenSSL
import CEdgeShims

/// TLS protocol versions the engine can be limited to.
package enum TLSVersion: String, Sendable, Codable, CaseIterable {
    case tls12 = "TLSv1.2"
    case tls13 = "TLSv1.3"

    var openSSLValue: Int32 {
        switch self {
        case .tls12: return TLS1_2_VERSION
        case .tls13: return TLS1_3_VERSION
        }
    }
}

/// Protocol policy shared by every context of a listener.
///
/// Every context a connection may be switched to by SNI must carry the same
/// policy (DESIGN.md: version policy comes from the initial context, ALPN
/// from the switched one), so listeners build all their contexts from one value.
package struct TLSServerPolicy: Sendable, Hashable {
    package var minimumVersion: TLSVersion = .tls12
    package var maximumVersion: TLSVersion = .tls13
    /// TLS 1.2 cipher list (OpenSSL syntax). Mozilla intermediate, ECDHE + AEAD only.
    package var cipherList = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
    /// TLS 1.3 cipher suites.
    package var cipherSuites = "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
    /// Key-exchange groups.
    package var groups = "X25519:prime256v1:secp384r1"
    /// ALPN protocols offered, most preferred first. Empty: no ALPN.
    package var alpnProtocols: [String] = ["http/1.1"]
    /// Server-side session cache size (TLS 1.2 session IDs); 0 disables it.
    package var sessionCacheSize = 20_480
    /// Issue session tickets (keys from `TicketKeyRing.shared`); off sends none.
    package var sessionTickets = true
    /// TLS 1.3 tickets sent after each handshake (OpenSSL's `NumTickets`, default 2 there).
    /// One is enough for a client that uses a ticket per connection (Go's crypto/tls
    /// sends one); each more costs an encryption and ~6 % of a full handshake's CPU.
    package var ticketsPerHandshake = 1
    /// Client certificates are verified against this CA bundle when set.
    package var clientCAFile: String?
    /// With `clientCAFile`: refuse clients that present no certificate.
    package var requireClientCertificate = true
    /// With `clientCAFile`: which verified client certificates are admitted.
    package var clientAllow: ClientAllowList?
    /// With `clientCAFile`: revocation lists the client's certificate is checked against
    /// (`client_auth.crl_file`).
    package var clientCRLFile: String?
    /// Check every certificate of the client's chain, not only its own (`crl_check: chain`).
    package var clientCRLChain = false
    /// Refuse clients while a list is past its next update (`crl_strict`), rather than
    /// check them against the stale list.
    package var clientCRLStrict = false

    package init() {}
}

/// What the servername callback decides for one handshake.
package enum ServerNameSelection {
    /// Switch the connection to this context.
    case use(TLSContext)
    /// Refuse the handshake with an `unrecognized_name` alert.
    case reject
}

/// Chooses the context for a client's SNI name (`ServerName.normalized`: ASCII letters
/// lower-cased), once per ClientHello. Called on the handshake's thread.
package protocol ServerNameSelector: AnyObject, Sendable {
    func select(serverName: String?) -> ServerNameSelection
    /// Why a request for `host` must not be served on a connection made for
    /// `serverName` (its SNI): the host's client authentication or certificate is not
    /// the one the handshake used. nil: the request belongs on this connection.
    func misdirection(serverName: String?, host: String) -> String?
}

extension ServerNameSelector {
    package func misdirection(serverName: String?, host: String) -> String? { nil }
}

/// An `SSL_CTX`, owned by Swift and immutable once built.
///
/// `@unchecked Sendable`: the context is fully configured before this object
/// is published and never mutated after, and OpenSSL allows concurrent
/// `SSL_new` on a configured context. A connection keeps its own OpenSSL
/// reference, so freeing this owner never pulls a context from under a live
/// connection; what the context's C callbacks reach (the SNI selector, the
/// client allow list) is owned by the `SSL_CTX` itself (`OwnedExData`), and a
/// connection switched to a context by SNI owns that `TLSContext` until its
/// `SSL` is freed.
package final class TLSContext: @unchecked Sendable {
    let pointer: OpaquePointer
    let isServer: Bool
    /// Certificate and key installed in the context (server contexts only).
    package let certificateChain: [X509Certificate]
    /// The versions a client context offers, for handshake failure reasons.
    let offeredVersions: String
    /// A server context's session-ID context: equal for two contexts exactly when they
    /// admit clients alike (client CA bundle, certificate required, allow list).
    let sessionContext: [UInt8]
    /// What a certificate set chose this context as (its lineages and client-authentication
    /// policy, stable across snapshots); empty when it was not chosen from a set.
    let selection: String
    /// The CRLs installed in the context (`client_auth.crl_file`, an upstream's `crl_file`):
    /// what the status views show, and when a strict list goes stale.
    package let revocation: RevocationListFile?

    private init(pointer: OpaquePointer, isServer: Bool, chain: [X509Certificate], offeredVersions: String = "",
                 sessionContext: [UInt8] = [], selection: String = "", revocation: RevocationListFile? = nil) {
        self.revocation = revocation
        self.pointer = pointer
        self.isServer = isServer
        self.certificateChain = chain
        self.offeredVersions = offeredVersions
        self.sessionContext = sessionContext
        self.selection = selection
    }

    /// Whether a handshake switched to `self` may go on as if it had been switched to
    /// `other`: the same choice of a certificate set (the same lineages under the same
    /// policy, whatever rotation or CA change happened in between), or, for contexts not
    /// chosen from a set, the same leaf admitting clients alike.
    func servesLike(_ other: TLSContext) -> Bool {
        if !self.selection.isEmpty || !other.selection.isEmpty { return self.selection == other.selection }
        guard self.sessionContext == other.sessionContext else { return false }
        switch (self.certificateChain.first, other.certificateChain.first) {
        case (nil, nil): return true
        case (let a?, let b?): return a.pointer == b.pointer || X509_cmp(a.pointer, b.pointer) == 0
        default: return false
        }
    }

    deinit {
        SSL_CTX_free(self.pointer)
    }

    /// A server context holding one certificate chain and its key.
    ///
    /// `chain[0]` is the leaf. The key must match it; callers validate first and
    /// this re-checks, so a mismatched pair can never be installed.
    /// `selection`: what a certificate set chose it as (see `servesLike`).
    /// `trust`: the policy's client CA bundle and CRLs as already read (`ClientTrust.load`);
    /// nil reads them.
    package static func server(chain: [X509Certificate], key: PrivateKey, policy: TLSServerPolicy, selection: String = "",
                               trust: ClientTrust? = nil) throws -> TLSContext {
        guard let leaf = chain.first else { throw TLSError.invalidCertificate("no certificate in the chain") }
        let (ctx, sessionContext, revocation) = try makeServerContext(policy: policy, trust: trust)
        ERR_clear_error()
        guard SSL_CTX_use_certificate(ctx, leaf.pointer) == 1 else {
            SSL_CTX_free(ctx)
            throw TLSError.invalidCertificate("certificate rejected: \(openSSLErrorQueueDescription())")
        }
        for intermediate in chain.dropFirst() {
            guard edge_SSL_CTX_add1_chain_cert(ctx, intermediate.pointer) == 1 else {
                SSL_CTX_free(ctx)
                throw TLSError.invalidCertificate("chain certificate rejected: \(openSSLErrorQueueDescription())")
            }
        }
        guard SSL_CTX_use_PrivateKey(ctx, key.pointer) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
            SSL_CTX_free(ctx)
            throw TLSError.keyMismatch("the private key does not match the certificate: \(openSSLErrorQueueDescription())")
        }
        OCSPStaples.install(on: ctx, leaves: [leaf])
        return TLSContext(pointer: ctx, isServer: true, chain: chain, sessionContext: sessionContext, selection: selection, revocation: revocation)
    }

    /// A server context holding several certificate chains of different key types
    /// (an ECDSA and an RSA one): OpenSSL serves the first the client's signature
    /// algorithms allow, in the order given.
    package static func server(pairs: [(chain: [X509Certificate], key: PrivateKey)], policy: TLSServerPolicy, selection: String = "",
                               trust: ClientTrust? = nil) throws -> TLSContext {
        let (ctx, sessionContext, revocation) = try makeServerContext(policy: policy, trust: trust)
        for (chain, key) in pairs {
            guard let leaf = chain.first else { continue }
            ERR_clear_error()
            guard SSL_CTX_use_certificate(ctx, leaf.pointer) == 1 else {
                SSL_CTX_free(ctx)
                throw TLSError.invalidCertificate("certificate rejected: \(openSSLErrorQueueDescription())")
            }
            // Chain certificates attach to the certificate just installed.
            for intermediate in chain.dropFirst() where edge_SSL_CTX_add1_chain_cert(ctx, intermediate.pointer) != 1 {
                SSL_CTX_free(ctx)
                throw TLSError.invalidCertificate("chain certificate rejected: \(openSSLErrorQueueDescription())")
            }
            guard SSL_CTX_use_PrivateKey(ctx, key.pointer) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
                SSL_CTX_free(ctx)
                throw TLSError.keyMismatch("the private key does not match the certificate: \(openSSLErrorQueueDescription())")
            }
        }
        OCSPStaples.install(on: ctx, leaves: pairs.compactMap(\.chain.first))
        return TLSContext(pointer: ctx, isServer: true, chain: pairs.first?.chain ?? [], sessionContext: sessionContext, selection: selection,
                          revocation: revocation)
    }

    /// A listener's initial context: holds no certificate of its own and hands
    /// every handshake to `selector` from OpenSSL's servername callback.
    package static func listener(policy: TLSServerPolicy, selector: any ServerNameSelector) throws -> TLSContext {
        let (ctx, sessionContext, revocation) = try makeServerContext(policy: policy)
        // The context owns the selector: a handshake in flight keeps the context, and so
        // the selector its callbacks reach, even after a reload replaced this listener.
        let box = SelectorBox(selector)
        OwnedExData.set(box, on: ctx, index: OwnedExData.selector)
        edge_SSL_CTX_set_tlsext_servername_callback(ctx, serverNameCallback)
        // The context is also chosen from the raw ClientHello, before OpenSSL looks for a
        // session to resume, so that a session is only resumed under the session-ID
        // context (client-authentication policy) of the name it is presented for.
        SSL_CTX_set_client_hello_cb(ctx, clientHelloCallback, Unmanaged.passUnretained(box).toOpaque())
        // Tickets are sealed and opened on the listener's initial context (OpenSSL's
        // session context), with the process's ticket-key ring.
        if policy.sessionTickets {
            _ = SSL_CTX_set_tlsext_ticket_key_evp_cb(ctx, ticketKeyCallback)
        }
        edge_SSL_CTX_set_tlsext_servername_arg(ctx, Unmanaged.passUnretained(box).toOpaque())
        return TLSContext(pointer: ctx, isServer: true, chain: [], sessionContext: sessionContext, revocation: revocation)
    }

    /// A server context for `policy`, its session-ID context and the CRLs installed in it.
    private static func makeServerContext(policy: TLSServerPolicy, trust preloaded: ClientTrust? = nil) throws -> (OpaquePointer, [UInt8], RevocationListFile?) {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_server_method()) else {
            throw TLSError.configuration("SSL_CTX_new failed: \(openSSLErrorQueueDescription())")
        }
        do {
            try applyCommon(ctx, minimum: policy.minimumVersion, maximum: policy.maximumVersion)
            // An idle downstream connection keeps none of OpenSSL's 34 KiB of record buffers.
            _ = edge_SSL_CTX_set_mode(ctx, Int(SSL_MODE_RELEASE_BUFFERS))
            _ = SSL_CTX_set_options(
                ctx,
                EDGE_SSL_OP_NO_RENEGOTIATION | EDGE_SSL_OP_NO_COMPRESSION
            )
            guard SSL_CTX_set_cipher_list(ctx, policy.cipherList) == 1 else {
                throw TLSError.configuration("invalid TLS 1.2 cipher list '\(policy.cipherList)'")
            }
            guard SSL_CTX_set_ciphersuites(ctx, policy.cipherSuites) == 1 else {
                throw TLSError.configuration("invalid TLS 1.3 cipher suites '\(policy.cipherSuites)'")
            }
            guard edge_SSL_CTX_set1_groups_list(ctx, policy.groups) == 1 else {
                throw TLSError.configuration("invalid groups '\(policy.groups)'")
            }
            // One session-ID context for every context of a listener, so a
            // session survives the SNI switch and certificate rotations.
            if !policy.sessionTickets { _ = SSL_CTX_set_options(ctx, EDGE_SSL_OP_NO_TICKET) }
            _ = SSL_CTX_set_num_tickets(ctx, policy.sessionTickets ? max(policy.ticketsPerHandshake, 0) : 0)
            // Sessions resume only under the trust they were made under: the session-ID
            // context (kept in every session and ticket, and compared by OpenSSL before
            // it resumes one) covers the client CA bundle's bytes, the CRL file's, whether a
            // certificate is required and the allow list: no session outlives a revocation. A session made without a client certificate
            // never resumes where one is required, and none outlives a change of CA.
            let trust = policy.clientCAFile == nil ? nil : try preloaded ?? ClientTrust.load(for: policy)
            let sid = Array((trust.map { "eg-" + $0.sessionContext(policy) } ?? "edge-gateway").utf8)
            _ = SSL_CTX_set_session_id_context(ctx, sid, UInt32(sid.count))
            if policy.sessionCacheSize > 0 {
                _ = edge_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_SERVER))
                _ = edge_SSL_CTX_sess_set_cache_size(ctx, policy.sessionCacheSize)
            } else {
                _ = edge_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_OFF))
            }
            if let trust {
                // The bundle is installed from the bytes its hash was taken of, not read again.
                try trust.install(in: ctx, crlChain: policy.clientCRLChain)
                let mode = SSL_VERIFY_PEER | (policy.requireClientCertificate ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0)
                SSL_CTX_set_verify(ctx, mode, clientVerifyCallback)
                if policy.clientAllow != nil || policy.clientCRLFile != nil {
                    OwnedExData.set(ClientVerificationBox(allow: policy.clientAllow, crlStrict: policy.clientCRLStrict), on: ctx,
                                    index: OwnedExData.clientVerification)
                }
            }
            if !policy.alpnProtocols.isEmpty {
                let wire = ALPNWireFormat.intern(policy.alpnProtocols)
                SSL_CTX_set_alpn_select_cb(ctx, alpnSelectCallback, UnsafeMutableRawPointer(mutating: wire))
            }
            return (ctx, sid, trust?.revocation)
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
    }

    static func applyCommon(_ ctx: OpaquePointer, minimum: TLSVersion, maximum: TLSVersion) throws {
        guard edge_SSL_CTX_set_min_proto_version(ctx, minimum.openSSLValue) == 1,
              edge_SSL_CTX_set_max_proto_version(ctx, maximum.openSSLValue) == 1 else {
            throw TLSError.configuration("cannot set protocol versions \(minimum.rawValue)-\(maximum.rawValue)")
        }
    }

    /// A client context for connections to upstreams.
    package static func client(configuration: TLSClientConfiguration) throws -> TLSContext {
        ERR_clear_error()
        guard let ctx = SSL_CTX_new(TLS_client_method()) else {
            throw TLSError.configuration("SSL_CTX_new failed: \(openSSLErrorQueueDescription())")
        }
        var revocation: RevocationListFile?
        do {
            try applyCommon(ctx, minimum: configuration.minimumVersion, maximum: .tls13)
            _ = SSL_CTX_set_options(ctx, EDGE_SSL_OP_NO_RENEGOTIATION | EDGE_SSL_OP_NO_COMPRESSION)
            // No SSL_MODE_RELEASE_BUFFERS here: an upstream connection keeps its record
            // buffers between requests, where releasing them after every record cost a
            // malloc and a free of 17 KB per direction and request on each pooled
            // connection (1.3k instructions, 2 % of a TLS-upstream request). The pool
            // gives them back once a connection has been quiet for a second or two
            // (`OpenSSLHandler.releaseRecordBuffersIfQuiet`), so idle pools stay small.
            if configuration.verifyCertificate {
                if let caFile = configuration.caFile {
                    guard SSL_CTX_load_verify_locations(ctx, caFile, nil) == 1 else {
                        throw TLSError.configuration("cannot load CA bundle \(caFile): \(openSSLErrorQueueDescription())")
                    }
                } else {
                    guard SSL_CTX_set_default_verify_paths(ctx) == 1 else {
                        throw TLSError.configuration("cannot load the system trust store: \(openSSLErrorQueueDescription())")
                    }
                }
                SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, nil)
                if let crlFile = configuration.crlFile {
                    // Checked against the CAs of ca_file when one is named (the system store is not read here).
                    let issuers: [X509Certificate]?
                    do {
                        issuers = try configuration.caFile.map { file in try PEMBundle.parse(try readRegularFile(file)).certificates }
                    } catch {
                        throw TLSError.configuration("cannot load CA bundle \(configuration.caFile ?? ""): \(error)")
                    }
                    let lists = try RevocationListFile(path: crlFile, issuers: issuers)
                    revocation = lists
                    guard let store = SSL_CTX_get_cert_store(ctx) else { throw TLSError.configuration("CRL file \(crlFile): the context has no certificate store") }
                    try lists.install(in: store, chain: configuration.crlChain)
                    OwnedExData.set(ClientVerificationBox(allow: nil, crlStrict: configuration.crlStrict), on: ctx, index: OwnedExData.clientVerification)
                    // For connections that check no names (verify_hostname: false); the others
                    // get `serverNameVerifyCallback`, which takes a stale list the same way.
                    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, upstreamCRLVerifyCallback)
                }
            } else {
                SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, nil)
            }
            if let chain = configuration.clientChain, let key = configuration.clientKey, let leaf = chain.first {
                guard SSL_CTX_use_certificate(ctx, leaf.pointer) == 1 else {
                    throw TLSError.invalidCertificate("client certificate rejected: \(openSSLErrorQueueDescription())")
                }
                for intermediate in chain.dropFirst() {
                    _ = edge_SSL_CTX_add1_chain_cert(ctx, intermediate.pointer)
                }
                guard SSL_CTX_use_PrivateKey(ctx, key.pointer) == 1, SSL_CTX_check_private_key(ctx) == 1 else {
                    throw TLSError.keyMismatch("client key does not match the client certificate")
                }
            }
            // Sessions are kept per upstream peer in a `TLSSessionSlot`, not in OpenSSL's cache.
            _ = edge_SSL_CTX_set_session_cache_mode(ctx, Int(SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE))
            SSL_CTX_sess_set_new_cb(ctx, clientNewSessionCallback)
            if !configuration.alpnProtocols.isEmpty {
                let wire = ALPNWireFormat.encode(configuration.alpnProtocols)
                _ = SSL_CTX_set_alpn_protos(ctx, wire, UInt32(wire.count))
            }
            // Notes whether the upstream asked for a client certificate (see `upstreamReason`).
            SSL_CTX_set_cert_cb(ctx, certificateRequestCallback, nil)
            let offered = configuration.minimumVersion == .tls13 ? "TLSv1.3 only" : "TLSv1.2 and TLSv1.3"
            return TLSContext(pointer: ctx, isServer: false, chain: configuration.clientChain ?? [], offeredVersions: offered, revocation: revocation)
        } catch {
            SSL_CTX_free(ctx)
            throw error
        }
    }
}

/// Options of a client context and of the connections made from it.
package struct TLSClientConfiguration: Sendable {
    package var verifyCertificate = true
    package var caFile: String?
    package var minimumVersion: TLSVersion = .tls12
    package var clientChain: [X509Certificate]?
    package var clientKey: PrivateKey?
    package var alpnProtocols: [String] = []
    /// Revocation lists the upstream's certificate is checked against (`tls.crl_file`).
    package var crlFile: String?
    /// Check every certificate of the upstream's chain (`crl_check: chain`).
    package var crlChain = false
    /// Refuse upstreams while a list is past its next update (`crl_strict`).
    package var crlStrict = false

    package init() {}
}

/// Heap box so a C callback can reach the Swift selector through a raw pointer.
private final class SelectorBox: Sendable {
    let selector: any ServerNameSelector
    init(_ selector: any ServerNameSelector) { self.selector = selector }
}

/// OpenSSL's servername callback: acts on what the client-hello callback decided for
/// this ClientHello, and looks the name up itself only when that callback did not
/// decide: a malformed server_name extension, or the second ClientHello after a
/// HelloRetryRequest, which OpenSSL shows only to this callback (the client-hello
/// callback belongs to the listener's context, and the connection was switched away
/// from it by the first ClientHello).
///
/// The selected `TLSContext` is held strongly for the duration of the call, and
/// `SSL_set_SSL_CTX` takes OpenSSL's own reference before it returns, so a
/// concurrent reload that drops the snapshot cannot free the context in between.
private let serverNameCallback: edge_servername_cb = { ssl, alert, arg in
    guard let ssl, let arg else { return SSL_TLSEXT_ERR_NOACK }
    let verdict = SNIVerdict.take(from: ssl)
    switch verdict {
    case .switched:
        return SSL_TLSEXT_ERR_OK
    case .rejected:
        alert?.pointee = SSL_AD_UNRECOGNIZED_NAME
        return SSL_TLSEXT_ERR_ALERT_FATAL
    case .settled, nil:
        break
    }
    let box = Unmanaged<SelectorBox>.fromOpaque(arg).takeUnretainedValue()
    let name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name).map {
        ServerName.normalized(UnsafeBufferPointer(start: UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self), count: strlen($0)))
    }
    switch box.selector.select(serverName: name) {
    case .use(let context):
        if verdict == .settled {
            // The second ClientHello after a HelloRetryRequest. OpenSSL has already
            // looked up the session it offers under the first one's context, and does
            // not check that SNI stayed the same (RFC 8446 §4.1.2 says it must): a name
            // served by other lineages, or under another client authentication, would be
            // served under the first name's. Refused; otherwise the context stays the
            // first one's, which the session check used, even if a rotation or a CA
            // change published another in the round trip between the two.
            guard let current = SSL_get_ex_data(ssl, OwnedExData.selectedContext),
                  Unmanaged<TLSContext>.fromOpaque(current).takeUnretainedValue().servesLike(context) else {
                alert?.pointee = SSL_AD_ILLEGAL_PARAMETER
                return SSL_TLSEXT_ERR_ALERT_FATAL
            }
            return SSL_TLSEXT_ERR_OK
        }
        guard switchContext(ssl, to: context) else {
            alert?.pointee = SSL_AD_INTERNAL_ERROR
            return SSL_TLSEXT_ERR_ALERT_FATAL
        }
        SNIVerdict.record(.settled, on: ssl)
        return SSL_TLSEXT_ERR_OK
    case .reject:
        alert?.pointee = SSL_AD_UNRECOGNIZED_NAME
        return SSL_TLSEXT_ERR_ALERT_FATAL
    }
}

/// OpenSSL's client-hello callback: the one SNI lookup of a handshake. It reads the
/// name from the raw extension and switches the context here, a ClientHello without
/// SNI to the default's context, so that every session is looked up under the
/// session-ID context of the policy it is presented to. A rejection is only recorded:
/// the servername callback, which runs later for the same ClientHello, refuses it with
/// `unrecognized_name`, as it would have without this callback.
private let clientHelloCallback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int32>?, UnsafeMutableRawPointer?) -> Int32 = { ssl, _, arg in
    guard let ssl, let arg else { return SSL_CLIENT_HELLO_SUCCESS }
    let box = Unmanaged<SelectorBox>.fromOpaque(arg).takeUnretainedValue()
    var data: UnsafePointer<UInt8>? = nil
    var length = 0
    var name: String?
    if SSL_client_hello_get0_ext(ssl, UInt32(TLSEXT_TYPE_server_name), &data, &length) == 1, let data, length > 5 {
        // server_name_list: u16 length, then (u8 type, u16 length, name); the first host_name wins.
        let bytes = UnsafeBufferPointer(start: data, count: length)
        guard bytes[2] == 0 else { return SSL_CLIENT_HELLO_SUCCESS }
        let nameLength = Int(bytes[3]) << 8 | Int(bytes[4])
        guard 5 + nameLength <= length else { return SSL_CLIENT_HELLO_SUCCESS }
        name = ServerName.normalized(bytes[5..<(5 + nameLength)])
    }
    switch box.selector.select(serverName: name) {
    case .use(let context):
        if switchContext(ssl, to: context) { SNIVerdict.record(.switched, on: ssl) }
    case .reject:
        SNIVerdict.record(.rejected, on: ssl)
    }
    return SSL_CLIENT_HELLO_SUCCESS
}

/// What the client-hello callback decided for the ClientHello being processed, kept
/// on the `SSL` until the servername callback of that ClientHello takes it. A tagged
/// value, not an object: nothing to retain or free, no allocation per handshake.
private enum SNIVerdict: Int {
    /// Switched to the name's context; the servername callback has not run yet.
    case switched = 1
    /// The name is refused; the servername callback sends the alert.
    case rejected = 2
    /// A ClientHello was switched and its servername callback has run: the next
    /// ClientHello (after a HelloRetryRequest) must be served alike.
    case settled = 3

    private static let index = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL, 0, nil, nil, nil, nil)

    static func record(_ verdict: SNIVerdict, on ssl: OpaquePointer) {
        _ = SSL_set_ex_data(ssl, index, UnsafeMutableRawPointer(bitPattern: verdict.rawValue))
    }

    /// The verdict for the ClientHello being processed; a `switched` one becomes
    /// `settled`, so a later ClientHello is never answered with an earlier one's decision.
    static func take(from ssl: OpaquePointer) -> SNIVerdict? {
        guard let raw = SSL_get_ex_data(ssl, index), let verdict = SNIVerdict(rawValue: Int(bitPattern: raw)) else { return nil }
        if verdict == .switched { record(.settled, on: ssl) }
        return verdict
    }
}

/// Switches a handshake to the context chosen for its server name. The connection
/// owns the `TLSContext` from here until its `SSL` is freed, so whatever the context
/// keeps for its callbacks (the allow list the verify callback reads, the chain)
/// outlives the snapshot that offered it, however long the client holds its flight.
private func switchContext(_ ssl: OpaquePointer, to context: TLSContext) -> Bool {
    guard SSL_set_SSL_CTX(ssl, context.pointer) != nil else { return false }
    OwnedExData.replace(context, on: ssl, index: OwnedExData.selectedContext)
    // Client authentication follows the chosen context (it may differ per SNI name).
    SSL_set_verify(ssl, SSL_CTX_get_verify_mode(context.pointer), SSL_CTX_get_verify_callback(context.pointer))
    return true
}

/// ALPN selection: server preference order over the client's offer.
private let alpnSelectCallback: @convention(c) (
    OpaquePointer?, UnsafeMutablePointer<UnsafePointer<UInt8>?>?, UnsafeMutablePointer<UInt8>?,
    UnsafePointer<UInt8>?, UInt32, UnsafeMutableRawPointer?
) -> Int32 = { _, out, outLength, clientList, clientLength, arg in
    guard let arg, let clientList, let out, let outLength else { return SSL_TLSEXT_ERR_NOACK }
    let server = arg.assumingMemoryBound(to: UInt8.self)
    let serverLength = UInt32(server.pointee)
    var selected: UnsafeMutablePointer<UInt8>? = nil
    var selectedLength: UInt8 = 0
    let result = SSL_select_next_proto(&selected, &selectedLength, server + 1, serverLength, clientList, clientLength)
    guard result == OPENSSL_NPN_NEGOTIATED, let selected else { return SSL_TLSEXT_ERR_ALERT_FATAL }
    out.pointee = UnsafePointer(selected)
    outLength.pointee = selectedLength
    return SSL_TLSEXT_ERR_OK
}

/// ALPN protocol lists in wire format.
enum ALPNWireFormat {
    static func encode(_ protocols: [String]) -> [UInt8] {
        var wire: [UInt8] = []
        for proto in protocols {
            let bytes = Array(proto.utf8)
            precondition(!bytes.isEmpty && bytes.count < 256, "invalid ALPN protocol \(proto)")
            wire.append(UInt8(bytes.count))
            wire.append(contentsOf: bytes)
        }
        return wire
    }

    private static let table = InternTable()

    /// A process-lifetime copy of the list (length-prefixed), so the C callback's
    /// pointer can never dangle, whatever outlives which context. There are only
    /// a handful of distinct lists in a process.
    static func intern(_ protocols: [String]) -> UnsafePointer<UInt8> {
        table.intern(encode(protocols))
    }

    private final class InternTable: @unchecked Sendable {
        // Guarded by `lock`; entries are never freed (see `intern`).
        private var entries: [[UInt8]: UnsafeMutablePointer<UInt8>] = [:]
        private let lock = PThreadLock()

        func intern(_ wire: [UInt8]) -> UnsafePointer<UInt8> {
            self.lock.withLock {
                if let existing = self.entries[wire] { return UnsafePointer(existing) }
                precondition(wire.count < 256)
                let storage = UnsafeMutablePointer<UInt8>.allocate(capacity: wire.count + 1)
                storage[0] = UInt8(wire.count)
                for (i, byte) in wire.enumerated() { storage[i + 1] = byte }
                self.entries[wire] = storage
                return UnsafePointer(storage)
            }
        }
    }
}
