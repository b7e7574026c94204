import COpenSSL
import CEdgeShims

/// One OCSP request over HTTP (RFC 6960 appendix A: a POST of the DER request), made with
/// OpenSSL's own HTTP client, blocking, with a deadline: called from a background job's
/// thread, never an event loop.
package enum OCSPFetch {
    /// Largest response accepted: responses are a few kilobytes; a responder sending
    /// more is not one.
    static let maximumResponseBytes = 64 * 1024

    /// Posts `request` to `url` and returns the response's DER; throws naming the URL and
    /// the reason. Plain `http://` only, as responders are: the response is signed, and an
    /// `https://` responder would need a certificate check of its own.
    package static func post(_ request: [UInt8], to url: String, timeoutSeconds: Int) throws -> [UInt8] {
        ERR_clear_error()
        defer { ERR_clear_error() }
        var useTLS: Int32 = 0
        var host: UnsafeMutablePointer<CChar>?, port: UnsafeMutablePointer<CChar>?, path: UnsafeMutablePointer<CChar>?
        guard OSSL_HTTP_parse_url(url, &useTLS, nil, &host, &port, nil, &path, nil, nil) == 1, let host, let port, let path else {
            throw TLSError.configuration("OCSP responder \(url): not a URL")
        }
        defer {
            edge_OPENSSL_free(host)
            edge_OPENSSL_free(port)
            edge_OPENSSL_free(path)
        }
        guard useTLS == 0 else { throw TLSError.configuration("OCSP responder \(url): only http:// responders are supported") }
        // The request's bytes are read by OpenSSL in place (a read-only memory BIO), so
        // the whole transfer happens while they are pinned.
        let answer: OpaquePointer? = request.withUnsafeBytes { raw in
            guard let body = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(body) }
            // No proxy: the responder is asked directly ("" turns off the http_proxy
            // variables, which would otherwise apply to this process alone).
            return OSSL_HTTP_transfer(nil, host, port, path, 0, "", nil, nil, nil, nil, nil, 0, nil,
                                      "application/ocsp-request", body, "application/ocsp-response", 1,
                                      maximumResponseBytes, Int32(max(1, timeoutSeconds)), 0)
        }
        guard let answer else { throw TLSError.configuration("OCSP responder \(url): \(openSSLErrorQueueDescription())") }
        defer { BIO_free_all(answer) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count <= maximumResponseBytes {
            let n = BIO_read(answer, &chunk, Int32(chunk.count))
            if n <= 0 { break }
            bytes.append(contentsOf: chunk.prefix(Int(n)))
        }
        guard !bytes.isEmpty else { throw TLSError.configuration("OCSP responder \(url): empty response") }
        return bytes
    }
}
