import Foundation
import PosternGateway
import XCTest

/// Hostile clients against the real listener: open-relay address forms, early talkers, oversized input,
/// rate and connection limits, and hundreds of slow sessions.
final class AttackMatrixTests: XCTestCase {
    /// Python helpers every script starts with: raw sockets, replies read in full (multi-line aware).
    static let prelude = """
        import socket, sys, time
        def connect(port, source="127.0.0.1", timeout=10):
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0))
            return s, s.makefile("rb")
        def reply(f):
            lines = []
            while True:
                line = f.readline()
                if not line:
                    return "EOF"
                lines.append(line.decode("latin-1").rstrip("\\r\\n"))
                if len(line) < 4 or line[3:4] != b"-":
                    return " / ".join(lines)
        def cmd(s, f, text):
            s.sendall(text.encode("latin-1") + b"\\r\\n")
            return reply(f)

        """

    // MARK: Open relay

    /// Recipient forms from relay-test suites (nmap smtp-open-relay, the classic relaytest list). None may
    /// reach an external domain through the device endpoint, registered or not.
    static let relayForms: [(form: String, internal: Bool)] = [
        ("<relaytest@external.example>", false),
        ("<relaytest%external.example@example.edu>", false),           // percent hack
        ("<relaytest%external.example@[127.0.0.1]>", false),
        ("<\"relaytest@external.example\">", false),                    // quoted, no domain
        ("<\"relaytest@external.example\"@example.edu>", false),        // quoted local part with @
        ("<\"relaytest%external.example\"@example.edu>", false),
        ("<relaytest@external.example@example.edu>", false),
        ("<@example.edu:relaytest@external.example>", false),           // source route
        ("<@external.example:relaytest@example.edu>", false),
        ("<@example.edu,@external.example:relaytest@external.example>", false),
        ("<external.example!relaytest>", false),                        // bang path
        ("<external.example!relaytest@example.edu>", false),
        ("<relaytest@external.example.>", false),                       // trailing dot
        ("<relaytest@example.edu.>", false),
        ("<relaytest@[192.0.2.1]>", false),                             // IP literal
        ("<relaytest@[127.0.0.1]>", false),
        ("<relaytest@[IPv6:::1]>", false),
        ("<relaytest@EXTERNAL.Example>", false),                        // mixed case
        ("<relaytest@example.edu.external.example>", false),            // internal name as a prefix
        ("<relaytest@notexample.edu>", false),
        ("<relaytest@localhost>", false),
        ("<>", false),                                                   // null path as recipient
        ("relaytest@external.example", false),                          // no angle brackets
        ("<bob@example.edu>", true),                                     // controls: internal recipients
        ("<Bob@EXAMPLE.EDU>", true),
        ("<bob@chem.example.edu>", true),
    ]

    func testNoAddressFormRelaysThroughTheDeviceEndpoint() async throws {
        let harness = try await GatewayHarness.start()
        let forms = Self.relayForms.map(\.form).joined(separator: "\n")
        let script = Self.prelude + """
            port = int(sys.argv[1])
            forms = sys.argv[2].split("\\n")
            for source in ["127.0.0.1", "127.0.0.2"]:
                for form in forms:
                    s, f = connect(port, source)
                    reply(f)
                    cmd(s, f, "EHLO relay.test")
                    mail = cmd(s, f, "MAIL FROM:<scanner@example.edu>")
                    rcpt = cmd(s, f, "RCPT TO:" + form)
                    data = cmd(s, f, "DATA")
                    if data.startswith("354"):
                        data = cmd(s, f, "Subject: relay test\\r\\n\\r\\nbody\\r\\n.")
                    cmd(s, f, "QUIT")
                    s.close()
                    print("%s\\t%s\\t%s\\t%s\\t%s" % (source, form, mail[:3], rcpt[:3], data[:3]))
            """
        let result = try Shell.python(script, ["\(harness.port("device"))", forms], timeout: 120)
        let delivered = harness.outboxFiles().count
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        let rows = result.output.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        XCTAssertEqual(rows.count, 2 * Self.relayForms.count, result.output)
        var cases = 0
        for row in rows where row.count == 5 {
            let (source, form, mail, rcpt, data) = (row[0], row[1], row[2], row[3], row[4])
            let isInternal = Self.relayForms.first { $0.form == form }?.internal ?? false
            cases += 1
            if source == "127.0.0.2" {
                XCTAssertEqual(mail, "554", "unregistered 127.0.0.2 must be refused at MAIL (\(form))")
                XCTAssertTrue(rcpt.hasPrefix("5"), "unregistered: RCPT \(form) got \(rcpt)")
                XCTAssertTrue(data.hasPrefix("5"), "unregistered: DATA after \(form) got \(data)")
            } else if isInternal {
                XCTAssertEqual(mail, "250", form)
                XCTAssertEqual(rcpt, "250", "internal recipient \(form) must be accepted")
                XCTAssertEqual(data, "250", form)
            } else {
                XCTAssertEqual(mail, "250", form)
                XCTAssertTrue(rcpt.hasPrefix("5"), "registered device: RCPT \(form) must be refused, got \(rcpt)")
                XCTAssertEqual(data, "554", "registered device: no message may follow \(form)")
            }
        }
        XCTAssertEqual(cases, 52, "2 sources x 26 forms")
        XCTAssertEqual(delivered, 3, "only the three internal controls from the registered device were delivered")
    }

    /// Without AUTH the TLS endpoints relay nothing either.
    func testSubmissionWithoutAuthRelaysNothing() async throws {
        let harness = try await GatewayHarness.start()
        let script = """
            import smtplib, ssl, sys
            ctx = ssl.create_default_context(cafile=sys.argv[3])
            s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), timeout=10)
            s.ehlo("relay.test")
            print("plain", s.docmd("MAIL FROM:<alice@example.edu>")[0])
            s.starttls(context=ctx)
            s.ehlo("relay.test")
            print("tls", s.docmd("MAIL FROM:<alice@example.edu>")[0])
            print("rcpt", s.docmd("RCPT TO:<relaytest@external.example>")[0])
            s.quit()
            s = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[2]), timeout=10, context=ctx)
            s.ehlo("relay.test")
            print("implicit", s.docmd("MAIL FROM:<alice@example.edu>")[0])
            s.quit()
            """
        let result = try Shell.python(script, ["\(harness.port("submission"))", "\(harness.port("submissions"))",
                                                Repo.certs.appendingPathComponent("ca.pem").path])
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("plain 530\ntls 530\nrcpt 503\nimplicit 530"), result.output)
    }

    // MARK: Pipelining before the greeting

    func testClientTalkingBeforeTheGreetingIsRefused() async throws {
        let harness = try await GatewayHarness.start(limits: "limits: { greeting-delay-ms: 300 }")
        let script = Self.prelude + """
            port = int(sys.argv[1])
            s, f = connect(port)
            s.sendall(b"EHLO early.test\\r\\nMAIL FROM:<scanner@example.edu>\\r\\nRCPT TO:<bob@example.edu>\\r\\nDATA\\r\\n"
                      b"Subject: smuggled\\r\\n\\r\\nx\\r\\n.\\r\\nQUIT\\r\\n")
            print("early:", reply(f))
            print("then:", reply(f))
            s, f = connect(port)
            start = time.time()
            print("patient:", reply(f), round(time.time() - start, 2) >= 0.25)
            print("ehlo:", cmd(s, f, "EHLO patient.test")[:3])
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"])
        let delivered = harness.outboxFiles().count
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("early: 554 5.5.1 Protocol error: data before greeting\nthen: EOF"), result.output)
        XCTAssertTrue(result.output.contains("patient: 220 gw.test ESMTP Postern True"), result.output)
        XCTAssertTrue(result.output.contains("ehlo: 250"), result.output)
        XCTAssertEqual(delivered, 0, "nothing an early talker sent may be delivered")
    }

    // MARK: Limits

    func testThousandAndOneRecipientsGet452FromTheHundredAndFirst() async throws {
        let harness = try await GatewayHarness.start()
        let script = Self.prelude + """
            s, f = connect(int(sys.argv[1]))
            reply(f)
            cmd(s, f, "EHLO many.test")
            print("mail", cmd(s, f, "MAIL FROM:<scanner@example.edu>")[:3])
            s.sendall(b"".join(b"RCPT TO:<user%d@example.edu>\\r\\n" % i for i in range(1001)))
            codes = [reply(f) for _ in range(1001)]
            print("accepted", sum(c.startswith("250 2.1.5") for c in codes))
            print("refused", sum(c.startswith("452 4.5.3") for c in codes))
            print("first refused", codes.index(next(c for c in codes if c.startswith("452"))) + 1)
            print("data", cmd(s, f, "DATA")[:3])
            print("end", cmd(s, f, "Subject: many\\r\\n\\r\\nbody\\r\\n.")[:3])
            print("noop", cmd(s, f, "NOOP")[:3])
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"])
        let files = harness.outboxFiles()
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("accepted 100\nrefused 901\nfirst refused 101\ndata 354\nend 250\nnoop 250"), result.output)
        XCTAssertEqual(files.count, 1)
    }

    func testOverlongAddressPartsAndLinesAreRefused() async throws {
        let harness = try await GatewayHarness.start()
        let script = Self.prelude + """
            s, f = connect(int(sys.argv[1]), timeout=60)
            reply(f)
            cmd(s, f, "EHLO long.test")
            cmd(s, f, "MAIL FROM:<scanner@example.edu>")
            print("local64", cmd(s, f, "RCPT TO:<%s@example.edu>" % ("a" * 64))[:9])
            print("local65", cmd(s, f, "RCPT TO:<%s@example.edu>" % ("a" * 65))[:9])
            domain = ".".join(["a" * 63] * 3 + ["a" * 60, "edu"])
            print("domain256", len(domain), cmd(s, f, "RCPT TO:<b@%s>" % domain)[:9])
            # A 10 MB command line without CRLF, then a good command.
            chunk = b"X" * 65536
            for _ in range(160):
                s.sendall(chunk)
            print("line10M", cmd(s, f, "")[:9])
            print("after", cmd(s, f, "NOOP")[:3])
            # A 10 MB line inside DATA: the message is refused, the session goes on.
            print("data", cmd(s, f, "DATA")[:3])
            for _ in range(160):
                s.sendall(chunk)
            print("dataline10M", cmd(s, f, "\\r\\n.")[:9])
            print("rset", cmd(s, f, "RSET")[:3])
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"], timeout: 120)
        let delivered = harness.outboxFiles().count
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        for expected in ["local64 250 2.1.5", "local65 501 5.1.3", "domain256 256 501 5.1.3", "line10M 500 5.5.2", "after 250",
                         "data 354", "rset 250"] {
            XCTAssertTrue(result.output.contains(expected), "expected '\(expected)' in \(result.output)")
        }
        XCTAssertTrue(result.output.contains("dataline10M 552 5.3.4") || result.output.contains("dataline10M 550 5.6.0"), result.output)
        XCTAssertEqual(delivered, 0)
    }

    func testMessageOverTheSizeLimitIsRefused() async throws {
        let harness = try await GatewayHarness.start(limits: "limits: { max-message-size: 65536 }")
        let script = Self.prelude + """
            s, f = connect(int(sys.argv[1]))
            reply(f)
            cmd(s, f, "EHLO size.test")
            print("declared", cmd(s, f, "MAIL FROM:<scanner@example.edu> SIZE=70000")[:9])
            cmd(s, f, "MAIL FROM:<scanner@example.edu>")
            cmd(s, f, "RCPT TO:<bob@example.edu>")
            cmd(s, f, "DATA")
            body = b"".join(b"line %05d " % i + b"y" * 60 + b"\\r\\n" for i in range(1500))
            s.sendall(b"Subject: big\\r\\n\\r\\n" + body)
            print("undeclared", cmd(s, f, ".")[:9])
            print("noop", cmd(s, f, "NOOP")[:3])
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"])
        let delivered = harness.outboxFiles().count
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("declared 552 5.3.4\nundeclared 552 5.3.4\nnoop 250"), result.output)
        XCTAssertEqual(delivered, 0)
    }

    // MARK: Abuse

    /// The device's `max-rate` counts messages across all its sessions; the next MAIL gets 450 4.7.1.
    func testDeviceRateLimitAppliesAcrossSessions() async throws {
        let policies = try Self.policiesCopy(demoScannerRate: "3/hour")
        defer { try? FileManager.default.removeItem(at: policies) }
        let harness = try await GatewayHarness.start(policies: policies)
        let script = Self.prelude + """
            port = int(sys.argv[1])
            def send(s, f):
                mail = cmd(s, f, "MAIL FROM:<scanner@example.edu>")
                if not mail.startswith("250"):
                    return mail
                cmd(s, f, "RCPT TO:<bob@example.edu>")
                cmd(s, f, "DATA")
                return cmd(s, f, "Subject: rate\\r\\n\\r\\nbody\\r\\n.")
            for session, count in [(1, 2), (2, 1), (3, 2)]:
                s, f = connect(port)
                reply(f)
                cmd(s, f, "EHLO rate.test")
                for i in range(count):
                    print(session, send(s, f)[:9])
                cmd(s, f, "QUIT")
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"])
        let delivered = harness.outboxFiles().count
        let events = try harness.auditEvents()
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(result.output, "1 250 2.0.0\n1 250 2.0.0\n2 250 2.0.0\n3 450 4.7.1\n3 450 4.7.1\n")
        XCTAssertEqual(delivered, 3)
        let refusals = events.filter { ($0["rule"] as? String)?.hasPrefix("rate-limit device:demo-scanner 3/hour") == true }
        XCTAssertEqual(refusals.count, 2, "\(events)")
    }

    func testConnectionsPerClientAddressAreLimited() async throws {
        let harness = try await GatewayHarness.start(limits: "limits: { max-connections-per-client: 5 }")
        let script = Self.prelude + """
            port = int(sys.argv[1])
            held = [connect(port) for _ in range(5)]
            print("held", [reply(f)[:3] for s, f in held])
            s, f = connect(port)
            print("sixth", reply(f)[:9])
            s, f = connect(port, "127.0.0.2")
            print("other address", reply(f)[:3])
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"])
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("held ['220', '220', '220', '220', '220']\nsixth 421 4.7.0\nother address 220"), result.output)
    }

    /// 300 sessions that say nothing or trickle one byte a second do not delay a new client's greeting.
    func testSlowSessionsDoNotDelayANewClientsGreeting() async throws {
        let harness = try await GatewayHarness.start(limits: "limits: { max-connections-per-client: 1000 }")
        let script = Self.prelude + """
            port = int(sys.argv[1])
            idle = [connect(port)[0] for _ in range(150)]
            slow = [connect(port)[0] for _ in range(150)]
            text = b"EHLO slowloris.test"
            deadline = time.time() + 3
            i = 0
            while time.time() < deadline:
                for s in slow:
                    s.send(text[i % len(text):i % len(text) + 1])
                i += 1
                time.sleep(1)
            worst = 0.0
            for _ in range(10):
                start = time.time()
                s, f = connect(port)
                line = f.readline()
                took = time.time() - start
                worst = max(worst, took)
                assert line.startswith(b"220 "), line
                s.close()
            print("sessions", len(idle) + len(slow))
            print("worst ms", round(worst * 1000, 1))
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"], timeout: 60)
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("sessions 300"), result.output)
        let worst = result.output.split(separator: "\n").first { $0.hasPrefix("worst ms ") }.flatMap { Double($0.dropFirst(9)) }
        XCTAssertNotNil(worst, result.output)
        XCTAssertLessThan(worst ?? .infinity, 100, "a new client waited \(worst ?? -1) ms for its 220")
        print("slow sessions: \(result.output)")
    }

    // MARK: Helpers

    /// The shipped policies with a `max-rate` on demo-scanner.
    static func policiesCopy(demoScannerRate: String) throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-policies-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: Repo.policies, to: directory)
        let file = directory.appendingPathComponent("devices.d/it/demo-scanner.yaml")
        var text = try String(contentsOf: file, encoding: .utf8)
        let anchor = "senders: [scanner@example.edu]\n"
        guard let range = text.range(of: anchor) else { throw HarnessError("senders not found in devices.d/it/demo-scanner.yaml") }
        text.replaceSubrange(range, with: anchor + "max-rate: \(demoScannerRate)\n")
        try text.write(to: file, atomically: true, encoding: .utf8)
        return directory
    }
}
