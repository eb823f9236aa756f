import Foundation
import XCTest

/// The `device` endpoint through the real listener with the shipped demo policy:
/// 127.0.0.1 is the registered `demo-scanner`, 127.0.0.2 is not registered.
final class DeviceEndpointTests: XCTestCase {
    var harness: GatewayHarness!

    override func setUp() async throws {
        harness = try await GatewayHarness.start(limits: "limits: { max-message-size: 20000 }")
    }

    override func tearDown() async throws {
        await harness.stop()
    }

    func swaks(_ arguments: [String]) throws -> String {
        try Shell.run(["swaks", "--server", "127.0.0.1:\(harness.port("device"))"] + arguments).output
    }

    func testMessageLandsInOutboxByteForBytePlusReceivedHeader() throws {
        let body = "From: Scanner <scanner@example.edu>\r\nTo: bob@example.edu\r\nSubject: Scan 42\r\nMessage-ID: <scan42@example.edu>\r\n\r\nLine one\r\n.leading dot\r\n\r\n\tTabbed \u{00e9}\r\n"
        // --no-data-fixup sends the file as it is: dot-stuffed and terminated by us.
        let wire = body.replacingOccurrences(of: "\r\n.", with: "\r\n..") + ".\r\n"
        let file = harness.directory.appendingPathComponent("message.eml")
        try wire.write(to: file, atomically: true, encoding: .utf8)
        let output = try swaks(["--from", "scanner@example.edu", "--to", "bob@example.edu", "--data", file.path, "--no-data-fixup"])
        XCTAssertTrue(output.contains("250 2.0.0 Ok: queued as "), output)
        let files = harness.outboxFiles()
        XCTAssertEqual(files.count, 1)
        let stored = try Data(contentsOf: files[0])
        let text = String(decoding: stored, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("Received: from "), text)
        XCTAssertTrue(text.contains("by gw.test (Postern) with ESMTP id \(files[0].deletingPathExtension().lastPathComponent)"), text)
        XCTAssertTrue(text.contains("for <bob@example.edu>;"), text)
        // Everything after the Received header is exactly what the client sent (dot-stuffing undone).
        let headerEnd = text.range(of: "\r\nFrom: Scanner")!.lowerBound
        let rest = stored.suffix(from: text.utf8.distance(from: text.startIndex, to: headerEnd) + 2)
        XCTAssertEqual(rest, Data(body.utf8))
    }

    func testRegisteredDeviceIsAcceptedAndUnregisteredRefused() throws {
        XCTAssertTrue(try swaks(["--from", "scanner@example.edu", "--to", "bob@example.edu"]).contains("250 2.0.0 Ok: queued as"))
        let refused = try swaks(["--local-interface", "127.0.0.2", "--from", "scanner@example.edu", "--to", "bob@example.edu"])
        XCTAssertTrue(refused.contains("554 5.7.1 127.0.0.2 is not a registered device"), refused)
        XCTAssertEqual(harness.outboxFiles().count, 1)
    }

    func testWrongSenderAndExternalRecipientAreRefused() throws {
        let sender = try swaks(["--from", "someone@example.edu", "--to", "bob@example.edu"])
        XCTAssertTrue(sender.contains("553 5.7.1"), sender)
        let external = try swaks(["--from", "scanner@example.edu", "--to", "x@gmail.com"])
        XCTAssertTrue(external.contains("550 5.7.1 <x@gmail.com>: this endpoint accepts internal recipients only"), external)
        let subdomain = try swaks(["--from", "scanner@example.edu", "--to", "carol@chem.EXAMPLE.edu"])
        XCTAssertTrue(subdomain.contains("250 2.0.0 Ok: queued as"), subdomain)
    }

    func testMessageOverSizeLimitGets552() throws {
        let big = harness.directory.appendingPathComponent("big.eml")
        try (String(repeating: "0123456789012345678901234567890123456789\r\n", count: 600)).write(to: big, atomically: true, encoding: .utf8)
        let output = try swaks(["--from", "scanner@example.edu", "--to", "bob@example.edu", "--data", big.path])
        XCTAssertTrue(output.contains("552 5.3.4 Message size exceeds fixed limit"), output)
        XCTAssertEqual(harness.outboxFiles().count, 0)
    }

    func testRelayHackAddressFormsAreRefused() throws {
        let script = """
            import socket, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            f = s.makefile("rb")
            def cmd(line):
                if line: s.sendall(line.encode() + b"\\r\\n")
                while True:
                    l = f.readline().decode()
                    if len(l) < 4 or l[3] != "-": return l.strip()
            cmd(None); cmd("EHLO scanner"); print(cmd("MAIL FROM:<scanner@example.edu>"))
            for rcpt in sys.argv[2:]:
                print(rcpt, "=>", cmd("RCPT TO:" + rcpt))
            """
        let forms = ["<u%ext.com@example.edu>", "<@example.edu:u@ext.com>", "<\"u@ext.com\">", "<\"u@ext.com\"@example.edu>", "<ext.com!u>",
                     "<ext.com!u@example.edu>", "<u@example.edu.>", "<u@[127.0.0.1]>", "<u@EXAMPLE.EDU>"]
        let result = try Shell.python(script, ["\(harness.port("device"))"] + forms)
        let lines = result.output.split(separator: "\n").map(String.init)
        func answer(_ form: String) -> String { lines.first { $0.hasPrefix(form + " =>") } ?? "missing: \(result.output)" }
        for form in forms.dropLast() {
            XCTAssertTrue(answer(form).contains("=> 5"), "\(form) must be refused: \(answer(form))")
        }
        XCTAssertTrue(answer("<u@EXAMPLE.EDU>").contains("=> 250 2.1.5"), answer("<u@EXAMPLE.EDU>"))
    }

    /// Each smuggling ending followed by a pipelined second message, in one write: at most one message is queued.
    func testSmugglingEndingsQueueAtMostOneMessage() throws {
        let endings = ["\\n.\\n", "\\r.\\r", "\\r.\\n", "\\n.\\r", "\\n.\\r\\n", "\\r\\n.\\n", "\\r.\\r\\n", "\\r\\n.\\r"]
        let script = """
            import socket, sys
            port = int(sys.argv[1])
            for ending in sys.argv[2:]:
                end = ending.encode().decode("unicode_escape").encode()
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.recv(200)
                payload = (b"EHLO scanner\\r\\nMAIL FROM:<scanner@example.edu>\\r\\nRCPT TO:<bob@example.edu>\\r\\nDATA\\r\\n"
                           b"Subject: first\\r\\n\\r\\nbody" + end +
                           b"MAIL FROM:<scanner@example.edu>\\r\\nRCPT TO:<victim@example.edu>\\r\\nDATA\\r\\nSubject: smuggled\\r\\n\\r\\nx\\r\\n.\\r\\nQUIT\\r\\n")
                s.sendall(payload)
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk: break
                    data += chunk
                print(ending, data.decode().replace("\\r\\n", " | "))
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"] + endings)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(result.output.components(separatedBy: "221 2.0.0 Bye").count - 1, endings.count, result.output)
        XCTAssertFalse(result.output.contains("queued as"), "strict device listener queues none: \(result.output)")
        XCTAssertEqual(harness.outboxFiles().count, 0)
    }

    func testNormalisingDeviceListenerStillQueuesAtMostOnePerConnection() async throws {
        let normalising = try await GatewayHarness.start(listeners: """
              - name: device
                kind: device
                listen: 127.0.0.1:0
                normalize-bare-lf: true
            """)
        defer { Task { await normalising.stop() } }
        let endings = ["\\n.\\n", "\\n.\\r\\n", "\\r\\n.\\n", "\\r.\\r"]
        let script = """
            import socket, sys
            port = int(sys.argv[1])
            for ending in sys.argv[2:]:
                end = ending.encode().decode("unicode_escape").encode()
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.recv(200)
                s.sendall(b"EHLO scanner\\r\\nMAIL FROM:<scanner@example.edu>\\r\\nRCPT TO:<bob@example.edu>\\r\\nDATA\\r\\nSubject: first\\r\\n\\r\\nbody" + end +
                          b"MAIL FROM:<scanner@example.edu>\\r\\nRCPT TO:<victim@example.edu>\\r\\nDATA\\r\\nsmuggled\\r\\n.\\r\\nQUIT\\r\\n")
                data = b""
                while True:
                    chunk = s.recv(4096)
                    if not chunk: break
                    data += chunk
                print(ending, data.decode().count("queued as"))
            """
        let result = try Shell.python(script, ["\(normalising.port("device"))"] + endings)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("\\n.\\n 1"), result.output)
        XCTAssertTrue(result.output.contains("\\r.\\r 0"), result.output)
        XCTAssertFalse(result.output.contains(" 2"), result.output)
        let files = normalising.outboxFiles()
        XCTAssertEqual(files.count, 3)
        for file in files {
            let text = try String(contentsOf: file, encoding: .utf8)
            XCTAssertTrue(text.contains("MAIL FROM:<scanner@example.edu>\r\nRCPT TO:<victim@example.edu>\r\n"), "the second message is body text")
            XCTAssertFalse(text.replacingOccurrences(of: "\r\n", with: "").contains("\n"), "stored with CRLF only")
        }
    }
}
