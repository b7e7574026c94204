import COpenSSL

/// ex_data slots of OpenSSL objects that own a reference to a Swift object.
///
/// A C callback reaches Swift state through the C object OpenSSL hands it (the `SSL`,
/// or its current `SSL_CTX`). OpenSSL keeps that C object alive by its own reference
/// counts, for as long as any connection uses it; a Swift owner beside it does not
/// live as long (a rotation drops the snapshot that held a context while a handshake
/// switched to it is still in flight). So the C object itself holds the reference:
/// the slot's value is retained when set and released by the slot's free function
/// when OpenSSL frees the object. Nothing a callback reads is ever unretained.
enum OwnedExData {
    /// The client allow list and CRL policy a server context's verify callback applies.
    static let clientVerification = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, nil, nil, nil, releaseOwnedObject)
    /// The certificate a connection's verify callback found revoked, to name in the refusal.
    static let revokedCertificate = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL, 0, nil, nil, nil, releaseOwnedObject)
    /// The SNI selector of a listener's initial context (servername and client-hello callbacks).
    static let selector = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, nil, nil, nil, releaseOwnedObject)
    /// The `TLSContext` a connection was switched to by SNI, held until the `SSL` is freed.
    static let selectedContext = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL, 0, nil, nil, nil, releaseOwnedObject)
    /// The OCSP staple slots of a server context's leaves, read by its status callback.
    static let staples = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL_CTX, 0, nil, nil, nil, releaseOwnedObject)
    /// The names an upstream connection's verify callback accepts (`PeerNameCheck`).
    static let peerNames = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL, 0, nil, nil, nil, releaseOwnedObject)

    /// Gives `ctx` one reference to `object`, released when the context is freed.
    /// Set once, while the context is built and before any connection uses it.
    static func set(_ object: AnyObject, on ctx: OpaquePointer, index: Int32) {
        precondition(SSL_CTX_get_ex_data(ctx, index) == nil, "an owned SSL_CTX slot is set once")
        _ = SSL_CTX_set_ex_data(ctx, index, Unmanaged.passRetained(object).toOpaque())
    }

    /// Gives `ssl` one reference to `object`, releasing the one it held in that slot.
    static func replace(_ object: AnyObject, on ssl: OpaquePointer, index: Int32) {
        let previous = SSL_get_ex_data(ssl, index)
        let retained = Unmanaged.passRetained(object)
        guard SSL_set_ex_data(ssl, index, retained.toOpaque()) == 1 else {
            retained.release()  // not stored (out of memory): the slot keeps what it held
            return
        }
        if let previous { Unmanaged<AnyObject>.fromOpaque(previous).release() }
    }
}

/// `CRYPTO_EX_free` of the owning slots: OpenSSL calls it for each slot as it frees the
/// object (with a null value for a slot never set).
private let releaseOwnedObject: @convention(c) (
    UnsafeMutableRawPointer?, UnsafeMutableRawPointer?, UnsafeMutablePointer<CRYPTO_EX_DATA>?, Int32, Int, UnsafeMutableRawPointer?
) -> Void = { _, object, _, _, _, _ in
    guard let object else { return }
    Unmanaged<AnyObject>.fromOpaque(object).release()
}
