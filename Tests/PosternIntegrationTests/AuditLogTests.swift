import Foundation
import XCTest

/// The audit trail through the real listener: JSON lines with every field, and never message content.
final class AuditLogTests: XCTestCase {
    func testAcceptedDeviceMessageIsAuditedWithoutContent() async throws {
        let harness = try await GatewayHarness.start()
        let body = harness.directory.appendingPathComponent("payslip.eml")
        try "From: scanner@example.edu\r\nSubject: Payslip November SECRET-SUBJECT\r\nMessage-ID: <payslip-1@example.edu>\r\n\r\nSalary SECRET-BODY 4711\r\n"
            .write(to: body, atomically: true, encoding: .utf8)
        let output = try Shell.run(["swaks", "--server", "127.0.0.1:\(harness.port("device"))", "--from", "scanner@example.edu",
                                    "--to", "bob@example.edu,carol@chem.example.edu", "--data", body.path]).output
        XCTAssertTrue(output.contains("queued as"), output)
        _ = try Shell.run(["swaks", "--server", "127.0.0.1:\(harness.port("device"))", "--local-interface", "127.0.0.2",
                           "--from", "scanner@example.edu", "--to", "bob@example.edu"])
        let raw = try String(contentsOf: harness.directory.appendingPathComponent("audit.jsonl"), encoding: .utf8)
        let events = try harness.auditEvents()
        await harness.stop()
        XCTAssertFalse(raw.contains("SECRET"), "no subject or body in the audit log")
        let connections = events.filter { $0["event"] as? String == "connection" }
        XCTAssertEqual(connections.count, 2)
        XCTAssertEqual(connections.first?["listener"] as? String, "device")
        XCTAssertEqual(connections.first?["client"] as? String, "127.0.0.1")
        XCTAssertNotNil(connections.first?["session"] as? String)
        let accepted = try XCTUnwrap(events.first { $0["event"] as? String == "accepted" })
        XCTAssertEqual(accepted["message_id"] as? String, "<payslip-1@example.edu>")
        XCTAssertEqual(accepted["sender"] as? String, "<scanner@example.edu>")
        XCTAssertEqual(accepted["recipients"] as? [String], ["<bob@example.edu>", "<carol@chem.example.edu>"])
        XCTAssertNotNil(accepted["queue_id"] as? String)
        XCTAssertNotNil(Int(accepted["size"] as? String ?? ""))
        XCTAssertEqual(accepted["session"] as? String, connections.first?["session"] as? String, "one session id ties the events")
        let decisions = events.filter { $0["event"] as? String == "decision" }
        XCTAssertTrue(decisions.contains { $0["stage"] as? String == "rcpt" && $0["device"] as? String == "demo-scanner"
                && ($0["rule"] as? String ?? "").contains("internal-domains") && $0["result"] as? String == "accept" })
        XCTAssertTrue(decisions.contains { $0["result"] as? String == "554 5.7.1" && ($0["rule"] as? String ?? "").contains("127.0.0.2") })
        XCTAssertTrue(events.allSatisfy { $0["time"] is String })
    }
}
