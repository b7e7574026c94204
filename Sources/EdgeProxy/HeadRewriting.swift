import EdgeTLS
import NIOCore

/// The heads the proxy writes, as pure functions of what they are built from: the request
/// head as the upstream gets it, the response head as the client gets it, and the check
/// that no value the gateway adds could end a line early. They write into the event loop's
/// recycled head buffers (`LoopContext.requestHeads`, `.responseHeads`).
enum HeadRewriting {
    /// The request head as the upstream gets it: hop-by-hop headers and client-supplied
    /// identity headers removed, X-Forwarded-* added, Host kept or set per upstream.
    /// Built for each attempt (a retry gets the same bytes) in the loop's shared head
    /// buffer (`heads`), which the handler hands back once the head is written.
    @inline(__always)  // one call site, on every request: as when it was the handler's method
    static func upstreamHead(for head: HTTPHead, group: UpstreamGroup, upgrade: Bool, scheme: String, mutualTLS: Bool, info: DownstreamInfo,
                             heads: inout ReusableBuffer) -> ByteBuffer {
        let setsHost = group.hostHeader != nil
        let identity = mutualTLS ? info.clientIdentity : nil
        let verifyResult = mutualTLS ? identity?.verifyResult ?? "NONE" : nil
        // Only the upgrade the gateway tunnels goes on, and only its token: `h2c` beside it
        // would let a client reach an upstream's HTTP/2 through the gateway's checks.
        let upgradeValue: String? = upgrade ? "websocket" : nil
        let clientIP = info.clientIP
        let hostName = group.hostHeader ?? group.name
        // The head's own bytes bound the request line, the kept field lines and the two
        // values repeated from them (X-Forwarded-For, Host); the rest is named here.
        var strings = head.method.utf8.count + head.target.utf8.count + scheme.utf8.count + hostName.utf8.count
        strings += (identity?.forwardedClientCert?.utf8.count ?? 0) + (verifyResult?.utf8.count ?? 0)
        strings += (upgradeValue?.utf8.count ?? 0) + 2 * (clientIP?.utf8.count ?? 0) + scheme.utf8.count
        // Values repeated from the head: X-Forwarded-For, Host (twice), Forwarded.
        let maxBytes = 4 * head.bytes.count + strings + 320
        var out = heads.take(minimumCapacity: maxBytes)
        head.bytes.withUnsafeBytes { p in
            out.writeHead(maxBytes: maxBytes) { w in
                if head.minorVersion == 1 {
                    w.put(p, 0..<head.startLineEnd + 2)  // the request line as received
                } else {
                    w.put(head.method)
                    w.put(" ")
                    w.put(head.target)
                    w.put(" HTTP/1.1\r\n")
                }
                var forwardedFor: HeaderField?
                var host: HeaderField?
                var forwarded: [HeaderField] = []
                // Fields named by Connection are looked up only when it named any (rare).
                let connectionNames = !head.connectionNames.isEmpty
                w.putFields(of: head.fields, p) { field in
                    switch field.known {
                    case .xForwardedFor:
                        if forwardedFor == nil { forwardedFor = field }
                        return true
                    case .forwarded:
                        forwarded.append(field)
                        return true
                    case .xForwardedProto, .xForwardedHost, .xForwardedClientCert, .xClientVerify, .expect:
                        return true
                    case .host:
                        host = field
                        return setsHost
                    case .other:
                        return connectionNames && head.isHopByHop(field)
                    default:
                        return field.known.isHopByHop
                    }
                }
                if head.chunked { w.put("transfer-encoding: chunked\r\n") }
                if let upgradeValue {
                    w.put("connection: upgrade\r\nupgrade: ")
                    w.put(upgradeValue)
                    w.put("\r\n")
                }
                if let verifyResult {
                    if let cert = identity?.forwardedClientCert {
                        w.put("x-forwarded-client-cert: ")
                        w.put(cert)
                        w.put("\r\n")
                    }
                    w.put("x-client-verify: ")
                    w.put(verifyResult)
                    w.put("\r\n")
                }
                if clientIP != nil || forwardedFor != nil {
                    w.put("x-forwarded-for: ")
                    if let existing = forwardedFor {
                        w.put(p, existing.value)
                        if clientIP != nil { w.put(", ") }
                    }
                    if let clientIP { w.put(clientIP) }
                    w.put("\r\n")
                }
                w.put("x-forwarded-proto: ")
                w.put(scheme)
                w.put("\r\n")
                if let host {
                    w.put("x-forwarded-host: ")
                    w.put(p, host.value)
                    w.put("\r\n")
                }
                // RFC 7239, as X-Forwarded-For: the client's elements, then the gateway's.
                w.put("forwarded: ")
                for field in forwarded {
                    w.put(p, field.value)
                    w.put(", ")
                }
                w.put("for=")
                if let clientIP {
                    if info.clientIPIsV6 {
                        w.put("\"[")
                        w.put(clientIP)
                        w.put("]\"")
                    } else {
                        w.put(clientIP)
                    }
                } else {
                    w.put("unknown")
                }
                if let host {
                    // A quoted-string: the parser refused backslashes in Host; a quote is escaped.
                    w.put(";host=\"")
                    for i in host.value {
                        if p[i] == UInt8(ascii: "\"") { w.put("\\") }
                        w.put(p, i..<i + 1)
                    }
                    w.put("\"")
                }
                w.put(";proto=")
                w.put(scheme)
                w.put("\r\n")
                // An HTTP/1.0 client may omit Host; HTTP/1.1 requires one (nginx sends its upstream's name too).
                if setsHost || host == nil {
                    w.put("host: ")
                    w.put(hostName)
                    w.put("\r\n")
                }
                w.put("\r\n")
            }
        }
        return out
    }

    /// The first field the gateway adds to the upstream head (not copied from the parsed
    /// request, which the parser checked) whose value holds CR, LF or NUL; nil when all are safe.
    static func unsafeAddedField(group: UpstreamGroup, mutualTLS: Bool, info: DownstreamInfo) -> String? {
        func unsafe(_ value: String?) -> Bool {
            value?.utf8.contains { $0 == 0x0D || $0 == 0x0A || $0 == 0 } ?? false
        }
        if mutualTLS, unsafe(info.clientIdentity?.forwardedClientCert) { return "x-forwarded-client-cert" }
        if info.clientIPUnsafe { return "x-forwarded-for" }
        if unsafe(group.hostHeader) { return "host" }
        return nil
    }

    /// The response head as the client gets it: hop-by-hop headers removed, framing
    /// and connection headers for this client's HTTP version (`closing`: the connection
    /// is draining); with whether the body goes chunked and the connection closes after it.
    @inline(__always)
    static func downstreamHead(for response: HTTPHead, request: HTTPHead, closing: Bool, hsts: String?,
                               heads: inout ReusableBuffer) -> (head: ByteBuffer, chunked: Bool, close: Bool) {
        let maxBytes = response.bytes.count + (hsts?.utf8.count ?? 0) + 128
        var out = heads.take(minimumCapacity: maxBytes)
        defer { heads.keep(out) }
        let noBody = response.hasNoBody(toHead: request.isHeadMethod)
        var chunked = false
        var close = !request.keepAlive || closing
        if !noBody && (response.contentLength == nil || response.chunked || response.otherTransferCoding) {
            if request.minorVersion >= 1 {
                chunked = true
            } else {
                close = true  // HTTP/1.0: the end of the body is the end of the connection
            }
        }
        response.bytes.withUnsafeBytes { p in
            out.writeHead(maxBytes: maxBytes) { w in
                w.put(request.minorVersion == 0 ? "HTTP/1.0 " : "HTTP/1.1 ")
                // The status code and reason as received (the parser checked three digits at 9..<12).
                w.put(p, 9..<response.startLineEnd + 2)
                let connectionNames = !response.connectionNames.isEmpty
                if let hsts {
                    w.putFields(of: response.fields, p) {
                        $0.known == .strictTransportSecurity || $0.known.isHopByHop || (connectionNames && response.isHopByHop($0))
                    }
                    w.put("strict-transport-security: ")
                    w.put(hsts)
                    w.put("\r\n")
                } else {
                    w.putFields(of: response.fields, p) { $0.known.isHopByHop || (connectionNames && response.isHopByHop($0)) }
                }
                if chunked { w.put("transfer-encoding: chunked\r\n") }
                if close {
                    w.put("connection: close\r\n")
                } else if request.minorVersion == 0 {
                    w.put("connection: keep-alive\r\n")
                }
                w.put("\r\n")
            }
        }
        return (out, chunked, close)
    }
}
