// libFuzzer target: the OCSP response check (`bench/fuzz`), OpenSSL's DER decoding and
// signature, CertID and time checks under our wrapper.
import EdgeTLS

// A CA and a leaf it issued (certificates only; the keys were thrown away). The seed
// corpus holds the CA's good response for the leaf, valid until 2126.
private let issuer = try! PEMBundle.parse(Array("""
-----BEGIN CERTIFICATE-----
MIIBdTCCARqgAwIBAgIUFTYjh2loFPaoOPF44o1oAgnKTFAwCgYIKoZIzj0EAwIw
FzEVMBMGA1UEAwwMRnV6ei1PQ1NQLUNBMCAXDTI2MTIwNzA2NDk0MloYDzIxMjYx
MTEzMDY0OTQyWjAXMRUwEwYDVQQDDAxGdXp6LU9DU1AtQ0EwWTATBgcqhkjOPQIB
BggqhkjOPQMBBwNCAARgPgu12M44FDcorAJzkij5bDAyahb/cyrxDxwrel79/i92
bsHzAcDFmd64ly10TD1pE1c3Um8BphsH1lrvOKTDo0IwQDAPBgNVHRMBAf8EBTAD
AQH/MA4GA1UdDwEB/wQEAwIBhjAdBgNVHQ4EFgQUg8qPwfLnaL0GB5DTfnv7G926
LsEwCgYIKoZIzj0EAwIDSQAwRgIhAOSCPVmDcVqv8oU82Dj9Wv1lUk+Q/++HWRG3
8vb/aRoXAiEA/cU767JHog1SOenydieqNkOnm8YVOOGgeK6tUUG/XEM=
-----END CERTIFICATE-----
""".utf8)).certificates[0]
private let leaf = try! PEMBundle.parse(Array("""
-----BEGIN CERTIFICATE-----
MIIB7zCCAZSgAwIBAgICEAAwCgYIKoZIzj0EAwIwFzEVMBMGA1UEAwwMRnV6ei1P
Q1NQLUNBMCAXDTI2MTIwNzA2NDk0MloYDzIxMjYxMTEzMDY0OTQyWjAUMRIwEAYD
VQQDDAlmdXp6LnRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAASYXFyBeW8x
UTpQSl9nQFZrF7NKzfnUXqUi7IBuoZXXC3N5liO3XaSZ7eSY82twN9eYhqS8MrT2
qVV4Pwfv1DoBo4HQMIHNMAkGA1UdEwQCMAAwDgYDVR0PAQH/BAQDAgeAMBMGA1Ud
JQQMMAoGCCsGAQUFBwMBMBQGA1UdEQQNMAuCCW9jc3AudGVzdDAyBggrBgEFBQcB
AQQmMCQwIgYIKwYBBQUHMAGGFmh0dHA6Ly8xMjcuMC4wLjE6MTg4ODgwEQYIKwYB
BQUHARgEBTADAgEFMB0GA1UdDgQWBBQA7yVkGqHFgh3rK/4oT30Az9XWBTAfBgNV
HSMEGDAWgBSDyo/B8udovQYHkNN+e/sb3bouwTAKBggqhkjOPQQDAgNJADBGAiEA
qupPnixg7ZDpioQDF9hNTIEnVXrFrgVzEFBxXeg5Sc8CIQCsv/76+vka/l39SKJN
2zOzNqVSi/ZgLl/uDFHh3L8gKQ==
-----END CERTIFICATE-----
""".utf8)).certificates[0]

/// The input is a responder's answer. Invariants: a response that verifies is returned
/// byte for byte (what is stapled is what was checked), with nothing after it, is current
/// at the time given, and verifying is deterministic.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzOCSPResponse(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    let now: Int64 = 1_800_000_000
    guard let response = try? OCSPCheck.verify(bytes, leaf: leaf, issuer: issuer, now: now) else { return 0 }
    precondition(response.der == bytes, "stapled bytes differ from the verified ones")
    // Nothing may follow the response: it would be stapled with it.
    precondition((try? OCSPCheck.verify(bytes + [0], leaf: leaf, issuer: issuer, now: now)) == nil, "trailing bytes accepted")
    precondition(response.nextUpdate.map { $0 > now } ?? true, "a response past its next update verified")
    precondition((try? OCSPCheck.verify(bytes, leaf: leaf, issuer: issuer, now: now))?.status == response.status, "not deterministic")
    return 0
}
