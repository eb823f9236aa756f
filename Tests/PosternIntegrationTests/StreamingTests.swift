import Foundation
import PosternSink
import PosternTestSupport
import XCTest

/// Issue #20: DATA streams into the spool, and the relay streams it out of it. Real sockets, a real mutual-TLS
/// upstream (`postern sink` in process), the real spool on disk.
final class StreamingTests: XCTestCase {
    var fixture: SinkFixture!
    var sinkOutbox: URL!
    var spool: URL!

    override func setUp() async throws {
        sinkOutbox = FileManager.default.temporaryDirectory.appendingPathComponent("postern-sink-\(UUID().uuidString)")
        spool = FileManager.default.temporaryDirectory.appendingPathComponent("postern-spool-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: sinkOutbox, withIntermediateDirectories: true)
        fixture = try await SinkFixture.start(outbox: sinkOutbox)
    }

    override func tearDown() async throws {
        await fixture.stop()
        try? FileManager.default.removeItem(at: sinkOutbox)
        try? FileManager.default.removeItem(at: spool)
    }

    func startGateway(limits: String = "") async throws -> GatewayHarness {
        let certs = Repo.certs.path
        return try await GatewayHarness.start(limits: limits, delivery: """
            delivery:
              spool: \(spool.path)
              relay:
                upstreams:
                  - { name: sink, host: 127.0.0.1, port: \(fixture.port), tls: starttls, server-name: localhost, ca-file: \(certs)/ca.pem, certificate: \(certs)/client.pem, key: \(certs)/client.key }
                retry: { initial-seconds: 1, max-seconds: 2, scan-seconds: 1 }
            """)
    }

    func names(_ sub: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: spool.appendingPathComponent(sub).path)) ?? []).sorted()
    }

    func waitFor(_ seconds: Double, _ condition: () -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return condition()
    }

    /// A client in Python: sends a generated message of SIZE octets (lines of varying length, some starting with
    /// a dot, so dot-stuffing is exercised at chunk boundaries) and prints the SHA-256 of the message as sent
    /// (unstuffed) and the final reply. With ABORT_AFTER it sends that many octets of DATA, prints `tmp-seen` when
    /// the spool's tmp/ holds a file (the message is being written while it arrives), and disconnects.
    static let client = #"""
    import hashlib, os, random, socket, sys, time
    port, size, abort_after, tmpdir, sender = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    rng = random.Random(20)
    lines, total = [], 0
    header = (b"" if sender == "-" else b"From: " + sender.encode() + b"\r\n") + b"To: bob@example.edu\r\nSubject: large scan\r\nMessage-ID: <large@example.edu>\r\n\r\n"
    lines.append(header); total += len(header)
    i = 0
    while total < size:
        n = rng.randrange(0, 900)
        line = (b"." if i % 7 == 0 else b"") + bytes(rng.choice(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdef0123456789 .") for _ in range(n)) + b"\r\n"
        lines.append(line); total += len(line); i += 1
    message = b"".join(lines)
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    f = s.makefile("rb")
    def reply():
        while True:
            l = f.readline()
            if not l: return b"(closed)"
            if l[3:4] != b"-": return l.strip()
    reply()
    for c in [b"EHLO client.example.edu", b"MAIL FROM:<scanner@example.edu>", b"RCPT TO:<bob@example.edu>", b"DATA"]:
        s.sendall(c + b"\r\n"); r = reply()
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."): stuffed = b"." + stuffed
    if abort_after:
        s.sendall(stuffed[:abort_after])
        for _ in range(200):
            if os.listdir(tmpdir): print("tmp-seen"); break
            time.sleep(0.05)
        s.close(); print("aborted"); sys.exit(0)
    for k in range(0, len(stuffed), 65536): s.sendall(stuffed[k:k + 65536])
    s.sendall(b".\r\n")
    print("sha256", hashlib.sha256(message).hexdigest())
    print("reply", reply().decode())
    s.sendall(b"QUIT\r\n"); reply()
    """#

    func send(port: Int, size: Int, abortAfter: Int = 0, from: String = "scanner@example.edu") throws -> String {
        try Shell.python(Self.client, ["\(port)", "\(size)", "\(abortAfter)", spool.appendingPathComponent("tmp").path, from], timeout: 120).output
    }

    func testLargeMessageIsStreamedThroughTheSpoolAndRelayedIntact() async throws {
        let harness = try await startGateway()
        let output = try send(port: harness.port("device"), size: 6_000_000)
        XCTAssertTrue(output.contains("reply 250 2.0.0 Ok: queued as"), output)
        let sent = try XCTUnwrap(output.split(separator: "\n").first { $0.hasPrefix("sha256 ") }).dropFirst(7)
        let sink = fixture.sink
        let arrived = await waitFor(60) { sink.receivedCount == 1 && harness.gateway.spool?.depth == 0 }
        XCTAssertTrue(arrived, "relayed and removed from the spool")
        let data = try XCTUnwrap(sink.messages.first?.data)
        let text = String(buffer: data)
        XCTAssertTrue(text.hasPrefix("Received: from client.example.edu"), String(text.prefix(300)))
        // What arrived is the Received header and, byte for byte, what the client sent.
        let start = try XCTUnwrap(text.range(of: "From: scanner@example.edu\r\nTo:"))
        let body = Data(text[start.lowerBound...].utf8)
        let digest = try Shell.run(["sha256sum"], input: body).output.prefix(64)
        XCTAssertEqual(String(digest), String(sent))
        XCTAssertEqual(names("tmp"), [])
        let accepted = try harness.auditEvents().first { $0["event"] as? String == "accepted" }
        XCTAssertEqual(accepted?["message_id"] as? String, "<large@example.edu>", "the Message-ID comes from the header section")
        await harness.stop()
    }

    func testOversizedAndAbandonedTransactionsLeaveNoFiles() async throws {
        let harness = try await startGateway(limits: "limits: { max-message-size: 3M }")
        let port = harness.port("device")
        // Too big: refused at the end, and what was written of it is gone.
        let big = try send(port: port, size: 4_000_000)
        XCTAssertTrue(big.contains("reply 552 5.3.4"), big)
        // Abandoned: the client goes away in the middle of DATA, after the message started going to disk.
        let abandoned = try send(port: port, size: 2_500_000, abortAfter: 1_500_000)
        XCTAssertTrue(abandoned.contains("tmp-seen"), "the message was being written while it arrived: \(abandoned)")
        let clean = await waitFor(10) { self.names("tmp").isEmpty }
        XCTAssertTrue(clean, "no partial file left: \(names("tmp"))")
        XCTAssertEqual(names("queue"), [])
        // The gateway still takes a large message after both.
        let ok = try send(port: port, size: 2_000_000)
        XCTAssertTrue(ok.contains("reply 250 2.0.0"), ok)
        let sink = fixture.sink
        let arrived = await waitFor(60) { sink.receivedCount == 1 && harness.gateway.spool?.depth == 0 }
        XCTAssertTrue(arrived)
        XCTAssertEqual(names("tmp"), [])
        await harness.stop()
    }

    /// Policy reads the header section of a streamed message before its body arrives: a spoofed From: is refused
    /// at the end of DATA with nothing left on disk; a missing one is added before the message's own fields.
    func testHeaderFromPolicyAppliesToAStreamedMessage() async throws {
        let harness = try await startGateway()
        let port = harness.port("device")
        let spoofed = try send(port: port, size: 3_000_000, from: "mallory@example.org")
        XCTAssertTrue(spoofed.contains("reply 550 5.7.1"), spoofed)
        XCTAssertEqual(names("tmp"), [])
        XCTAssertEqual(names("queue"), [])
        let missing = try send(port: port, size: 3_000_000, from: "-")
        XCTAssertTrue(missing.contains("reply 250 2.0.0"), missing)
        let sent = try XCTUnwrap(missing.split(separator: "\n").first { $0.hasPrefix("sha256 ") }).dropFirst(7)
        let sink = fixture.sink
        let arrived = await waitFor(60) { sink.receivedCount == 1 && harness.gateway.spool?.depth == 0 }
        XCTAssertTrue(arrived)
        let text = String(buffer: try XCTUnwrap(sink.messages.first?.data))
        let added = try XCTUnwrap(text.range(of: "\r\nFrom: "), "a From: field was added: \(text.prefix(400))")
        let own = try XCTUnwrap(text.range(of: "To: bob@example.edu\r\nSubject: large scan"))
        XCTAssertLessThan(added.lowerBound, own.lowerBound, "the added field comes before the message's own")
        let digest = try Shell.run(["sha256sum"], input: Data(text[own.lowerBound...].utf8)).output.prefix(64)
        XCTAssertEqual(String(digest), String(sent))
        await harness.stop()
    }
}
