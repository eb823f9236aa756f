import Foundation
import PosternPolicy
import Testing

/// Policy files that reached a trap (issue #13, "no reachable traps") or could hold a load for minutes: each is
/// refused with the file, the line and a fix, or loaded, and the process goes on.
@Suite struct HostilePolicyInputTests {
    static let chem = "chem/chem-scanner-1.yaml"

    /// The fixture's devices with chem-scanner-1's file changed by `change`.
    static func devices(_ change: (String) -> String) -> [String: String] {
        var devices = PolicyFixture.deviceFiles
        devices[chem] = devices[chem].map(change)
        return devices
    }

    /// Sizes whose number fits an Int but whose product with K/M/G does not (`v * f` used to trap),
    /// and one whose number does not fit at all.
    static let overflowingSizes = ["9999999999G", "8589934592G", "9007199254740992M", "9223372036854775807K", "99999999999999999999G"]

    @Test(arguments: overflowingSizes)
    func listenerMaxMessageSizeThatOverflowsIsRefusedWithFileLineAndFix(_ size: String) throws {
        let policy = PolicyFixture.policyYAML.replacingOccurrences(of: "device: {enabled: true, max-message-size: 20M}",
                                                                  with: "device: {enabled: true, max-message-size: \(size)}")
        #expect(policy.contains(size))
        let fixture = try PolicyFixture(policy: policy)
        defer { fixture.remove() }
        let issues = fixture.errors()
        let issue = try #require(issues.first { $0.message.contains("'\(size)' is not a size for max-message-size") }, "got: \(issues)")
        #expect(issue.file == fixture.directory.relativePath + "/policy.yaml")
        #expect(issue.line == 11)
        #expect(issue.fix.contains("e.g. 10M"))
    }

    @Test(arguments: overflowingSizes)
    func deviceMaxMessageSizeThatOverflowsIsRefusedWithFileLineAndFix(_ size: String) throws {
        let fixture = try PolicyFixture(devices: Self.devices { $0.replacingOccurrences(of: "max-message-size: 10M", with: "max-message-size: \(size)") })
        defer { fixture.remove() }
        let issues = fixture.errors()
        let issue = try #require(issues.first { $0.message.contains("'\(size)' is not a size for max-message-size") }, "got: \(issues)")
        #expect(issue.file == fixture.display("devices.d/" + Self.chem))
        #expect(issue.line == 9)
    }

    /// The largest size that fits is a size like any other.
    @Test func largestSizeThatFitsLoads() throws {
        let fixture = try PolicyFixture(devices: Self.devices { $0.replacingOccurrences(of: "max-message-size: 10M", with: "max-message-size: 8589934591G") })
        defer { fixture.remove() }
        let policy = try fixture.load()
        let device = try #require(policy.device(id: "chem-scanner-1"))
        #expect(device.maxMessageSize == 8_589_934_591 << 30)
        #expect(policy.messageSizeLimit(endpoint: .device, device: device) == 20 << 20)
    }

    /// `N/hour` with an N that does not fit is not a rate; the largest that fits is one.
    @Test func rateLimitsAtTheEdgeOfIntAreReadOrRefused() throws {
        let refused = try PolicyFixture(devices: Self.devices { $0.replacingOccurrences(of: "max-message-size: 10M", with: "max-rate: 99999999999999999999/hour") })
        defer { refused.remove() }
        let issue = try #require(refused.errors().first { $0.message.contains("is not a rate") }, "got: \(refused.errors())")
        #expect(issue.line == 9)

        let loaded = try PolicyFixture(devices: Self.devices { $0.replacingOccurrences(of: "max-message-size: 10M", with: "max-rate: 9223372036854775807/second") })
        defer { loaded.remove() }
        let rate = try #require(try loaded.load().device(id: "chem-scanner-1")?.maxRate)
        #expect(rate.count == Int.max && rate.seconds == 1)
    }

    // MARK: Files that would hold a load

    /// Yams checks a mapping's keys for duplicates by hashing them, once per path through aliased anchors: this
    /// file (350 bytes) took 0.3 s with five levels, and each further level takes ten times longer. Anchors are
    /// refused before Yams sees the file.
    @Test(arguments: [PolicyFixture.policyYAML, PolicyFixture.departmentsYAML, PolicyFixture.deviceFiles[chem] ?? ""])
    func anAliasBombIsRefusedBeforeItIsParsed(_ original: String) throws {
        var bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n"
        for i in 1..<12 { bomb += "a\(i): &a\(i) [" + Array(repeating: "*a\(i - 1)", count: 10).joined(separator: ", ") + "]\n" }
        bomb += "? *a11\n: boom\n"
        let fixture: PolicyFixture
        let file: String
        if original == PolicyFixture.policyYAML {
            (fixture, file) = (try PolicyFixture(policy: bomb), "policy.yaml")
        } else if original == PolicyFixture.departmentsYAML {
            (fixture, file) = (try PolicyFixture(departments: bomb), "departments.yaml")
        } else {
            (fixture, file) = (try PolicyFixture(devices: Self.devices { _ in bomb }), "devices.d/" + Self.chem)
        }
        defer { fixture.remove() }
        let issues = fixture.errors()
        #expect(issues.contains { $0.file == fixture.display(file) && $0.line == 1 && $0.message.contains("reads as a YAML anchor") }, "\(issues)")
    }

    /// '&' in text is fine where it cannot start an anchor.
    @Test func anAmpersandInTextIsNotAnAnchor() throws {
        let fixture = try PolicyFixture(devices: Self.devices { $0 + "\nlocation: R&D lab & workshop, \"Smith&Co\"" })
        defer { fixture.remove() }
        #expect(try fixture.load().device(id: "chem-scanner-1")?.location == "R&D lab & workshop, \"Smith&Co\"")
    }

    /// libyaml stops at 1,000 levels; Yams's recursion over the levels it took stays shallow.
    @Test(arguments: ["[", "- ", "{a: "])
    func deepNestingIsRefused(_ opener: String) throws {
        let deep = String(repeating: opener, count: 15_000) + "x\n"
        let fixture = try PolicyFixture(devices: Self.devices { _ in deep })
        defer { fixture.remove() }
        let issues = fixture.errors()
        #expect(issues.contains { $0.file == fixture.display("devices.d/" + Self.chem) && $0.message.contains("YAML syntax error") }, "\(issues)")
    }
}
