import Foundation

/// A CA as `openssl ca` keeps one in `dir`: its index (what it issued and revoked, which
/// `openssl ocsp` answers from), serial and CRL numbers, and a configuration whose
/// extension sections the caller writes. The CA certificate is made at test time.
package enum OpenSSLCA {
    /// Lays out `dir` and makes the CA (EC P-256, 30 days). `settings`: extra lines of the
    /// CA section (`copy_extensions = copy`); `sections`: the extension sections
    /// certificates are issued with (`-extensions NAME`).
    package static func create(in dir: String, subject: String, firstSerial: String, settings: String = "", sections: String,
                               keyUsage: String = "keyCertSign,cRLSign") throws {
        try FileManager.default.createDirectory(atPath: dir + "/newcerts", withIntermediateDirectories: true)
        try "".write(toFile: dir + "/index.txt", atomically: true, encoding: .utf8)
        try "\(firstSerial)\n".write(toFile: dir + "/serial", atomically: true, encoding: .utf8)
        try "01\n".write(toFile: dir + "/crlnumber", atomically: true, encoding: .utf8)
        try """
            [ ca ]
            default_ca = test_ca
            [ test_ca ]
            dir = \(dir)
            database = $dir/index.txt
            new_certs_dir = $dir/newcerts
            certificate = $dir/ca.pem
            private_key = $dir/ca.key
            serial = $dir/serial
            crlnumber = $dir/crlnumber
            default_md = sha256
            default_days = 30
            default_crl_days = 7
            policy = any
            unique_subject = no
            \(settings)
            [ any ]
            commonName = supplied
            \(sections)

            """.write(toFile: dir + "/openssl.cnf", atomically: true, encoding: .utf8)
        try run("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout '\(dir)/ca.key' -out '\(dir)/ca.pem' "
                + "-subj '\(subject)' -days 30 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,\(keyUsage)")
    }

    /// Runs `command` in bash; throws with its output when it fails.
    @discardableResult
    package static func run(_ command: String) throws -> String {
        let result = try Shell.bash(command + " 2>&1")
        guard result.status == 0 else { throw NSError(domain: "\(command): \(result.stdout)", code: 1) }
        return result.stdout
    }
}
