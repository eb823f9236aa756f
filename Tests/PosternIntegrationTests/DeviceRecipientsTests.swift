import Foundation
import XCTest

/// A device's `recipients:` rule on the real device listener (swaks and Python's smtplib), and through the real
/// binary: `devices add --recipient`, `explain` (the gateway's own session) and `check` (one validation path).
final class DeviceRecipientsTests: XCTestCase {
    var directory: URL!
    var policies: URL { directory.appendingPathComponent("policies") }

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-recipients-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        for name in ["policy.yaml", "departments.yaml", "devices.d"] {
            try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent(name), to: policies.appendingPathComponent(name))
        }
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: directory)
    }

    /// The demo scanner may send to its owner (it-helpdesk@example.edu) and to chemistry only.
    func narrowDemoScanner() throws {
        let scanner = policies.appendingPathComponent("devices.d/it/demo-scanner.yaml")
        try (String(contentsOf: scanner, encoding: .utf8) + "recipients: [owner, \"*@chem.example.edu\"]\n")
            .write(to: scanner, atomically: true, encoding: .utf8)
    }

    static let refusal = "550 5.7.1 <bob@example.edu>: device demo-scanner may send only to it-helpdesk@example.edu (owner), *@chem.example.edu (its recipients rule)"

    func testTheDeviceListenerRefusesRecipientsOutsideTheRuleAndAcceptsTheRest() async throws {
        try narrowDemoScanner()
        let harness = try await GatewayHarness.start(policies: policies)
        let port = harness.port("device")
        let refused = try Shell.run(["swaks", "--server", "127.0.0.1:\(port)", "--from", "scanner@example.edu", "--to", "bob@example.edu"])
        XCTAssertTrue(refused.output.contains("<** " + Self.refusal), refused.output)
        XCTAssertNotEqual(refused.status, 0)

        // smtplib: one transaction, three recipients; two accepted, bob refused with the rule.
        let script = """
            import smtplib, sys
            s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=20)
            refused = s.sendmail("scanner@example.edu", ["it-helpdesk@example.edu", "bob@example.edu", "carol@chem.example.edu"],
                                 "From: scanner@example.edu\\r\\nSubject: scan\\r\\n\\r\\nscan\\r\\n")
            for rcpt, (code, text) in refused.items():
                print(rcpt, code, text.decode())
            s.quit()
            """
        let result = try Shell.python(script, ["\(port)"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(result.output, "bob@example.edu " + Self.refusal + "\n")
        let files = harness.outboxFiles()
        XCTAssertEqual(files.count, 1)
        let events = try harness.auditEvents()
        XCTAssertTrue(events.contains { $0["event"] as? String == "decision" && $0["stage"] as? String == "rcpt" && $0["result"] as? String == "550 5.7.1"
                && ($0["rule"] as? String ?? "").hasPrefix("device demo-scanner: recipients it-helpdesk@example.edu (owner), *@chem.example.edu do not include bob@example.edu") },
                      "the audit log names the rule")
        let accepted = try XCTUnwrap(events.first { $0["event"] as? String == "accepted" })
        XCTAssertEqual(accepted["recipients"] as? [String], ["<it-helpdesk@example.edu>", "<carol@chem.example.edu>"])
        XCTAssertEqual(accepted["device"] as? String, "demo-scanner")
        XCTAssertEqual(accepted["external"] as? [String], [])
        await harness.stop()
    }

    func testDevicesAddExplainAndCheckGoThroughTheSameRules() throws {
        // devices add writes the rule, and refuses one outside the internal domains without writing a file.
        let add = { (id: String, address: String, rules: [String]) throws -> Shell.Result in
            try Shell.run([Repo.posternBinary.path, "devices", "add", "--policies", self.policies.path, "--id", id, "--department", "it",
                           "--owner", "it-helpdesk@example.edu", "--address", address, "--sender", "scan@example.edu", "--sunset", "2027-08-31"]
                          + rules.flatMap { ["--recipient", $0] })
        }
        let added = try add("it-scan-self", "10.77.0.1", ["owner"])
        XCTAssertEqual(added.status, 0, added.output)
        let file = policies.appendingPathComponent("devices.d/it/it-scan-self.yaml")
        XCTAssertTrue(try String(contentsOf: file, encoding: .utf8).contains("recipients: [owner]\n"))
        let outside = try add("it-scan-out", "10.77.0.2", ["*@gmail.com"])
        XCTAssertEqual(outside.status, 1, outside.output)
        XCTAssertTrue(outside.output.contains("device 'it-scan-out': recipient rule *@gmail.com is outside the internal domains"), outside.output)
        XCTAssertFalse(FileManager.default.fileExists(atPath: policies.appendingPathComponent("devices.d/it/it-scan-out.yaml").path))
        let bad = try add("it-scan-bad", "10.77.0.3", ["bob@"])
        XCTAssertEqual(bad.status, 1, bad.output)
        XCTAssertTrue(bad.output.contains("'bob@' is not a recipient rule"), bad.output)

        // explain runs the gateway's session: the owner is accepted, anyone else refused with the rule.
        let explain = try Shell.run([Repo.posternBinary.path, "explain", "--policies", policies.path, "--listener", "device", "--client", "10.77.0.1",
                                     "--from", "scan@example.edu", "--rcpt", "it-helpdesk@example.edu", "--rcpt", "bob@example.edu"])
        XCTAssertEqual(explain.status, 0, explain.output)
        XCTAssertTrue(explain.output.contains("recipients: it-helpdesk@example.edu (owner)\n"), explain.output)
        XCTAssertTrue(explain.output.contains("RCPT TO:<it-helpdesk@example.edu>\n  -> 250 2.1.5 Ok\n     rule: device it-scan-self: recipients: owner (it-helpdesk@example.edu)"),
                      explain.output)
        XCTAssertTrue(explain.output.contains("RCPT TO:<bob@example.edu>\n  -> 550 5.7.1 <bob@example.edu>: device it-scan-self may send only to it-helpdesk@example.edu (owner) (its recipients rule)"),
                      explain.output)

        // check: a rule written by hand outside the internal domains is an error at its file and line.
        let scanner = policies.appendingPathComponent("devices.d/it/demo-scanner.yaml")
        let text = try String(contentsOf: scanner, encoding: .utf8)
        try (text + "recipients: [owner, \"*@gmail.com\"]\n").write(to: scanner, atomically: true, encoding: .utf8)
        let line = text.split(separator: "\n", omittingEmptySubsequences: false).count
        let config = directory.appendingPathComponent("postern.yaml")
        try "policies: policies\nlisteners:\n  - { name: device, kind: device, listen: \"127.0.0.1:0\" }\n".write(to: config, atomically: true, encoding: .utf8)
        let check = try Shell.run([Repo.posternBinary.path, "check", "--config", config.path])
        XCTAssertEqual(check.status, 2, check.output)
        XCTAssertTrue(check.output.contains("devices.d/it/demo-scanner.yaml:\(line): error: device 'demo-scanner': recipient rule *@gmail.com is outside the internal domains"),
                      check.output)
    }
}
