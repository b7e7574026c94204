import COpenSSL
import CEdgeShims

/// What an OCSP responder said about one certificate, once its response was verified.
package enum OCSPCertificateStatus: Sendable, Equatable {
    case good
    /// Revoked at `at` (Unix time), for `reason` (an RFC 5280 reason name, or nil).
    case revoked(at: Int64, reason: String?)
    /// The responder does not know the certificate.
    case unknown

    package var name: String {
        switch self {
        case .good: return "good"
        case .revoked: return "revoked"
        case .unknown: return "unknown"
        }
    }
}

/// An OCSP response checked for one leaf: signed by its issuer (or a responder the issuer
/// delegated to, with the OCSPSigning key usage), naming that very certificate, and
/// current by its `thisUpdate` and `nextUpdate`. Only a response that passed all of this
/// is ever stapled or cached.
package struct VerifiedOCSPResponse: Sendable {
    /// The DER of the whole response, as stapled.
    package let der: [UInt8]
    package let status: OCSPCertificateStatus
    package let thisUpdate: Int64
    /// nil: the responder gives no next update (RFC 6960: newer information is always
    /// available); the gateway then refreshes it on a fixed schedule.
    package let nextUpdate: Int64?

    package init(der: [UInt8], status: OCSPCertificateStatus, thisUpdate: Int64, nextUpdate: Int64?) {
        self.der = der
        self.status = status
        self.thisUpdate = thisUpdate
        self.nextUpdate = nextUpdate
    }

    /// The longest a response without a next update is used: a week after its thisUpdate,
    /// as long as responders give a response at most (the CA/Browser Forum's rule), so a
    /// years-old one read back from a cache is never stapled.
    package static let maximumAgeWithoutNextUpdate: Int64 = 7 * 86_400

    /// When it stops being current: its next update, or a week after it was produced.
    package var validUntil: Int64 { self.nextUpdate ?? self.thisUpdate + Self.maximumAgeWithoutNextUpdate }

    /// Stapled at `now`: current, and good or revoked. A revoked certificate gets the
    /// responder's word as it is (the client refuses it either way, and learns why); an
    /// `unknown` answer says nothing worth sending.
    package func staplable(now: Int64) -> Bool {
        self.status != .unknown && now < self.validUntil
    }
}

/// Building OCSP requests and checking responses for one leaf and its issuer.
package enum OCSPCheck {
    /// Seconds of clock difference tolerated between the responder and this host.
    static let clockSkew = 300

    /// The OCSP responder URLs of the certificate's Authority Information Access.
    package static func responderURLs(of certificate: X509Certificate) -> [String] {
        guard let urls = X509_get1_ocsp(certificate.pointer) else { return [] }
        defer { X509_email_free(urls) }
        return (0..<edge_sk_OPENSSL_STRING_num(urls)).compactMap { edge_sk_OPENSSL_STRING_value(urls, $0).map { String(cString: $0) } }
    }

    /// True when the certificate carries the TLS Feature extension with status_request
    /// (RFC 7633, "must-staple"): clients that honour it refuse the handshake without a
    /// stapled response.
    package static func mustStaple(_ certificate: X509Certificate) -> Bool {
        guard let raw = X509_get_ext_d2i(certificate.pointer, NID_tlsfeature, nil, nil) else { return false }
        let features = OpaquePointer(raw)
        defer { edge_sk_ASN1_INTEGER_pop_free(features) }
        // status_request is TLS extension 5.
        return (0..<edge_sk_ASN1_INTEGER_num(features)).contains { ASN1_INTEGER_get(edge_sk_ASN1_INTEGER_value(features, $0)) == 5 }
    }

    /// The certificate of `chain` that issued `leaf` (its signature verifies under its key).
    package static func issuer(of leaf: X509Certificate, in chain: [X509Certificate]) -> X509Certificate? {
        chain.first { candidate in
            candidate !== leaf && leaf.isIssued(by: candidate)
                && X509_get0_pubkey(candidate.pointer).map { X509_verify(leaf.pointer, $0) == 1 } ?? false
        }
    }

    /// The DER of an OCSP request for `leaf` (no nonce: responders that pre-sign their
    /// answers, as the large CAs' do, ignore it, and the response is checked by its times).
    package static func request(leaf: X509Certificate, issuer: X509Certificate) throws -> [UInt8] {
        ERR_clear_error()
        guard let request = OCSP_REQUEST_new() else { throw TLSError.configuration("OCSP: out of memory") }
        defer { OCSP_REQUEST_free(request) }
        // SHA-1 CertIDs: what RFC 5019 responders index by.
        guard let id = OCSP_cert_to_id(EVP_sha1(), leaf.pointer, issuer.pointer) else {
            throw TLSError.configuration("OCSP: cannot name the certificate: \(openSSLErrorQueueDescription())")
        }
        guard OCSP_request_add0_id(request, id) != nil else {
            OCSP_CERTID_free(id)
            throw TLSError.configuration("OCSP: cannot build the request: \(openSSLErrorQueueDescription())")
        }
        var out: UnsafeMutablePointer<UInt8>?
        let length = i2d_OCSP_REQUEST(request, &out)
        guard length > 0, let out else { throw TLSError.configuration("OCSP: cannot encode the request") }
        defer { edge_OPENSSL_free(out) }
        return Array(UnsafeBufferPointer(start: out, count: Int(length)))
    }

    /// Checks a response for `leaf` issued by `issuer` at `now`; throws with the reason
    /// (for the status views and the log) when it is not one to trust.
    package static func verify(_ der: [UInt8], leaf: X509Certificate, issuer: X509Certificate, now: Int64) throws -> VerifiedOCSPResponse {
        ERR_clear_error()
        defer { ERR_clear_error() }
        guard !der.isEmpty else { throw TLSError.configuration("empty OCSP response") }
        let (parsed, consumed): (OpaquePointer?, Int) = der.withUnsafeBufferPointer { buffer in
            var cursor: UnsafePointer<UInt8>? = buffer.baseAddress
            let parsed = d2i_OCSP_RESPONSE(nil, &cursor, buffer.count)
            return (parsed, cursor.map { $0 - buffer.baseAddress! } ?? 0)
        }
        guard let response = parsed else { throw TLSError.configuration("not an OCSP response (DER does not decode)") }
        // Bytes after the response would be stapled with it, and a strict client refuses them.
        guard consumed == der.count else {
            OCSP_RESPONSE_free(response)
            throw TLSError.configuration("the OCSP response is followed by \(der.count - consumed) bytes that are not part of it")
        }
        defer { OCSP_RESPONSE_free(response) }
        let responseStatus = OCSP_response_status(response)
        guard responseStatus == OCSP_RESPONSE_STATUS_SUCCESSFUL else {
            throw TLSError.configuration("the responder answered \(String(cString: OCSP_response_status_str(Int(responseStatus))))")
        }
        guard let basic = OCSP_response_get1_basic(response) else { throw TLSError.configuration("the OCSP response holds no basic response") }
        defer { OCSP_BASICRESP_free(basic) }
        // Trust: the issuer itself (signer found among `certs`, OCSP_TRUSTOTHER), or a
        // delegated responder whose chain ends at the issuer (a store holding only the
        // issuer, partial chains allowed); OpenSSL's issuer check then requires that the
        // delegate was issued by this leaf's issuer and has the OCSPSigning key usage.
        // OCSP_NOEXPLICIT: the issuer is trusted for this leaf because it signed it, not
        // by an explicit trust setting a root would carry.
        guard let store = X509_STORE_new() else { throw TLSError.configuration("OCSP: out of memory") }
        defer { X509_STORE_free(store) }
        guard X509_STORE_add_cert(store, issuer.pointer) == 1, let certs = edge_sk_X509_new_null() else {
            throw TLSError.configuration("OCSP: out of memory")
        }
        defer { edge_sk_X509_free(certs) }
        _ = edge_sk_X509_push(certs, issuer.pointer)
        _ = X509_STORE_set_flags(store, UInt(X509_V_FLAG_PARTIAL_CHAIN))
        guard OCSP_basic_verify(basic, certs, store, UInt(OCSP_TRUSTOTHER | OCSP_NOEXPLICIT)) == 1 else {
            throw TLSError.configuration("the OCSP response is not signed by the issuer or a responder it delegated to: \(openSSLErrorQueueDescription())")
        }
        guard let id = OCSP_cert_to_id(EVP_sha1(), leaf.pointer, issuer.pointer) else { throw TLSError.configuration("OCSP: out of memory") }
        defer { OCSP_CERTID_free(id) }
        var status: Int32 = -1, reason: Int32 = -1
        var revokedAt: GeneralizedTime?, thisUpdate: GeneralizedTime?, nextUpdate: GeneralizedTime?
        // Looks the CertID up under the hash of the response's own entries, so a
        // responder answering with SHA-256 CertIDs is found too.
        guard findStatus(basic, leaf: leaf, issuer: issuer, sha1ID: id, &status, &reason, &revokedAt, &thisUpdate, &nextUpdate) else {
            throw TLSError.configuration("the OCSP response does not name this certificate (serial \(leaf.serialNumberHex))")
        }
        // Without a next update, no older than a week (`maximumAgeWithoutNextUpdate`).
        let maximumAge = nextUpdate == nil ? Int(VerifiedOCSPResponse.maximumAgeWithoutNextUpdate) : -1
        guard OCSP_check_validity(thisUpdate, nextUpdate, clockSkew, maximumAge) == 1 else {
            throw TLSError.configuration("the OCSP response is not current (this update \(seconds(thisUpdate).map(String.init) ?? "?"), "
                                         + "next update \(seconds(nextUpdate).map(String.init) ?? "none"), now \(now))")
        }
        // OCSP_check_validity looks at the system clock; `now` is the caller's (tests, cache).
        let next = seconds(nextUpdate)
        let produced = seconds(thisUpdate) ?? now
        if (next ?? produced + VerifiedOCSPResponse.maximumAgeWithoutNextUpdate) <= now {
            throw TLSError.configuration("the OCSP response is past its next update")
        }
        let certificateStatus: OCSPCertificateStatus
        switch status {
        case V_OCSP_CERTSTATUS_GOOD: certificateStatus = .good
        case V_OCSP_CERTSTATUS_REVOKED:
            certificateStatus = .revoked(at: seconds(revokedAt) ?? 0, reason: reason >= 0 ? String(cString: OCSP_crl_reason_str(Int(reason))) : nil)
        default: certificateStatus = .unknown
        }
        return VerifiedOCSPResponse(der: der, status: certificateStatus, thisUpdate: produced, nextUpdate: next)
    }

    private static func findStatus(_ basic: OpaquePointer, leaf: X509Certificate, issuer: X509Certificate, sha1ID: OpaquePointer,
                                   _ status: inout Int32, _ reason: inout Int32, _ revokedAt: inout GeneralizedTime?,
                                   _ thisUpdate: inout GeneralizedTime?, _ nextUpdate: inout GeneralizedTime?) -> Bool {
        if OCSP_resp_find_status(basic, sha1ID, &status, &reason, &revokedAt, &thisUpdate, &nextUpdate) == 1 { return true }
        guard let id = OCSP_cert_to_id(EVP_sha256(), leaf.pointer, issuer.pointer) else { return false }
        defer { OCSP_CERTID_free(id) }
        return OCSP_resp_find_status(basic, id, &status, &reason, &revokedAt, &thisUpdate, &nextUpdate) == 1
    }

    private typealias GeneralizedTime = UnsafeMutablePointer<ASN1_GENERALIZEDTIME>

    private static func seconds(_ time: GeneralizedTime?) -> Int64? {
        time.map { X509Certificate.epochSeconds(UnsafePointer<ASN1_TIME>($0)) }
    }
}
