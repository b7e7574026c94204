#if canImport(Glibc)
import Glibc
#endif

struct HTTPGetError: Error, CustomStringConvertible {
    var description: String
}

/// A minimal blocking HTTP/1.1 GET for the `status` command (loopback admin endpoint).
func httpGet(host: String, port: Int, path: String) throws -> String {
    var hints = addrinfo()
    hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
    var result: UnsafeMutablePointer<addrinfo>? = nil
    guard getaddrinfo(host, String(port), &hints, &result) == 0, let info = result else {
        throw HTTPGetError(description: "cannot resolve \(host)")
    }
    defer { freeaddrinfo(result) }
    let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
    guard fd >= 0 else { throw HTTPGetError(description: String(cString: strerror(errno))) }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    guard connect(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) == 0 else {
        throw HTTPGetError(description: String(cString: strerror(errno)))
    }
    let request = Array("GET \(path) HTTP/1.1\r\nHost: \(host)\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = recv(fd, &buffer, buffer.count, 0)
        if n <= 0 { break }
        response.append(contentsOf: buffer[0..<n])
    }
    let text = String(decoding: response, as: UTF8.self)
    guard let split = text.range(of: "\r\n\r\n") else { throw HTTPGetError(description: "no HTTP response") }
    guard text.hasPrefix("HTTP/1.1 200") else { throw HTTPGetError(description: String(text.prefix { $0 != "\r" })) }
    return String(text[split.upperBound...])
}
