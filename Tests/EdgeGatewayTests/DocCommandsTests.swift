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
    /// The pages a newcomer reads: the README, BENCHMARKS.md and every page in docs/ but
    /// docs/benchmarks-history.md, which records the commands of past runs as they were then.
    static func pages(root: String) throws -> [String] {
        let docs = try FileManager.default.contentsOfDirectory(atPath: root + "/docs")
            .filter { $0.hasSuffix(".md") && $0 != "benchmarks-history.md" }.sorted().map { "docs/" + $0 }
        return ["README.md", "BENCHMARKS.md"] + docs
    }
    /// An inline code span is a command when it starts (after any `NAME=value`) with one of
    /// these and has an argument.
    static let commandWords: Set<String> = ["bash", "python3", "curl", "edge-gateway", "openssl", "certbot", "systemctl", "apt-get",
                                            "apt", "dpkg", "dpkg-deb", "swift", "promtool", "h2load", "wrk", "nghttp", "kubectl",
                                            "docker", "journalctl", "kill", "sudo", "setcap", "ulimit", "ss", "systemd-analyze",
                                            "prlimit", "logrotate", "/usr/share/edge-gateway/certbot-deploy-hook.sh"]
    static let marker = "doc-" + "command: "  // split, so that this file holds no marker itself

    func testEveryDocumentedCommandIsRunByCI() throws {
        let root = repositoryRoot()
        var documented: [String: [String]] = [:]  // command -> where the docs show it
        for page in try Self.pages(root: root) {
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
        XCTAssertTrue(ci.split(separator: "\n").contains { $0.hasPrefix("bash bench/smoke") }, ".ci/run does not run bench/smoke")
    }

    /// The extraction itself, on a page made for it.
    func testCommandsAreReadFromBlocksAndInlineSpans() {
        let page = """
            Run `bash scripts/demo.sh stop` or `edge-gateway` (a name, not a command) or `foo bar`, or `EDGE=1 bash
              x.sh --flag` wrapped.

            Not `a span that never
            closes.
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
        XCTAssertEqual(found.map(\.command).sorted(), ["EDGE=1 bash x.sh --flag", "bash scripts/demo.sh stop", "certbot certonly -d a --deploy-hook /h.sh",
                                                       "edge-gateway check -c /etc/x.yaml"])
        XCTAssertEqual(found.map(\.line).sorted(), [1, 1, 8, 9])
    }

    /// Commands in a Markdown page with the line each starts on.
    static func commands(inMarkdown text: String) -> [(command: String, line: Int)] {
        var found: [(command: String, line: Int)] = []
        var fence: String?  // the open block's language, "" when it has none
        var pending: (text: String, line: Int)?
        var paragraph: [(text: String, line: Int)] = []  // prose lines since the last blank one
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("```") || line.hasPrefix("~~~") {
                fence = fence == nil ? String(line.drop { $0 == "`" || $0 == "~" }).trimmingCharacters(in: .whitespaces) : nil
                found += inlineCommands(paragraph)
                paragraph = []
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
            if line.isEmpty {
                found += inlineCommands(paragraph)
                paragraph = []
            } else {
                paragraph.append((line, index + 1))
            }
        }
        return found + inlineCommands(paragraph)
    }

    /// The commands among a paragraph's inline code spans (single backticks; a span may
    /// wrap onto the next line, and one never closed is no span), with the line each starts on.
    static func inlineCommands(_ paragraph: [(text: String, line: Int)]) -> [(command: String, line: Int)] {
        var found: [(command: String, line: Int)] = []
        var open: (text: String, line: Int)?
        func close(_ span: (text: String, line: Int)) {
            let words = span.text.replacingOccurrences(of: "\\|", with: "|").split(separator: " ")
            let command = words.drop { $0.contains("=") && !$0.hasPrefix("-") }  // after NAME=value
            if let first = command.first, words.count >= 2, commandWords.contains(String(first)) {
                found.append((words.joined(separator: " "), span.line))
            }
        }
        for (text, line) in paragraph {
            var rest = Substring(text)
            open?.text += " "  // a span wrapped at the end of the line before
            while let tick = rest.firstIndex(of: "`") {
                if let span = open {
                    close((span.text + rest[..<tick], span.line))
                    open = nil
                } else {
                    open = ("", line)
                }
                rest = rest[rest.index(after: tick)...]
            }
            open?.text += rest
        }
        return found
    }

    /// The files CI runs: `.ci/run`, the scripts it and the README's test command run, the
    /// smoke runs of the benchmarks, and the tests with their helper programs.
    static func runnerFiles(root: String) throws -> [String] {
        // The benchmark programs too: bench/smoke runs each of them.
        var files = [".ci/run", "scripts/test.sh", "scripts/sanitizers.sh", "scripts/tls-compliance.sh", "scripts/install-deps.sh", "bench/smoke", "bench/soak"]
        files += try FileManager.default.contentsOfDirectory(atPath: root + "/bench").filter { $0.hasSuffix(".py") }.map { "bench/" + $0 }
        let tests = FileManager.default.enumerator(atPath: root + "/Tests")
        while let path = tests?.nextObject() as? String {
            if path.hasSuffix(".swift") || path.hasSuffix(".py") { files.append("Tests/" + path) }
        }
        // This file names the marker in its comments without running anything.
        return files.filter { FileManager.default.fileExists(atPath: root + "/" + $0) && !$0.hasSuffix("/DocCommandsTests.swift") }
    }
}
