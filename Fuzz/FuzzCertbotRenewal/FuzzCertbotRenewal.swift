// libFuzzer target: the renewal watchdog's readers (`bench/fuzz`): certbot's renewal file
// and its interval parser, and a pod's downward API annotations with Go's durations.
import EdgeCertificates

/// The input is a renewal file as found on disk (certbot's, or edited by hand).
/// Invariants: a setting that is present always has a value in seconds, within a century
/// either way, and a value certbot cannot read comes with a problem; what is shown of the
/// file is short and free of control characters; the value read from the file is the
/// interval of the text kept unless it was refused; the default for any lifetime lies
/// within it; reading is deterministic.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCertbotRenewal(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let config = CertbotRenewalConfig(parsing: text)
    precondition(config == CertbotRenewalConfig(parsing: text), "not deterministic")
    let longest = CertbotRenewalConfig.longestInterval
    for shown in [config.renewBeforeText, config.version].compactMap({ $0 }) {
        precondition(shown.count <= 103 && !shown.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "shown: \(shown.debugDescription)")
    }
    if let value = config.renewBeforeText {
        let seconds = config.renewBeforeSeconds ?? .max
        precondition(seconds >= -longest && seconds <= longest, "\(seconds) for \(value.debugDescription)")
        if seconds <= 0, value.count <= 100 { precondition(config.problem != nil || CertbotRenewalConfig.interval(value) == 0, "0 without a problem: \(value.debugDescription)") }
    } else {
        precondition(config.renewBeforeSeconds == nil)
    }
    // The whole input as one value too: the interval parser alone.
    if let seconds = CertbotRenewalConfig.interval(text) {
        precondition(seconds >= -longest && seconds <= longest, "\(seconds) for \(text.debugDescription)")
    }
    for lifetime: Int64 in [1, 6 * 86_400, 90 * 86_400] {
        let renewBefore = config.defaultRenewBefore(lifetime: lifetime)
        precondition(renewBefore >= 0 && renewBefore <= max(lifetime, 30 * 86_400))
    }
    // The same input as the downward API's annotations file: cert-manager's rule always
    // lands within the lifetime, and what it names is short and printable.
    let annotations = PodAnnotations(parsing: text)
    precondition(annotations == PodAnnotations(parsing: text), "not deterministic")
    for lifetime: Int64 in [1, 6 * 86_400, 90 * 86_400] {
        let rule = annotations.renewBefore(lifetime: lifetime)
        precondition(rule.seconds >= 0 && rule.seconds <= lifetime, "\(rule) for a lifetime of \(lifetime)")
        for shown in [rule.setting, rule.problem].compactMap({ $0 }) {
            precondition(shown.count <= 200 && !shown.unicodeScalars.contains { $0.value < 0x20 || $0.value == 0x7F }, "shown: \(shown.debugDescription)")
        }
    }
    if let seconds = PodAnnotations.goDuration(text) {
        precondition(seconds >= -PodAnnotations.longest - 1 && seconds <= PodAnnotations.longest + 1, "\(seconds) for \(text.debugDescription)")
    }
    return 0
}
