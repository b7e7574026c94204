import EdgeTestSupport
import Foundation
import XCTest

/// Every command the docs show is run by something CI runs (#30): doc snippets drift, and a
/// newcomer copies them verbatim.
///
/// A command counts when it is a line of a `sh`/`bash`/`console` block (continuation lines
/// joined, `# comments` dropped) or an inline code span that starts with a command we ship
/// or depend on. The place that runs it carries a marker comment, `doc-command: ` and the
/// command exactly as the doc shows it, next to the line that runs it (a test, `.ci/run`, a
/// script CI runs, `bench/smoke`). This test fails on a documented command without a
/// marker and on a marker whose command no doc shows any more, so neither side can drift
/// alone. What a doc leaves to the reader (a file, a directory, a server, a size) is filled
/// in where the marker says so (a benchmark at smoke size, certbot against pebble); the
/// command and the options the doc shows are kept.
final class DocCommandsTests: XCTestCase {
    /// The pages a newcomer reads. docs/benchmarks-history.md is left out: it records the
    /// commands of runs made in the past, as they were then.
    static let pages = ["README.md", "BENCHMARKS.md", "docs/certificates.md", "docs/configuration.md", "docs/design.md",
                        "docs/monitoring.md", "docs/operations.md", "docs/proxying.md", "docs/testing.md"]
    /// An inline code span is a command when it starts with one of these and has an argument.
    static let commandWords: Set<String> = ["bash", "python3", "curl", "edge-gateway", "openssl", "certbot", "systemctl", "apt-get",
                                            "apt", "dpkg", "dpkg-deb", "swift", "promtool", "h2load", "wrk", "nghttp", "kubectl",
                                            "docker", "journalctl", "kill", "sudo", "setcap", "ulimit"]
    static let marker = "doc-" + "command: "  // split, so that this file holds no marker itself

    func testEveryDocumentedCommandIsRunByCI() throws {
        let root = repositoryRoot()
        var documented: [String: [String]] = [:]  // command -> where the docs show it
        for page in Self.pages {
            let text = try String(contentsOfFile: root + "/" + page, encoding: .utf8)
            for (command, line) in Self.commands(inMarkdown: text) {
                documented[command, default: []].append("\(page):\(line)")
            }
        }
        XCTAssertGreaterThan(documented.count, 20, "the extraction found too few commands to be right")
        XCTAssertNotNil(documented["bash scripts/test.sh"], "the README's test command was not found")

        var markers: [String: [String]] = [:]  // command -> where it is run
        for file in try Self.runnerFiles(root: root) {
            let text = try String(contentsOfFile: root + "/" + file, encoding: .utf8)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                guard let range = line.range(of: Self.marker) else { continue }
                let command = line[range.upperBound...].trimmingCharacters(in: .whitespaces)
                markers[command, default: []].append("\(file):\(number + 1)")
            }
        }
        let unrun = documented.keys.filter { markers[$0] == nil }.sorted()
        XCTAssertEqual(unrun, [], "documented commands that nothing CI runs marks as run (add `\(Self.marker)<command>` where it runs):\n"
            + unrun.map { "  \($0)   (\(documented[$0]!.joined(separator: ", ")))" }.joined(separator: "\n"))
        let stale = markers.keys.filter { documented[$0] == nil }.sorted()
        XCTAssertEqual(stale, [], "markers for commands that no doc shows:\n"
            + stale.map { "  \($0)   (\(markers[$0]!.joined(separator: ", ")))" }.joined(separator: "\n"))
        // bench/smoke holds the benchmarks' markers: it must be something CI runs.
        let ci = try String(contentsOfFile: root + "/.ci/run", encoding: .utf8)
        XCTAssertTrue(ci.contains("bench/smoke"), ".ci/run does not run bench/smoke")
    }

    /// The extraction itself, on a page made for it.
    func testCommandsAreReadFromBlocksAndInlineSpans() {
        let page = """
            Run `bash scripts/demo.sh stop` or `edge-gateway` (a name, not a command) or `foo bar`.
            ```sh
            # a comment line
            edge-gateway check -c /etc/x.yaml   # trailing comment
            certbot certonly -d a \\
              --deploy-hook /h.sh

            ```
            ```yaml
            bash: not a command
            ```
            ```
            edge-gateway run -c FILE
            ```
            """
        let found = Self.commands(inMarkdown: page)
        XCTAssertEqual(found.map(\.command), ["bash scripts/demo.sh stop", "edge-gateway check -c /etc/x.yaml",
                                              "certbot certonly -d a --deploy-hook /h.sh"])
        XCTAssertEqual(found.map(\.line), [1, 4, 5])
    }

    /// Commands in a Markdown page with the line each starts on.
    static func commands(inMarkdown text: String) -> [(command: String, line: Int)] {
        var found: [(command: String, line: Int)] = []
        var fence: String?  // the open block's language, "" when it has none
        var pending: (text: String, line: Int)?
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("```") {
                fence = fence == nil ? String(line.dropFirst(3)).trimmingCharacters(in: .whitespaces) : nil
                continue
            }
            if let language = fence {
                guard ["sh", "bash", "shell", "console"].contains(language) else { continue }
                var command = line.hasPrefix("$ ") ? String(line.dropFirst(2)) : line
                if let comment = command.range(of: " #") { command = String(command[..<comment.lowerBound]) }
                command = command.trimmingCharacters(in: .whitespaces)
                if command.isEmpty || command.hasPrefix("#") { continue }
                let continued = command.hasSuffix("\\")
                if continued { command = String(command.dropLast()).trimmingCharacters(in: .whitespaces) }
                let start = pending?.line ?? index + 1
                let joined = pending.map { $0.text + " " + command } ?? command
                if continued {
                    pending = (joined, start)
                } else {
                    pending = nil
                    found.append((joined, start))
                }
                continue
            }
            for span in inlineCode(line) {
                let words = span.split(separator: " ")
                if words.count >= 2, commandWords.contains(String(words[0])) { found.append((span, index + 1)) }
            }
        }
        return found
    }

    /// The contents of the inline code spans of one line (single backticks).
    static func inlineCode(_ line: String) -> [String] {
        let parts = line.split(separator: "`", omittingEmptySubsequences: false)
        return stride(from: 1, to: parts.count - 1, by: 2).map { parts[$0].replacingOccurrences(of: "\\|", with: "|") }
    }

    /// The files CI runs: `.ci/run`, the scripts it and the README's test command run, the
    /// smoke runs of the benchmarks, and the tests with their helper programs.
    static func runnerFiles(root: String) throws -> [String] {
        var files = [".ci/run", "scripts/test.sh", "scripts/sanitizers.sh", "scripts/tls-compliance.sh", "scripts/install-deps.sh", "bench/smoke"]
        let tests = FileManager.default.enumerator(atPath: root + "/Tests")
        while let path = tests?.nextObject() as? String {
            if path.hasSuffix(".swift") || path.hasSuffix(".py") { files.append("Tests/" + path) }
        }
        // This file names the marker in its comments without running anything.
        return files.filter { FileManager.default.fileExists(atPath: root + "/" + $0) && !$0.hasSuffix("/DocCommandsTests.swift") }
    }
}
