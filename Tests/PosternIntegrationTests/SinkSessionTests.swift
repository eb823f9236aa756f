import Foundation
import PosternSMTP
import PosternSink
import XCTest

/// `postern sink` speaks SMTP as `SMTPSession` does on the gateway: the relay's tests face a server that
/// keeps the rules of a production one, and a test upstream's faults come in through the session's rules.
final class SinkSessionTests: XCTestCase {
    func testTheSinkRefusesCommandsOutOfOrderAndMailBeforeTLS() async throws {
        let work = FileManager.default.temporaryDirectory.appendingPathComponent("postern-sink-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: work) }
        let fixture = try await SinkFixture.start(outbox: work)
        let client = try ClientSocket(port: fixture.port)
        defer { client.close() }
        XCTAssertEqual(try client.smtpReply().code, 220)
        XCTAssertEqual(try client.command("MAIL FROM:<alice@example.edu>").description, "503 5.5.1 Send EHLO or HELO first")
        XCTAssertEqual(try client.command("STARTTLS").description, "503 5.5.1 Send EHLO first")
        let ehlo = try client.command("EHLO relay.test")
        XCTAssertEqual(ehlo.code, 250)
        XCTAssertTrue(ehlo.lines.contains("STARTTLS") && ehlo.lines.contains("PIPELINING"), "\(ehlo)")
        XCTAssertFalse(ehlo.lines.contains { $0.hasPrefix("AUTH") }, "the sink takes mail from any client certificate its CA signed, without AUTH")
        XCTAssertEqual(try client.command("MAIL FROM:<alice@example.edu>").description, "530 5.7.0 Must issue a STARTTLS command first")
        XCTAssertEqual(try client.command("RCPT TO:<bob@example.org>").description, "503 5.5.1 Need MAIL before RCPT")
        XCTAssertEqual(try client.command("DATA").description, "503 5.5.1 Need MAIL and RCPT before DATA")
        XCTAssertEqual(try client.command("QUIT").description, "221 2.0.0 Bye")
        XCTAssertEqual(fixture.sink.receivedCount, 0)
        await fixture.stop()
    }

    func testFaultsThatAreNotRepliesAreRefusedByTheCommandAndAnsweredAsTemporaryFailures() {
        XCTAssertTrue(SinkFaults.isValidReply("450 4.7.230 throttled"))
        XCTAssertTrue(SinkFaults.isValidReply("550 5.1.1 No such user"))
        XCTAssertFalse(SinkFaults.isValidReply("throttled"))
        XCTAssertFalse(SinkFaults.isValidReply("450 one\r\n250 two"))
    }
}
