import Foundation
import Logging
import PosternCore
import PosternGateway
import PosternPolicy
import PosternRegistration
import XCTest

/// The workflow without HTTP: roles, concurrency of approvals.
final class RegistrationDeskTests: XCTestCase {
    var directory: URL!
    var desk: RegistrationDesk!
    let bob = WebUser(login: "bob", dn: "uid=bob,ou=people,dc=example,dc=edu", isAdmin: false, departments: ["it"])
    let alice = WebUser(login: "alice", dn: "uid=alice,ou=people,dc=example,dc=edu", isAdmin: true, departments: [])

    override func setUp() async throws {
        directory = try Repo.temporaryDirectory("postern-desk")
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        try Repo.copyPolicies(to: policies)
        let configuration = RegistrationFixture.registrationConfiguration(certificates: "/nonexistent", state: directory.appendingPathComponent("state").path)
        desk = try RegistrationDesk(configuration: configuration, policies: try PolicyStore(directory: policies, logger: Logger(label: "test")),
                                    audit: try AuditLog.make(output: directory.appendingPathComponent("audit.jsonl").path))
    }

    override func tearDown() async throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func form(_ device: String, _ address: String) -> RegistrationForm {
        RegistrationForm(fields: Dictionary(uniqueKeysWithValues: RegistrationFixture.form(device: device, address: address)))
    }

    /// The page's recipient rules follow the device files' rules (`DeviceFieldRules`) and land in the device file on approval.
    func testRecipientRulesAreCheckedLikeDeviceFilesAndWrittenOnApproval() throws {
        var outside = form("it-out", "10.96.0.1")
        outside.recipients = "owner *@gmail.com"
        guard case .failure(let errors) = try desk.submit(outside, by: bob) else { return XCTFail("a rule outside the internal domains was accepted") }
        XCTAssertEqual(errors["recipients"], "The recipient rule *@gmail.com is outside the internal domains (example.edu, *.example.edu).")
        var malformed = form("it-bad", "10.96.0.2")
        malformed.recipients = "bob@"
        guard case .failure(let again) = try desk.submit(malformed, by: bob) else { return XCTFail("a malformed rule was accepted") }
        XCTAssertTrue(again["recipients"]?.contains("'bob@' is not a recipient rule") == true, "\(again)")

        var narrowed = form("it-self", "10.96.0.3")
        narrowed.recipients = "owner, *@chem.example.edu"
        guard case .success(let request) = try desk.submit(narrowed, by: bob) else { return XCTFail("valid rules refused") }
        XCTAssertEqual(request.recipients, ["owner", "*@chem.example.edu"])
        let device = try desk.approve(requestID: request.id, by: alice)
        XCTAssertEqual(device.recipients.map(\.description), ["owner", "*@chem.example.edu"])
        let file = directory.appendingPathComponent("policies/devices.d/it/it-self.yaml")
        XCTAssertTrue(try String(contentsOf: file, encoding: .utf8).contains("recipients: [owner, '*@chem.example.edu']\n"))
        // Without rules the file has none: any internal recipient.
        guard case .success(let plain) = try desk.submit(form("it-plain", "10.96.0.4"), by: bob) else { return XCTFail() }
        XCTAssertTrue(try desk.approve(requestID: plain.id, by: alice).recipients.isEmpty)
        XCTAssertFalse(try String(contentsOf: directory.appendingPathComponent("policies/devices.d/it/it-plain.yaml"), encoding: .utf8).contains("recipients"))
    }

    func testRoleMapMatchesGroupNamesAndDNsWithoutCase() {
        let roles = RoleMap(adminGroups: ["postern-admins"], departmentGroups: ["it": ["dept-it"], "chem": ["cn=Dept-Chem, ou=groups,dc=example,dc=edu"]],
                            groupBase: "ou=Groups, dc=example,dc=edu")
        let admin = roles.user(login: "alice", dn: "uid=alice", groups: ["cn=postern-admins,ou=groups,dc=example,dc=edu"])
        XCTAssertEqual(admin?.isAdmin, true)
        let contact = roles.user(login: "bob", dn: "uid=bob", groups: ["CN=dept-it,ou=groups,dc=example,dc=edu", "cn=dept-chem,ou=groups,dc=example,dc=edu"])
        XCTAssertEqual(contact?.isAdmin, false)
        XCTAssertEqual(contact?.departments, ["chem", "it"])
        XCTAssertNil(roles.user(login: "x", dn: "uid=x", groups: ["cn=mail-submitters,ou=groups,dc=example,dc=edu"]))
        // A bare name matches the first RDN only, not an OU further up.
        XCTAssertNil(roles.user(login: "x", dn: "uid=x", groups: ["cn=other,ou=dept-it,dc=example,dc=edu"]))
        // ...and only directly under the group base: not a same-named group in an OU users manage.
        XCTAssertNil(roles.user(login: "x", dn: "uid=x", groups: ["cn=postern-admins,ou=clubs,dc=example,dc=edu",
                                                                  "cn=dept-it,ou=groups,ou=clubs,dc=example,dc=edu"]))
        // Without a base, bare names match nothing; full DNs still do.
        let noBase = RoleMap(adminGroups: ["postern-admins"], departmentGroups: ["chem": ["cn=dept-chem,ou=groups,dc=example,dc=edu"]], groupBase: nil)
        XCTAssertNil(noBase.user(login: "alice", dn: "uid=alice", groups: ["cn=postern-admins,ou=groups,dc=example,dc=edu"]))
        XCTAssertEqual(noBase.user(login: "c", dn: "uid=c", groups: ["cn=dept-chem,ou=groups,dc=example,dc=edu"])?.departments, ["chem"])
    }

    func testConcurrentApprovalsAllLandAndTheFileStaysValid() async throws {
        var ids: [String] = []
        for i in 0..<10 {
            guard case .success(let r) = try desk.submit(form("it-bulk-\(i)", "10.99.0.\(i + 1)"), by: bob) else { return XCTFail("submit \(i)") }
            ids.append(r.id)
        }
        let desk = self.desk!, alice = self.alice
        let outcomes = await withTaskGroup(of: Bool.self) { group -> [Bool] in
            for id in ids + ids {  // every request approved twice at once
                group.addTask { (try? desk.approve(requestID: id, by: alice)) != nil }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        XCTAssertEqual(outcomes.filter { $0 }.count, 10, "each request is approved exactly once")
        let policy = try PolicyLoader.load(directory: desk.policyDirectory).get()
        for i in 0..<10 { XCTAssertEqual(policy.device(forAddress: "10.99.0.\(i + 1)")?.id, "it-bulk-\(i)") }
        XCTAssertTrue(try desk.requests.all().allSatisfy { $0.status == .approved })
    }

    func testTwoRequestsForOneAddressCannotBothBeApproved() throws {
        guard case .success(let first) = try desk.submit(form("it-a", "10.98.0.1"), by: bob) else { return XCTFail() }
        guard case .failure(let errors) = try desk.submit(form("it-b", "10.98.0.1"), by: bob) else { return XCTFail("second pending request for one address") }
        XCTAssertNotNil(errors["address"])
        _ = try desk.approve(requestID: first.id, by: alice)
        guard case .failure(let again) = try desk.submit(form("it-c", "10.98.0.1"), by: bob) else { return XCTFail() }
        XCTAssertEqual(again["address"], "10.98.0.1 is already used by device it-a.")
    }

    func testContactsCannotApproveRevokeOrExtend() throws {
        guard case .success(let r) = try desk.submit(form("it-x", "10.97.0.1"), by: bob) else { return XCTFail() }
        XCTAssertThrowsError(try desk.approve(requestID: r.id, by: bob))
        XCTAssertThrowsError(try desk.revoke(deviceID: "demo-scanner", reason: "no longer used", by: bob))
        XCTAssertThrowsError(try desk.extend(deviceID: "demo-scanner", to: "2027-01-01", by: bob))
        XCTAssertThrowsError(try desk.reject(requestID: r.id, reason: "", by: bob))
        XCTAssertEqual(try desk.requests.all().first?.status, .pending)
    }

    func testExtensionIsBoundedByTheDepartmentSunset() throws {
        // chem's department sunset is 2027-03-31.
        XCTAssertThrowsError(try desk.extend(deviceID: "chem-scanner-1", to: "2027-04-01", by: alice)) { error in
            XCTAssertTrue("\(error)".contains("2027-03-31 at the latest"), "\(error)")
        }
        XCTAssertEqual(try desk.extend(deviceID: "chem-scanner-1", to: "2027-03-31", by: alice).sunset, CalendarDate("2027-03-31"))
    }
}
