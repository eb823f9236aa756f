import Foundation
@testable import PosternPolicy
import PosternTestSupport
import Testing

/// A load of an edited devices.yaml takes the entries whose bytes the previous load saw from it; the
/// result (devices, lookups, issues with file and line) must be exactly what a load from scratch gives,
/// and what a load of the whole tree through libyaml gives.
@Suite struct DevicesEntryReuseTests {
    static func entry(_ id: String, department: String = "it", owner: String = "it-helpdesk@example.edu",
                      addresses: String, senders: String? = nil, extra: String = "") -> String {
        "  - id: \(id)\n    department: \(department)\n    owner: \(owner)\n    addresses: [\(addresses)]\n"
            + "    senders: [\(senders ?? "\(id)@example.edu")]\n    registered: 2026-01-15\n    sunset: 2027-08-31\n" + extra
    }

    static func file(_ entries: [String]) -> String { "# devices\ndevices:\n" + entries.joined() }

    static let base = (0..<12).map { entry("dev-\($0)", addresses: "10.9.0.\($0 + 1)") }

    func write(_ text: String, _ name: String, in fixture: PolicyFixture) throws {
        try Data(text.utf8).write(to: fixture.directory.appendingPathComponent(name))
    }

    /// Loads the fixture's files reusing `parsed`, checks the result against a load from scratch and one of
    /// the whole tree through libyaml, and returns it with what the next load may reuse.
    @discardableResult
    func reload(_ fixture: PolicyFixture, reusing parsed: ParsedDevices?, expectReused: Int? = nil,
                sourceLocation: SourceLocation = #_sourceLocation) throws -> (Result<PolicySet, PolicyErrors>, ParsedDevices?) {
        let (result, next) = PolicyLoader.load(directory: fixture.directory, reusing: parsed)
        if let expectReused {
            #expect(next?.reusedEntries == expectReused, "entries reused", sourceLocation: sourceLocation)
        }
        let (fresh, freshParsed) = PolicyLoader.load(directory: fixture.directory, reusing: nil)
        #expect(freshParsed?.entryCache != nil, "the test files are in the layout that is cut into entries", sourceLocation: sourceLocation)
        Self.expectSame(result, fresh, sourceLocation: sourceLocation)
        // A non-ASCII comment after the last entry sends the file to libyaml, whole, without moving a line.
        let devicesText = try String(contentsOf: fixture.directory.appendingPathComponent(PolicyLoader.devicesFile), encoding: .utf8)
        let tree = PolicyLoader.load(directory: fixture.directory, replacing: [PolicyLoader.devicesFile: devicesText + "\n# Gerät\n"])
        Self.expectSame(result, tree, sourceLocation: sourceLocation)
        return (result, next)
    }

    static func expectSame(_ a: Result<PolicySet, PolicyErrors>, _ b: Result<PolicySet, PolicyErrors>,
                           sourceLocation: SourceLocation = #_sourceLocation) {
        switch (a, b) {
        case (.success(let x), .success(let y)):
            #expect(x.devices == y.devices, sourceLocation: sourceLocation)
            #expect(x.departments == y.departments, sourceLocation: sourceLocation)
            for device in y.devices {
                #expect(x.device(id: device.id) == device, sourceLocation: sourceLocation)
                #expect(x.effectiveSunset(for: device) == y.effectiveSunset(for: device), sourceLocation: sourceLocation)
                for range in device.addresses {
                    for address in [range.first, range.last] {
                        #expect(x.device(forAddress: address)?.id == device.id, "\(address)", sourceLocation: sourceLocation)
                    }
                }
            }
            for unregistered in ["10.9.0.200", "10.9.1.1", "192.0.2.1"] {
                #expect(x.device(forAddress: unregistered) == y.device(forAddress: unregistered), sourceLocation: sourceLocation)
            }
        case (.failure(let x), .failure(let y)):
            #expect(x.issues == y.issues, sourceLocation: sourceLocation)
        default:
            Issue.record("one load failed, the other did not: \(a) / \(b)", sourceLocation: sourceLocation)
        }
    }

    @Test func anEntryChangedInPlaceIsReadAgainAndTheOthersAreReused() throws {
        let fixture = try PolicyFixture(devices: Self.file(Self.base))
        defer { fixture.remove() }
        let (_, parsed) = try reload(fixture, reusing: nil, expectReused: 0)
        var entries = Self.base
        entries[4] = Self.entry("dev-4", addresses: "10.9.0.5, 10.9.0.100", senders: "dev-4@example.edu, scan@example.edu")
        try write(Self.file(entries), PolicyLoader.devicesFile, in: fixture)
        let (result, _) = try reload(fixture, reusing: parsed, expectReused: 11)
        let policy = try result.get()
        #expect(policy.device(forAddress: "10.9.0.100")?.id == "dev-4")
        #expect(policy.device(id: "dev-4")?.senders.count == 2)
    }

    @Test func reorderedEntriesAreReusedWithTheirNewLines() throws {
        var entries = Self.base
        entries[2] = Self.entry("dev-2", owner: "nobody", addresses: "10.9.0.3")  // an issue inside a reused entry
        let fixture = try PolicyFixture(devices: Self.file(entries))
        defer { fixture.remove() }
        let (first, parsed) = try reload(fixture, reusing: nil)
        #expect(try #require(first.failure).issues.map(\.line) == [3 + 2 * 7 + 2])
        try write(Self.file(entries.reversed()), PolicyLoader.devicesFile, in: fixture)
        let (second, parsedAgain) = try reload(fixture, reusing: parsed, expectReused: 12)
        #expect(try #require(second.failure).issues.map(\.line) == [3 + 9 * 7 + 2])
        entries[2] = Self.entry("dev-2", addresses: "10.9.0.3")
        try write(Self.file(Array(entries[5...] + entries[..<5])), PolicyLoader.devicesFile, in: fixture)
        let (third, _) = try reload(fixture, reusing: parsedAgain, expectReused: 11)
        let policy = try third.get()
        #expect(policy.devices.map(\.line).sorted() == (0..<12).map { 3 + 7 * $0 })
    }

    @Test func anEntryMovedToAnotherLineReportsItsNewLine() throws {
        var entries = Self.base
        entries[6] = Self.entry("dev-6", addresses: "10.9.0.7", extra: "    colour: red\n")
        let fixture = try PolicyFixture(devices: Self.file(entries))
        defer { fixture.remove() }
        let (first, parsed) = try reload(fixture, reusing: nil)
        let firstIssue = try #require(first.failure?.issues.first)
        #expect(firstIssue.line == 3 + 6 * 7 + 7 && firstIssue.message.contains("colour"))
        // Comment and blank lines and a new entry before it: it moves down, unchanged.
        entries.insert("\n  # moved down\n\n" + Self.entry("dev-new", addresses: "10.9.0.50"), at: 3)
        try write(Self.file(entries), PolicyLoader.devicesFile, in: fixture)
        let (second, _) = try reload(fixture, reusing: parsed, expectReused: 12)
        let issue = try #require(second.failure?.issues.first)
        #expect(issue.line == firstIssue.line + 3 + 7)
        #expect(issue.file == firstIssue.file && issue.message == firstIssue.message)
    }

    @Test func aNewEntryWithTheIdOfAReusedOneIsADuplicateEitherWay() throws {
        let fixture = try PolicyFixture(devices: Self.file(Self.base))
        defer { fixture.remove() }
        let (_, parsed) = try reload(fixture, reusing: nil)
        // After the reused dev-5: the new entry is the duplicate.
        var after = Self.base
        after.insert(Self.entry("dev-5", addresses: "10.9.0.60"), at: 6)
        try write(Self.file(after), PolicyLoader.devicesFile, in: fixture)
        let (second, parsedAgain) = try reload(fixture, reusing: parsed, expectReused: 12)
        let issues = try #require(second.failure).issues
        #expect(issues.map(\.description) == ["\(fixture.directory.relativePath)/devices.yaml:\(3 + 6 * 7): device 'dev-5' is already registered at line \(3 + 5 * 7) (fix: choose another id or remove the duplicate)"])
        // Before it: the reused entry is now the duplicate, and the new one the device.
        var before = Self.base
        before.insert(Self.entry("dev-5", addresses: "10.9.0.60"), at: 1)
        try write(Self.file(before), PolicyLoader.devicesFile, in: fixture)
        // (the new entry too: the same bytes as in the file before, at another place)
        let (third, parsedThird) = try reload(fixture, reusing: parsedAgain, expectReused: 13)
        #expect(try #require(third.failure).issues.map(\.line) == [3 + 6 * 7])
        // The old dev-5 removed: the new one, reused twice (first as the duplicate), is the device.
        before.remove(at: 6)
        try write(Self.file(before), PolicyLoader.devicesFile, in: fixture)
        let policy = try reload(fixture, reusing: parsedThird, expectReused: 12).0.get()
        #expect(policy.device(forAddress: "10.9.0.60")?.id == "dev-5" && policy.device(id: "dev-5")?.line == 3 + 7)
    }

    @Test func anOverlapBetweenANewAndAReusedEntryIsReported() throws {
        let fixture = try PolicyFixture(devices: Self.file(Self.base))
        defer { fixture.remove() }
        let (_, parsed) = try reload(fixture, reusing: nil)
        var entries = Self.base
        entries.insert(Self.entry("wide", addresses: "10.9.0.8/29"), at: 2)
        try write(Self.file(entries), PolicyLoader.devicesFile, in: fixture)
        let (result, parsedAgain) = try reload(fixture, reusing: parsed, expectReused: 12)
        let messages = try #require(result.failure).issues.map(\.message)
        #expect(messages.count == 5 && messages.allSatisfy { $0.contains("overlaps") })  // dev-7 ... dev-11 lie in 10.9.0.8/29
        // Narrowed: the reused entries are fine again.
        entries[2] = Self.entry("wide", addresses: "10.9.0.64/29")
        try write(Self.file(entries), PolicyLoader.devicesFile, in: fixture)
        _ = try reload(fixture, reusing: parsedAgain, expectReused: 12).0.get()
    }

    @Test func aDepartmentRemovedUnderReusedEntriesFailsAsAFreshLoadDoes() throws {
        var entries = Self.base
        entries[3] = Self.entry("chem-3", department: "chem", addresses: "10.9.0.4")
        entries[8] = Self.entry("chem-8", department: "chem", addresses: "10.9.0.9")
        let fixture = try PolicyFixture(devices: Self.file(entries))
        defer { fixture.remove() }
        let (first, parsed) = try reload(fixture, reusing: nil)
        _ = try first.get()
        // departments.yaml without chem, devices.yaml with one entry edited: the chem entries are reused.
        try write(PolicyFixture.departmentsYAML.replacingOccurrences(of: "  - id: chem\n    name: Chemistry\n    contact: it-chem@chem.example.edu\n    sunset: 2027-03-31\n", with: ""),
                  PolicyLoader.departmentsFile, in: fixture)
        entries[0] = Self.entry("dev-0", addresses: "10.9.0.1", senders: "other@example.edu")
        try write(Self.file(entries), PolicyLoader.devicesFile, in: fixture)
        let (second, _) = try reload(fixture, reusing: parsed, expectReused: 11)
        let issues = try #require(second.failure).issues
        #expect(issues.map(\.line) == [3 + 3 * 7 + 1, 3 + 8 * 7 + 1])
        #expect(issues.allSatisfy { $0.message.contains("unknown department 'chem'") })
    }

    @Test func aChangedPolicyChangesTheSunsetsOfReusedEntries() throws {
        let fixture = try PolicyFixture(devices: Self.file(Self.base))
        defer { fixture.remove() }
        let (_, parsed) = try reload(fixture, reusing: nil)
        try write(PolicyFixture.policyYAML.replacingOccurrences(of: "global: 2027-08-31", with: "global: 2027-02-28"),
                  PolicyLoader.policyFile, in: fixture)
        try write(Self.file(Self.base) + "# edited\n", PolicyLoader.devicesFile, in: fixture)
        let policy = try reload(fixture, reusing: parsed, expectReused: 12).0.get()
        #expect(policy.effectiveSunset(for: policy.device(id: "dev-3")!).source == .global)
    }

    @Test func entriesOutsideTheLayoutSendTheWholeFileToLibYAML() throws {
        let fixture = try PolicyFixture(devices: Self.file(Self.base))
        defer { fixture.remove() }
        let (_, parsed) = try reload(fixture, reusing: nil)
        for odd in ["  - just a scalar\n", "  - id: folded\n    note: >\n      two lines\n", "  -\n", "  - id: x\n   department: it\n"] {
            var entries = Self.base
            entries.insert(odd, at: 5)
            try write(Self.file(entries), PolicyLoader.devicesFile, in: fixture)
            let (result, next) = PolicyLoader.load(directory: fixture.directory, reusing: parsed)
            #expect(next?.entryCache == nil, "\(odd.debugDescription)")
            // What the whole-tree reader (fast or libyaml) says, from scratch.
            Self.expectSame(result, PolicyLoader.load(directory: fixture.directory))
            #expect(result.failure != nil)
        }
    }

    /// Random edits of the kinds departments make, and some broken ones; every load with reuse must agree
    /// with a load from scratch.
    @Test func randomEditsAgreeWithAFreshLoad() throws {
        var rng = SplitMix64(seed: 0x5eed_0f_2026)  // deterministic: a failing sequence of edits replays
        var entries = (0..<40).map { Self.entry("dev-\($0)", department: ["it", "chem", "phys"][$0 % 3], addresses: "10.8.\($0).0/28") }
        let fixture = try PolicyFixture(devices: Self.file(entries))
        defer { fixture.remove() }
        var (_, parsed) = try reload(fixture, reusing: nil)
        var next = 100
        for step in 0..<60 {
            for _ in 0..<(1 + Int(rng.next() % 3)) {
                let i = Int(rng.next() % UInt64(entries.count))
                switch rng.next() % 9 {
                case 0: entries.insert(Self.entry("dev-\(next)", addresses: "10.8.\(next % 250).16/28"), at: i); next += 1
                case 1: if entries.count > 2 { entries.remove(at: i) }
                case 2: entries.swapAt(i, Int(rng.next() % UInt64(entries.count)))
                case 3: entries.insert(entries[i], at: Int(rng.next() % UInt64(entries.count)))  // a duplicate id
                case 4: entries[i] = entries[i].replacingOccurrences(of: "/28", with: "/20")  // overlaps
                case 5: entries[i] = entries[i].replacingOccurrences(of: "owner: it-helpdesk@example.edu", with: "owner: it-helpdesk")
                case 6: entries[i] = "  # comment \(step)\n" + entries[i] + (rng.next() % 2 == 0 ? "\n" : "")
                case 7: entries[i] = entries[i].replacingOccurrences(of: "department: it", with: "department: bio")
                default: entries[i] = entries[i].replacingOccurrences(of: "sunset: 2027-08-31", with: "sunset: 2025-01-01")
                }
            }
            try write(Self.file(entries), PolicyLoader.devicesFile, in: fixture)
            (_, parsed) = try reload(fixture, reusing: parsed)
            #expect(parsed?.reusedEntries ?? 0 > 0)
        }
    }
}

