import EdgeGateway
import EdgeTestSupport
import Foundation
import Logging
import NIOPosix
import XCTest

#if canImport(Glibc)
import Glibc
#endif

/// An operator's first hour (#30): the install, the shipped example and the demo, as a new
/// user runs them.
final class OperatorTests: XCTestCase {
    /// The Debian package installs with dpkg (binary, unit, example configuration that
    /// `check` accepts, user and group), its unit passes systemd-analyze, and a purge takes
    /// it all away again.
    func testTheDebianPackageInstallsChecksAndPurgesCleanly() throws {
        try XCTSkipUnless(getuid() == 0, "installing a package needs root (CI runs as root)")
        try XCTSkipIf(Shell.run(["dpkg-query", "-W", "edge-gateway"]).status == 0, "an edge-gateway package is installed on this host already")
        // The purge at the end removes these: never on a host where they hold someone's setup.
        for path in ["/etc/edge-gateway", "/var/lib/edge-gateway", "/usr/bin/edge-gateway", "/lib/systemd/system/edge-gateway.service"] {
            try XCTSkipIf(FileManager.default.fileExists(atPath: path), "\(path) exists: this host has an installation the test would remove")
        }
        let dir = TemporaryDirectory()
        let build = try Shell.run(["bash", repositoryRoot() + "/scripts/package-deb.sh", gatewayBinary(), dir.path])
        XCTAssertEqual(build.status, 0, build.stderr)
        let deb = build.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        XCTAssertTrue(deb.hasSuffix(".deb") && FileManager.default.fileExists(atPath: deb), build.stdout)
        let info = try Shell.run(["dpkg-deb", "--info", deb])
        XCTAssertTrue(info.stdout.contains("conffiles") && info.stdout.contains("Package: edge-gateway"), info.stdout)

        // The README's install command (packaging this binary instead of a release build).
        // doc-command: bash scripts/install.sh
        // doc-command: EDGE_GATEWAY=/path/to/edge-gateway bash scripts/install.sh
        let install = try Shell.run(["bash", repositoryRoot() + "/scripts/install.sh"], timeout: 300, environment: ["EDGE_GATEWAY": gatewayBinary(), "EDGE_GATEWAY_DEB_DIR": dir.file("installed")])
        defer { _ = try? Shell.run(["dpkg", "--purge", "edge-gateway"]) }
        XCTAssertEqual(install.status, 0, install.stdout + install.stderr)
        XCTAssertTrue(install.stdout.contains("installed "), install.stdout)
        XCTAssertTrue(install.stdout.contains("edge-gateway check -c /etc/edge-gateway/config.yaml"), install.stdout)
        XCTAssertEqual(try Shell.run(["/usr/bin/edge-gateway", "--version"]).status, 0)
        XCTAssertEqual(try Shell.run(["id", "edge-gateway"]).status, 0, "the postinst made the user")
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/var/lib/edge-gateway/acme"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/etc/edge-gateway/placeholder.pem"))
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: "/usr/share/edge-gateway/certbot-deploy-hook.sh"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: "/usr/share/doc/edge-gateway/docs/configuration.md"))
        // The unit's own start check passes on the installed example (a rejected lineage would not stop it).
        let unit = try String(contentsOfFile: "/lib/systemd/system/edge-gateway.service", encoding: .utf8)
        let startCheck = try XCTUnwrap(unit.split(separator: "\n").first { $0.hasPrefix("ExecStartPre=") }).dropFirst("ExecStartPre=".count)
        XCTAssertEqual(try Shell.run(startCheck.split(separator: " ").map(String.init)).status, 0, String(startCheck))
        // The shipped example, as installed, is a valid configuration.
        // doc-command: edge-gateway check -c /etc/edge-gateway/config.yaml
        let check = try Shell.run(["/usr/bin/edge-gateway", "check", "-c", "/etc/edge-gateway/config.yaml"])
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
        XCTAssertTrue(check.stdout.contains("is valid"), check.stdout)
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/systemd-analyze") {
            // doc-command: systemd-analyze verify
            let verify = try Shell.run(["systemd-analyze", "verify", "/lib/systemd/system/edge-gateway.service"])
            XCTAssertEqual(verify.status, 0, verify.stderr)
            XCTAssertEqual(verify.stderr.split(separator: "\n").filter { $0.contains("edge-gateway.service") }, [], verify.stderr)
        }

        try startTheInstalledService(unit: unit)

        // An upgrade (every build is a newer version) keeps an edited configuration.
        let edited = try String(contentsOfFile: "/etc/edge-gateway/config.yaml", encoding: .utf8) + "# edited by the operator\n"
        try edited.write(toFile: "/etc/edge-gateway/config.yaml", atomically: false, encoding: .utf8)
        // The version holds the build time in seconds: the next build is a second later.
        let later = "\(Int(Date().timeIntervalSince1970) + 1)"
        let rebuilt = try Shell.run(["bash", repositoryRoot() + "/scripts/package-deb.sh", gatewayBinary(), dir.file("second")],
                                    environment: ["SOURCE_DATE_EPOCH": later])
        XCTAssertEqual(rebuilt.status, 0, rebuilt.stderr)
        let second = URL(fileURLWithPath: rebuilt.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        // doc-command: apt install ./<that path>
        let upgrade = try Shell.bash("cd '\(second.deletingLastPathComponent().path)' && apt install -y -o DPkg::Lock::Timeout=120 './\(second.lastPathComponent)'", timeout: 300)
        XCTAssertEqual(upgrade.status, 0, upgrade.stdout + upgrade.stderr)
        XCTAssertTrue(upgrade.stdout.contains("Preparing to unpack") && !upgrade.stdout.contains("downgrading"), upgrade.stdout)
        XCTAssertEqual(try String(contentsOfFile: "/etc/edge-gateway/config.yaml", encoding: .utf8), edited, "the upgrade replaced the edited configuration")

        // The README's removal commands (apt-get: apt's own CLI warns that it has no stable interface).
        // doc-command: apt-get remove edge-gateway
        let remove = try Shell.run(["apt-get", "remove", "-y", "-qq", "-o", "DPkg::Lock::Timeout=120", "edge-gateway"], timeout: 300)
        XCTAssertEqual(remove.status, 0, remove.stdout + remove.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "/usr/bin/edge-gateway"))
        XCTAssertEqual(try String(contentsOfFile: "/etc/edge-gateway/config.yaml", encoding: .utf8), edited, "remove keeps the configuration")
        // doc-command: apt-get purge edge-gateway
        let purge = try Shell.run(["apt-get", "purge", "-y", "-qq", "-o", "DPkg::Lock::Timeout=120", "edge-gateway"], timeout: 300)
        XCTAssertEqual(purge.status, 0, purge.stdout + purge.stderr)
        for path in ["/usr/bin/edge-gateway", "/lib/systemd/system/edge-gateway.service", "/etc/edge-gateway", "/var/lib/edge-gateway",
                     "/var/log/edge-gateway", Self.enablementLink] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: path), "\(path) left behind by the purge")
        }
        XCTAssertNotEqual(try Shell.run(["dpkg-query", "-W", "edge-gateway"]).status, 0)
    }

    static let enablementLink = "/etc/systemd/system/multi-user.target.wants/edge-gateway.service"

    /// The README's next step after the install: `systemctl enable --now`. Without systemd
    /// running (CI's container), `enable` still makes the link and the service is started
    /// the way its unit says systemd would: its directories, then ExecStartPre and ExecStart
    /// as the edge-gateway user from `/` with an empty environment, no new privileges,
    /// CAP_NET_BIND_SERVICE as its only capability and LimitNOFILE (setpriv, prlimit), and
    /// ExecReload as that user for `systemctl reload`. Not emulated: the unit's file-system
    /// protections (ProtectSystem=, ReadOnlyPaths=, PrivateTmp=), which systemd-analyze
    /// verify checks only for syntax. It then serves the shipped example on ports 80 and
    /// 443: the redirect, certbot's webroot, the placeholder over TLS, `status`, `certs`.
    func startTheInstalledService(unit: String) throws {
        for port in [80, 443, 9901] where isListening(port: port) {
            // CI's machine has nothing there: not starting it would hide a broken service.
            XCTAssertNil(ProcessInfo.processInfo.environment["CI"], "port \(port) is taken: the installed service cannot be tried")
            print("port \(port) is taken on this host: the installed service is not started")
            return
        }
        let systemd = FileManager.default.fileExists(atPath: "/run/systemd/system")
        var service: GatewayProcess?
        let logs = TemporaryDirectory()
        defer {
            if let service { XCTAssertEqual(service.stop(), 0, service.log) }
            if systemd { _ = try? Shell.run(["systemctl", "disable", "--now", "edge-gateway"]) }
            _ = try? Shell.run(["rm", "-rf", "/run/edge-gateway"])
        }
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/systemctl") || FileManager.default.isExecutableFile(atPath: "/bin/systemctl") {
            // doc-command: systemctl enable --now edge-gateway
            let enable = try Shell.run(["systemctl", "enable", "--now", "edge-gateway"])
            XCTAssertTrue(FileManager.default.fileExists(atPath: Self.enablementLink), enable.stdout + enable.stderr)
            if systemd {
                XCTAssertEqual(enable.status, 0, enable.stderr)
            } else {
                XCTAssertTrue(enable.stderr.contains("not been booted with systemd"), enable.stderr)
            }
        }
        func line(_ key: String) throws -> [String] {
            let value = try XCTUnwrap(unit.split(separator: "\n").first { $0.hasPrefix(key + "=") }).dropFirst(key.count + 1)
            return value.split(separator: " ").map(String.init)
        }
        // As User=/Group=, NoNewPrivileges=, CapabilityBoundingSet= and AmbientCapabilities=,
        // LimitNOFILE= (up to this host's hard limit: raising it takes CAP_SYS_RESOURCE, which
        // a container's root may lack), from / with only PATH (systemd's defaults).
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        let files = min(65536, limit.rlim_max)
        let asService = ["/usr/bin/env", "-i", "PATH=/usr/sbin:/usr/bin:/sbin:/bin", "/usr/bin/prlimit", "--nofile=\(files):\(files)",
                         "/usr/bin/setpriv", "--reuid=edge-gateway", "--regid=edge-gateway", "--init-groups", "--no-new-privs",
                         "--bounding-set=-all,+net_bind_service", "--inh-caps=-all,+net_bind_service", "--ambient-caps=-all,+net_bind_service",
                         "--", "/bin/sh", "-c", "cd / && exec \"$@\"", "sh"]
        if !systemd {
            for directory in ["/run/edge-gateway", "/var/log/edge-gateway"] {  // RuntimeDirectory=, LogsDirectory=
                XCTAssertEqual(try Shell.run(["install", "-d", "-m", "0700", "-o", "edge-gateway", "-g", "edge-gateway", directory]).status, 0)
            }
            let pre = try Shell.run(asService + line("ExecStartPre"))
            XCTAssertEqual(pre.status, 0, pre.stdout + pre.stderr)
            service = try GatewayProcess(commandLine: asService + line("ExecStart"), logPath: logs.file("service.log"))
        }
        XCTAssertTrue(GatewayProcess.Probe.wait(port: 9901) { service?.process.isRunning ?? true }, service?.log ?? "")
        XCTAssertTrue(GatewayProcess.Probe.wait(port: 443) { service?.process.isRunning ?? true }, service?.log ?? "")
        if let service {
            let status = try String(contentsOfFile: "/proc/\(service.pid)/status", encoding: .utf8)
            XCTAssertTrue(status.contains("CapEff:\t0000000000000400") && status.contains("NoNewPrivs:\t1"), status)
        }

        // doc-command: edge-gateway status
        let status = try Shell.run(["edge-gateway", "status"])
        XCTAssertEqual(status.status, 0, status.stdout + status.stderr)
        XCTAssertTrue(status.stdout.contains("placeholder") && status.stdout.contains("0.0.0.0:443"), status.stdout)
        if !FileManager.default.fileExists(atPath: "/etc/letsencrypt/live") {
            XCTAssertTrue(status.stdout.contains("WAITING  certbot:/etc/letsencrypt/live") && !status.stdout.contains("REJECTED"), status.stdout)
        }
        XCTAssertEqual(try Shell.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1/"]).stdout, "301")
        // certbot's webroot challenge, written by root as certbot would, is served by the service user.
        XCTAssertEqual(try Shell.bash("""
            umask 022 && mkdir -p /var/lib/edge-gateway/acme/.well-known/acme-challenge \
              && printf token-content > /var/lib/edge-gateway/acme/.well-known/acme-challenge/token
            """).status, 0)
        XCTAssertEqual(try Shell.run(["curl", "-sS", "http://127.0.0.1/.well-known/acme-challenge/token"]).stdout, "token-content")
        // doc-command: openssl s_client
        let served = try Shell.bash("openssl s_client -connect 127.0.0.1:443 -servername example.com </dev/null 2>/dev/null | openssl x509 -noout -subject")
        XCTAssertTrue(served.stdout.contains("CN = placeholder"), served.stdout + served.stderr)
        // doc-command: edge-gateway certs
        let certs = try Shell.run(["edge-gateway", "certs", "-c", "/etc/edge-gateway/config.yaml"])
        XCTAssertTrue(certs.stdout.contains("placeholder"), certs.stdout + certs.stderr)

        // Without systemd, what `systemctl reload` runs: the unit's ExecReload as the service user.
        // doc-command: systemctl reload edge-gateway
        // doc-command: systemctl reload
        if systemd {
            XCTAssertEqual(try Shell.run(["systemctl", "reload", "edge-gateway"]).status, 0)
        } else if let service {
            let reload = try line("ExecReload").map { $0.replacingOccurrences(of: "$MAINPID", with: "\(service.pid)") }
            XCTAssertEqual(try Shell.run(asService + reload).status, 0, reload.joined(separator: " "))
        }
        XCTAssertTrue(eventually(timeout: 10) {
            ((try? Shell.run(["edge-gateway", "status", "--json"]).stdout) ?? "").contains("\"applied\"")
        }, (try? Shell.run(["edge-gateway", "status"]).stdout) ?? "")
    }

    /// The example configuration in deploy/ is valid once its certbot directory exists
    /// (without root: the paths are pointed into a temporary directory).
    func testTheShippedExampleConfigurationIsValid() throws {
        let dir = TemporaryDirectory()
        let example = try String(contentsOfFile: repositoryRoot() + "/deploy/config.example.yaml", encoding: .utf8)
        _ = try Shell.run(["bash", repositoryRoot() + "/certs-example/generate.sh", dir.file("letsencrypt")])
        // docs/certificates.md's set-up without the package, in the temporary directory:
        // doc-command: mkdir -p /var/lib/edge-gateway/acme
        // doc-command: openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=placeholder -days 3650 -keyout /etc/edge-gateway/placeholder.key -out /etc/edge-gateway/placeholder.pem
        let placeholder = try Shell.bash("""
            mkdir -p '\(dir.path)/var/lib/edge-gateway/acme' '\(dir.path)/etc/edge-gateway'
            openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=placeholder -days 3650 \
              -keyout '\(dir.path)/etc/edge-gateway/placeholder.key' -out '\(dir.path)/etc/edge-gateway/placeholder.pem'
            """)
        XCTAssertEqual(placeholder.status, 0, placeholder.stderr)
        try dir.write("config.yaml", example
            .replacingOccurrences(of: "/etc/letsencrypt", with: dir.file("letsencrypt"))
            .replacingOccurrences(of: "/etc/edge-gateway", with: dir.path + "/etc/edge-gateway")
            .replacingOccurrences(of: "/var/lib/edge-gateway/acme", with: dir.path + "/var/lib/edge-gateway/acme"))
        let check = try Shell.run([gatewayBinary(), "check", "-c", dir.file("config.yaml")])
        XCTAssertEqual(check.status, 0, check.stdout + check.stderr)
    }

    /// With port 8443 taken, the demo says why (the gateway's own error), stops the demo
    /// upstream it started and exits 1; before, it printed "The gateway is running" and 0.
    func testTheDemoFailsLoudlyAndStopsWhatItStarted() throws {
        let dir = TemporaryDirectory()
        let blocker = listeningSocket(port: 8443)
        XCTAssertGreaterThanOrEqual(blocker, 0, "port 8443 is taken already")
        defer { close(blocker) }
        let demo = try Shell.run(["bash", repositoryRoot() + "/scripts/demo.sh"],
                                 environment: ["EDGE_GATEWAY": gatewayBinary(), "DEMO_DIR": dir.file("demo")])
        XCTAssertEqual(demo.status, 1, demo.stdout + demo.stderr)
        XCTAssertTrue(demo.stderr.contains("the gateway exited at start") && demo.stderr.contains("Address already in use"), demo.stderr)
        XCTAssertFalse(demo.stdout.contains("The gateway is running"), demo.stdout)
        XCTAssertTrue(eventually(timeout: 5) { !isListening(port: 9000) }, "the demo upstream was left running")
    }

    /// The demo's printed commands work from any directory (absolute paths), and stop stops.
    func testTheDemoRunsAndItsCommandsWorkFromAnyDirectory() throws {
        let dir = TemporaryDirectory()
        let environment = ["EDGE_GATEWAY": gatewayBinary(), "DEMO_DIR": dir.file("demo")]
        // doc-command: bash scripts/demo.sh
        let demo = try Shell.run(["bash", repositoryRoot() + "/scripts/demo.sh"], environment: environment)
        // doc-command: bash scripts/demo.sh stop
        defer { _ = try? Shell.run(["bash", repositoryRoot() + "/scripts/demo.sh", "stop"], environment: environment) }
        XCTAssertEqual(demo.status, 0, demo.stdout + demo.stderr)
        // The README's two commands, as given, from the directory that holds the demo's.
        for command in [
            "curl --cacert demo/certs/ca.pem https://localhost:8443/",  // doc-command: curl --cacert demo/certs/ca.pem https://localhost:8443/
            "curl http://127.0.0.1:9901/status",  // doc-command: curl http://127.0.0.1:9901/status
        ] {
            let result = try Shell.bash("cd '\(dir.path)' && \(command) -sS -o /dev/null -w '%{http_code}'")
            XCTAssertEqual(result.stdout, "200", "\(command): \(result.stderr)")
        }
        let commands = demo.stdout.split(separator: "\n").map { $0.trimmingCharacters(in: .whitespaces) }.filter { $0.hasPrefix("curl ") }
        XCTAssertGreaterThanOrEqual(commands.count, 5, demo.stdout)
        for command in commands {
            let result = try Shell.bash("cd / && \(command) -sS -o /dev/null -w '%{http_code}'")
            XCTAssertEqual(result.stdout, "200", "\(command): \(result.stderr)")
        }
        let stop = try XCTUnwrap(demo.stdout.split(separator: "\n").first { $0.hasPrefix("Stop it with: ") }).dropFirst("Stop it with: ".count)
        XCTAssertEqual(try Shell.bash("cd / && \(stop)").status, 0)
        XCTAssertTrue(eventually(timeout: 5) { !isListening(port: 8443) && !isListening(port: 9000) })
    }
}

/// What `check`, `status` and `certs` tell a new operator (#30).
final class OperatorMessagesTests: XCTestCase {
    /// A YAML syntax error names the file, line and column, and shows the line with a caret.
    func testYAMLSyntaxErrorsHaveALineAColumnAndACaret() throws {
        let dir = TemporaryDirectory()
        let cases: [(String, String, String)] = [
            ("tab", "listeners:\n\t- { name: http, address: \"127.0.0.1:0\" }\n", ":2:1: invalid YAML: found character that cannot start any token"),
            ("indent", "listeners:\n  - name: http\n   address: \"127.0.0.1:0\"\n", ":3:"),
            ("quote", "listeners:\n  - { name: \"http, address: 127.0.0.1:0 }\nroutes: []\n", "invalid YAML: found unexpected end of stream"),
            // The second of two keys, not the file printed whole (as it was).
            ("duplicate", "listeners: []\nupstreams:\n  app: { backends: [\"127.0.0.1:9\"] }\n  # a comment\n  other: { backends: [\"127.0.0.1:8\"] }\n  app: { backends: [\"127.0.0.1:10\"] }\nroutes: []\n",
             ":6:3: invalid YAML: duplicate key 'app' (first at line 3)\n    app: { backends: [\"127.0.0.1:10\"] }\n    ^"),
            ("flow duplicate", "listeners: []\nupstreams: { app: { backends: [] }, app: { backends: [] } }\nroutes: []\n", ":2:14: invalid YAML: duplicate key 'app'\n"),
            ("tab duplicate", "listeners: []\nupstreams:\n  app:\t{ backends: [] }\n  app:\t{ backends: [] }\nroutes: []\n",
             ":4:3: invalid YAML: duplicate key 'app' (first at line 3)"),
            // CRLF lines; `app:x:` is a key of its own, not a second `app`.
            ("crlf duplicate", "listeners: []\r\nupstreams:\r\n  app: { backends: [] }\r\n  app:x: { backends: [] }\r\n  app: { backends: [] }\r\nroutes: []\r\n",
             ":5:3: invalid YAML: duplicate key 'app' (first at line 3)\n    app: { backends: [] }\n    ^"),
        ]
        for (name, yaml, expected) in cases {
            try dir.write("\(name).yaml", yaml)
            let check = try Shell.run([gatewayBinary(), "check", "-c", dir.file("\(name).yaml")])
            XCTAssertEqual(check.status, 1, name)
            XCTAssertTrue(check.stderr.contains("error: \(dir.file("\(name).yaml"))") && check.stderr.contains(expected), "\(name): \(check.stderr)")
            XCTAssertTrue(check.stderr.contains("^"), "\(name): no caret under the column: \(check.stderr)")
            XCTAssertFalse(check.stderr.contains("The given data was not valid YAML"), check.stderr)
            XCTAssertLessThanOrEqual(check.stderr.split(separator: "\n").count, 3, "\(name): \(check.stderr)")
        }
        let tab = try Shell.run([gatewayBinary(), "check", "-c", dir.file("tab.yaml")]).stderr
        XCTAssertTrue(tab.contains("\n   - { name: http") && tab.contains("\n  ^\n"), tab)  // the tab as a space, the caret under it
        // An empty file and a directory say so.
        try dir.write("empty.yaml", "\n")
        XCTAssertTrue(try Shell.run([gatewayBinary(), "check", "-c", dir.file("empty.yaml")]).stderr.contains("the file is empty"))
        XCTAssertTrue(try Shell.run([gatewayBinary(), "check", "-c", dir.path]).stderr.contains("is a directory"))
    }

    /// `check` loads every certificate source as `run` does: a certbot lineage whose key
    /// does not match fails it (it said "valid" before), unless --allow-rejected.
    func testCheckFailsOnARejectedCertbotLineage() throws {
        let dir = TemporaryDirectory()
        XCTAssertEqual(try Shell.run(["bash", repositoryRoot() + "/certs-example/generate.sh", dir.file("le")]).status, 0)
        try dir.write("config.yaml", """
            listeners: [ { name: https, address: "127.0.0.1:0", tls: {} } ]
            certificates: { sources: [ { certbot: le/live } ], default: localhost, ca_file: le/ca.pem }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            """)
        let good = try Shell.run([gatewayBinary(), "check", "-c", dir.file("config.yaml")])
        XCTAssertEqual(good.status, 0, good.stderr)
        XCTAssertTrue(good.stdout.contains("3 certificate lineage(s) loaded; the first to expire is"), good.stdout)
        // a.example.test's key replaced by localhost's.
        try FileManager.default.removeItem(atPath: dir.file("le/archive/a.example.test/privkey1.pem"))
        try FileManager.default.copyItem(atPath: dir.file("le/archive/localhost/privkey1.pem"), toPath: dir.file("le/archive/a.example.test/privkey1.pem"))
        let bad = try Shell.run([gatewayBinary(), "check", "-c", dir.file("config.yaml")])
        XCTAssertEqual(bad.status, 1, bad.stdout + bad.stderr)
        XCTAssertTrue(bad.stderr.contains("error: certificate a.example.test:") && bad.stderr.contains("does not match"), bad.stderr)
        let allowed = try Shell.run([gatewayBinary(), "check", "--allow-rejected", "-c", dir.file("config.yaml")])
        XCTAssertEqual(allowed.status, 0, allowed.stderr)
        XCTAssertTrue(allowed.stdout.contains("2 certificate lineage(s) loaded") && allowed.stdout.contains("1 rejected (allowed)"), allowed.stdout)
    }

    /// The smaller things a new operator tripped on (#30, item 10): messages that name what
    /// exists, `GET /reload` answered 405 with `Allow: POST`, `/metrics` in a stable order
    /// without handshake series for a plain listener, and the page's times in UTC.
    func testSmallerOperatorMessages() async throws {
        let dir = TemporaryDirectory()
        XCTAssertEqual(try Shell.run(["bash", repositoryRoot() + "/certs-example/generate.sh", dir.file("le")]).status, 0)
        try dir.write("bad.yaml", """
            listeners: [ { name: https, address: "127.0.0.1:0", tls: {} } ]
            certificates: { sources: [ { certbot: le/live } ], default: nothere }
            routes: [ { upstream: app } ]
            """)
        let bad = try Shell.run([gatewayBinary(), "check", "-c", dir.file("bad.yaml")])
        XCTAssertEqual(bad.status, 1)
        XCTAssertTrue(bad.stderr.contains("error: certificates.default: no lineage named 'nothere' was loaded (loaded: a.example.test, localhost, wildcard.b.example.test)")
                      || bad.stderr.contains("no lineage named 'nothere' was loaded (loaded: "), bad.stderr)
        XCTAssertFalse(bad.stderr.contains("certificates: certificates.default"), bad.stderr)
        XCTAssertTrue(bad.stderr.contains("no upstream named 'app' (no upstreams are configured)"), bad.stderr)
        XCTAssertFalse(bad.stderr.contains("(known: )"), bad.stderr)
        // A usage error says error: like every other problem (ArgumentParser said Error:).
        let usage = try Shell.run([gatewayBinary(), "check"])
        XCTAssertEqual(usage.status, 64, usage.stderr)
        XCTAssertTrue(usage.stderr.hasPrefix("error: Missing expected argument"), usage.stderr)
        XCTAssertEqual(try Shell.run([gatewayBinary(), "--version"]).status, 0)
        XCTAssertTrue(try Shell.run([gatewayBinary(), "check", "--help"]).stdout.contains("USAGE: edge-gateway check"))

        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let gateway = try Gateway.prepare(config: try GatewayConfig.parse(yaml: """
            listeners:
              - { name: plain, address: "127.0.0.1:0" }
              - { name: tls, address: "127.0.0.1:0", tls: { certificate: le/pairs/localhost.crt, key: le/pairs/localhost.key } }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            admin: { address: "127.0.0.1:0" }
            """), baseDirectory: dir.path, logger: Logger(label: "test"))
        try await gateway.start(group: group)
        let admin = "http://127.0.0.1:\(gateway.adminPort!)"
        let reload = try Shell.run(["curl", "-sS", "-i", admin + "/reload"]).stdout
        XCTAssertTrue(reload.hasPrefix("HTTP/1.1 405") && reload.lowercased().contains("allow: post"), reload)
        let metrics = try Shell.run(["curl", "-sS", admin + "/metrics"]).stdout
        XCTAssertFalse(metrics.contains(#"edge_tls_handshakes_total{listener="plain""#), metrics)
        XCTAssertTrue(metrics.contains(#"edge_tls_handshakes_total{listener="tls",result="ok"}"#), metrics)
        let families = metrics.split(separator: "\n").filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] }
        XCTAssertGreaterThan(families.count, 5)
        XCTAssertEqual(families, families.sorted(), "metric families in name order")
        let page = try Shell.run(["curl", "-sS", admin + "/"]).stdout
        XCTAssertTrue(page.contains(" UTC ("), "the last reload's time says UTC")
        await gateway.shutdown(grace: .seconds(1))
        try await group.shutdownGracefully()
    }

    /// A configuration reload (SIGHUP, POST /reload) builds new certificate stores: the
    /// page's history goes on, and its entry says what the reload changed.
    func testAConfigurationReloadKeepsThePublicationHistory() throws {
        let dir = TemporaryDirectory()
        let pki = try TestPKI()
        _ = try pki.issue(["a.test"], into: dir.file("certs"), name: "a")
        let yaml = """
            listeners: [ { name: https, address: "127.0.0.1:0", tls: {} } ]
            certificates: { sources: [ { directory: certs } ] }
            upstreams: { app: { backends: ["127.0.0.1:9"] } }
            routes: [ { upstream: app } ]
            """
        let first = try Gateway.prepare(config: try GatewayConfig.parse(yaml: yaml), baseDirectory: dir.path, logger: Logger(label: "test"))
        _ = try pki.issue(["b.test"], into: dir.file("certs"), name: "b")
        let second = try Gateway.prepare(config: try GatewayConfig.parse(yaml: yaml), baseDirectory: dir.path, logger: Logger(label: "test"), previous: first)
        let history = try XCTUnwrap(second.sharedStore).publications
        XCTAssertEqual(history.map(\.trigger), ["loaded", "configuration reload"])
        XCTAssertEqual(history.last?.added, ["b"])
        XCTAssertEqual(history.last?.updated, [])
    }

    /// `certs DIR --ca-file` verifies the chains against a named CA; `--strict` makes a
    /// chain that does not verify exit 1 (cron checks read the code).
    func testCertsTakesACAFileAndStrictFailsOnABrokenChain() throws {
        let dir = TemporaryDirectory()
        XCTAssertEqual(try Shell.run(["bash", repositoryRoot() + "/certs-example/generate.sh", dir.file("le")]).status, 0)
        let plain = try Shell.run([gatewayBinary(), "certs", dir.file("le")])
        XCTAssertEqual(plain.status, 0, plain.stdout)
        XCTAssertTrue(plain.stdout.contains("INVALID"), "the example CA is not in the system store: \(plain.stdout)")
        XCTAssertEqual(try Shell.run([gatewayBinary(), "certs", "--strict", dir.file("le")]).status, 1)
        let named = try Shell.run([gatewayBinary(), "certs", "--strict", "--ca-file", dir.file("le/ca.pem"), dir.file("le")])
        XCTAssertEqual(named.status, 0, named.stdout)
        XCTAssertFalse(named.stdout.contains("INVALID"), named.stdout)
    }

    /// `status` is a readable summary; `--json` the raw document, with RFC 3339 times.
    func testStatusIsAReadableSummary() throws {
        let dir = TemporaryDirectory()
        let (gateway, upstream, _, admin) = try plainGateway(dir)
        defer { _ = gateway.stop(); upstream.stop() }
        XCTAssertTrue(gateway.waitForPort(admin))
        let summary = try Shell.run([gatewayBinary(), "status", "--admin", "127.0.0.1:\(admin)"])
        XCTAssertEqual(summary.status, 0, summary.stderr)
        for expected in ["edge-gateway ", "ready", "LISTENERS", "http", "plain HTTP", "CERTIFICATES (soonest expiry first)", "UPSTREAMS",
                         "127.0.0.1:\(upstream.port)", "Last configuration reload: none since start"] {
            XCTAssertTrue(summary.stdout.contains(expected), "missing '\(expected)' in:\n\(summary.stdout)")
        }
        XCTAssertFalse(summary.stdout.hasPrefix("{"), summary.stdout)
        let json = try Shell.run([gatewayBinary(), "status", "--json", "--admin", "127.0.0.1:\(admin)"])
        XCTAssertTrue(json.stdout.hasPrefix("{\"version\""), json.stdout)
        let certificates = try Shell.run([gatewayBinary(), "status", "--path", "/status/certificates", "--admin", "127.0.0.1:\(admin)"])
        XCTAssertTrue(certificates.stdout.contains("\"generated_at_rfc3339\":\"20"), certificates.stdout)
    }

    /// The summary's certificate rows come soonest expiry first, with dates (no gateway needed).
    func testStatusSummaryOrdersCertificatesBySoonestExpiry() throws {
        let json = """
            {"version":"1","uptime_seconds":90,"ready":true,"listeners":[{"name":"https","address":"0.0.0.0:443","port":443,"tls":true,"tls_profile":"intermediate","h2":true,"mutual_tls":false,"proxy_protocol":false}],
             "certificates":[{"name":"late","not_after":1900000000,"state":"ok"},{"name":"soon","not_after":1800000000,"state":"warning"}],
             "certificate_problems":[{"name":"bad","error":"private key does not match","serving_previous":true},
                                     {"name":"certbot:/etc/letsencrypt/live","error":"/etc/letsencrypt/live: no such directory","serving_previous":false},
                                     {"name":"certbot:/srv/le/live","error":"/srv/le/live: no such directory","serving_previous":true}],
             "upstreams":[{"name":"app","backends":[{"address":"10.0.0.5:80","health":"ejected","requests":10,"reuse_ratio":0.9,"last_error":"connect failed"}]}],
             "last_reload":{"time":1790000000,"result":"published"},"config_reload":{"time":1790000100,"result":"rejected","error":"bad key"}}
            """
        let text = try StatusSummary.text(statusJSON: json, now: 1_790_000_000)
        let soon = try XCTUnwrap(text.range(of: "soon")), late = try XCTUnwrap(text.range(of: "late"))
        XCTAssertLessThan(soon.lowerBound, late.lowerBound, text)
        // A certbot directory before the first `certbot certonly` is awaited, not rejected (as `check` says).
        XCTAssertFalse(text.contains("REJECTED certbot:/etc/letsencrypt"), text)
        for expected in ["TLS intermediate, h2", "2027-01-15 08:00", "REJECTED bad: private key does not match (serving the previous version)",
                         "WAITING  certbot:/etc/letsencrypt/live: no such directory yet; watched for, served once certbot creates it",
                         // Deleted while its lineages are served: they will not be renewed.
                         "REJECTED certbot:/srv/le/live: /srv/le/live: no such directory (serving the previous version)",
                         "10.0.0.5:80  ejected  10 requests, 90 % reused  last error: connect failed",
                         "Last certificate reload: 2026-09-21", "Last configuration reload: 2026-09-21", "rejected: bad key"] {
            XCTAssertTrue(text.contains(expected), "missing '\(expected)' in:\n\(text)")
        }
    }
}

/// Whether something accepts connections on 127.0.0.1:`port`.
func isListening(port: Int) -> Bool {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var address = loopbackAddress(port: port)
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    } == 0
}
