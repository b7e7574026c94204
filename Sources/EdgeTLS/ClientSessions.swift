import COpenSSL
import CEdgeShims
import NIOConcurrencyHelpers

/// The latest TLS session offered by one upstream peer, for resumption.
///
/// New connections to the same peer (same address and TLS options) present it
/// with `SSL_set_session`; OpenSSL's new-session callback replaces it whenever
/// the server issues a ticket. Shared by every event loop, hence the lock.
package final class TLSSessionSlot: Sendable {
    // The SSL_SESSION this slot owns one reference to.
    private let session = NIOLockedValueBox<SessionPointer?>(nil)

    package init() {}

    deinit {
        self.session.withLockedValue { held in
            if let held { SSL_SESSION_free(held.pointer) }
            held = nil
        }
    }

    /// Takes ownership of one reference to `pointer`.
    func store(_ pointer: OpaquePointer) {
        let previous = self.session.withLockedValue { held -> SessionPointer? in
            defer { held = SessionPointer(pointer: pointer) }
            return held
        }
        if let previous { SSL_SESSION_free(previous.pointer) }
    }

    /// Installs the held session on a new connection (which takes its own reference).
    func apply(to ssl: OpaquePointer) {
        self.session.withLockedValue { held in
            guard let held else { return }
            if SSL_SESSION_is_resumable(held.pointer) == 1 {
                _ = SSL_set_session(ssl, held.pointer)
            }
        }
    }

    /// Whether a session is held (for tests and status).
    package var hasSession: Bool { self.session.withLockedValue { $0 != nil } }
}

/// `SSL_SESSION *` is reference counted by OpenSSL; the lock serialises our use.
private struct SessionPointer: @unchecked Sendable {
    let pointer: OpaquePointer
}

/// The ex_data index that carries a connection's `TLSSessionSlot`.
let sessionSlotIndex: Int32 = CRYPTO_get_ex_new_index(CRYPTO_EX_INDEX_SSL, 0, nil, nil, nil, nil)

/// OpenSSL's new-session callback on client contexts: hand the session to the
/// connection's slot. Returning 1 tells OpenSSL we keep its reference.
let clientNewSessionCallback: @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32 = { ssl, session in
    guard let ssl, let session, let raw = SSL_get_ex_data(ssl, sessionSlotIndex) else { return 0 }
    Unmanaged<TLSSessionSlot>.fromOpaque(raw).takeUnretainedValue().store(session)
    return 1
}
