import Foundation
import PosternPolicy
import Testing

/// A load may take the device entries of an unchanged devices.yaml from the previous load; the result
/// must be what a fresh load gives.
@Suite struct DevicesReuseTests {
    func write(_ text: String, _ name: String, in fixture: PolicyFixture) throws {
        try Data(text.utf8).write(to: fixture.directory.appendingPathComponent(name))
    }

    @Test func unchangedDevicesWithAChangedPolicyGiveWhatAFreshLoadGives() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let (first, parsed) = PolicyLoader.load(directory: fixture.directory, reusing: nil)
        let before = try first.get()
        #expect(before.effectiveSunset(for: before.device(id: "demo-scanner")!).source == .device("demo-scanner"))
        try write(PolicyFixture.policyYAML.replacingOccurrences(of: "global: 2027-08-31", with: "global: 2027-02-28"),
                  PolicyLoader.policyFile, in: fixture)
        let (second, parsedAgain) = PolicyLoader.load(directory: fixture.directory, reusing: parsed)
        let after = try second.get()
        #expect(parsedAgain != nil)
        #expect(after.effectiveSunset(for: after.device(id: "demo-scanner")!).source == .global)
        #expect(after.device(forAddress: "10.1.2.3")?.id == "chem-scanner-1")
        #expect(after.device(forAddress: "2001:db8:2::40")?.id == "phys-plotter")
        let fresh = try PolicyLoader.load(directory: fixture.directory).get()
        #expect(after.devices == fresh.devices)
        let now = berlinTime("2027-03-15")
        let input = DecisionInput(endpoint: .device, clientAddress: "127.0.0.1", tls: false, now: now)
        #expect(after.decide(input) == fresh.decide(input))
        #expect(after.decide(input).rule == "sunset: global 2027-02-28")
    }

    @Test func changedDevicesAreParsedAgain() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let (_, parsed) = PolicyLoader.load(directory: fixture.directory, reusing: nil)
        try write(PolicyFixture.devicesYAML.replacingOccurrences(of: "addresses: [10.2.9.9]", with: "addresses: [10.2.9.10]"),
                  PolicyLoader.devicesFile, in: fixture)
        let policy = try PolicyLoader.load(directory: fixture.directory, reusing: parsed).policy.get()
        #expect(policy.device(forAddress: "10.2.9.9") == nil)
        #expect(policy.device(forAddress: "10.2.9.10")?.id == "phys-old")
    }

    @Test func issuesOfAnUnchangedDevicesFileAreReportedAgainAndDepartmentsAreCheckedAgain() throws {
        let devices = PolicyFixture.devicesYAML + "\n  - id: bio-scanner\n    department: bio\n    owner: x@example.edu\n" +
            "    addresses: [10.5.0.1]\n    senders: [scan@bio.example.edu]\n    registered: 2026-01-01\n    sunset: 2026-12-31\n" +
            "  - id: broken\n    department: it\n    owner: nobody\n    addresses: [10.5.0.300]\n    senders: [a@b.c]\n" +
            "    registered: 2026-01-01\n    sunset: 2026-12-31\n"
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        let (first, parsed) = PolicyLoader.load(directory: fixture.directory, reusing: nil)
        let firstIssues = try #require(first.failure).issues.map(\.description)
        #expect(firstIssues.count == 3, "\(firstIssues)")  // unknown department, owner, address
        let (second, parsedAgain) = PolicyLoader.load(directory: fixture.directory, reusing: parsed)
        #expect(try #require(second.failure).issues.map(\.description) == firstIssues)
        // Adding the department removes exactly that issue, with devices.yaml unchanged.
        try write(PolicyFixture.departmentsYAML + "\n  - id: bio\n    name: Biology\n", PolicyLoader.departmentsFile, in: fixture)
        let third = PolicyLoader.load(directory: fixture.directory, reusing: parsedAgain).policy
        let thirdIssues = try #require(third.failure).issues.map(\.description)
        #expect(thirdIssues == firstIssues.filter { !$0.contains("unknown department") })
        #expect(thirdIssues == PolicyLoader.load(directory: fixture.directory).failure?.issues.map(\.description))
    }

    @Test func theSameTextInAnotherDirectoryIsReadThere() throws {
        let devices = PolicyFixture.devicesYAML.replacingOccurrences(of: "addresses: [10.2.9.9]", with: "addresses: [10.2.9.300]")
        let one = try PolicyFixture(devices: devices)
        defer { one.remove() }
        let two = try PolicyFixture(devices: devices)
        defer { two.remove() }
        let (_, parsed) = PolicyLoader.load(directory: one.directory, reusing: nil)
        let issues = try #require(PolicyLoader.load(directory: two.directory, reusing: parsed).policy.failure).issues
        #expect(issues.map(\.file) == [two.directory.relativePath + "/devices.yaml"])
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}
