import Foundation
import Logging
import NIOConcurrencyHelpers
import PosternGateway
import XCTest

/// Policy through the real listener: reload keeps the old policy when the new one is broken, a device file written
/// by `postern devices add` is picked up by the running gateway, sunset with a test clock.
final class PolicyReloadTests: XCTestCase {
    func copyPolicies() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-policies-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for name in ["policy.yaml", "departments.yaml", "devices.d"] {
            try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent(name), to: directory.appendingPathComponent(name))
        }
        return directory
    }

    func send(_ port: Int, from source: String) throws -> String {
        try Shell.run(["swaks", "--server", "127.0.0.1:\(port)", "--local-interface", source, "--from", "scanner@example.edu",
                       "--to", "bob@example.edu", "--quit-after", "RCPT"]).output
    }

    func testBrokenPolicyIsRefusedAndTheOldOneStays() async throws {
        let policies = try copyPolicies()
        defer { try? FileManager.default.removeItem(at: policies) }
        let harness = try await GatewayHarness.start(policies: policies)
        let port = harness.port("device")
        XCTAssertTrue(try send(port, from: "127.0.0.3").contains("554 5.7.1 127.0.0.3 is not a registered device"))

        // A broken edit: one file with an unknown key, another with an address of demo-scanner's. Refused; the old policy
        // stays, and the device in the file that is fine on its own is not registered either.
        let it = policies.appendingPathComponent("devices.d/it")
        try """
            id: broken-entry
            department: it
            owner: it-helpdesk@example.edu
            location: nowhere
            addresses: [127.0.0.5]
            senders: [scanner@example.edu]
            registered: 2026-01-01
            sunset: 2027-01-01
            colour: blue

            """.write(to: it.appendingPathComponent("broken-entry.yaml"), atomically: true, encoding: .utf8)
        try """
            id: overlapping
            department: it
            owner: it-helpdesk@example.edu
            addresses: [127.0.0.1, 127.0.0.3]
            senders: [scanner@example.edu]
            registered: 2026-01-01
            sunset: 2027-01-01

            """.write(to: it.appendingPathComponent("overlapping.yaml"), atomically: true, encoding: .utf8)
        let errors = try XCTUnwrap(harness.policies.reload(reason: "test"))
        XCTAssertTrue(errors.description.contains("devices.d/it/broken-entry.yaml:9: unknown key 'colour'"), errors.description)
        XCTAssertTrue(errors.description.contains("devices.d/it/overlapping.yaml:4: address 127.0.0.1 of device 'overlapping' overlaps 127.0.0.1 of device 'demo-scanner'"),
                      errors.description)
        XCTAssertTrue(try send(port, from: "127.0.0.1").contains("250 2.1.5"), "the old policy is still in force")
        XCTAssertTrue(try send(port, from: "127.0.0.3").contains("554 5.7.1 127.0.0.3 is not a registered device"))
        XCTAssertTrue(try send(port, from: "127.0.0.5").contains("554 5.7.1 127.0.0.5 is not a registered device"))

        // A valid edit registers 127.0.0.3; a change of the files is picked up without a restart.
        try FileManager.default.removeItem(at: it.appendingPathComponent("broken-entry.yaml"))
        try FileManager.default.removeItem(at: it.appendingPathComponent("overlapping.yaml"))
        try """
            id: lab-printer
            department: it
            owner: it-helpdesk@example.edu
            location: Test lab
            addresses: [127.0.0.3]
            senders: [scanner@example.edu]
            registered: 2026-01-01
            sunset: 2027-06-30

            """.write(to: it.appendingPathComponent("lab-printer.yaml"), atomically: true, encoding: .utf8)
        harness.policies.reloadIfChanged()
        XCTAssertTrue(try send(port, from: "127.0.0.3").contains("250 2.1.5"))
        await harness.stop()
    }

    /// `postern devices add` writes one file; the running gateway's watcher notices it and the device is accepted.
    /// Removing the file (what a revocation does) refuses it again.
    func testADeviceAddedWithTheCLIIsAcceptedByTheRunningGateway() async throws {
        let policies = try copyPolicies()
        defer { try? FileManager.default.removeItem(at: policies) }
        let harness = try await GatewayHarness.start(policies: policies)
        let port = harness.port("device")
        XCTAssertTrue(try send(port, from: "127.0.0.4").contains("554 5.7.1 127.0.0.4 is not a registered device"))
        let added = try Shell.run([Repo.posternBinary.path, "devices", "add", "--policies", policies.path, "--id", "it-scanner-4", "--department", "it",
                                   "--owner", "it-helpdesk@example.edu", "--location", "Test lab", "--address", "127.0.0.4",
                                   "--sender", "scanner@example.edu", "--sunset", "2027-06-30"])
        XCTAssertEqual(added.status, 0, added.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: policies.appendingPathComponent("devices.d/it/it-scanner-4.yaml").path))
        // What the watcher does every two seconds.
        harness.policies.reloadIfChanged()
        XCTAssertTrue(try send(port, from: "127.0.0.4").contains("250 2.1.5"))
        try FileManager.default.removeItem(at: policies.appendingPathComponent("devices.d/it/it-scanner-4.yaml"))
        harness.policies.reloadIfChanged()
        XCTAssertTrue(try send(port, from: "127.0.0.4").contains("554 5.7.1 127.0.0.4 is not a registered device"))
        await harness.stop()
    }

    func testExpiredDeviceIsRefusedWithDateAndAdvice() async throws {
        // The shipped demo-scanner is registered until 2027-08-31 (the global sunset too), Europe/Berlin.
        let clock = NIOLockedValueBox(ISO8601DateFormatter().date(from: "2027-08-31T21:59:00Z")!)  // 23:59 in Berlin
        let harness = try await GatewayHarness.start(now: { clock.withLockedValue { $0 } })
        let port = harness.port("device")
        XCTAssertTrue(try send(port, from: "127.0.0.1").contains("250 2.1.5"), "the last valid day still works")
        clock.withLockedValue { $0 = ISO8601DateFormatter().date(from: "2027-08-31T22:00:00Z")! }  // 00:00 on 1 September in Berlin
        let refused = try send(port, from: "127.0.0.1")
        XCTAssertTrue(refused.contains("554 5.7.1 Device demo-scanner registration expired on 2027-08-31; use TLS submission on port 587"), refused)
        await harness.stop()
    }
}

/// Owners are reminded before their device's sunset, once per reminder period, through the delivery path.
final class SunsetReminderTests: XCTestCase {
    func testOwnerIsRemindedOncePerPeriod() async throws {
        // demo-scanner (owner it-helpdesk@example.edu) ends on 2027-08-31; reminders 30, 7 and 1 days before.
        let clock = NIOLockedValueBox(ISO8601DateFormatter().date(from: "2027-07-15T10:00:00Z")!)
        let now: @Sendable () -> Date = { clock.withLockedValue { $0 } }
        let harness = try await GatewayHarness.start(now: now)
        let reminders = SunsetReminders(policies: harness.policies, target: harness.gateway.deliveryTarget,
                                        stateFile: harness.gateway.stateFile("sunset-reminders.json"), hostname: "gw.test",
                                        now: now, logger: Logger(label: "test"))
        var sent = await reminders.sendDue()
        XCTAssertFalse(sent.contains { $0.hasPrefix("demo-scanner|") }, "47 days before: no reminder yet")
        clock.withLockedValue { $0 = ISO8601DateFormatter().date(from: "2027-08-02T10:00:00Z")! }  // 29 days left
        sent = await reminders.sendDue()
        XCTAssertTrue(sent.contains("demo-scanner|30|2027-08-31"), "\(sent)")
        let again = await reminders.sendDue()
        XCTAssertFalse(again.contains { $0.hasPrefix("demo-scanner|") }, "not twice in one period")
        clock.withLockedValue { $0 = ISO8601DateFormatter().date(from: "2027-08-26T10:00:00Z")! }  // 5 days left
        let week = await reminders.sendDue()
        XCTAssertTrue(week.contains("demo-scanner|7|2027-08-31"), "\(week)")
        let texts = try harness.outboxFiles().map { try String(contentsOf: $0, encoding: .utf8) }
        let forScanner = texts.filter { $0.contains("Subject: Device demo-scanner: mail registration ends on 2027-08-31") }
        XCTAssertEqual(forScanner.count, 2)
        XCTAssertTrue(forScanner.allSatisfy { $0.contains("To: <it-helpdesk@example.edu>") && $0.contains("port 587") })
        await harness.stop()
    }
}
