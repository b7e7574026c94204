import Foundation

/// A certificate authority made at test time with the openssl CLI.
///
/// Root and intermediate CA; leaves are ECDSA P-256 (or RSA) signed by the
/// intermediate. Nothing here is ever committed.
package final class TestPKI: @unchecked Sendable {
    package let directory: TemporaryDirectory
    package var caPath: String { self.directory.file("ca.pem") }
    package var intermediatePath: String { self.directory.file("intermediate.pem") }
    private var counter = 0

    package struct Leaf: Sendable {
        package var certificate: String  // leaf only
        package var fullchain: String    // leaf + intermediate
        package var key: String
        package var serial: String       // upper-case hex as openssl prints it

        package init(certificate: String, fullchain: String, key: String, serial: String) {
            self.certificate = certificate
            self.fullchain = fullchain
            self.key = key
            self.serial = serial
        }
    }

    package init() throws {
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
    package func issue(_ dnsNames: [String], days: Int = 90, rsa: Bool = false, into directory: String? = nil, name: String? = nil) throws -> Leaf {
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
            mv '\(dir)/\(base).crt.tmp' '\(work)/\(base)-\(self.counter).leaf.pem'
            mv '\(dir)/\(base).fullchain.tmp' '\(dir)/\(base).crt'
            """)
        let leafPath = "\(work)/\(base)-\(self.counter).leaf.pem"
        let serial = try Shell.run(["openssl", "x509", "-in", leafPath, "-noout", "-serial"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "serial=", with: "")
        return Leaf(certificate: leafPath, fullchain: "\(dir)/\(base).crt", key: "\(dir)/\(base).key", serial: serial)
    }

    /// Issues a leaf with exactly `subjectAltNames` ("DNS:a.example", "IP:127.0.0.1"; none
    /// gives a certificate without the extension, named only by its CN).
    package func issue(subjectAltNames: [String], commonName: String, into directory: String, name: String, days: Int = 30) throws -> Leaf {
        self.counter += 1
        let work = self.directory.path
        let san = subjectAltNames.isEmpty ? "" : "subjectAltName=\(subjectAltNames.joined(separator: ","))\\n"
        try Self.sh("""
            cd '\(work)'
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out '\(directory)/\(name).key'
            openssl req -new -key '\(directory)/\(name).key' -subj '/CN=\(commonName)' -out 'named\(self.counter).csr'
            printf '\(san)basicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth,clientAuth\\n' > 'named\(self.counter).ext'
            openssl x509 -req -in 'named\(self.counter).csr' -CA intermediate.pem -CAkey intermediate.key -CAcreateserial -days \(days) -sha256 \\
              -extfile 'named\(self.counter).ext' -out 'named\(self.counter).leaf.pem'
            cat 'named\(self.counter).leaf.pem' intermediate.pem > '\(directory)/\(name).crt'
            """)
        let leafPath = "\(work)/named\(self.counter).leaf.pem"
        let serial = try Shell.run(["openssl", "x509", "-in", leafPath, "-noout", "-serial"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "serial=", with: "")
        return Leaf(certificate: leafPath, fullchain: "\(directory)/\(name).crt", key: "\(directory)/\(name).key", serial: serial)
    }

    /// `YYYYMMDDHHMMSSZ` for a Unix time.
    package static func asn1Time(_ seconds: Int64) -> String {
        var t = time_t(seconds)
        var parts = tm()
        gmtime_r(&t, &parts)
        return String(format: "%04d%02d%02d%02d%02d%02dZ", parts.tm_year + 1900, parts.tm_mon + 1, parts.tm_mday, parts.tm_hour, parts.tm_min, parts.tm_sec)
    }

    /// Signs with `openssl ca` so the validity window is exact (past or future).
    private func caSign(csr: String, out: String, ext: String, issuerCert: String, issuerKey: String, notBefore: Int64, notAfter: Int64) throws {
        let d = self.directory.path
        try Self.sh("""
            cd '\(d)'
            mkdir -p newcerts && touch index.txt && [ -f serial ] || openssl rand -hex 16 > serial
            cat > ca.cnf <<'CNF'
            [ ca ]
            default_ca = CA_default
            [ CA_default ]
            dir = .
            database = ./index.txt
            new_certs_dir = ./newcerts
            serial = ./serial
            default_md = sha256
            policy = policy_any
            unique_subject = no
            email_in_dn = no
            [ policy_any ]
            commonName = supplied
            CNF
            openssl ca -batch -config ca.cnf -cert '\(issuerCert)' -keyfile '\(issuerKey)' -in '\(csr)' -out '\(out)' \
              -startdate \(Self.asn1Time(notBefore)) -enddate \(Self.asn1Time(notAfter)) -extfile '\(ext)' -notext
            """)
    }

    /// An intermediate CA under the root with an exact validity window.
    package func intermediate(name: String, notBefore: Int64, notAfter: Int64) throws -> (cert: String, key: String) {
        let d = self.directory.path
        try Self.sh("""
            cd '\(d)'
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out '\(name).key'
            openssl req -new -key '\(name).key' -subj '/CN=\(name)' -out '\(name).csr'
            printf 'basicConstraints=critical,CA:TRUE,pathlen:0\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > '\(name).ext'
            """)
        try self.caSign(csr: "\(d)/\(name).csr", out: "\(d)/\(name).pem", ext: "\(d)/\(name).ext",
                        issuerCert: self.caPath, issuerKey: "\(d)/ca.key", notBefore: notBefore, notAfter: notAfter)
        return ("\(d)/\(name).pem", "\(d)/\(name).key")
    }

    /// A leaf with an exact validity window, signed by the intermediate (or `issuer`).
    package func issue(_ dnsNames: [String], notBefore: Int64, notAfter: Int64, into directory: String, name: String,
                      issuer: (cert: String, key: String)? = nil) throws -> Leaf {
        self.counter += 1
        let d = self.directory.path
        let issuerCert = issuer?.cert ?? self.intermediatePath
        let issuerKey = issuer?.key ?? "\(d)/intermediate.key"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let sans = dnsNames.map { "DNS:\($0)" }.joined(separator: ",")
        try Self.sh("""
            cd '\(d)'
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out '\(directory)/\(name).key'
            openssl req -new -key '\(directory)/\(name).key' -subj '/CN=\(dnsNames.first ?? name)' -out 'dated\(self.counter).csr'
            printf 'subjectAltName=\(sans)\\nbasicConstraints=CA:FALSE\\nextendedKeyUsage=serverAuth\\n' > 'dated\(self.counter).ext'
            """)
        let leafPath = "\(d)/dated\(self.counter).leaf.pem"
        try self.caSign(csr: "\(d)/dated\(self.counter).csr", out: leafPath, ext: "\(d)/dated\(self.counter).ext",
                        issuerCert: issuerCert, issuerKey: issuerKey, notBefore: notBefore, notAfter: notAfter)
        try Self.sh("cat '\(leafPath)' '\(issuerCert)' > '\(directory)/\(name).crt'")
        let serial = try Shell.run(["openssl", "x509", "-in", leafPath, "-noout", "-serial"]).stdout
            .trimmingCharacters(in: .whitespacesAndNewlines).replacingOccurrences(of: "serial=", with: "")
        return Leaf(certificate: leafPath, fullchain: "\(directory)/\(name).crt", key: "\(directory)/\(name).key", serial: serial)
    }

    static func sh(_ script: String) throws {
        let result = try Shell.run(["bash", "-c", "set -e\n" + script])
        guard result.status == 0 else {
            throw NSError(domain: "TestPKI", code: Int(result.status), userInfo: [NSLocalizedDescriptionKey: result.stderr])
        }
    }
}
