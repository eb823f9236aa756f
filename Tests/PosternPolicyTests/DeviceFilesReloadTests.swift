import Foundation
import PosternPolicy
import PosternTestSupport
import Testing

/// A load given the previous load's snapshot reads only the device files whose fingerprint changed; its result
/// (devices, lookups, issues with file and line) must be exactly what a load from scratch gives.
@Suite struct DeviceFilesReloadTests {
    static func device(_ id: String, department: String = "it", addresses: String, senders: String? = nil, owner: String = "it-helpdesk@example.edu") -> String {
        "id: \(id)\ndepartment: \(department)\nowner: \(owner)\naddresses: [\(addresses)]\n"
            + "senders: [\(senders ?? "\(id)@example.edu")]\nregistered: 2026-01-15\nsunset: 2027-08-31\n"
    }

    static let base: [String: String] = Dictionary(uniqueKeysWithValues: (0..<12).map { i in
        let department = ["it", "chem", "phys"][i % 3]
        return ("\(department)/dev-\(i).yaml", device("dev-\(i)", department: department, addresses: "10.9.0.\(i + 1)"))
    })

    /// Loads reusing `snapshot`, checks the result against a load from scratch, and returns both.
    @discardableResult
    static func reload(_ fixture: PolicyFixture, _ snapshot: PolicySnapshot?, sourceLocation: SourceLocation = #_sourceLocation)
        -> (Result<PolicySet, PolicyErrors>, PolicySnapshot)
    {
        let (result, next) = PolicyLoader.load(directory: fixture.directory, reusing: snapshot)
        expectSame(result, PolicyLoader.load(directory: fixture.directory), sourceLocation: sourceLocation)
        return (result, next)
    }

    static func expectSame(_ a: Result<PolicySet, PolicyErrors>, _ b: Result<PolicySet, PolicyErrors>, sourceLocation: SourceLocation = #_sourceLocation) {
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

    /// Sets a file's modification time back, as for a file not written just now (those are read again once).
    static func age(_ fixture: PolicyFixture, _ path: String) throws {
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSinceNow: -3600)], ofItemAtPath: fixture.url(path).path)
    }

    static func ageAll(_ fixture: PolicyFixture) throws {
        for path in try fixture.deviceTree().keys { try age(fixture, "devices.d/" + path) }
    }

    @Test func onlyTheChangedFileIsReadAndEveryFileIsStattedOnce() throws {
        let fixture = try PolicyFixture(devices: Self.base)
        defer { fixture.remove() }
        try Self.ageAll(fixture)
        let (_, first) = Self.reload(fixture, nil)
        #expect(first.counts.filesParsed == 12)
        #expect(first.counts.catalogPatched == false)

        let (_, unchanged) = Self.reload(fixture, first)
        #expect(unchanged.changed == false)
        #expect(unchanged.counts.filesStatted == 12)
        #expect(unchanged.counts.filesParsed == 0)
        #expect(unchanged.counts.directoriesListed == 4, "devices.d and its three department directories")
        #expect(unchanged.counts.filesRead == 2, "policy.yaml and departments.yaml only")

        // Edited in place (same inode), another sender and address.
        try fixture.write(Self.device("dev-4", department: "chem", addresses: "10.9.0.5, 10.9.0.100", senders: "dev-4@example.edu, scan@example.edu"),
                          to: "devices.d/chem/dev-4.yaml")
        let (result, edited) = Self.reload(fixture, unchanged)
        #expect(edited.changed)
        #expect(edited.counts.filesParsed == 1)
        #expect(edited.counts.filesStatted == 12)
        #expect(edited.counts.catalogPatched)
        let policy = try result.get()
        #expect(policy.device(forAddress: "10.9.0.100")?.id == "dev-4")
        #expect(policy.device(id: "dev-4")?.senders.count == 2)

        // The edited file was written just now: the next scan reads it again (it could change again unseen within the
        // file system's timestamp granularity), finds the same text and checks nothing.
        let (_, again) = Self.reload(fixture, edited)
        #expect(again.counts.filesRead == 3)
        #expect(again.counts.filesParsed == 0)
        #expect(again.changed == false)
    }

    @Test func aChangeThatKeepsSizeAndTimeOfARecentFileIsSeen() throws {
        let fixture = try PolicyFixture(devices: Self.base)
        defer { fixture.remove() }
        let path = "devices.d/it/dev-0.yaml"
        let (_, first) = Self.reload(fixture, nil)
        let attributes = try FileManager.default.attributesOfItem(atPath: fixture.url(path).path)
        // Same length, same inode, and the modification time put back: only the text differs.
        try fixture.write(try fixture.read(path).replacingOccurrences(of: "10.9.0.1]", with: "10.9.5.1]"), to: path)
        try FileManager.default.setAttributes([.modificationDate: attributes[.modificationDate] as Any], ofItemAtPath: fixture.url(path).path)
        let (result, _) = Self.reload(fixture, first)
        #expect(try result.get().device(id: "dev-0")?.addresses.map(\.text) == ["10.9.5.1"])
    }

    @Test func addedRemovedRenamedAndMovedFilesAreSeen() throws {
        let fixture = try PolicyFixture(devices: Self.base)
        defer { fixture.remove() }
        var (_, snapshot) = Self.reload(fixture, nil)
        try fixture.write(Self.device("new-1", addresses: "10.9.1.1"), to: "devices.d/it/new-1.yaml")
        try FileManager.default.removeItem(at: fixture.url("devices.d/chem/dev-1.yaml"))
        (_, snapshot) = Self.reload(fixture, snapshot)
        // Renamed over an existing file, as the editor writes.
        try fixture.write(Self.device("dev-0", addresses: "10.9.2.1"), to: "devices.d/it/.dev-0.yaml.tmp")
        try FileManager.default.removeItem(at: fixture.url("devices.d/it/dev-0.yaml"))
        try FileManager.default.moveItem(at: fixture.url("devices.d/it/.dev-0.yaml.tmp"), to: fixture.url("devices.d/it/dev-0.yaml"))
        // Moved to another department, with its department changed.
        try fixture.write(Self.device("dev-2", department: "chem", addresses: "10.9.0.3"), to: "devices.d/chem/dev-2.yaml")
        try FileManager.default.removeItem(at: fixture.url("devices.d/phys/dev-2.yaml"))
        let (result, _) = Self.reload(fixture, snapshot)
        let policy = try result.get()
        #expect(policy.device(forAddress: "10.9.1.1")?.id == "new-1")
        #expect(policy.device(id: "dev-1") == nil && policy.device(forAddress: "10.9.0.2") == nil)
        #expect(policy.device(forAddress: "10.9.2.1")?.id == "dev-0" && policy.device(forAddress: "10.9.0.1") == nil)
        #expect(policy.device(id: "dev-2")?.department == "chem")
    }

    @Test func aClashBetweenAChangedAndAnUnchangedFileIsFoundAndReportedLikeAFreshLoad() throws {
        let fixture = try PolicyFixture(devices: Self.base)
        defer { fixture.remove() }
        let (_, snapshot) = Self.reload(fixture, nil)
        // One new device shares an address with dev-5, another the id of dev-7 (chem's) in another department.
        try fixture.write(Self.device("clash", department: "phys", addresses: "10.9.0.6"), to: "devices.d/phys/clash.yaml")
        try fixture.write(Self.device("dev-7", department: "it", addresses: "10.9.3.1"), to: "devices.d/it/dev-7.yaml")
        let (result, broken) = Self.reload(fixture, snapshot)
        let issues = try #require(result.failure).issues
        #expect(issues.count == 2, "\(issues)")
        #expect(issues.contains { $0.message.contains("address 10.9.0.6 of device") && $0.message.contains("overlaps 10.9.0.6") })
        #expect(issues.contains { $0.message.contains("device 'dev-7' is already registered in") })
        #expect(broken.counts.catalogPatched == false)
        // Put right, the next load patches the last good tables with everything changed since.
        try FileManager.default.removeItem(at: fixture.url("devices.d/phys/clash.yaml"))
        try FileManager.default.removeItem(at: fixture.url("devices.d/it/dev-7.yaml"))
        try fixture.write(Self.device("fixed", department: "phys", addresses: "10.9.4.1"), to: "devices.d/phys/fixed.yaml")
        let (fixed, next) = Self.reload(fixture, broken)
        #expect(try fixed.get().device(forAddress: "10.9.4.1")?.id == "fixed")
        #expect(next.counts.catalogPatched)
    }

    @Test func issuesOfUnchangedFilesAreReportedAgainAndDepartmentsAreCheckedAgain() throws {
        var devices = Self.base
        devices["bio/bio-scanner.yaml"] = Self.device("bio-scanner", department: "bio", addresses: "10.5.0.1")
        devices["it/broken.yaml"] = Self.device("broken", addresses: "10.5.0.300", owner: "nobody")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        let (first, snapshot) = Self.reload(fixture, nil)
        let firstIssues = try #require(first.failure).issues.map(\.description)
        #expect(firstIssues.count == 3, "\(firstIssues)")  // unknown department directory, owner, address
        let (second, again) = Self.reload(fixture, snapshot)
        #expect(try #require(second.failure).issues.map(\.description) == firstIssues)
        // Adding the department removes exactly that issue, with devices.d unchanged.
        try fixture.write(PolicyFixture.departmentsYAML + "\n  - id: bio\n    name: Biology\n", to: "departments.yaml")
        let (third, _) = Self.reload(fixture, again)
        #expect(try #require(third.failure).issues.map(\.description) == firstIssues.filter { !$0.contains("is not a department") })
    }

    @Test func theRulesOfADepartmentsDevicesAreCheckedAgainWhenItsDomainsChange() throws {
        let fixture = try PolicyFixture(devices: Self.base)
        defer { fixture.remove() }
        let (first, snapshot) = Self.reload(fixture, nil)
        #expect(throws: Never.self) { try first.get() }
        // chem's devices send as dev-N@example.edu: outside chem's own domain once it has one.
        try fixture.write(PolicyFixture.departmentsYAML.replacingOccurrences(of: "    name: Chemistry", with: "    name: Chemistry\n    domains: [chem.example.edu]"),
                          to: "departments.yaml")
        let (second, next) = Self.reload(fixture, snapshot)
        let issues = try #require(second.failure).issues
        #expect(issues.count == 4 && issues.allSatisfy { $0.message.contains("is outside department chem's domains") }, "\(issues)")
        #expect(next.counts.filesParsed == 0, "the files are not read again, only checked again")
    }

    @Test func aSnapshotOfAnotherDirectoryIsNotUsed() throws {
        let one = try PolicyFixture(devices: Self.base)
        defer { one.remove() }
        var devices = Self.base
        devices["it/dev-0.yaml"] = Self.device("dev-0", addresses: "10.9.0.300")
        let two = try PolicyFixture(devices: devices)
        defer { two.remove() }
        let (_, snapshot) = Self.reload(one, nil)
        let issues = try #require(Self.reload(two, snapshot).0.failure).issues
        #expect(issues.map(\.file) == [two.display("devices.d/it/dev-0.yaml")])
    }

    /// Random edits (new devices, edits, removals, moves, clashes, broken files, fixes), each followed by a reload
    /// from the previous snapshot that must give what a load from scratch gives.
    @Test func randomEditsReloadAsAFreshLoadDoes() throws {
        let fixture = try PolicyFixture(devices: Self.base)
        defer { fixture.remove() }
        var random = SplitMix64(seed: 0x5EED_D0C5)
        var snapshot: PolicySnapshot?
        var patched = 0
        let departments = ["it", "chem", "phys"]
        for step in 0..<150 {
            let files = try fixture.deviceTree().keys.filter { $0.hasSuffix(".yaml") && !$0.hasPrefix(".") }.sorted()
            let pick = files.isEmpty ? nil : files[Int(random.next() % UInt64(files.count))]
            let department = departments[Int(random.next() % 3)]
            switch random.next() % 7 {
            case 0, 1:
                let id = "r-\(step)"
                try fixture.write(Self.device(id, department: department, addresses: "10.8.\(step % 4).\(random.next() % 200 + 1)"), to: "devices.d/\(department)/\(id).yaml")
            case 2:
                if let pick { try FileManager.default.removeItem(at: fixture.url("devices.d/" + pick)) }
            case 3:
                if let pick {
                    let id = String(pick.split(separator: "/").last?.dropLast(5) ?? "")
                    let owner = String(pick.split(separator: "/").first ?? "it")
                    try fixture.write(Self.device(id, department: owner, addresses: "10.9.\(random.next() % 3).\(random.next() % 250 + 1)"), to: "devices.d/" + pick)
                }
            case 4:
                if let pick { try fixture.write("id: [broken\n", to: "devices.d/" + pick) }
            case 5:
                // The id of another device, in another directory.
                if let pick {
                    let id = String(pick.split(separator: "/").last?.dropLast(5) ?? "")
                    try fixture.write(Self.device(id, department: department, addresses: "10.7.\(step % 250).1"), to: "devices.d/\(department)/\(id).yaml")
                }
            default:
                try fixture.write(PolicyFixture.policyYAML + "\n# step \(step)\n", to: "policy.yaml")
            }
            let (_, next) = Self.reload(fixture, snapshot)
            if next.counts.catalogPatched { patched += 1 }
            snapshot = next
        }
        #expect(patched > 20, "the patch path ran \(patched) times")
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let e) = self { return e }
        return nil
    }
}
