import COpenSSL
import CEdgeShims

/// One X.509 certificate, owned.
///
/// `@unchecked Sendable`: the `X509` is never mutated after parsing, and OpenSSL's
/// read accessors and reference counting are thread-safe.
package final class X509Certificate: @unchecked Sendable {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        X509_free(self.pointer)
    }

    /// The serial number in upper-case hex, as `openssl x509 -serial` prints it.
    package var serialNumberHex: String {
        guard let bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(self.pointer), nil) else { return "" }
        defer { BN_free(bn) }
        guard let hex = BN_bn2hex(bn) else { return "" }
        defer { edge_OPENSSL_free(hex) }
        let text = String(cString: hex)
        return text.count % 2 == 1 ? "0" + text : text
    }

    /// Subject in RFC 2253 form.
    package var subject: String { Self.nameString(X509_get_subject_name(self.pointer)) }
    /// Issuer in RFC 2253 form.
    package var issuer: String { Self.nameString(X509_get_issuer_name(self.pointer)) }

    /// Not-before as seconds since the epoch.
    package var notBefore: Int64 { Self.epochSeconds(X509_get0_notBefore(self.pointer)) }
    /// Not-after as seconds since the epoch.
    package var notAfter: Int64 { Self.epochSeconds(X509_get0_notAfter(self.pointer)) }

    /// DNS subject alternative names, lower-cased.
    package var dnsNames: [String] {
        self.subjectAlternativeNames.compactMap { if case .dns(let n) = $0 { return n.lowercased() } else { return nil } }
    }

    package enum AlternativeName: Hashable, Sendable {
        case dns(String)
        case ip(String)
        case uri(String)
        case email(String)
    }

    /// Every subject alternative name of a supported type.
    package var subjectAlternativeNames: [AlternativeName] {
        guard let raw = X509_get_ext_d2i(self.pointer, NID_subject_alt_name, nil, nil) else { return [] }
        let names = OpaquePointer(raw)
        defer { GENERAL_NAMES_free(names) }
        var result: [AlternativeName] = []
        for index in 0..<edge_sk_GENERAL_NAME_num(names) {
            guard let name = edge_sk_GENERAL_NAME_value(names, index) else { continue }
            var type: Int32 = 0
            guard let value = GENERAL_NAME_get0_value(name, &type) else { continue }
            switch type {
            case GEN_DNS, GEN_URI, GEN_EMAIL:
                let ia5 = value.assumingMemoryBound(to: ASN1_STRING.self)
                let length = Int(ASN1_STRING_length(ia5))
                guard let data = ASN1_STRING_get0_data(ia5) else { continue }
                let text = String(decoding: UnsafeBufferPointer(start: data, count: length), as: UTF8.self)
                switch type {
                case GEN_DNS: result.append(.dns(text))
                case GEN_URI: result.append(.uri(text))
                default: result.append(.email(text))
                }
            case GEN_IPADD:
                let octets = value.assumingMemoryBound(to: ASN1_STRING.self)
                let length = Int(ASN1_STRING_length(octets))
                guard let data = ASN1_STRING_get0_data(octets) else { continue }
                let bytes = Array(UnsafeBufferPointer(start: data, count: length))
                if bytes.count == 4 {
                    result.append(.ip(bytes.map { "\($0)" }.joined(separator: ".")))
                } else if bytes.count == 16 {
                    let groups = stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }
                    result.append(.ip(groups.joined(separator: ":")))
                }
            default:
                continue
            }
        }
        return result
    }

    /// The subject common name, if any.
    package var commonName: String? {
        let name = X509_get_subject_name(self.pointer)
        let index = X509_NAME_get_index_by_NID(name, NID_commonName, -1)
        guard index >= 0, let entry = X509_NAME_get_entry(name, index),
              let data = X509_NAME_ENTRY_get_data(entry) else { return nil }
        var utf8: UnsafeMutablePointer<UInt8>? = nil
        let length = ASN1_STRING_to_UTF8(&utf8, data)
        guard length >= 0, let utf8 else { return nil }
        defer { edge_OPENSSL_free(utf8) }
        return String(decoding: UnsafeBufferPointer(start: utf8, count: Int(length)), as: UTF8.self)
    }

    /// SHA-256 fingerprint of the DER encoding, colon-separated upper-case hex.
    package var sha256Fingerprint: String {
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        guard X509_digest(self.pointer, EVP_sha256(), &digest, &length) == 1 else { return "" }
        return digest.prefix(Int(length)).map { byte in
            let hex = String(byte, radix: 16, uppercase: true)
            return hex.count == 1 ? "0" + hex : hex
        }.joined(separator: ":")
    }

    /// Public key algorithm and size, for example `ECDSA P-256` or `RSA 2048`.
    package var keyDescription: String {
        guard let key = X509_get0_pubkey(self.pointer) else { return "unknown" }
        return PrivateKey.describe(key)
    }

    /// True when `issuer` signed this certificate and the names chain.
    package func isIssued(by issuer: X509Certificate) -> Bool {
        X509_check_issued(issuer.pointer, self.pointer) == X509_V_OK
    }

    static func nameString(_ name: OpaquePointer?) -> String {
        guard let name, let bio = BIO_new(BIO_s_mem()) else { return "" }
        defer { BIO_free(bio) }
        guard X509_NAME_print_ex(bio, name, 0, EDGE_XN_FLAG_RFC2253) >= 0 else { return "" }
        return readAll(bio)
    }

    static func epochSeconds(_ time: UnsafePointer<ASN1_TIME>?) -> Int64 {
        guard let time else { return 0 }
        var tm = tm()
        guard ASN1_TIME_to_tm(time, &tm) == 1 else { return 0 }
        return Int64(timegm(&tm))
    }
}

func readAll(_ bio: OpaquePointer) -> String {
    var result = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 1024)
    while true {
        let n = BIO_read(bio, &chunk, Int32(chunk.count))
        if n <= 0 { break }
        result.append(contentsOf: chunk.prefix(Int(n)))
    }
    return String(decoding: result, as: UTF8.self)
}

/// A private key, owned. Never printed, logged or serialised.
///
/// `@unchecked Sendable`: the `EVP_PKEY` is immutable after parsing.
package final class PrivateKey: @unchecked Sendable, CustomStringConvertible {
    let pointer: OpaquePointer

    init(taking pointer: OpaquePointer) {
        self.pointer = pointer
    }

    deinit {
        EVP_PKEY_free(self.pointer)
    }

    /// Algorithm and size only: key material never appears in descriptions.
    package var description: String { "PrivateKey(\(Self.describe(self.pointer)))" }

    static func describe(_ key: OpaquePointer) -> String {
        let bits = EVP_PKEY_get_bits(key)
        switch EVP_PKEY_get_base_id(key) {
        case EVP_PKEY_RSA: return "RSA \(bits)"
        case EVP_PKEY_EC:
            var name = [CChar](repeating: 0, count: 64)
            var length = 0
            if EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, &name, name.count, &length) == 1 {
                let group = String(decoding: name.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
                switch group {
                case "prime256v1": return "ECDSA P-256"
                case "secp384r1": return "ECDSA P-384"
                case "secp521r1": return "ECDSA P-521"
                default: return "ECDSA \(group)"
                }
            }
            return "ECDSA \(bits)"
        case EVP_PKEY_ED25519: return "Ed25519"
        default: return "unknown \(bits)"
        }
    }
}

/// The certificates and optional key found in one PEM document.
package struct PEMBundle: Sendable {
    package var certificates: [X509Certificate]
    package var key: PrivateKey?

    /// Parses every CERTIFICATE block and at most one private key from PEM text.
    ///
    /// Throws `TLSError.invalidCertificate` with a reason when the text holds
    /// malformed PEM or nothing usable.
    package static func parse(_ bytes: [UInt8]) throws -> PEMBundle {
        ERR_clear_error()
        var bundle = PEMBundle(certificates: [], key: nil)
        guard !bytes.isEmpty else { throw TLSError.invalidCertificate("file is empty") }
        try bytes.withUnsafeBytes { raw in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else {
                throw TLSError.invalidCertificate("out of memory")
            }
            defer { BIO_free(bio) }
            while true {
                var name: UnsafeMutablePointer<CChar>? = nil
                var header: UnsafeMutablePointer<CChar>? = nil
                var data: UnsafeMutablePointer<UInt8>? = nil
                var length = 0
                let ok = PEM_read_bio(bio, &name, &header, &data, &length)
                if ok == 0 {
                    let code = ERR_peek_last_error()
                    ERR_clear_error()
                    // PEM_R_NO_START_LINE at the end simply means "no more blocks".
                    if ERR_GET_REASON_shim(code) == PEM_R_NO_START_LINE { break }
                    throw TLSError.invalidCertificate("malformed PEM (truncated or corrupt block)")
                }
                defer {
                    edge_OPENSSL_free(name)
                    edge_OPENSSL_free(header)
                    edge_OPENSSL_free(data)
                }
                let label = name.map { String(cString: $0) } ?? ""
                var cursor: UnsafePointer<UInt8>? = UnsafePointer(data)
                switch label {
                case "CERTIFICATE", "TRUSTED CERTIFICATE", "X509 CERTIFICATE":
                    guard let cert = d2i_X509(nil, &cursor, length) else {
                        throw TLSError.invalidCertificate("a CERTIFICATE block does not parse: \(openSSLErrorQueueDescription())")
                    }
                    bundle.certificates.append(X509Certificate(taking: cert))
                case "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY":
                    guard bundle.key == nil else {
                        throw TLSError.invalidKey("more than one private key in one file")
                    }
                    var keyCursor: UnsafePointer<UInt8>? = UnsafePointer(data)
                    let key: OpaquePointer?
                    switch label {
                    case "EC PRIVATE KEY": key = d2i_PrivateKey(EVP_PKEY_EC, nil, &keyCursor, length)
                    case "RSA PRIVATE KEY": key = d2i_PrivateKey(EVP_PKEY_RSA, nil, &keyCursor, length)
                    default: key = d2i_AutoPrivateKey(nil, &keyCursor, length)
                    }
                    guard let key else {
                        throw TLSError.invalidKey("a \(label) block does not parse: \(openSSLErrorQueueDescription())")
                    }
                    bundle.key = PrivateKey(taking: key)
                case "ENCRYPTED PRIVATE KEY":
                    throw TLSError.invalidKey("the private key is encrypted; the gateway needs an unencrypted key")
                default:
                    continue  // EC PARAMETERS and friends are harmless
                }
            }
        }
        return bundle
    }
}

@inline(__always)
func ERR_GET_REASON_shim(_ code: UInt) -> Int32 {
    // ERR_GET_REASON is a static inline in OpenSSL 3: the reason is the low 23 bits.
    Int32(code & 0x7FFFFF)
}

/// Checks that `key` belongs to `certificate` (`X509_check_private_key`).
package func keyMatches(_ key: PrivateKey, certificate: X509Certificate) -> Bool {
    ERR_clear_error()
    defer { ERR_clear_error() }
    return X509_check_private_key(certificate.pointer, key.pointer) == 1
}

/// SHA-256 of `bytes` in lower-case hex (content identity of source files).
package func sha256Hex(_ bytes: [UInt8]) -> String {
    var digest = [UInt8](repeating: 0, count: 32)
    var length: UInt32 = 0
    _ = EVP_Digest(bytes, bytes.count, &digest, &length, EVP_sha256(), nil)
    return digest.map { String(format2: $0) }.joined()
}

extension String {
    init(format2 byte: UInt8) {
        let hex = String(byte, radix: 16)
        self = hex.count == 1 ? "0" + hex : hex
    }
}

/// Incremental SHA-256, for hashing streamed bodies without holding them.
///
/// Not thread-safe; one owner at a time.
package final class SHA256Stream {
    private let context: OpaquePointer

    package init() {
        self.context = EVP_MD_CTX_new()
        EVP_DigestInit_ex(self.context, EVP_sha256(), nil)
    }

    deinit { EVP_MD_CTX_free(self.context) }

    package func update(_ bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        EVP_DigestUpdate(self.context, base, bytes.count)
    }

    /// The digest in lower-case hex; the stream is finished afterwards.
    package func finalizeHex() -> String {
        var digest = [UInt8](repeating: 0, count: 32)
        var length: UInt32 = 0
        EVP_DigestFinal_ex(self.context, &digest, &length)
        return digest.map { String(format2: $0) }.joined()
    }
}
