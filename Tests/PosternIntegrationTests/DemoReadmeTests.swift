import Foundation
import PosternTestSupport
import XCTest

/// The README's demo, as written: the shipped `policies/postern.yaml` (ports moved to free ones), slapd with
/// the demo directory, `postern sink` as demo.sh starts it, the real `postern serve`, and every swaks command
/// of the README's demo block must print the reply line the README shows under it, and `postern explain` with
/// the same configuration must give the same reply at the same stage.
final class DemoReadmeTests: XCTestCase {
    struct Step {
        var command: String
        var expected: [String]
    }

    /// The swaks commands of the README's demo block and the reply lines shown under each.
    static func readmeSteps() throws -> [Step] {
        let readme = try String(contentsOf: Repo.root.appendingPathComponent("README.md"), encoding: .utf8)
        guard let start = readme.range(of: "From a second terminal:\n\n```sh\n"),
              let end = readme.range(of: "```", range: start.upperBound..<readme.endIndex) else { throw HarnessError("no demo block in README.md") }
        var steps: [Step] = []
        var pending = ""
        for line in readme[start.upperBound..<end.lowerBound].split(separator: "\n", omittingEmptySubsequences: false) {
            if !pending.isEmpty || line.hasPrefix("swaks ") || line.hasPrefix("postern ") {
                pending += line.hasSuffix("\\") ? line.dropLast() + " " : line
                if !line.hasSuffix("\\") {
                    steps.append(Step(command: pending, expected: []))
                    pending = ""
                }
            } else if line.hasPrefix("#   <"), !steps.isEmpty {
                // `#   <** 554 5.7.1 ...   (comment)`: the swaks line, without the comment; `...` stands for what varies.
                var text = String(line.dropFirst(4))
                if let comment = text.range(of: #" {2,}\(.*$"#, options: .regularExpression) { text.removeSubrange(comment) }
                if text.hasSuffix(" ...") { text.removeLast(3) }
                steps[steps.count - 1].expected.append(text)
            } else if line.hasPrefix("#>  "), !steps.isEmpty {
                // `#>  output line`: a line of the command's output; `...` stands for what varies.
                var text = String(line.dropFirst(4))
                if text.hasSuffix(" ...") { text.removeLast(3) }
                steps[steps.count - 1].expected.append(text)
            }
        }
        return steps
    }

    /// `postern explain` arguments for a README swaks command: the listener its port serves, the client it
    /// connects from, the envelope, the login, and a message with the header From swaks would send.
    static func explainArguments(_ swaks: String, in directory: URL) throws -> [String] {
        let words = try shellWords(swaks)
        func value(_ option: String) -> String? { words.firstIndex(of: option).flatMap { $0 + 1 < words.count ? words[$0 + 1] : nil } }
        guard let server = value("--server"), let from = value("--from"), let to = value("--to") else {
            throw HarnessError("cannot read \(swaks)")
        }
        let listener = server.hasSuffix(":2525") ? "device" : server.hasSuffix(":2465") ? "submissions" : "submission"
        var arguments = ["--listener", listener, "--client", value("--local-interface") ?? "127.0.0.1", "--from", from, "--rcpt", to]
        if let login = value("--auth-user") { arguments += ["--login", login] }
        if listener == "submission" && !words.contains("--tls") { arguments.append("--no-tls") }
        let header = value("--header") ?? "From: \(from)"
        let message = directory.appendingPathComponent("explain-\(UUID().uuidString.prefix(8)).eml")
        try "\(header)\nTo: \(to)\nSubject: test\n\nThis is a test mailing\n".write(to: message, atomically: true, encoding: .utf8)
        return arguments + ["--message", message.path]
    }

    /// Splits a shell command line into words: blanks separate, single and double quotes group.
    static func shellWords(_ line: String) throws -> [String] {
        var words: [String] = []
        var word: String?
        var quote: Character?
        for c in line {
            if let q = quote {
                if c == q { quote = nil } else { word = (word ?? "") + String(c) }
            } else if c == "'" || c == "\"" {
                quote = c
                word = word ?? ""
            } else if c == " " {
                if let w = word { words.append(w) }
                word = nil
            } else {
                word = (word ?? "") + String(c)
            }
        }
        guard quote == nil else { throw HarnessError("unbalanced quotes in \(line)") }
        if let w = word { words.append(w) }
        return words
    }

    func testEveryDemoCommandGetsTheReplyTheReadmeShows() async throws {
        let steps = try Self.readmeSteps()
        XCTAssertGreaterThanOrEqual(steps.filter { $0.command.hasPrefix("swaks ") }.count, 7)
        XCTAssertTrue(steps.allSatisfy { !$0.expected.isEmpty }, "\(steps)")

        try Repo.ensureCertificates()
        let slapd = try TestSlapd(certificateDirectory: Repo.certs.path)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-demo-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for name in ["policy.yaml", "departments.yaml", "devices.d"] {
            try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent(name), to: directory.appendingPathComponent(name))
        }
        let ports = (device: freeLoopbackPort(), submission: freeLoopbackPort(), submissions: freeLoopbackPort(), sink: freeLoopbackPort(),
                     admin: freeLoopbackPort(), web: freeLoopbackPort())
        var config = try String(contentsOf: Repo.policies.appendingPathComponent("postern.yaml"), encoding: .utf8)
        for (from, to) in [("127.0.0.1:2525", "127.0.0.1:\(ports.device)"), ("127.0.0.1:2587", "127.0.0.1:\(ports.submission)"),
                           ("127.0.0.1:2465", "127.0.0.1:\(ports.submissions)"), ("127.0.0.1:9025", "127.0.0.1:\(ports.admin)"),
                           ("127.0.0.1:8443", "127.0.0.1:\(ports.web)"), ("port: 2526", "port: \(ports.sink)"),
                           ("ldaps://127.0.0.1:3636", slapd.ldapsURI), ("../certs/", Repo.certs.path + "/"), ("../var/", directory.path + "/var/")] {
            XCTAssertTrue(config.contains(from), "policies/postern.yaml no longer has \(from)")
            config = config.replacingOccurrences(of: from, with: to)
        }
        let configFile = directory.appendingPathComponent("postern.yaml")
        try config.write(to: configFile, atomically: true, encoding: .utf8)
        let outbox = directory.appendingPathComponent("var/outbox")
        try FileManager.default.createDirectory(at: outbox, withIntermediateDirectories: true)
        setenv("POSTERN_LDAP_PASSWORD", slapd.bindPassword, 1)

        // As scripts/demo.sh starts them.
        let binary = Repo.posternBinary.path
        let certs = Repo.certs.path
        let sinkLog = directory.appendingPathComponent("sink.log").path, serveLog = directory.appendingPathComponent("serve.log").path
        let sink = try spawnProcess([binary, "sink", "--listen", "127.0.0.1:\(ports.sink)", "--tls", "starttls", "--cert", "\(certs)/server.pem",
                                     "--key", "\(certs)/server.key", "--ca", "\(certs)/ca.pem", "--outbox", outbox.path, "--hostname", "sink.localhost"],
                                    output: sinkLog)
        let serve = try spawnProcess([binary, "serve", "--config", configFile.path], output: serveLog)
        defer {
            kill(serve, SIGTERM)
            _ = waitForExit(serve)
            kill(sink, SIGTERM)
            _ = waitForExit(sink)
        }
        func logs() -> String {
            ((try? String(contentsOfFile: serveLog, encoding: .utf8)) ?? "") + ((try? String(contentsOfFile: sinkLog, encoding: .utf8)) ?? "")
        }
        var up = false
        for _ in 0..<150 where !up {
            up = (try? Shell.run(["swaks", "--server", "127.0.0.1:\(ports.submission)", "--quit-after", "CONNECT"], timeout: 5))?.output
                .contains("220 localhost ESMTP Postern") == true
            if !up { try await Task.sleep(for: .milliseconds(200)) }
        }
        XCTAssertTrue(up, logs())
        guard up else { return }

        for step in steps where step.command.hasPrefix("postern ") {
            XCTAssertTrue(step.command.hasPrefix("postern explain ") || step.command.hasPrefix("postern queue list "),
                          "a postern command in the demo block this test does not know how to run: \(step.command)")
        }
        for step in steps {
            if step.command.hasPrefix("postern ") {
                // As a postmaster types it, with the binary and the demo configuration of this test.
                let command = binary + step.command.dropFirst("postern".count)
                    .replacingOccurrences(of: "var/demo/postern.yaml", with: configFile.path)
                var output = ""
                // `queue list` right after the last swaks: the relay delivers within moments, as the README says.
                for _ in 0..<(step.command.contains("queue list") ? 50 : 1) {
                    output = try Shell.run(["/bin/bash", "-c", command], timeout: 60).output
                    if step.expected.allSatisfy(output.contains) { break }
                    try await Task.sleep(for: .milliseconds(200))
                }
                for line in step.expected {
                    XCTAssertTrue(output.contains(line), "README: \(step.command)\nexpected: \(line)\ngot:\n\(output)")
                }
                continue
            }
            var command = step.command
            for (from, to) in [("127.0.0.1:2525", ports.device), ("127.0.0.1:2587", ports.submission), ("127.0.0.1:2465", ports.submissions)] {
                command = command.replacingOccurrences(of: from, with: "127.0.0.1:\(to)")
            }
            let output = try Shell.run(["/bin/bash", "-c", command], timeout: 60).output
            for line in step.expected {
                XCTAssertTrue(output.contains(line), "README: \(step.command)\nexpected: \(line)\ngot:\n\(output)")
            }
            // `postern explain` with the same configuration gives the gateway's answer, at the same stage.
            let explained = try Shell.run([binary, "explain", "--config", configFile.path] + (try Self.explainArguments(step.command, in: directory)),
                                          timeout: 60)
            XCTAssertEqual(explained.status, 0, explained.output)
            let replyLine = explained.output.split(separator: "\n").first { $0.hasPrefix("reply:     ") }.map { String($0.dropFirst(11)) }
            if let refusal = step.expected.last(where: { $0.hasPrefix("<**") || $0.hasPrefix("<~*") }) {
                XCTAssertEqual(replyLine, String(refusal.dropFirst(4)), "explain disagrees with the gateway on: \(step.command)\n\(explained.output)")
            } else {
                XCTAssertNil(replyLine, "explain refuses what the gateway accepted: \(step.command)\n\(explained.output)")
                XCTAssertTrue(explained.output.contains("decision:  accept\n"), explained.output)
            }
        }
        // "the message is now in var/outbox/": the device's message went through the spool and the mTLS relay.
        var delivered: [String] = []
        for _ in 0..<100 where delivered.isEmpty {
            delivered = ((try? FileManager.default.contentsOfDirectory(atPath: outbox.path)) ?? []).filter { $0.hasSuffix(".eml") }
            if delivered.isEmpty { try await Task.sleep(for: .milliseconds(100)) }
        }
        XCTAssertFalse(delivered.isEmpty, logs())
        let queue = try Shell.run([binary, "queue", "list", "--spool", directory.appendingPathComponent("var/spool").path])
        XCTAssertEqual(queue.status, 0, queue.output)
    }
}
