import Foundation

/// A certificate authority made at test time with the openssl CLI.
///
/// Root and intermediate CA; leaves are ECDSA P-256 (or RSA) signed by the
/// intermediate. Nothing here is ever committed.
public final class TestPKI: @unchecked Sendable {
    public let directory: TemporaryDirectory
    public var caPath: String { self.directory.file("ca.pem") }
    public var intermediatePath: String { self.directory.file("intermediate.pem") }
    private var counter = 0

    public struct Leaf: Sendable {
        public var certificate: String  // leaf only
        public var fullchain: String    // leaf + intermediate
        public var key: String
        public var serial: String       // upper-case hex as openssl prints it
    }

    public init() throws {
        self.directory = TemporaryDirectory()
        let d = self.directory.path
        try Self.sh("""
            cd '\(d)'
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
            openssl req -x509 -new -key ca.key -sha256 -days 3650 -subj '/CN=Test Root CA' \
              -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' -out ca.pem
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out intermediate.key
            openssl req -new -key intermediate.key -subj '/CN=Test Intermediate CA' -out intermediate.csr
            printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > intermediate.ext
            openssl x509 -req -in intermediate.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 1825 -sha256 \
              -extfile intermediate.ext -out intermediate.pem
            """)
    }

    /// Issues a leaf for `dnsNames` (and 127.0.0.1), valid for `days`.
    public func issue(_ dnsNames: [String], days: Int = 90, rsa: Bool = false, into directory: String? = nil, name: String? = nil) throws -> Leaf {
        self.counter += 1
        let base = name ?? "leaf\(self.counter)"
        let dir = directory ?? self.directory.path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let sans = (dnsNames.map { "DNS:\($0)" } + ["IP:127.0.0.1"]).joined(separator: ",")
        let keygen = rsa ? "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048" : "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256"
        let work = self.directory.path
        try Self.sh("""
            set -e
            cd '\(work)'
            \(keygen) -out '\(dir)/\(base).key.tmp'
            openssl req -new -key '\(dir)/\(base).key.tmp' -subj '/CN=\(dnsNames.first ?? "leaf")' -out '\(base).csr'
            printf 'subjectAltName=\(sans)\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth,clientAuth\\n' > '\(base).ext'
            openssl x509 -req -in '\(base).csr' -CA intermediate.pem -CAkey intermediate.key -CAcreateserial -days \(days) -sha256 \
              -extfile '\(base).ext' -out '\(dir)/\(base).crt.tmp'
            cat '\(dir)/\(base).crt.tmp' intermediate.pem > '\(dir)/\(base).fullchain.tmp'
            mv '\(dir)/\(base).key.tmp' '\(dir)/\(base).key'
            mv '\(dir)/\(base).crt.tmp' '\(dir)/\(base).leaf.pem'
            mv '\(dir)/\(base).fullchain.tmp' '\(dir)/\(base).crt'
            """)
        let serial = try Shell.run(["openssl", "x509", "-in", "\(dir)/\(base).leaf.pem", "-noout", "-serial"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "serial=", with: "")
        return Leaf(certificate: "\(dir)/\(base).leaf.pem", fullchain: "\(dir)/\(base).crt", key: "\(dir)/\(base).key", serial: serial)
    }

    static func sh(_ script: String) throws {
        let result = try Shell.run(["bash", "-c", "set -e\n" + script])
        guard result.status == 0 else {
            throw NSError(domain: "TestPKI", code: Int(result.status), userInfo: [NSLocalizedDescriptionKey: result.stderr])
        }
    }
}
