import Foundation
import NIOConcurrencyHelpers
import XCTest

/// Policy through the real listener: reload keeps the old policy when the new one is broken, sunset with a test clock.
final class PolicyReloadTests: XCTestCase {
    func copyPolicies() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-policies-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for name in ["policy.yaml", "departments.yaml", "devices.yaml"] {
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

        // A broken edit: an overlapping address and an unknown key. Refused; the old policy stays.
        let devices = policies.appendingPathComponent("devices.yaml")
        let original = try String(contentsOf: devices, encoding: .utf8)
        try (original + """

              - id: broken-entry
                department: it
                owner: it-helpdesk@example.edu
                location: nowhere
                addresses: [127.0.0.1]
                senders: [scanner@example.edu]
                registered: 2026-01-01
                sunset: 2027-01-01
                colour: blue

            """).write(to: devices, atomically: true, encoding: .utf8)
        let errors = harness.policies.reload(reason: "test")
        XCTAssertNotNil(errors)
        XCTAssertTrue(errors!.description.contains("devices.yaml:"), errors!.description)
        XCTAssertTrue(try send(port, from: "127.0.0.1").contains("250 2.1.5"), "the old policy is still in force")

        // A valid edit registers 127.0.0.3; a change of the files is picked up without a restart.
        try (original + """

              - id: lab-printer
                department: it
                owner: it-helpdesk@example.edu
                location: Test lab
                addresses: [127.0.0.3]
                senders: [scanner@example.edu]
                registered: 2026-01-01
                sunset: 2027-06-30

            """).write(to: devices, atomically: true, encoding: .utf8)
        harness.policies.reloadIfChanged()
        XCTAssertTrue(try send(port, from: "127.0.0.3").contains("250 2.1.5"))
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
