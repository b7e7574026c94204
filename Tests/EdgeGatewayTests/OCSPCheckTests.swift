import EdgeTLS
import EdgeTestSupport
import Foundation
import XCTest

/// `OCSPCheck.verify` against responses `openssl ocsp` makes offline from a CA's index:
/// who may sign one, for which certificate, and in what bytes.
final class OCSPCheckTests: XCTestCase {
    func testOnlyTheIssuerOrADelegateWithOCSPSigningIsTrustedForTheRightCertificate() throws {
        let dir = TemporaryDirectory()
        let ca = try OCSPStaplingTests.ResponderCA(in: dir)
        let leafFile = try ca.issue("a.test", name: "a", into: dir.path)
        let otherFile = try ca.issue("b.test", name: "b", into: dir.path)
        try dir.write("delegate.ext", "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\nextendedKeyUsage = OCSPSigning\n")
        try dir.write("plain.ext", "basicConstraints = CA:FALSE\nkeyUsage = critical,digitalSignature\n")
        for name in ["delegate", "plain"] {
            try run("openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout \(name).key -out \(name).csr -subj /CN=\(name) "
                    + "&& openssl x509 -req -in \(name).csr -CA '\(ca.certificate)' -CAkey '\(ca.key)' -CAcreateserial -days 2 -extfile \(name).ext -out \(name).pem",
                    in: dir)
        }
        try run("openssl ocsp -issuer '\(ca.certificate)' -cert '\(leafFile)' -no_nonce -reqout request.der", in: dir)
        func respond(_ signer: String, _ key: String, out: String) throws -> [UInt8] {
            try run("openssl ocsp -index '\(ca.dir)/index.txt' -rsigner '\(signer)' -rkey '\(key)' -CA '\(ca.certificate)' -reqin request.der -respout \(out) -nmin 60",
                    in: dir)
            return Array(try Data(contentsOf: URL(fileURLWithPath: dir.file(out))))
        }
        let issuer = try certificate(ca.certificate), leaf = try certificate(leafFile), other = try certificate(otherFile)
        let now = Int64(Date().timeIntervalSince1970)

        let direct = try respond(ca.certificate, ca.key, out: "direct.der")
        let verified = try OCSPCheck.verify(direct, leaf: leaf, issuer: issuer, now: now)
        XCTAssertEqual(verified.status, .good)
        XCTAssertEqual(verified.der, direct)
        XCTAssertEqual((verified.nextUpdate ?? 0) - verified.thisUpdate, 3600)
        XCTAssertTrue(verified.staplable(now: now))
        XCTAssertFalse(verified.staplable(now: verified.nextUpdate!), "never at or past its next update")
        XCTAssertThrowsError(try OCSPCheck.verify(direct, leaf: leaf, issuer: issuer, now: verified.nextUpdate!), "past its next update")

        let delegated = try respond(dir.file("delegate.pem"), dir.file("delegate.key"), out: "delegated.der")
        XCTAssertEqual(try OCSPCheck.verify(delegated, leaf: leaf, issuer: issuer, now: now).status, .good, "a delegate with OCSPSigning")
        let undelegated = try respond(dir.file("plain.pem"), dir.file("plain.key"), out: "plain.der")
        XCTAssertThrowsError(try OCSPCheck.verify(undelegated, leaf: leaf, issuer: issuer, now: now), "a certificate of the CA without OCSPSigning") {
            XCTAssertTrue("\($0)".contains("not signed by the issuer or a responder it delegated to"), "\($0)")
        }
        XCTAssertThrowsError(try OCSPCheck.verify(direct, leaf: other, issuer: issuer, now: now), "a response for another certificate") {
            XCTAssertTrue("\($0)".contains("does not name this certificate"), "\($0)")
        }
        XCTAssertThrowsError(try OCSPCheck.verify(direct + [0, 0], leaf: leaf, issuer: issuer, now: now), "bytes after the response") {
            XCTAssertTrue("\($0)".contains("followed by 2 bytes"), "\($0)")
        }
        XCTAssertThrowsError(try OCSPCheck.verify(Array(direct.dropLast()), leaf: leaf, issuer: issuer, now: now), "a cut response")

        // Revoked in the CA's index: verified, says so, and is stapled as it is.
        try ca.revoke(leafFile)
        let revoked = try OCSPCheck.verify(try respond(ca.certificate, ca.key, out: "revoked.der"), leaf: leaf, issuer: issuer, now: now)
        guard case .revoked(_, let reason) = revoked.status else { return XCTFail("\(revoked.status)") }
        XCTAssertEqual(reason, "keyCompromise")
        XCTAssertTrue(revoked.staplable(now: now))
        XCTAssertEqual(OCSPCheck.responderURLs(of: leaf), ["http://127.0.0.1:\(ca.responderPort)"])
        XCTAssertFalse(OCSPCheck.mustStaple(leaf))
        XCTAssertTrue(OCSPCheck.issuer(of: leaf, in: [leaf, issuer]) === issuer)
        XCTAssertNil(OCSPCheck.issuer(of: leaf, in: [leaf, other]))
    }

    private func certificate(_ path: String) throws -> X509Certificate {
        try XCTUnwrap(PEMBundle.parse(Array(try String(contentsOfFile: path, encoding: .utf8).utf8)).certificates.first)
    }

    @discardableResult
    private func run(_ command: String, in dir: TemporaryDirectory) throws -> String {
        try OCSPStaplingTests.ResponderCA.run("cd '\(dir.path)' && " + command)
    }
}
