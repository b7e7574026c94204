import EdgeCertificates
@testable import EdgeGateway
import XCTest

/// The renewal watchdog's pure parts: certbot's renewal file read as certbot reads it, a
/// pod's annotations read as cert-manager's setting, the expected renewal time per agent, and which lines the monitor logs (injected clock).
final class RenewalScheduleTests: XCTestCase {
    let day: Int64 = 86_400

    /// The file certbot 2.1 (Debian 12) writes, with the default left commented out.
    let certbot21 = """
        # renew_before_expiry = 30 days
        version = 2.1.0
        archive_dir = /etc/letsencrypt/archive/a.example.com
        cert = /etc/letsencrypt/live/a.example.com/cert.pem

        # Options used in the renewal process
        [renewalparams]
        account = 0123456789abcdef
        authenticator = webroot
        server = https://acme-v02.api.letsencrypt.org/directory
        """

    func testCertbotsFileIsReadAsCertbotReadsIt() {
        let plain = CertbotRenewalConfig(parsing: certbot21)
        XCTAssertNil(plain.renewBeforeText, "a commented-out setting is no setting")
        XCTAssertEqual(plain.version, "2.1.0")
        XCTAssertTrue(plain.autorenew)
        XCTAssertNil(plain.problem)
        XCTAssertEqual(plain.defaultRenewBefore(lifetime: 90 * day), 30 * day, "certbot 2: 30 days")
        XCTAssertEqual(plain.defaultRenewBefore(lifetime: 45 * day), 15 * day, "a file of certbot 2 that certbot 4 may renew now: the later")

        let set = CertbotRenewalConfig(parsing: "renew_before_expiry = 12 hours  # for 6-day certificates\r\n" + certbot21)
        XCTAssertEqual(set.renewBeforeText, "12 hours")
        XCTAssertEqual(set.renewBeforeSeconds, 12 * 3600)
        XCTAssertNil(set.problem)
        XCTAssertEqual(CertbotRenewalConfig(parsing: "renew_before_expiry = \"10 days\" # note\n").renewBeforeSeconds, 10 * day)
        XCTAssertEqual(CertbotRenewalConfig(parsing: "\u{FEFF}renew_before_expiry = 10 days\n").renewBeforeSeconds, 10 * day)
        XCTAssertNil(CertbotRenewalConfig(parsing: "Renew_Before_Expiry = 10 days\n").renewBeforeText, "keys are case-sensitive")

        let four = CertbotRenewalConfig(parsing: "version = 4.1.1\n")
        XCTAssertEqual(four.defaultRenewBefore(lifetime: 90 * day), 30 * day, "certbot 4: a third of the lifetime")
        XCTAssertEqual(four.defaultRenewBefore(lifetime: 45 * day), 15 * day)
        XCTAssertEqual(four.defaultRenewBefore(lifetime: 6 * day), 3 * day, "under 10 days: half")

        XCTAssertFalse(CertbotRenewalConfig(parsing: certbot21 + "\nautorenew = False\n").autorenew)
        XCTAssertTrue(CertbotRenewalConfig(parsing: "autorenew = False\n[renewalparams]\n").autorenew, "only [renewalparams] counts")
        XCTAssertTrue(CertbotRenewalConfig(parsing: "[renewalparams]\nAUTORENEW = False\n").autorenew, "keys are case-sensitive")

        // What certbot would not renew by, each with its reason.
        let garbled = CertbotRenewalConfig(parsing: "renew_before_expiry = 5 hrs\n")
        XCTAssertEqual(garbled.renewBeforeSeconds, 0, "certbot reads what it does not understand as 0")
        XCTAssertEqual(garbled.problem?.hasPrefix("renew_before_expiry = 5 hrs is not an interval certbot reads"), true)
        let list = CertbotRenewalConfig(parsing: "renew_before_expiry = 3 days, 12 hours\n")
        XCTAssertEqual(list.problem?.contains("an unquoted comma makes it a list, on which certbot fails"), true)
        XCTAssertEqual(CertbotRenewalConfig(parsing: "renew_before_expiry = \"3 days, 12 hours\"\n").renewBeforeSeconds, 3 * day + 12 * 3600, "quoted: one value")
        XCTAssertEqual(CertbotRenewalConfig(parsing: "renew_before_expiry = -5 days\n").problem,
                       "renew_before_expiry = -5 days is negative: certbot renews only 5d 0h after expiry")
        XCTAssertEqual(CertbotRenewalConfig(parsing: "version = 2.1.0\nversion = 2.1.0\n").problem?.hasPrefix("line 2: 'version' set twice: certbot cannot parse"), true)
        XCTAssertEqual(CertbotRenewalConfig(parsing: "garbage line\n").problem?.hasPrefix("line 1: no '=' in 'garbage line'"), true)
        let long = CertbotRenewalConfig(parsing: "renew_before_expiry = " + String(repeating: "x\u{1B}", count: 300) + "\n")
        XCTAssertEqual(long.renewBeforeText?.count, 103, "at most 100 characters shown, no control characters")
    }

    /// What certbot 2.1's parser (storage.add_time_interval, parsedatetime) made of each
    /// form, in seconds, and what the gateway makes of it: the same, or nil where certbot
    /// reads 0 (or, for a bare decimal, a date), or less where certbot's calendar varies.
    func testIntervalsAsCertbotParsesThem() {
        let cases: [(String, certbot: Int64, ours: Int64?)] = [
            ("30 days", 2_592_000, 30 * day), ("10", 864_000, 10 * day), ("2 weeks", 1_209_600, 14 * day), ("12 hours", 43_200, 43_200),
            ("45 seconds", 45, 45), ("3 days 4 hours", 273_600, 273_600), ("1.5 days", 129_600, 129_600), ("30days", 2_592_000, 30 * day),
            ("30 Days", 2_592_000, 30 * day), ("  7 days ", 604_800, 7 * day), ("3d", 259_200, 3 * day), ("12h", 43_200, 43_200),
            ("30 sec", 30, 30), ("2 mins", 120, 120), ("1 wk", 604_800, 7 * day), ("1 yr", 31_536_000, 365 * day),
            ("1 day and 2 hours", 93_600, 93_600), ("2 m", 120, 120), ("2 hr", 7200, 7200), ("-5 days", -432_000, -432_000),
            ("3 days, 12 hours", 302_400, 302_400),  // as a quoted value; unquoted it is a list (above)
            ("1 month", 2_678_400, 28 * day),  // from March 1; 28 days from February 1
            ("xyz", 0, nil), ("5 hrs", 0, nil), ("1 fortnight", 0, nil), ("", 0, nil), ("1d2h", 0, nil), ("1.5", 26_784_000, nil),
        ]
        for (text, certbot, ours) in cases {
            XCTAssertEqual(CertbotRenewalConfig.interval(text), ours, "\(text) (certbot: \(certbot) s)")
            if let ours { XCTAssertLessThanOrEqual(ours, certbot, "never earlier than certbot: \(text)") }
        }
        XCTAssertNil(CertbotRenewalConfig.interval("99999999999999999999 days"), "certbot overflows to 0")
        XCTAssertNil(CertbotRenewalConfig.interval("100000 years"))
    }

    func testExpectedRenewalGraceAndStates() {
        let basis = RenewalBasis.certbotDefault(file: "/etc/letsencrypt/renewal/a.conf", version: "2.1.0")
        func state(renewBefore: Int64, lifetime: Int64, now: Int64, disabled: Bool = false) -> RenewalExpectation {
            RenewalPolicy.expectation(basis: basis, renewBefore: renewBefore, disabled: disabled, problem: nil,
                                      notBefore: 0, notAfter: lifetime, policy: RenewalPolicy(), now: now)
        }
        // 90 days, renewed 30 days before expiry: expected on day 60, overdue on day 62.
        XCTAssertEqual(state(renewBefore: 30 * day, lifetime: 90 * day, now: 59 * day).state, .scheduled)
        XCTAssertEqual(state(renewBefore: 30 * day, lifetime: 90 * day, now: 59 * day).expectedAt, 60 * day)
        XCTAssertEqual(state(renewBefore: 30 * day, lifetime: 90 * day, now: 61 * day).state, .due)
        XCTAssertEqual(state(renewBefore: 30 * day, lifetime: 90 * day, now: 62 * day).state, .overdue)
        XCTAssertEqual(state(renewBefore: 30 * day, lifetime: 90 * day, now: 62 * day).graceSeconds, 2 * day)
        // 15 days: 10 % of the lifetime (36 h) is shorter than 2 days.
        XCTAssertEqual(state(renewBefore: 5 * day, lifetime: 15 * day, now: 0).graceSeconds, 36 * 3600)
        // 6 days: 10 % is 14.4 h, shorter than the 24 h certbot's timer may leave between runs: 26 h.
        let short = state(renewBefore: 3 * day, lifetime: 6 * day, now: 3 * day + 25 * 3600)
        XCTAssertEqual(short.graceSeconds, 26 * 3600)
        XCTAssertEqual(short.state, .due)
        XCTAssertEqual(state(renewBefore: 3 * day, lifetime: 6 * day, now: 3 * day + 26 * 3600).state, .overdue)
        // 1 day, renewed with 12 h left: overdue with 6 h left, before it expires.
        XCTAssertEqual(state(renewBefore: 12 * 3600, lifetime: day, now: 0).graceSeconds, 6 * 3600)
        // certbot 2.1's 30 days on a 6-day certificate: every run renews, so it is expected at issuance.
        XCTAssertEqual(state(renewBefore: 30 * day, lifetime: 6 * day, now: 0).expectedAt, 0)
        XCTAssertEqual(state(renewBefore: 30 * day, lifetime: 6 * day, now: 0).state, .due)
        XCTAssertEqual(state(renewBefore: 30 * day, lifetime: 90 * day, now: 80 * day, disabled: true).state, .disabled)
        // A negative setting: renewed after expiry, never overdue before.
        XCTAssertEqual(state(renewBefore: -5 * day, lifetime: 90 * day, now: 0).expectedAt, 95 * day)
        // The operator's message names the lineage, how late, the last renewal and what to run.
        XCTAssertEqual(state(renewBefore: 30 * day, lifetime: 90 * day, now: 63 * day).message(lineage: "a.example.com", now: 63 * day),
                       "certbot should have renewed a.example.com 3d 0h ago; last renewal 63d 0h ago; check `certbot renew --dry-run` and the timer")
        var rejected = state(renewBefore: 30 * day, lifetime: 90 * day, now: 63 * day)
        rejected.rejectedVersion = "private key does not match"
        XCTAssertTrue(rejected.message(lineage: "a", now: 63 * day).hasPrefix("a was renewed on disk but the new version was rejected (private key does not match)"))
    }

    func testEachSourceKindHasItsAgentsRule() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("renewal-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/live/a.example.com", withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: dir + "/renewal", withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var policy = RenewalPolicy()
        let certbot = CertificateSource.certbot(dir)
        // No renewal file: certbot does not renew it, and the view says so.
        let missing = try XCTUnwrap(policy.expectation(source: certbot, lineage: "a.example.com", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0))
        XCTAssertEqual(missing.problem, "\(dir)/renewal/a.example.com.conf: no such file here: `certbot renew` does not renew this lineage on this host "
                       + "(renew_before: 0s on the source if it is renewed elsewhere)")
        XCTAssertEqual(missing.state, .unknown, "nothing renews it here: no time expected, never overdue on a guess")
        XCTAssertEqual(missing.basis, .certbotMissing(file: "\(dir)/renewal/a.example.com.conf"))
        XCTAssertEqual(RenewalPolicy().expectation(source: certbot, lineage: "a.example.com", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil,
                                                   now: 200 * day)?.state, .unknown, "not even once expired")
        // A file certbot cannot parse: it skips the lineage, so no time is expected either.
        try "version = 2.1.0\nversion = 2.1.0\n".write(toFile: dir + "/renewal/a.example.com.conf", atomically: true, encoding: .utf8)
        let unparsable = try XCTUnwrap(policy.expectation(source: certbot, lineage: "a.example.com", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil,
                                                          now: 0, files: CertbotRenewalFiles()))
        XCTAssertEqual(unparsable.state, .unknown)
        XCTAssertEqual(unparsable.problem?.hasPrefix("line 2: 'version' set twice"), true, unparsable.problem ?? "")
        try "renew_before_expiry = 20 days\nversion = 2.1.0\n".write(toFile: dir + "/renewal/a.example.com.conf", atomically: true, encoding: .utf8)
        let set = try XCTUnwrap(policy.expectation(source: certbot, lineage: "a.example.com", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0))
        XCTAssertEqual(set.expectedAt, 70 * day)
        XCTAssertEqual(set.basis, RenewalBasis.certbotSetting(file: dir + "/renewal/a.example.com.conf", value: "20 days"))
        XCTAssertNil(set.problem)
        // An edit counts at the next look (the file is stat'ed each time, parsed when it changed).
        try "renew_before_expiry = 10 days\nversion = 2.1.0\n".write(toFile: dir + "/renewal/a.example.com.conf", atomically: true, encoding: .utf8)
        XCTAssertEqual(policy.expectation(source: certbot, lineage: "a.example.com", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0)?.expectedAt, 80 * day)
        // A file that cannot be read once read keeps its last reading (no flapping)...
        try FileManager.default.removeItem(atPath: dir + "/renewal/a.example.com.conf")
        try FileManager.default.createDirectory(atPath: dir + "/renewal/a.example.com.conf", withIntermediateDirectories: true)
        XCTAssertEqual(policy.expectation(source: certbot, lineage: "a.example.com", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0)?.expectedAt, 80 * day)
        // ...and one never read is unknown, never overdue on a guess.
        let unread = try XCTUnwrap(policy.expectation(source: certbot, lineage: "a.example.com", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil,
                                                      now: 200 * day, files: CertbotRenewalFiles()))
        XCTAssertEqual(unread.state, .unknown)
        XCTAssertEqual(unread.problem?.hasPrefix("\(dir)/renewal/a.example.com.conf: "), true, unread.problem ?? "")
        // cert-manager: two thirds through, unless renew_before is configured.
        let secret = CertificateSource.kubernetes(dir + "/secret")
        XCTAssertEqual(policy.expectation(source: secret, lineage: "secret", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0)?.expectedAt, 60 * day)
        policy.renewBefore[secret] = 10 * day
        XCTAssertEqual(policy.expectation(source: secret, lineage: "secret", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0)?.expectedAt, 80 * day)
        // A plain directory: nothing known renews it, unless configured.
        let plain = CertificateSource.directory(dir)
        XCTAssertNil(policy.expectation(source: plain, lineage: "site", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0))
        policy.renewBefore[plain] = 30 * day
        XCTAssertEqual(policy.expectation(source: plain, lineage: "site", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0)?.expectedAt, 60 * day)
        policy.renewBefore[secret] = 0
        XCTAssertNil(policy.expectation(source: secret, lineage: "secret", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0), "0s: not watched")
    }

    /// The downward API's annotations file, read as cert-manager reads its setting.
    func testPodAnnotationsGiveCertManagersRenewalRule() {
        let annotations = PodAnnotations(parsing: """
            cert-manager.io/renew-before="360h"
            kubectl.kubernetes.io/last-applied-configuration="{\\"a\\":\\"b\\"}\\n"
            odd="tab\\there \\u00e9\\x41"
            """)
        XCTAssertEqual(annotations.values["cert-manager.io/renew-before"], "360h")
        XCTAssertEqual(annotations.values["kubectl.kubernetes.io/last-applied-configuration"], "{\"a\":\"b\"}\n")
        XCTAssertEqual(annotations.values["odd"], "tab\there éA")
        let lifetime: Int64 = 90 * day
        XCTAssertEqual(annotations.renewBefore(lifetime: lifetime).seconds, 15 * day)
        XCTAssertEqual(annotations.renewBefore(lifetime: lifetime).setting, "cert-manager.io/renew-before=360h")
        // Not under the lifetime: cert-manager falls back to the percentage, then a third.
        XCTAssertEqual(annotations.renewBefore(lifetime: 10 * day).seconds, 10 * day / 3)
        XCTAssertNil(annotations.renewBefore(lifetime: 10 * day).setting)
        let percentage = PodAnnotations(parsing: "cert-manager.io/renew-before=\"2160h\"\ncert-manager.io/renew-before-percentage=\"25\"\n")
        XCTAssertEqual(percentage.renewBefore(lifetime: 60 * day).seconds, 15 * day)
        XCTAssertEqual(percentage.renewBefore(lifetime: 60 * day).setting, "cert-manager.io/renew-before-percentage=25")
        XCTAssertEqual(percentage.renewBefore(lifetime: 100 * day).seconds, 90 * day, "2160h is under a 100-day lifetime")
        let broken = PodAnnotations(parsing: "cert-manager.io/renew-before=\"15 days\"\n")
        XCTAssertEqual(broken.renewBefore(lifetime: lifetime).seconds, 30 * day)
        XCTAssertEqual(broken.renewBefore(lifetime: lifetime).problem,
                       "cert-manager.io/renew-before=15 days is not a duration cert-manager reads (such as 360h or 720h0m0s), or is over a century")
        // Go's ParseInt takes leading zeros; what is shown is the number.
        let zeros = PodAnnotations(parsing: "cert-manager.io/renew-before-percentage=\"" + String(repeating: "0", count: 200) + "25\"\n")
        XCTAssertEqual(zeros.renewBefore(lifetime: lifetime).setting, "cert-manager.io/renew-before-percentage=25")
        XCTAssertNil(PodAnnotations(parsing: "cert-manager.io/renew-before=\"-1h\"\n").renewBefore(lifetime: lifetime).problem,
                     "a negative duration: cert-manager's default, as cert-manager takes it")
        XCTAssertEqual(PodAnnotations(parsing: "").renewBefore(lifetime: lifetime).seconds, 30 * day)
        // Go's time.ParseDuration, in whole seconds.
        let durations: [(String, Int64?)] = [("720h0m0s", 720 * 3600), ("1h30m", 5400), ("1.5h", 5400), (".5m", 30), ("90s", 90), ("1500ms", 2),
                                             ("0", 0), ("+0", 0), ("-0", 0), ("+2h", 7200), ("-1h", -3600), ("", nil), ("-", nil), ("h", nil), ("1", nil),
                                             ("1d", nil), ("1.2.3h", nil), ("99999999999999h", nil)]
        for (text, seconds) in durations {
            XCTAssertEqual(PodAnnotations.goDuration(text), seconds, text)
        }
    }

    /// A Kubernetes source with `annotations_file`: its setting decides, an edit counts at
    /// the next look, and a file that is not there is a problem on the view.
    func testAKubernetesSourceReadsItsAnnotationsFile() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("annotations-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var policy = RenewalPolicy()
        let secret = CertificateSource.kubernetes(dir + "/secret")
        let file = dir + "/annotations"
        policy.annotationFiles[secret] = file
        let files = CertbotRenewalFiles()
        func expectation() -> RenewalExpectation? {
            policy.expectation(source: secret, lineage: "secret", notBefore: 0, notAfter: 90 * day, rejectedVersion: nil, now: 0, files: files)
        }
        XCTAssertEqual(expectation()?.expectedAt, 60 * day, "no file: cert-manager's default")
        XCTAssertEqual(expectation()?.problem, "\(file): no such file: the downward API volume that should carry the pod's annotations is not mounted there")
        try "app=\"web\"\ncert-manager.io/renew-before=\"360h\"\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(expectation()?.expectedAt, 75 * day)
        XCTAssertEqual(expectation()?.basis, .certManagerAnnotation(file: file, setting: "cert-manager.io/renew-before=360h"))
        XCTAssertEqual(expectation()?.basis.agent, "cert-manager")
        XCTAssertNil(expectation()?.problem)
        try "cert-manager.io/renew-before=\"240h\"\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(expectation()?.expectedAt, 80 * day, "an edit counts at the next look")
        try "app=\"web\"\n".write(toFile: file, atomically: true, encoding: .utf8)
        XCTAssertEqual(expectation()?.basis, .certManagerDefault, "no setting: the default")
        XCTAssertNil(expectation()?.problem)
    }

    func testMonitorWarnsOnceADayWhileOverdueAndNotesTheRenewal() {
        let overdue = RenewalPolicy.expectation(basis: .certManagerDefault, renewBefore: 30 * day, disabled: false, problem: nil,
                                                notBefore: 0, notAfter: 90 * day, policy: RenewalPolicy(), now: 63 * day)
        var monitor = RenewalMonitor()
        XCTAssertEqual(monitor.evaluate([("a", "01", overdue)], now: 63 * day).map(\.level), [.warning])
        XCTAssertEqual(monitor.evaluate([("a", "01", overdue)], now: 63 * day + 3600).count, 0, "not once per check")
        XCTAssertEqual(monitor.evaluate([("a", "01", overdue)], now: 64 * day).map(\.level), [.warning], "again a day later")
        let renewed = RenewalPolicy.expectation(basis: .certManagerDefault, renewBefore: 30 * day, disabled: false, problem: nil,
                                                notBefore: 64 * day, notAfter: 154 * day, policy: RenewalPolicy(), now: 64 * day)
        let cleared = monitor.evaluate([("a", "02", renewed)], now: 64 * day)
        XCTAssertEqual(cleared.map(\.message), ["a renewed (serial 02); renewal back on schedule"])
        XCTAssertEqual(monitor.evaluate([("a", "02", renewed), ("b", "03", nil)], now: 65 * day).count, 0)
        // A problem with the agent's settings is logged once per lineage and problem.
        var broken = renewed
        broken.problem = "renewal/a.conf: no such file"
        XCTAssertEqual(monitor.evaluate([("a", "02", broken)], now: 65 * day).map(\.message), ["renewal of a: renewal/a.conf: no such file"])
        XCTAssertEqual(monitor.evaluate([("a", "02", broken)], now: 66 * day).count, 0)
        // Overdue, then autorenew turned off: said so, not "renewed".
        _ = monitor.evaluate([("a", "02", overdue)], now: 67 * day)
        var disabled = overdue
        disabled.state = .disabled
        XCTAssertEqual(monitor.evaluate([("a", "02", disabled)], now: 67 * day).map(\.message), ["a no longer overdue (renewal disabled)"])
    }
}

/// The watchdog's configuration: refused where certbot's own file decides, and what the
/// plan gives the status views.
final class RenewalConfigTests: XCTestCase {
    func testRenewBeforeIsRefusedOnACertbotSourceAndKeyedByTheResolvedSource() throws {
        let base = "listeners: []\nroutes: []\n"
        XCTAssertThrowsError(try GatewayConfig.parse(yaml: base + "certificates: { sources: [ { certbot: /etc/letsencrypt, renew_before: 30d } ] }\n")) { error in
            XCTAssertTrue("\(error)".hasPrefix("certificates.sources[0].renew_before: not for a certbot source"), "\(error)")
        }
        XCTAssertThrowsError(try GatewayConfig.parse(yaml: base + "expiry: { renewal_grace_lifetime: 2 }\n")) { error in
            XCTAssertTrue("\(error)".hasPrefix("expiry.renewal_grace_lifetime: a fraction of the lifetime"), "\(error)")
        }
        XCTAssertNoThrow(try GatewayConfig.parse(yaml: base + "certificates: { sources: [ { certbot: /etc/letsencrypt, renew_before: 0s } ] }\n"),
                         "0s takes a certbot source out of the watch")
        let config = try GatewayConfig.parse(yaml: base + """
            certificates: { sources: [ { kubernetes: secret, renew_before: 10d }, { directory: /etc/certs } ] }
            expiry: { renewal_grace: 12h, renewal_grace_lifetime: 0.05 }
            """)
        let policy = config.expiryPolicy(base: "/etc/edge-gateway")
        XCTAssertEqual(policy.renewal.renewBefore, [.kubernetes("/etc/edge-gateway/secret"): 10 * 86_400])
        let annotated = try GatewayConfig.parse(yaml: base + "certificates: { sources: [ { kubernetes: secret, annotations_file: podinfo/annotations } ] }\n")
        XCTAssertEqual(annotated.expiryPolicy(base: "/etc/edge-gateway").renewal.annotationFiles,
                       [.kubernetes("/etc/edge-gateway/secret"): "/etc/edge-gateway/podinfo/annotations"])
        XCTAssertThrowsError(try GatewayConfig.parse(yaml: base + "certificates: { sources: [ { directory: d, annotations_file: a } ] }\n")) { error in
            XCTAssertTrue("\(error)".hasPrefix("certificates.sources[0].annotations_file: only for a kubernetes source"), "\(error)")
        }
        XCTAssertThrowsError(try GatewayConfig.parse(yaml: base + "certificates: { sources: [ { kubernetes: s, annotations_file: a, renew_before: 1d } ] }\n")) { error in
            XCTAssertTrue("\(error)".hasPrefix("certificates.sources[0].annotations_file: set together with renew_before"), "\(error)")
        }
        XCTAssertEqual(policy.renewal.grace(lifetime: 90 * 86_400, untilExpiry: 30 * 86_400), 12 * 3600)
        XCTAssertEqual(policy.renewal.grace(lifetime: 6 * 86_400, untilExpiry: 3 * 86_400), 12 * 3600, "the configured grace is the longest")
    }
}
