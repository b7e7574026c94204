import COpenSSL
import CEdgeShims

#if canImport(Glibc)
import Glibc
#endif

/// The stapled OCSP response of one leaf certificate, shared by every server context that
/// serves that leaf: the snapshot a rotation of another lineage builds serves the same
/// slot, so the response stays stapled across it, and a refresh reaches every context at once.
package final class OCSPStapleSlot: @unchecked Sendable {
    /// The leaf's SHA-256 fingerprint (`X509Certificate.sha256Fingerprint`).
    package let fingerprint: String
    private let lock = PThreadLock()
    private var response: VerifiedOCSPResponse?

    init(fingerprint: String) { self.fingerprint = fingerprint }

    /// The verified response stapled from now on (nil: none).
    package var current: VerifiedOCSPResponse? {
        get { self.lock.withLock { self.response } }
        set { self.lock.withLock { self.response = newValue } }
    }

    /// The bytes to staple at `now`, or nil: never a response past its next update, or one
    /// that says `unknown`.
    func stapleBytes(now: Int64) -> [UInt8]? {
        self.lock.withLock {
            guard let response = self.response, response.staplable(now: now) else { return nil }
            return response.der
        }
    }
}

/// Every staple slot alive, by leaf fingerprint. Held weakly: a slot lives while a context
/// serving its leaf does, or the stapling job holds it.
package final class OCSPStaples: @unchecked Sendable {
    package static let shared = OCSPStaples()
    private let lock = PThreadLock()
    private var slots: [String: WeakSlot] = [:]

    private struct WeakSlot {
        weak var slot: OCSPStapleSlot?
    }

    /// The slot for `leaf`'s responses; nil when its AIA names no OCSP responder (then no
    /// status callback is installed and nothing is ever said about stapling it).
    package func slot(for leaf: X509Certificate) -> OCSPStapleSlot? {
        guard !OCSPCheck.responderURLs(of: leaf).isEmpty else { return nil }
        let fingerprint = leaf.sha256Fingerprint
        return self.lock.withLock {
            if let slot = self.slots[fingerprint]?.slot { return slot }
            let slot = OCSPStapleSlot(fingerprint: fingerprint)
            // Dead entries go as new ones come: the table stays as large as what is served.
            if self.slots.count > 64 { self.slots = self.slots.filter { $0.value.slot != nil } }
            self.slots[fingerprint] = WeakSlot(slot: slot)
            return slot
        }
    }

    /// Installs the status callback on a server context serving `leaves`, for those of
    /// them that have a responder. The context owns the table the callback reads.
    static func install(on ctx: OpaquePointer, leaves: [X509Certificate]) {
        let entries = leaves.compactMap { leaf in Self.shared.slot(for: leaf).map { (leaf, $0) } }
        guard !entries.isEmpty else { return }
        let box = StapleBox(entries)
        OwnedExData.set(box, on: ctx, index: OwnedExData.staples)
        edge_SSL_CTX_set_tlsext_status_cb(ctx, statusCallback)
        edge_SSL_CTX_set_tlsext_status_arg(ctx, Unmanaged.passUnretained(box).toOpaque())
    }
}

/// The slots of one context's leaves, with the leaves themselves (their `X509` is what
/// `SSL_get_certificate` returns for the certificate OpenSSL chose).
final class StapleBox: @unchecked Sendable {
    let entries: [(leaf: X509Certificate, slot: OCSPStapleSlot)]
    init(_ entries: [(X509Certificate, OCSPStapleSlot)]) { self.entries = entries.map { (leaf: $0.0, slot: $0.1) } }

    func slot(for certificate: OpaquePointer) -> OCSPStapleSlot? {
        if let entry = self.entries.first(where: { $0.leaf.pointer == certificate }) { return entry.slot }
        return self.entries.first { X509_cmp($0.leaf.pointer, certificate) == 0 }?.slot
    }
}

/// OpenSSL's status callback, called only when the client asked for a stapled response
/// (status_request), with the certificate it chose already selected: hands OpenSSL a copy
/// of the current response, which it frees after sending. No response: no staple (never
/// a fatal alert; a client that requires one decides).
private let statusCallback: edge_status_cb = { ssl, arg in
    guard let ssl, let arg, let certificate = SSL_get_certificate(ssl) else { return SSL_TLSEXT_ERR_NOACK }
    let box = Unmanaged<StapleBox>.fromOpaque(arg).takeUnretainedValue()
    guard let bytes = box.slot(for: certificate)?.stapleBytes(now: Int64(time(nil))),
          let copy = edge_OPENSSL_malloc(bytes.count) else { return SSL_TLSEXT_ERR_NOACK }
    bytes.withUnsafeBytes { copy.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    guard edge_SSL_set_tlsext_status_ocsp_resp(ssl, copy.assumingMemoryBound(to: UInt8.self), bytes.count) == 1 else {
        edge_OPENSSL_free(copy)
        return SSL_TLSEXT_ERR_NOACK
    }
    return SSL_TLSEXT_ERR_OK
}
