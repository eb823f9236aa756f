import Foundation
import XCTest

/// The README's policy-tool examples, as written: the block introduced by "For example, with the README's demo
/// policies" is run line by line, in order, with the real binary in a scratch directory holding a copy of
/// `policies/`, and each `#>` line must appear in the command's output (`...` stands for any text on the line).
/// The demo block (swaks against the running gateway) is DemoReadmeTests'.
final class ReadmeExamplesTests: XCTestCase {
    struct Example {
        var command: String
        var expected: [String]
    }

    /// The `postern` commands of the ```sh block after `marker`, with the `#>` lines under each.
    static func examples(after marker: String) throws -> [Example] {
        let readme = try String(contentsOf: Repo.root.appendingPathComponent("README.md"), encoding: .utf8)
        guard let intro = readme.range(of: marker), let start = readme.range(of: "```sh\n", range: intro.upperBound..<readme.endIndex),
              let end = readme.range(of: "```", range: start.upperBound..<readme.endIndex) else { throw HarnessError("no block after '\(marker)' in README.md") }
        var examples: [Example] = []
        var pending = ""
        for line in readme[start.upperBound..<end.lowerBound].split(separator: "\n") {
            if line.hasPrefix("#>  ") {
                guard !examples.isEmpty else { throw HarnessError("output before any command: \(line)") }
                examples[examples.count - 1].expected.append(String(line.dropFirst(4)))
            } else if !pending.isEmpty || line.hasPrefix("postern ") {
                pending += line.hasSuffix("\\") ? line.dropLast() + " " : line
                if !line.hasSuffix("\\") {
                    examples.append(Example(command: pending, expected: []))
                    pending = ""
                }
            } else if !line.hasPrefix("#") {
                throw HarnessError("a line of the examples block that is neither a postern command nor a comment: \(line)")
            }
        }
        return examples
    }

    /// Whether `output` has a line matching `pattern`, where `...` stands for any text.
    static func output(_ output: String, hasLine pattern: String) -> Bool {
        let parts = pattern.components(separatedBy: "...").map(NSRegularExpression.escapedPattern(for:))
        guard let regex = try? NSRegularExpression(pattern: "^" + parts.joined(separator: ".*") + "$", options: [.anchorsMatchLines]) else { return false }
        return regex.firstMatch(in: output, range: NSRange(output.startIndex..., in: output)) != nil
    }

    func testThePolicyToolExamplesPrintWhatTheReadmeShows() throws {
        let examples = try Self.examples(after: "For example, with the README's demo policies")
        XCTAssertGreaterThanOrEqual(examples.count, 6)
        XCTAssertTrue(examples.allSatisfy { !$0.expected.isEmpty }, "every example shows its output: \(examples)")
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-readme-\(UUID().uuidString.prefix(8))")
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for name in ["policy.yaml", "departments.yaml", "devices.d"] {
            try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent(name), to: policies.appendingPathComponent(name))
        }
        for example in examples {
            let command = "cd '\(directory.path)' && '\(Repo.posternBinary.path)'" + example.command.dropFirst("postern".count)
            let result = try Shell.run(["/bin/bash", "-c", command], timeout: 60)
            for line in example.expected {
                XCTAssertTrue(Self.output(result.output, hasLine: line), "README: \(example.command)\nexpected: \(line)\ngot:\n\(result.output)")
            }
        }
        // The block's add and revoke happened in the copy: the device is there, revoked.
        let file = try String(contentsOf: policies.appendingPathComponent("devices.d/chem/chem-scanner-3.yaml"), encoding: .utf8)
        XCTAssertTrue(file.contains("revoke-reason: replaced by a TLS-capable scanner"), file)
    }

    func testThePatternMatchesWholeLinesOnly() {
        XCTAssertTrue(Self.output("a\nreply: 550 x y\n", hasLine: "reply: 550 ..."))
        XCTAssertTrue(Self.output("added x: registered 2026-12-02, sunset 2027-03-31\n", hasLine: "added x: registered ..., sunset 2027-03-31"))
        XCTAssertFalse(Self.output("added x: registered 2026-12-02, sunset 2027-04-30\n", hasLine: "added x: registered ..., sunset 2027-03-31"))
        XCTAssertFalse(Self.output("xreply: 550\n", hasLine: "reply: 550"))
        XCTAssertFalse(Self.output("reply: 550 (a.b)\n", hasLine: "reply: 550 (a-b)"))
    }
}
