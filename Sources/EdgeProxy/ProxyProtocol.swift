import EdgeTLS
import Logging
import NIOCore
#if canImport(Glibc)
import Glibc
#endif

/// The PROXY protocol header (HAProxy's, versions 1 and 2) that a layer-4 balancer
/// (HAProxy `send-proxy`, AWS NLB, a Kubernetes cloud balancer) sends before a
/// connection's first byte, so the gateway behind it knows the client's address: the
/// listener's `proxy_protocol: true` (nginx's `listen ... proxy_protocol`, HAProxy's
/// `accept-proxy`). Specification: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt
package enum ProxyProtocol {
    /// The client the header names: nil when it names none (version 2's LOCAL command, a
    /// balancer's own health check; version 1's UNKNOWN; version 2's UNSPEC or UNIX
    /// families), in which case the connection's own peer is the client.
    package struct Client: Equatable, Sendable {
        package var ip: String
        package var port: UInt16

        package init(ip: String, port: UInt16) {
            self.ip = ip
            self.port = port
        }
    }

    package enum Parsed: Equatable {
        /// More bytes are needed.
        case incomplete
        /// The header is `length` bytes long.
        case complete(Client?, length: Int)
    }

    package struct Malformed: Error, CustomStringConvertible {
        package var description: String
        init(_ description: String) { self.description = description }
    }

    /// Version 2's signature (12 bytes).
    static let signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let v1Prefix = Array("PROXY ".utf8)
    /// Version 1's longest header (its specification's 107 bytes, CR LF included).
    static let v1MaxLength = 107
    /// Version 2 header with its TLVs: balancers add a few (AWS's endpoint ID, GCP's
    /// connection ID, an ALPN, an authority); anything longer is refused.
    static let v2MaxLength = 4096

    /// Parses the header at the start of `bytes`; throws when they cannot begin one
    /// (said as soon as the first bytes show it, without waiting for more).
    package static func parse(_ bytes: UnsafeRawBufferPointer) throws(Malformed) -> Parsed {
        guard let first = bytes.first else { return .incomplete }
        if first == Self.signature[0] {
            return try Self.parseV2(bytes)
        }
        if first == Self.v1Prefix[0] {
            return try Self.parseV1(bytes)
        }
        throw Malformed(Self.describeStart(bytes))
    }

    private static func describeStart(_ bytes: UnsafeRawBufferPointer) -> String {
        if bytes.first == 0x16 { return "no PROXY protocol header: the connection starts with a TLS handshake" }
        let letters = bytes.prefix(8).allSatisfy { $0 >= 0x20 && $0 < 0x7F }
        if letters, !bytes.isEmpty {
            return "no PROXY protocol header: the connection starts with \"\(String(decoding: bytes.prefix(16), as: UTF8.self))\""
        }
        return "no PROXY protocol header: the connection starts with bytes \(bytes.prefix(8).map { String($0, radix: 16) }.joined(separator: " "))"
    }

    // MARK: version 1 (text)

    private static func parseV1(_ bytes: UnsafeRawBufferPointer) throws(Malformed) -> Parsed {
        let prefix = min(bytes.count, Self.v1Prefix.count)
        guard bytes.prefix(prefix).elementsEqual(Self.v1Prefix.prefix(prefix)) else {
            throw Malformed(Self.describeStart(bytes))
        }
        guard let lf = bytes.prefix(Self.v1MaxLength).firstIndex(of: UInt8(ascii: "\n")) else {
            if bytes.count >= Self.v1MaxLength { throw Malformed("PROXY protocol v1 header without CR LF in its first \(Self.v1MaxLength) bytes") }
            return .incomplete
        }
        guard lf > 0, bytes[lf - 1] == UInt8(ascii: "\r") else { throw Malformed("PROXY protocol v1 header ends with LF, not CR LF") }
        let line = String(decoding: bytes[Self.v1Prefix.count..<(lf - 1)], as: UTF8.self)
        let parts = line.split(separator: " ", omittingEmptySubsequences: false)
        guard let proto = parts.first else { throw Malformed("PROXY protocol v1 header without a protocol") }
        switch proto {
        case "UNKNOWN":
            return .complete(nil, length: lf + 1)  // the rest of the line is to be ignored
        case "TCP4", "TCP6":
            guard parts.count == 5 else {
                throw Malformed("PROXY protocol v1 header \"PROXY \(line)\": expected TCP4|TCP6, two addresses and two ports, separated by single spaces")
            }
            let family = proto == "TCP4" ? AF_INET : AF_INET6
            guard let ip = Self.canonical(String(parts[1]), family: family) else {
                throw Malformed("PROXY protocol v1 header: \"\(parts[1])\" is not an \(proto == "TCP4" ? "IPv4" : "IPv6") address")
            }
            guard Self.canonical(String(parts[2]), family: family) != nil else {
                throw Malformed("PROXY protocol v1 header: \"\(parts[2])\" is not an \(proto == "TCP4" ? "IPv4" : "IPv6") address")
            }
            guard let port = Self.port(parts[3]), Self.port(parts[4]) != nil else {
                throw Malformed("PROXY protocol v1 header: ports \"\(parts[3])\" and \"\(parts[4])\" must be numbers from 0 to 65535")
            }
            return .complete(Client(ip: ip, port: port), length: lf + 1)
        default:
            throw Malformed("PROXY protocol v1 header: unknown protocol \"\(proto)\" (TCP4, TCP6 or UNKNOWN)")
        }
    }

    private static func port(_ text: Substring) -> UInt16? {
        guard (1...5).contains(text.utf8.count), text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let n = Int(text), n <= 65535 else {
            return nil
        }
        return UInt16(n)
    }

    /// The address in the form X-Forwarded-For and the access log use, nil if `text`
    /// is not an address of `family`.
    static func canonical(_ text: String, family: CInt) -> String? {
        if family == AF_INET {
            var a = in_addr()
            guard inet_pton(AF_INET, text, &a) == 1 else { return nil }
            return Self.ipv4(UInt32(bigEndian: a.s_addr))
        }
        var a = in6_addr()
        guard inet_pton(AF_INET6, text, &a) == 1 else { return nil }
        return withUnsafeBytes(of: &a) { Self.ipv6($0) }
    }

    static func ipv4(_ a: UInt32) -> String {
        "\(a >> 24).\((a >> 16) & 0xff).\((a >> 8) & 0xff).\(a & 0xff)"
    }

    static func ipv6(_ bytes: UnsafeRawBufferPointer) -> String {
        var a = in6_addr()
        withUnsafeMutableBytes(of: &a) { $0.copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes.prefix(16))) }
        var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &a, &text, socklen_t(text.count)) != nil else { return "::" }
        return String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    // MARK: version 2 (binary)

    private static func parseV2(_ bytes: UnsafeRawBufferPointer) throws(Malformed) -> Parsed {
        let prefix = min(bytes.count, Self.signature.count)
        guard bytes.prefix(prefix).elementsEqual(Self.signature.prefix(prefix)) else {
            throw Malformed(Self.describeStart(bytes))
        }
        guard bytes.count >= 16 else { return .incomplete }
        let versionCommand = bytes[12], familyProtocol = bytes[13]
        guard versionCommand >> 4 == 2 else { throw Malformed("PROXY protocol v2 header of version \(versionCommand >> 4)") }
        let length = 16 + (Int(bytes[14]) << 8 | Int(bytes[15]))
        guard length <= Self.v2MaxLength else {
            throw Malformed("PROXY protocol v2 header of \(length) bytes (at most \(Self.v2MaxLength) accepted)")
        }
        guard bytes.count >= length else { return .incomplete }
        switch versionCommand & 0x0F {
        case 0:
            return .complete(nil, length: length)  // LOCAL: the balancer's own connection
        case 1:
            break  // PROXY
        default:
            throw Malformed("PROXY protocol v2 header with unknown command \(versionCommand & 0x0F)")
        }
        let block = UnsafeRawBufferPointer(rebasing: bytes[16..<length])
        switch familyProtocol {
        case 0x11:  // TCP over IPv4: source, destination, source port, destination port
            guard block.count >= 12 else { throw Malformed("PROXY protocol v2 header: TCP4 address block of \(block.count) bytes (12 needed)") }
            let ip = UInt32(block[0]) << 24 | UInt32(block[1]) << 16 | UInt32(block[2]) << 8 | UInt32(block[3])
            return .complete(Client(ip: Self.ipv4(ip), port: UInt16(block[8]) << 8 | UInt16(block[9])), length: length)
        case 0x21:  // TCP over IPv6
            guard block.count >= 36 else { throw Malformed("PROXY protocol v2 header: TCP6 address block of \(block.count) bytes (36 needed)") }
            return .complete(Client(ip: Self.ipv6(block), port: UInt16(block[32]) << 8 | UInt16(block[33])), length: length)
        case 0x00, 0x31:  // UNSPEC, or a Unix socket stream: no client address to use
            return .complete(nil, length: length)
        default:
            throw Malformed("PROXY protocol v2 header for a datagram or unknown transport (family/protocol byte \(familyProtocol)), not a TCP stream")
        }
    }
}

/// The first handler of a `proxy_protocol` listener's connections: reads the PROXY
/// header, then sets up the connection's handlers (TLS, HTTP) with the client it names
/// and passes on what followed the header. A connection whose first bytes are not a
/// valid header, or that sends none within the listener's handshake timeout, is closed
/// and logged (a warning, at most one a second per listener and event loop, with the
/// count of those not logged): the gateway never guesses a client address. With
/// `proxy_protocol_from`, a connection from a peer outside those ranges is refused the
/// same way as soon as it opens: only the balancers may name a client.
///
/// It stays in the pipeline afterwards, only to pass reads on and to hold the
/// connection's first read buffer (`ReceiveBuffers`): a hop per read.
package final class ProxyProtocolDecoder: ChannelInboundHandler {
    package typealias InboundIn = ByteBuffer

    /// Sets up the connection's other handlers, after this one, for the client.
    package typealias Install = (Channel, DownstreamInfo) throws -> Void

    private let listener: ProxyListener
    private let timeout: TimeAmount
    private let install: Install
    /// The peers that may send a header (`proxy_protocol_from`); nil: any, empty: none
    /// (the configuration refuses an empty list; code that builds one gets a closed door).
    private let trusted: [AddressRange]?
    private var firstRead: ReceiveBufferPin
    private var buffered = ByteBuffer()
    private enum State {
        /// Reading the header.
        case waiting
        /// The header was read: reads are passed on.
        case passing
        /// Refused or drained before the header: reads are dropped.
        case closing
    }
    private var state = State.waiting
    private var timer: Scheduled<Void>?

    package init(listener: ProxyListener, timeout: TimeAmount, trusted: [AddressRange]? = nil, holdsFirstRead: Bool, install: @escaping Install) {
        self.listener = listener
        self.timeout = timeout
        self.trusted = trusted
        self.firstRead = ReceiveBufferPin(enabled: holdsFirstRead)
        self.install = install
    }

    package func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { self.begin(context: context) }
    }

    package func handlerRemoved(context: ChannelHandlerContext) {
        self.cancelTimer()
    }

    package func channelActive(context: ChannelHandlerContext) {
        self.begin(context: context)
        context.fireChannelActive()
    }

    /// The connection is open: refused at once if its peer may not send a header
    /// (`proxy_protocol_from`), else given `timeout` to send one.
    private func begin(context: ChannelHandlerContext) {
        guard self.state == .waiting, self.timer == nil else { return }
        if let trusted = self.trusted {
            guard let peer = context.channel.remoteAddress, trusted.contains(where: { $0.contains(peer) }) else {
                self.refuse(context: context, reason: "the peer is not in proxy_protocol_from", summary: "connection refused: not an allowed PROXY protocol source")
                return
            }
        }
        self.startTimer(context: context)
    }

    package func channelInactive(context: ChannelHandlerContext) {
        self.cancelTimer()
        context.fireChannelInactive()
    }

    private func startTimer(context: ChannelHandlerContext) {
        guard self.timer == nil, self.state == .waiting else { return }
        self.timer = context.eventLoop.assumeIsolatedUnsafeUnchecked().scheduleTask(in: self.timeout) {
            guard self.state == .waiting else { return }
            self.refuse(context: context, reason: self.buffered.readableBytes == 0
                ? "no PROXY protocol header within \(Self.text(self.timeout)) (timeouts.handshake)"
                : "incomplete PROXY protocol header after \(Self.text(self.timeout)) (timeouts.handshake)")
        }
    }

    private func cancelTimer() {
        self.timer?.cancel()
        self.timer = nil
    }

    private static func text(_ t: TimeAmount) -> String {
        t.nanoseconds % 1_000_000_000 == 0 ? "\(t.nanoseconds / 1_000_000_000) s" : "\(t.nanoseconds / 1_000_000) ms"
    }

    package func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = self.unwrapInboundIn(data)
        switch self.state {
        case .passing: return context.fireChannelRead(data)
        case .closing: return
        case .waiting: break
        }
        self.firstRead.hold(bytes)
        if self.buffered.readableBytes == 0 {
            self.buffered = bytes
        } else {
            self.buffered.writeBuffer(&bytes)
        }
        let parsed: ProxyProtocol.Parsed
        do {
            parsed = try self.buffered.withUnsafeReadableBytes { (raw) throws(ProxyProtocol.Malformed) in try ProxyProtocol.parse(raw) }
        } catch {
            self.refuse(context: context, reason: error.description)
            return
        }
        guard case .complete(let client, let length) = parsed else { return }
        self.state = .passing
        self.cancelTimer()
        self.buffered.moveReaderIndex(forwardBy: length)
        let rest = self.buffered
        self.buffered = ByteBuffer()
        let info = client.map { DownstreamInfo(clientIP: $0.ip, clientPort: $0.port) } ?? DownstreamInfo(remoteAddress: context.channel.remoteAddress)
        do {
            try self.install(context.channel, info)
        } catch {
            self.listener.logger.error("cannot set up the connection's handlers", metadata: ["listener": "\(self.listener.name)", "error": "\(error)"])
            context.close(promise: nil)
            return
        }
        if rest.readableBytes > 0 {
            context.fireChannelRead(NIOAny(rest))
            context.fireChannelReadComplete()
        }
    }

    package func channelReadComplete(context: ChannelHandlerContext) {
        if self.state == .passing { context.fireChannelReadComplete() }
    }

    package func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if self.state == .waiting, event is ChannelShouldQuiesceEvent {
            // Draining before the header came: no request yet, so the connection closes
            // now (there is no handler after this one to hear the event).
            self.state = .closing
            self.cancelTimer()
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func refuse(context: ChannelHandlerContext, reason: String, summary: String = "connection refused: bad PROXY protocol header") {
        self.state = .closing
        self.cancelTimer()
        self.buffered = ByteBuffer()
        self.listener.observer?.proxyProtocolRefused()
        self.listener.proxyProtocolWarnings.warn(self.listener, summary: summary, peer: context.channel.remoteAddress, reason: reason)
        context.close(promise: nil)
    }
}

/// Refused connections (a missing PROXY header, a full listener), logged at most once a
/// second per listener and event loop (a balancer sending no header, a port scanner or a
/// flood would otherwise write a line for every connection), with the count of those not logged.
final class RateLimitedWarnings {
    private var lastLogged: NIODeadline?
    private var suppressed = 0

    func warn(_ listener: ProxyListener, summary: String, peer: SocketAddress?, reason: String) {
        let now = NIODeadline.now()
        if let last = self.lastLogged, now < last + .seconds(1) {
            self.suppressed += 1
            return
        }
        self.lastLogged = now
        var metadata: Logger.Metadata = ["listener": "\(listener.name)", "peer": "\(peer?.hostPort ?? "?")", "reason": "\(reason)"]
        if self.suppressed > 0 { metadata["not_logged_since_last"] = "\(self.suppressed)" }
        self.suppressed = 0
        listener.logger.warning("\(summary)", metadata: metadata)
    }
}
