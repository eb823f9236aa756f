import Foundation
import PosternPolicy
import Testing

/// Policy files that reached a trap (issue #13, "no reachable traps"): each is now refused with the
/// file, the line and a fix, or loaded, and the process goes on.
@Suite struct HostilePolicyInputTests {
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
        let devices = PolicyFixture.devicesYAML.replacingOccurrences(of: "    max-message-size: 10M", with: "    max-message-size: \(size)")
        #expect(devices.contains(size))
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        let issues = fixture.errors()
        let issue = try #require(issues.first { $0.message.contains("'\(size)' is not a size for max-message-size") }, "got: \(issues)")
        #expect(issue.file == fixture.directory.relativePath + "/devices.yaml")
        #expect(issue.line == 18)
    }

    /// The largest size that fits is a size like any other.
    @Test func largestSizeThatFitsLoads() throws {
        let devices = PolicyFixture.devicesYAML.replacingOccurrences(of: "    max-message-size: 10M", with: "    max-message-size: 8589934591G")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        let policy = try fixture.load()
        let device = try #require(policy.device(id: "chem-scanner-1"))
        #expect(device.maxMessageSize == 8_589_934_591 << 30)
        #expect(policy.messageSizeLimit(endpoint: .device, device: device) == 20 << 20)
    }

    /// `N/hour` with an N that does not fit is not a rate; the largest that fits is one.
    @Test func rateLimitsAtTheEdgeOfIntAreReadOrRefused() throws {
        let tooBig = PolicyFixture.devicesYAML.replacingOccurrences(of: "    max-message-size: 10M", with: "    max-rate: 99999999999999999999/hour")
        let refused = try PolicyFixture(devices: tooBig)
        defer { refused.remove() }
        let issue = try #require(refused.errors().first { $0.message.contains("is not a rate") }, "got: \(refused.errors())")
        #expect(issue.line == 18)

        let largest = PolicyFixture.devicesYAML.replacingOccurrences(of: "    max-message-size: 10M", with: "    max-rate: 9223372036854775807/second")
        let loaded = try PolicyFixture(devices: largest)
        defer { loaded.remove() }
        let rate = try #require(try loaded.load().device(id: "chem-scanner-1")?.maxRate)
        #expect(rate.count == Int.max && rate.seconds == 1)
    }

    // MARK: devices.yaml edits

    /// libyaml counts a bare CR, NEL, LINE SEPARATOR and PARAGRAPH SEPARATOR as line breaks; the editor
    /// splits lines at LF. With such breaks in a comment the two line counts part, and the entry's lines
    /// (from libyaml) used to index past the editor's lines: a trap in the gateway's registration page.
    /// Now the edit is refused ("edit devices.yaml by hand") and the file is left alone.
    @Test(arguments: ["\u{2028}", "\u{2029}", "\u{85}", "\r"])
    func editsOfAFileWhoseLineBreaksTheEditorCannotCountAreRefusedNotTrapped(_ lineBreak: String) throws {
        let devices = DevicesFileEditTests.commented.replacingOccurrences(
            of: "  # chemistry's scanner, keep this comment",
            with: "  # a comment that ends in odd line breaks" + String(repeating: lineBreak, count: 60) + "\n  # chemistry's scanner, keep this comment")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        #expect(try fixture.load().devices.map(\.id) == ["demo-scanner", "chem-scanner-1", "phys-old"], "the file is a valid policy")
        let before = try Data(contentsOf: fixture.directory.appendingPathComponent("devices.yaml"))
        for id in ["demo-scanner", "chem-scanner-1", "phys-old"] {
            let removed = DevicesFileEditor.remove(id: id, directory: fixture.directory)
            guard case .failure(let errors) = removed else {
                Issue.record("removing \(id) should be refused: \(removed)")
                continue
            }
            #expect(errors.issues.contains { $0.message.contains("cannot find the entry of '\(id)'") && $0.fix == "edit devices.yaml by hand" },
                    "\(errors)")
            let sunset = DevicesFileEditor.setSunset(id: id, date: try #require(CalendarDate("2025-01-31")), directory: fixture.directory)
            guard case .failure = sunset else {
                Issue.record("changing the sunset of \(id) should be refused: \(sunset)")
                continue
            }
        }
        #expect(try Data(contentsOf: fixture.directory.appendingPathComponent("devices.yaml")) == before)
    }
}
