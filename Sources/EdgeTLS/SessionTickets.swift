import COpenSSL
import CEdgeShims
import NIOConcurrencyHelpers

/// One session-ticket key: a 16-byte name, a 32-byte HMAC-SHA256 key and a 32-byte AES-256 key
/// (80 bytes, the layout nginx's `ssl_session_ticket_key` files use).
package struct TicketKey: Sendable, Hashable {
    package let name: [UInt8]
    let hmacKey: [UInt8]
    let aesKey: [UInt8]

    package init?(bytes: [UInt8]) {
        guard bytes.count == 80 else { return nil }
        self.name = Array(bytes[0..<16])
        self.hmacKey = Array(bytes[16..<48])
        self.aesKey = Array(bytes[48..<80])
    }

    /// A fresh random key.
    package static func random() -> TicketKey {
        var bytes = [UInt8](repeating: 0, count: 80)
        _ = RAND_bytes(&bytes, 80)
        return TicketKey(bytes: bytes)!
    }

    /// The key name in hex, for logs (never the key material).
    package var nameHex: String { self.name.map { String(format2: $0) }.joined() }
}

/// The process's session-ticket keys: the first encrypts new tickets, every key decrypts.
///
/// One ring per process (OpenSSL calls the ticket callback on the listener's initial
/// context, and every listener shares these keys), so instances that share a key file
/// resume each other's sessions.
package final class TicketKeyRing: Sendable {
    package static let shared = TicketKeyRing()

    private let keys = NIOLockedValueBox<[TicketKey]>([TicketKey.random()])

    /// Replaces the keys; `keys[0]` encrypts from now on.
    package func install(_ keys: [TicketKey]) {
        guard !keys.isEmpty else { return }
        self.keys.withLockedValue { $0 = keys }
    }

    /// Puts a fresh random key first and keeps up to `keep` previous ones for decryption.
    package func rotate(keep: Int) {
        self.keys.withLockedValue { keys in
            keys.insert(TicketKey.random(), at: 0)
            if keys.count > keep + 1 { keys.removeLast(keys.count - keep - 1) }
        }
    }

    package var current: [TicketKey] { self.keys.withLockedValue { $0 } }

    func encryptionKey() -> TicketKey { self.keys.withLockedValue { $0[0] } }

    /// The key with this name and whether it is the current one.
    func key(named name: UnsafePointer<UInt8>) -> (TicketKey, isCurrent: Bool)? {
        let wanted = Array(UnsafeBufferPointer(start: name, count: 16))
        return self.keys.withLockedValue { keys in
            guard let index = keys.firstIndex(where: { $0.name == wanted }) else { return nil }
            return (keys[index], index == 0)
        }
    }

    /// Parses a key file: one base64 line of 80 bytes per key, the first line encrypts.
    package static func parse(keyFile text: String) throws -> [TicketKey] {
        var keys: [TicketKey] = []
        for (number, line) in text.split(separator: "\n").enumerated() {
            let trimmed = line.filter { !$0.isWhitespace }
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            guard let bytes = base64Decode(String(trimmed)), let key = TicketKey(bytes: bytes) else {
                throw TLSError.configuration("line \(number + 1): not a base64 session-ticket key of 80 bytes (make one with: openssl rand 80 | base64 -w0)")
            }
            keys.append(key)
        }
        guard !keys.isEmpty else { throw TLSError.configuration("no session-ticket key in the file") }
        return keys
    }
}

private func base64Decode(_ text: String) -> [UInt8]? {
    let utf8 = Array(text.utf8)
    guard !utf8.isEmpty else { return nil }
    var out = [UInt8](repeating: 0, count: utf8.count * 3 / 4 + 3)
    let length = EVP_DecodeBlock(&out, utf8, Int32(utf8.count))
    guard length >= 0 else { return nil }
    let padding = utf8.reversed().prefix { $0 == UInt8(ascii: "=") }.count
    return Array(out.prefix(Int(length) - padding))
}

/// OpenSSL's ticket-key callback: AES-256-CBC + HMAC-SHA256 with the ring's keys.
/// Returns 1 (ok), 2 (decrypted with an old key: issue a fresh ticket), 0 (unknown key: full handshake).
let ticketKeyCallback: @convention(c) (OpaquePointer?, UnsafeMutablePointer<UInt8>?, UnsafeMutablePointer<UInt8>?, OpaquePointer?, OpaquePointer?, Int32) -> Int32 = {
    _, keyName, iv, cipherContext, macContext, encrypt in
    guard let keyName, let iv, let cipherContext, let macContext else { return -1 }
    let ring = TicketKeyRing.shared
    let key: TicketKey
    var result: Int32 = 1
    if encrypt == 1 {
        key = ring.encryptionKey()
        guard RAND_bytes(iv, 16) == 1 else { return -1 }
        for (index, byte) in key.name.enumerated() { keyName[index] = byte }
    } else {
        guard let (found, isCurrent) = ring.key(named: keyName) else { return 0 }
        key = found
        result = isCurrent ? 1 : 2
    }
    let macOK: Bool = "digest".withCString { digestKey in
        "SHA256".withCString { digestName in
            "key".withCString { keyKey in
                var hmacKey = key.hmacKey
                return hmacKey.withUnsafeMutableBytes { raw in
                    var params = [
                        OSSL_PARAM_construct_utf8_string(digestKey, UnsafeMutablePointer(mutating: digestName), 0),
                        OSSL_PARAM_construct_octet_string(keyKey, raw.baseAddress, 32),
                        OSSL_PARAM_construct_end(),
                    ]
                    return EVP_MAC_CTX_set_params(macContext, &params) == 1
                }
            }
        }
    }
    guard macOK else { return -1 }
    let cipherOK = key.aesKey.withUnsafeBufferPointer { aes in
        encrypt == 1
            ? EVP_EncryptInit_ex(cipherContext, EVP_aes_256_cbc(), nil, aes.baseAddress, iv) == 1
            : EVP_DecryptInit_ex(cipherContext, EVP_aes_256_cbc(), nil, aes.baseAddress, iv) == 1
    }
    return cipherOK ? result : -1
}
