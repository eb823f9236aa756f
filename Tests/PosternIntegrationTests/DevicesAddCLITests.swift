import Foundation
import XCTest

/// `postern devices add` with the real binary follows the registration page's rules (one validation path): a sunset
/// from today to the last day the department's and the global sunset allow (the default), senders in the department's
/// domains, dates that exist. A refusal names the file it did not write, without a line, and exits 1.
final class DevicesAddCLITests: XCTestCase {
    /// The shipped policies with the sunsets moved far ahead (global 2099-08-31, chem 2099-03-31), so that the test
    /// does not depend on today's date.
    func policies() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-add-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent("devices.d"), to: directory.appendingPathComponent("devices.d"))
        for (name, from, to) in [("policy.yaml", "global: 2027-08-31", "global: 2099-08-31"), ("departments.yaml", "sunset: 2027-03-31", "sunset: 2099-03-31")] {
            let shipped = try String(contentsOf: Repo.policies.appendingPathComponent(name), encoding: .utf8)
            XCTAssertTrue(shipped.contains(from), "the shipped \(name) has \(from)")
            try shipped.replacingOccurrences(of: from, with: to).write(to: directory.appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
        return directory
    }

    func add(_ policies: URL, id: String, department: String, sender: String, sunset: String?) throws -> Shell.Result {
        let owner = department == "chem" ? "j.doe@chem.example.edu" : "it-helpdesk@example.edu"
        return try Shell.run([Repo.posternBinary.path, "devices", "add", "--policies", policies.path, "--id", id, "--department", department,
                              "--owner", owner, "--address", "10.77.0.\(id.count)", "--sender", sender] + (sunset.map { ["--sunset", $0] } ?? []))
    }

    func testRefusalsFollowThePagesRulesAndNameTheFileThatWasNotWritten() throws {
        let policies = try policies()
        defer { try? FileManager.default.removeItem(at: policies) }
        let devices = policies.appendingPathComponent("devices.d").path
        let cases: [(id: String, department: String, sender: String, sunset: String, message: String)] = [
            ("chem-late", "chem", "scan@chem.example.edu", "2099-06-30",
             "device 'chem-late': the rules allow 2099-03-31 at the latest for department chem (department chem's sunset), not 2099-06-30"),
            ("it-late", "it", "scan@example.edu", "2099-09-01",
             "device 'it-late': the rules allow 2099-08-31 at the latest for department it (the global sunset), not 2099-09-01"),
            ("it-past", "it", "scan@example.edu", "2020-01-01", "device 'it-past': sunset 2020-01-01 cannot be in the past (today is "),
            ("it-gmail", "it", "payroll@gmail.com", "2099-01-01",
             "device 'it-gmail': sender payroll@gmail.com is outside the internal domains (example.edu, *.example.edu)"),
            ("chem-med", "chem", "dean@med.example.edu", "2099-01-01",
             "device 'chem-med': sender dean@med.example.edu is outside department chem's domains (chem.example.edu)"),
        ]
        for c in cases {
            let result = try add(policies, id: c.id, department: c.department, sender: c.sender, sunset: c.sunset)
            XCTAssertEqual(result.status, 1, result.output)
            let file = "\(devices)/\(c.department)/\(c.id).yaml"
            XCTAssertTrue(result.output.contains("\(file): error: \(c.message)"), "\(c.id): \(result.output)")
            XCTAssertNil(result.output.range(of: "\(c.id).yaml:[0-9]", options: .regularExpression), "no line of a file not written: \(result.output)")
            XCTAssertTrue(result.output.hasSuffix("device \(c.id) was not added\n"), result.output)
            XCTAssertFalse(FileManager.default.fileExists(atPath: file))
        }
        // A day that does not exist is a usage error (64), said as such.
        let impossible = try add(policies, id: "it-feb", department: "it", sender: "scan@example.edu", sunset: "2099-02-30")
        XCTAssertEqual(impossible.status, 64, impossible.output)
        XCTAssertTrue(impossible.output.contains("--sunset: 2099-02-30 does not exist: February 2099 has 28 days"), impossible.output)
        let notADate = try add(policies, id: "it-feb", department: "it", sender: "scan@example.edu", sunset: "30.02.2099")
        XCTAssertEqual(notADate.status, 64, notADate.output)
        XCTAssertTrue(notADate.output.contains("--sunset: '30.02.2099' is not a date: write YYYY-MM-DD"), notADate.output)
        XCTAssertEqual(try FileManager.default.subpathsOfDirectory(atPath: devices).filter { $0.hasSuffix(".yaml") }.count, 12, "nothing was added")
    }

    func testWithoutASunsetTheDeviceGetsTheLastDayTheRulesAllow() throws {
        let policies = try policies()
        defer { try? FileManager.default.removeItem(at: policies) }
        let chem = try add(policies, id: "chem-default", department: "chem", sender: "scan@chem.example.edu", sunset: nil)
        XCTAssertEqual(chem.status, 0, chem.output)
        XCTAssertTrue(chem.output.contains("devices.d/chem/chem-default.yaml: registered "), chem.output)
        XCTAssertTrue(chem.output.hasSuffix(", sunset 2099-03-31\n"), chem.output)
        let it = try add(policies, id: "it-default", department: "it", sender: "scan@example.edu", sunset: nil)
        XCTAssertEqual(it.status, 0, it.output)
        XCTAssertTrue(it.output.hasSuffix(", sunset 2099-08-31\n"), it.output)
        let text = try String(contentsOf: policies.appendingPathComponent("devices.d/chem/chem-default.yaml"), encoding: .utf8)
        XCTAssertTrue(text.contains("\nsunset: 2099-03-31\n"), text)

        // And it lists as it was written; revoked, it lists as revoked.
        let revoked = try Shell.run([Repo.posternBinary.path, "devices", "revoke", "chem-default", "--policies", policies.path, "--reason", "test over", "--by", "ci"])
        XCTAssertEqual(revoked.status, 0, revoked.output)
        let list = try Shell.run([Repo.posternBinary.path, "devices", "list", "--json", "--policies", policies.path])
        XCTAssertEqual(list.status, 0, list.output)
        let rows = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(list.output.utf8)) as? [[String: Any]])
        let row = try XCTUnwrap(rows.first { $0["id"] as? String == "chem-default" })
        XCTAssertEqual(row["status"] as? String, "revoked")
        XCTAssertEqual(row["revoked_by"] as? String, "ci")
        XCTAssertEqual(row["revoke_reason"] as? String, "test over")
        XCTAssertEqual(rows.first { $0["id"] as? String == "it-default" }?["status"] as? String, "active")
        let expiring = try Shell.run([Repo.posternBinary.path, "devices", "expiring", "--within", "100000d", "--policies", policies.path])
        XCTAssertFalse(expiring.output.contains("chem-default"), "a revoked device is not expiring: \(expiring.output)")
    }
}
