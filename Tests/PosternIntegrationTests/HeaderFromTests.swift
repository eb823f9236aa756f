import Foundation
import PosternTestSupport
import XCTest

/// The header From policy through the real listener, AUTH against a real slapd, messages sent byte for byte
/// by Python (STARTTLS, AUTH PLAIN, then DATA written to the socket as given).
final class HeaderFromTests: XCTestCase {
    nonisolated(unsafe) static var slapd: TestSlapd!

    override class func setUp() {
        super.setUp()
        slapd = try! TestSlapd()
    }

    override class func tearDown() {
        slapd = nil
        super.tearDown()
    }

    var harness: GatewayHarness!

    override func tearDown() async throws {
        await harness?.stop()
    }

    func startGateway(policies: URL? = nil) async throws {
        harness = try await GatewayHarness.start(extra: Self.slapd.gatewayDirectorySection(), policies: policies)
    }

    /// One message per entry (header and body, CRLF line ends), each in its own session; the reply to the end
    /// of DATA (or to whatever refused the transaction earlier) for each.
    func submit(_ messages: [String], user: String = "alice", password: String = "alice-demo-pass", from: String = "alice@example.edu",
                endpoint: String = "submission") throws -> [String] {
        let script = """
            import base64, json, smtplib, ssl, sys
            port, ca, kind, user, password, sender = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6]
            messages = json.loads(sys.stdin.read())
            ctx = ssl.create_default_context(cafile=ca)
            for message in messages:
                if kind == "device":
                    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
                    s.ehlo("scanner")
                elif kind == "submissions":
                    s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=20)
                    s.ehlo("client")
                    code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\\0" + user.encode() + b"\\0" + password.encode()).decode())
                    if code != 235:
                        print(json.dumps("AUTH %d" % code)); s.close(); continue
                else:
                    s = smtplib.SMTP("127.0.0.1", port, timeout=20)
                    s.starttls(context=ctx)
                    s.ehlo("client")
                    code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\\0" + user.encode() + b"\\0" + password.encode()).decode())
                    if code != 235:
                        print(json.dumps("AUTH %d" % code)); s.close(); continue
                code, text = s.docmd("MAIL", "FROM:<%s>" % sender)
                if code != 250:
                    print(json.dumps("%d %s" % (code, text.decode()))); s.close(); continue
                s.docmd("RCPT", "TO:<bob@example.edu>")
                code, text = s.docmd("DATA")
                body = message.encode("utf-8")
                body = body.replace(b"\\r\\n.", b"\\r\\n..")
                s.send(body + b".\\r\\n")
                code, text = s.getreply()
                print(json.dumps("%d %s" % (code, text.decode())))
                s.quit()
            """
        let input = try JSONSerialization.data(withJSONObject: messages)
        let result = try Shell.run(["/usr/bin/python3", "-c", script, "\(harness.port(endpoint))", Repo.certs.appendingPathComponent("ca.pem").path,
                                    endpoint, user, password, from], input: input, timeout: 120)
        let lines = result.output.split(separator: "\n").compactMap { line -> String? in
            guard let data = line.data(using: .utf8), let text = try? JSONSerialization.jsonObject(with: data, options: .fragmentsAllowed) as? String else { return nil }
            return text
        }
        guard lines.count == messages.count else {
            XCTFail("python: \(result.output)")
            return Array(repeating: "no reply", count: messages.count)
        }
        return lines
    }

    static func message(_ header: String) -> String { header + "To: bob@example.edu\r\nSubject: test\r\n\r\nhello\r\n" }

    func testSpoofedHeaderFromsAreRefusedNamingTheHeader() async throws {
        try await startGateway()
        let spoofs: [(String, String)] = [
            ("From: president@example.edu\r\n", "550 5.7.1 From: header address <president@example.edu> is not one you may send as"),
            ("From: \"alice@example.edu\" <president@example.edu>\r\n", "550 5.7.1 From: header address <president@example.edu>"),
            ("From: alice@example.edu, president@example.edu\r\n", "550 5.7.1 From: header address <president@example.edu>"),
            ("From: alice@example.edu\r\nFrom: president@example.edu\r\n", "550 5.7.1 From: header address <president@example.edu>"),
            ("From: alice@example.edu\r\nSender: president@example.edu\r\n", "550 5.7.1 Sender: header address <president@example.edu>"),
            ("From: Staff: alice@example.edu, President <president@example.edu>;\r\n", "550 5.7.1 From: header address <president@example.edu>"),
            ("From: =?utf-8?q?alice=40example.edu?= <president@example.edu>\r\n", "550 5.7.1 From: header address <president@example.edu>"),
            ("From: =?utf-8?b?cHJlc2lkZW50QGV4YW1wbGUuZWR1?= <alice@example.edu>\r\n",
             "550 5.7.1 From: header display name shows the address <president@example.edu>, which is not one you may send as"),
            ("From: \"President <president@example.edu>\" <alice@example.edu>\r\n", "550 5.7.1 From: header display name shows the address <president@example.edu>"),
            ("From: Alice Smith\r\n <president@example.edu>\r\n", "550 5.7.1 From: header address <president@example.edu>"),
            ("From:\r\n\tpresident@example.edu\r\n", "550 5.7.1 From: header address <president@example.edu>"),
            ("FROM : president@example.edu\r\n", "550 5.7.1 From: header address <president@example.edu>"),
            ("From: alice@example.edu (president@example.edu) <president@example.edu>\r\n", "550 5.7.1 From: header cannot be parsed"),
            ("From: Alice <alice@example.edu\r\n", "550 5.7.1 From: header cannot be parsed"),
            ("From: <@relay.example.edu:president@example.edu>\r\n", "550 5.7.1 From: header cannot be parsed (source route)"),
            ("From: undisclosed:;\r\n", "550 5.7.1 From: header has no address"),
            ("From: Alice@example.edu\r\n", "550 5.7.1 From: header address <Alice@example.edu>"),
            ("Subject: x\r\nnot a header line\r\nFrom: president@example.edu\r\n",
             "550 5.7.1 From: header cannot be checked: header line 2 is neither a field nor a continuation"),
            (String(repeating: "X-Filler: " + String(repeating: "a", count: 900) + "\r\n", count: 300) + "From: alice@example.edu\r\n",
             "550 5.7.1 From: header cannot be checked: header section longer than 256 KiB"),
        ]
        let replies = try submit(spoofs.map { Self.message($0.0) })
        for ((header, expected), reply) in zip(spoofs, replies) {
            XCTAssertTrue(reply.hasPrefix(expected), "\(header.prefix(120).debugDescription): \(reply)")
        }
        XCTAssertEqual(harness.outboxFiles().count, 0, "nothing refused was stored")
        let decisions = try harness.auditEvents().filter { $0["event"] as? String == "decision" && $0["stage"] as? String == "data" }
        XCTAssertEqual(decisions.count, spoofs.count)
        XCTAssertTrue(decisions.allSatisfy { $0["result"] as? String == "550 5.7.1" && ($0["rule"] as? String ?? "").hasPrefix("header-from") })
        XCTAssertTrue(decisions.contains { ($0["rule"] as? String ?? "").contains("From: president@example.edu refused (sender: not an address of user alice)") },
                      "\(decisions)")
    }

    func testOwnAddressesInAnyFormAreAcceptedAndAMissingFromIsAdded() async throws {
        try await startGateway()
        let own = [
            "From: alice@example.edu\r\n",
            "From: Alice Smith <a.smith@EXAMPLE.edu>\r\n",
            "From: \"Smith, Alice (ÖH)\" <alice@example.edu>\r\n",
            "From: =?utf-8?q?Alice_M=C3=BCller?= <\"alice\"@example.edu>\r\n",
            "From: alice@example.edu (Alice)\r\nSender: a.smith@example.edu\r\n",
            "From: \"alice@example.edu\" <alice@example.edu>\r\n",
            "From: Me: alice@example.edu, a.smith@example.edu;\r\n",
            "From: Alice\r\n <alice@example.edu>\r\n",
        ]
        let replies = try submit(own.map { Self.message($0) })
        for (header, reply) in zip(own, replies) { XCTAssertTrue(reply.hasPrefix("250 2.0.0 Ok: queued as"), "\(header.debugDescription): \(reply)") }
        XCTAssertEqual(harness.outboxFiles().count, own.count)

        // No From: at all: the envelope sender's is put at the top, under the Received header.
        let before = Set(harness.outboxFiles())
        let noFrom = try submit(["Subject: cron\r\n\r\nout of disk\r\n"])
        XCTAssertTrue(noFrom[0].hasPrefix("250 2.0.0 Ok: queued as"), noFrom[0])
        let added = try XCTUnwrap(Set(harness.outboxFiles()).subtracting(before).first)
        let text = try String(contentsOf: added, encoding: .utf8)
        let lines = text.components(separatedBy: "\r\n")
        let firstAfterReceived = try XCTUnwrap(lines.firstIndex { !$0.hasPrefix("Received:") && !$0.hasPrefix("\t") })
        XCTAssertEqual(Array(lines[firstAfterReceived...].prefix(2)), ["From: alice@example.edu", "Subject: cron"], text)

        // A service account may use any address of its domains, in From: as in MAIL FROM.
        let service = try submit(["From: Helpdesk <noreply@example.edu>\r\nSubject: ticket\r\n\r\nx\r\n",
                                  "From: Helpdesk <noreply@gmail.com>\r\nSubject: ticket\r\n\r\nx\r\n"],
                                 user: "webapp", password: "webapp-demo-pass", from: "tickets@example.edu")
        XCTAssertTrue(service[0].hasPrefix("250 2.0.0"), service[0])
        XCTAssertTrue(service[1].hasPrefix("550 5.7.1 From: header address <noreply@gmail.com>"), service[1])
    }

    func testDevicesAreHeldToTheirAllowedSenders() async throws {
        try await startGateway()
        let replies = try submit([Self.message("From: Scanner <scanner@example.edu>\r\n"), Self.message("From: president@example.edu\r\n"),
                                  Self.message("From: scanner@example.edu\r\nSender: hr@example.edu\r\n")],
                                 from: "scanner@example.edu", endpoint: "device")
        XCTAssertTrue(replies[0].hasPrefix("250 2.0.0 Ok: queued as"), replies[0])
        XCTAssertTrue(replies[1].hasPrefix("550 5.7.1 From: header address <president@example.edu> is not one you may send as"), replies[1])
        XCTAssertTrue(replies[2].hasPrefix("550 5.7.1 Sender: header address <hr@example.edu>"), replies[2])
        let rules = try harness.auditEvents().filter { $0["stage"] as? String == "data" }.compactMap { $0["rule"] as? String }
        XCTAssertTrue(rules.contains { $0.contains("device demo-scanner: sender not in allowed senders") }, "\(rules)")
    }

    func testWarnModeAcceptsAndAuditsAndOffDoesNotLook() async throws {
        let policies = try copyOfShippedPolicies()
        var text = try String(contentsOf: policies.appendingPathComponent("policy.yaml"), encoding: .utf8)
        text = text.replacingOccurrences(of: "    max-message-size: 25M\n    header-from: enforce\n  submissions:", with: "    max-message-size: 25M\n    header-from: warn\n  submissions:")
        text = text.replacingOccurrences(of: "    max-message-size: 20M\n    header-from: enforce", with: "    max-message-size: 20M\n    header-from: off")
        try text.write(to: policies.appendingPathComponent("policy.yaml"), atomically: true, encoding: .utf8)
        try await startGateway(policies: policies)
        let warned = try submit([Self.message("From: president@example.edu\r\n")])
        XCTAssertTrue(warned[0].hasPrefix("250 2.0.0 Ok: queued as"), warned[0])
        let off = try submit([Self.message("From: president@example.edu\r\n")], from: "scanner@example.edu", endpoint: "device")
        XCTAssertTrue(off[0].hasPrefix("250 2.0.0 Ok: queued as"), off[0])
        let enforced = try submit([Self.message("From: president@example.edu\r\n")], endpoint: "submissions")
        XCTAssertTrue(enforced[0].hasPrefix("550 5.7.1 From: header address <president@example.edu>"), "submissions still enforces: \(enforced[0])")
        // warn leaves a message without From: as it came.
        let before = Set(harness.outboxFiles())
        let noFrom = try submit(["Subject: cron\r\n\r\nx\r\n"])
        XCTAssertTrue(noFrom[0].hasPrefix("250 2.0.0 Ok: queued as"), noFrom[0])
        let stored = try XCTUnwrap(Set(harness.outboxFiles()).subtracting(before).first)
        XCTAssertFalse(try String(contentsOf: stored, encoding: .utf8).contains("\r\nFrom:"))
        let data = try harness.auditEvents().filter { $0["stage"] as? String == "data" }
        XCTAssertEqual(data.compactMap { $0["result"] as? String }, ["accept", "550 5.7.1", "accept"], "off audits nothing: \(data)")
        XCTAssertTrue((data.first?["rule"] as? String ?? "").hasPrefix("header-from (warn, not enforced): header-from: From: president@example.edu refused"),
                      "\(data)")
        XCTAssertEqual(data.last?["rule"] as? String, "header-from (warn, not enforced): no From: header, enforce would add From: alice@example.edu")
        try? FileManager.default.removeItem(at: policies)
    }

    func copyOfShippedPolicies() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-policies-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for name in ["policy.yaml", "departments.yaml", "devices.d"] {
            try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent(name), to: directory.appendingPathComponent(name))
        }
        return directory
    }
}

extension TestSlapd {
    /// The `directory:` section of a gateway configuration for this slapd, with the demo's groups.
    func gatewayDirectorySection(requiredGroups: String = "[mail-submitters]", groupBase: String? = TestSlapd.groupsBase,
                                 throttle: String = "{ slow-down-after: 3, delay-step-ms: 50, max-delay-ms: 100, lockout-after: 6, lockout-seconds: 600 }",
                                 more: String = "") throws -> String {
        let secret = FileManager.default.temporaryDirectory.appendingPathComponent("postern-bind-\(UUID().uuidString)")
        try bindPassword.write(to: secret, atomically: true, encoding: .utf8)
        return """
            directory:
              uris: [\(ldapsURI)]
              ca-file: \(caFile)
              bind-dn: \(bindDN)
              bind-password-file: \(secret.path)
              search-base: \(TestSlapd.peopleBase)
              group-attribute: memberOf
              required-groups: \(requiredGroups)
            \(groupBase.map { "  group-base: \($0)" } ?? "")
              connect-timeout-seconds: 2
              operation-timeout-seconds: 3
              throttle: \(throttle)
            \(more)
            """
    }
}
