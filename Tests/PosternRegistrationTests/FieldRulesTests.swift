import Foundation
import Logging
import PosternCore
import PosternGateway
import PosternPolicy
import PosternRegistration
import PosternTestSupport
import XCTest

/// One set of field rules for device registrations, and the same answers from the page, `postern devices add`
/// and `postern check`: senders in the department's domains (the internal ones when it has none), an internal
/// contact, plain text without controls, line separators or bidi controls.
final class FieldRulesTests: XCTestCase {
    /// Values the rules refuse, by what they break.
    static let foreignSender = "payroll@gmail.com"
    static let outsideChem = "dean@med.example.edu"
    static let externalContact = "contractor@gmail.com"
    static let controlTexts = ["Room 1\u{0085}B", "Room 1\u{2028}B", "Room 1\u{2029}B", "Lab \u{202E}1.2", "Lab \u{2066}x\u{2069}", "Tab\there", "C1 \u{009B}x"]

    func testThePageRefusesWhatTheRulesRefuseAndHighlightsSendersOutsideTheDepartmentsDomains() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let bob = try fixture.client()
            _ = try await bob.login("bob", "bob-demo-pass")
            let token = try await bob.sessionToken()
            /// The page the POST leads to: the form again with its messages, or the list with the new request.
            func attempt(_ changes: [String: String]) async throws -> (location: String?, page: HTTPResult) {
                let form = RegistrationFixture.form().map { ($0.0, changes[$0.0] ?? $0.1) }
                let (redirect, page) = try await bob.postAndFollow("/register", [("csrf", token)] + form)
                return (redirect.headers("Location").first, page)
            }
            func error(_ page: HTTPResult, _ field: String) -> String? {
                guard let r = page.body.range(of: #"<span class="error" id="error-\#(field)">[^<]*</span>"#, options: .regularExpression) else { return nil }
                return String(page.body[r])
            }
            let foreign = try await attempt(["sender": Self.foreignSender])
            XCTAssertEqual(foreign.location, "/register")
            XCTAssertTrue(error(foreign.page, "sender")?.contains("outside the internal domains") == true, foreign.page.body)
            let contact = try await attempt(["contact": Self.externalContact])
            XCTAssertTrue(error(contact.page, "contact")?.contains("not an internal address") == true, contact.page.body)
            for text in Self.controlTexts {
                for field in ["model", "location", "justification"] {
                    let (location, page) = try await attempt([field: text])
                    XCTAssertEqual(location, "/register", "\(field) \(text.debugDescription)")
                    XCTAssertTrue(error(page, field)?.contains("is not allowed") == true, "\(field) \(text.debugDescription): \(page.body)")
                }
            }
            // Line breaks are fine in the justification (a text area), nowhere else.
            let multiline = try await attempt(["justification": "No TLS.\r\nReplacement ordered.", "device": "it-scanner-10", "address": "127.0.0.10"])
            XCTAssertEqual(multiline.location, "/devices", multiline.page.body)
            XCTAssertEqual(try fixture.desk.requests.all().count, 1, "only the valid request was stored")

            // IT Services lists no domains of its own: any internal sender passes, and the approver sees it highlighted.
            let dean = try await attempt(["sender": "dean@chem.example.edu"])
            XCTAssertEqual(dean.location, "/devices", dean.page.body)
            let alice = try fixture.client()
            _ = try await alice.login("alice", "alice-demo-pass")
            let page = try await alice.get("/devices")
            guard let cell = page.body.range(of: #"<td id="sender-it-scanner-9" class="outside-domains" data-label="Sender">dean@chem.example.edu<br><small class="sender-note">[^<]*</small>"#,
                                             options: .regularExpression) else { return XCTFail("no highlighted sender:\n\(page.body)") }
            XCTAssertTrue(page.body[cell].contains("departments.yaml lists none for it"), String(page.body[cell]))
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testTheDeskHoldsADepartmentToItsOwnDomains() throws {
        let directory = try Repo.temporaryDirectory("postern-rules")
        defer { try? FileManager.default.removeItem(at: directory) }
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        try Repo.copyPolicies(to: policies)
        let desk = try RegistrationDesk(configuration: RegistrationFixture.registrationConfiguration(certificates: "/nonexistent", state: directory.appendingPathComponent("state").path),
                                        policies: try PolicyStore(directory: policies, logger: Logger(label: "test")), audit: try AuditLog.make(output: directory.appendingPathComponent("audit.jsonl").path))
        let contact = WebUser(login: "carol", dn: "uid=carol", isAdmin: false, departments: ["chem"])
        func form(_ sender: String, device: String, address: String) -> RegistrationForm {
            var f = RegistrationForm(fields: Dictionary(uniqueKeysWithValues: RegistrationFixture.form(device: device, address: address)))
            f.department = "chem"
            f.sender = sender
            f.contact = "j.doe@chem.example.edu"
            f.sunset = "2027-03-31"
            return f
        }
        guard case .failure(let errors) = try desk.submit(form(Self.outsideChem, device: "chem-a", address: "10.77.1.1"), by: contact) else {
            return XCTFail("chem registered a sender in med's domain")
        }
        XCTAssertEqual(errors["sender"], "The sender dean@med.example.edu is outside department chem's domains (chem.example.edu).")
        guard case .failure(let internalButNotChem) = try desk.submit(form("scan@example.edu", device: "chem-b", address: "10.77.1.2"), by: contact) else {
            return XCTFail("chem registered a sender outside its domains")
        }
        XCTAssertNotNil(internalButNotChem["sender"])
        guard case .success(let ok) = try desk.submit(form("scanner7@chem.example.edu", device: "chem-c", address: "10.77.1.3"), by: contact) else {
            return XCTFail("a sender in chem's own domain was refused")
        }
        XCTAssertNil(desk.senderNote(ok, policy: try desk.policy()), "nothing to highlight inside the department's domains")
    }

    func testDevicesAddRefusesWhatThePageRefuses() async throws {
        let directory = try Repo.temporaryDirectory("postern-add")
        defer { try? FileManager.default.removeItem(at: directory) }
        try Repo.copyPolicies(to: directory)
        var next = 0
        func add(id: String, department: String = "chem", owner: String = "j.doe@chem.example.edu", location: String = "Lab 1",
                 sender: String) async throws -> (status: Int32, output: String) {
            next += 1
            return try await runProgram([Repo.posternBinary.path, "devices", "add", "--policies", directory.path, "--id", id, "--department", department,
                                         "--owner", owner, "--location", location, "--address", "10.88.0.\(next)", "--sender", sender])
        }
        let foreign = try await add(id: "chem-x1", sender: Self.foreignSender)
        XCTAssertEqual(foreign.status, 1)
        XCTAssertTrue(foreign.output.contains("device 'chem-x1': sender payroll@gmail.com is outside department chem's domains (chem.example.edu)"), foreign.output)
        let outside = try await add(id: "chem-x2", sender: Self.outsideChem)
        XCTAssertEqual(outside.status, 1, outside.output)
        let owner = try await add(id: "chem-x3", owner: Self.externalContact, sender: "x3@chem.example.edu")
        XCTAssertEqual(owner.status, 1)
        XCTAssertTrue(owner.output.contains("owner of device 'chem-x3': contractor@gmail.com is not an internal address"), owner.output)
        for (n, text) in Self.controlTexts.enumerated() {
            let result = try await add(id: "chem-t\(n)", location: text, sender: "t\(n)@chem.example.edu")
            XCTAssertEqual(result.status, 1, text.debugDescription)
            XCTAssertTrue(result.output.contains("location of device 'chem-t\(n)':") && result.output.contains("is not allowed"), result.output)
        }
        let it = try await add(id: "it-x4", department: "it", owner: "it-helpdesk@example.edu", sender: "dean@chem.example.edu")
        XCTAssertEqual(it.status, 0, "a department without domains of its own may use any internal sender: \(it.output)")
        let good = try await add(id: "chem-x5", sender: "x5@chem.example.edu")
        XCTAssertEqual(good.status, 0, good.output)
        let files = try Repo.deviceFiles(in: directory)
        XCTAssertNotNil(files["it/it-x4.yaml"])
        XCTAssertNotNil(files["chem/chem-x5.yaml"])
        XCTAssertEqual(files.count, 14, "only the two valid devices were added: \(files.keys.sorted())")
        XCTAssertTrue(try FileManager.default.contentsOfDirectory(atPath: directory.appendingPathComponent("devices.d/chem").path)
            .allSatisfy { !$0.contains(".tmp-") }, "no temporary file is left behind")
    }

    func testPostternCheckReportsEntriesThatBreakTheRulesWithFileAndLine() async throws {
        let directory = try Repo.temporaryDirectory("postern-check")
        defer { try? FileManager.default.removeItem(at: directory) }
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        try Repo.copyPolicies(to: policies)
        let certs = directory.appendingPathComponent("certs").path
        try TestSlapd.makeDevCertificates(in: certs)
        let config = directory.appendingPathComponent("postern.yaml")
        try """
            policies: policies
            tls: { certificate: \(certs)/server.pem, key: \(certs)/server.key }
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:0" }
            """.write(to: config, atomically: true, encoding: .utf8)
        let clean = try await runProgram([Repo.posternBinary.path, "check", "--config", config.path])
        XCTAssertEqual(clean.status, 0, "the shipped policy follows its own rules: \(clean.output)")

        let chem = policies.appendingPathComponent("devices.d/chem")
        try """
            id: chem-spoofer
            department: chem
            owner: contractor@gmail.com
            location: Lab 2
            addresses: [10.66.0.1]
            senders: [payroll@gmail.com, dean@med.example.edu]
            registered: 2026-01-01
            sunset: 2027-01-01

            """.write(to: chem.appendingPathComponent("chem-spoofer.yaml"), atomically: true, encoding: .utf8)
        try """
            id: chem-trojan
            department: chem
            owner: j.doe@chem.example.edu
            location: "Lab\\u2028B"
            addresses: [10.66.0.2]
            senders: [trojan@chem.example.edu]
            registered: 2026-01-01
            sunset: 2027-01-01

            """.write(to: chem.appendingPathComponent("chem-trojan.yaml"), atomically: true, encoding: .utf8)
        let departments = policies.appendingPathComponent("departments.yaml")
        let departmentsText = try String(contentsOf: departments, encoding: .utf8)
            .replacingOccurrences(of: "domains: [phys.example.edu]", with: "domains: [phys.example.edu, gmail.com]")
        try departmentsText.write(to: departments, atomically: true, encoding: .utf8)
        let broken = try await runProgram([Repo.posternBinary.path, "check", "--config", config.path])
        XCTAssertEqual(broken.status, 2, broken.output)
        let spoofer = "devices.d/chem/chem-spoofer.yaml"
        for expected in [
            spoofer + ":6: error: device 'chem-spoofer': sender payroll@gmail.com is outside department chem's domains (chem.example.edu)",
            spoofer + ":6: error: device 'chem-spoofer': sender dean@med.example.edu is outside department chem's domains",
            spoofer + ":3: error: owner of device 'chem-spoofer': contractor@gmail.com is not an internal address",
            "devices.d/chem/chem-trojan.yaml:4: error: location of device 'chem-trojan': line or paragraph separator U+2028 is not allowed",
            "departments.yaml:",
            "department 'phys': domain gmail.com is not inside the internal domains",
        ] {
            XCTAssertTrue(broken.output.contains(expected), "missing \(expected.debugDescription) in:\n\(broken.output)")
        }

        // A devices.yaml left beside devices.d is not ignored: check says to migrate it.
        try FileManager.default.removeItem(at: chem.appendingPathComponent("chem-spoofer.yaml"))
        try FileManager.default.removeItem(at: chem.appendingPathComponent("chem-trojan.yaml"))
        try String(contentsOf: departments, encoding: .utf8).replacingOccurrences(of: ", gmail.com", with: "")
            .write(to: departments, atomically: true, encoding: .utf8)
        try "devices: []\n".write(to: policies.appendingPathComponent("devices.yaml"), atomically: true, encoding: .utf8)
        let leftover = try await runProgram([Repo.posternBinary.path, "check", "--config", config.path])
        XCTAssertEqual(leftover.status, 2, leftover.output)
        XCTAssertTrue(leftover.output.contains("devices.yaml:0: error: devices.yaml is no longer read")
                      && leftover.output.contains("run `postern devices migrate --policies "), leftover.output)
    }
}
