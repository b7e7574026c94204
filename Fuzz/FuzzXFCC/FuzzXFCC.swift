// libFuzzer target: the x-forwarded-client-cert value formatter (`bench/fuzz`).
import EdgeTLS

/// The input is a certificate name (a SAN, a subject) as a CA could write it.
/// Invariants: the value has no control character (nothing in a certificate can end a
/// header line); a reader of Envoy's format finds one value, not several elements, and
/// reads back the name with its control characters percent-encoded.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzXFCC(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let name = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    for quoted in [false, true] {
        let value = forwardedClientCertValue(name, alwaysQuoted: quoted)
        precondition(!value.utf8.contains { $0 < 0x20 || $0 == 0x7F }, "a control character in \(value.debugDescription)")
        guard let read = readValue(value) else { preconditionFailure("not one value: \(value.debugDescription) for \(name.debugDescription)") }
        var expected = ""
        for scalar in name.unicodeScalars {
            if scalar.value < 0x20 || scalar.value == 0x7F {
                expected += scalar.value < 0x10 ? "%0" : "%"
                expected += String(scalar.value, radix: 16, uppercase: true)
            } else {
                expected.unicodeScalars.append(scalar)
            }
        }
        precondition(read == expected, "read back \(read.debugDescription), expected \(expected.debugDescription)")
    }
    return 0
}

/// One value of Envoy's format: quoted (with `\` escapes) or bare (with no `,;="`);
/// nil when the text is not exactly one value.
func readValue(_ text: String) -> String? {
    var scalars = Array(text.unicodeScalars)
    guard scalars.first == "\"" else {
        return scalars.contains { ",;=\"".unicodeScalars.contains($0) } ? nil : text
    }
    guard scalars.count >= 2, scalars.last == "\"" else { return nil }
    scalars = Array(scalars.dropFirst().dropLast())
    var out = String.UnicodeScalarView()
    var escaped = false
    for scalar in scalars {
        if escaped {
            out.append(scalar)
            escaped = false
        } else if scalar == "\\" {
            escaped = true
        } else if scalar == "\"" {
            return nil  // the quoted value ended early: a second value follows
        } else {
            out.append(scalar)
        }
    }
    return escaped ? nil : String(out)
}
