import Foundation
import PosternPolicy
import PosternTestSupport
import Testing

/// `PolicyReader` with the watch of devices.d (inotify): a load after a change looks only at the entries the kernel
/// named, and gives exactly what a load from scratch gives; what the events cannot name makes a full scan.
@Suite struct DeviceFilesWatchTests {
    typealias Reload = DeviceFilesReloadTests

    /// Loads through `reader`, checks the result against a load from scratch, and returns what the load did.
    @discardableResult
    static func load(_ reader: PolicyReader, _ fixture: PolicyFixture, everything: Bool = false,
                     sourceLocation: SourceLocation = #_sourceLocation) -> (policy: Result<PolicySet, PolicyErrors>, changed: Bool, counts: PolicyLoadCounts) {
        let loaded = reader.load(everything: everything)
        Reload.expectSame(loaded.policy, PolicyLoader.load(directory: fixture.directory), sourceLocation: sourceLocation)
        return loaded
    }

    @Test func aLoadLooksOnlyAtTheEntriesThatChanged() throws {
        let fixture = try PolicyFixture(devices: Reload.base)
        defer { fixture.remove() }
        try Reload.ageAll(fixture)
        let reader = PolicyReader(directory: fixture.directory)
        let first = Self.load(reader, fixture).counts
        #expect(first.everyDeviceFile && first.filesStatted == 12 && first.filesParsed == 12)

        let quiet = Self.load(reader, fixture)
        #expect(!quiet.changed)
        #expect(!quiet.counts.everyDeviceFile && quiet.counts.filesStatted == 0 && quiet.counts.directoriesListed == 0)
        #expect(quiet.counts.filesRead == 2, "policy.yaml and departments.yaml")

        // Edited in place: one stat, one read.
        try fixture.write(Reload.device("dev-4", department: "chem", addresses: "10.9.0.5, 10.9.0.100"), to: "devices.d/chem/dev-4.yaml")
        let edited = Self.load(reader, fixture)
        #expect(edited.changed && !edited.counts.everyDeviceFile)
        #expect(edited.counts.filesStatted == 1 && edited.counts.filesParsed == 1 && edited.counts.catalogPatched)
        #expect(try edited.policy.get().device(forAddress: "10.9.0.100")?.id == "dev-4")

        // A new file, one removed, one replaced by rename (as the editor writes), one moved to another department.
        try fixture.write(Reload.device("new-1", addresses: "10.9.1.1"), to: "devices.d/it/new-1.yaml")
        try FileManager.default.removeItem(at: fixture.url("devices.d/chem/dev-1.yaml"))
        try fixture.write(Reload.device("dev-0", addresses: "10.9.2.1"), to: "devices.d/it/.dev-0.yaml.tmp-1")
        #expect(rename(fixture.url("devices.d/it/.dev-0.yaml.tmp-1").path, fixture.url("devices.d/it/dev-0.yaml").path) == 0)
        try fixture.write(Reload.device("dev-2", department: "chem", addresses: "10.9.0.3"), to: "devices.d/chem/dev-2.yaml")
        try FileManager.default.removeItem(at: fixture.url("devices.d/phys/dev-2.yaml"))
        let moved = Self.load(reader, fixture)
        #expect(!moved.counts.everyDeviceFile)
        #expect(moved.counts.filesStatted == 5, "new-1, dev-1, dev-0, chem/dev-2, phys/dev-2")
        let policy = try moved.policy.get()
        #expect(policy.device(id: "dev-1") == nil && policy.device(id: "dev-2")?.department == "chem")
        #expect(policy.device(forAddress: "10.9.2.1")?.id == "dev-0" && policy.device(forAddress: "10.9.1.1")?.id == "new-1")

        // Temporary files and the lock are passed by, as scans pass them by.
        try fixture.write("scratch", to: "devices.d/it/.dev-9.yaml.tmp-2")
        try fixture.write("", to: "devices.d/.lock")
        let hidden = Self.load(reader, fixture)
        #expect(!hidden.changed && !hidden.counts.everyDeviceFile && hidden.counts.filesStatted == 0)

        // Asked to look at everything (SIGHUP), it does.
        let everything = Self.load(reader, fixture, everything: true)
        #expect(everything.counts.everyDeviceFile && everything.counts.filesStatted == 12)
    }

    @Test func whatEventsCannotNameMakesAFullScan() throws {
        let fixture = try PolicyFixture(devices: Reload.base)
        defer { fixture.remove() }
        let reader = PolicyReader(directory: fixture.directory)
        Self.load(reader, fixture)

        // A new department directory (its devices refused until departments.yaml has it).
        try fixture.write(Reload.device("bio-1", department: "bio", addresses: "10.5.0.1"), to: "devices.d/bio/bio-1.yaml")
        let added = Self.load(reader, fixture)
        #expect(added.counts.everyDeviceFile)
        #expect(try #require(added.policy.failure).issues.map(\.message) == ["directory 'bio' is not a department in departments.yaml"])
        try FileManager.default.removeItem(at: fixture.url("devices.d/bio"))
        #expect(Self.load(reader, fixture).counts.everyDeviceFile)
        #expect(!Self.load(reader, fixture).counts.everyDeviceFile, "watched again after the full scan")

        // devices.d replaced by another directory (as a checkout or a migration may).
        let copy = fixture.url("devices.d.new")
        try FileManager.default.copyItem(at: fixture.url("devices.d"), to: copy)
        try fixture.write(Reload.device("dev-3", addresses: "10.9.3.3"), to: "devices.d.new/it/dev-3.yaml")
        try FileManager.default.removeItem(at: fixture.url("devices.d"))
        try FileManager.default.moveItem(at: copy, to: fixture.url("devices.d"))
        let replaced = Self.load(reader, fixture)
        #expect(replaced.counts.everyDeviceFile)
        #expect(try replaced.policy.get().device(forAddress: "10.9.3.3")?.id == "dev-3")

        // A department directory renamed: the old name's files are gone, the new name is no department.
        try FileManager.default.moveItem(at: fixture.url("devices.d/phys"), to: fixture.url("devices.d/physics"))
        #expect(Self.load(reader, fixture).counts.everyDeviceFile)
        try FileManager.default.moveItem(at: fixture.url("devices.d/physics"), to: fixture.url("devices.d/phys"))
        #expect(Self.load(reader, fixture).counts.everyDeviceFile)
        #expect(!Self.load(reader, fixture).counts.everyDeviceFile)
    }

    @Test func aChangeThatKeepsSizeAndTimeOfARecentFileIsSeenThroughTheWatch() throws {
        let fixture = try PolicyFixture(devices: Reload.base)
        defer { fixture.remove() }
        let reader = PolicyReader(directory: fixture.directory)
        let path = "devices.d/it/dev-0.yaml"
        Self.load(reader, fixture)
        let attributes = try FileManager.default.attributesOfItem(atPath: fixture.url(path).path)
        try fixture.write(try fixture.read(path).replacingOccurrences(of: "10.9.0.1]", with: "10.9.5.1]"), to: path)
        try FileManager.default.setAttributes([.modificationDate: attributes[.modificationDate] as Any], ofItemAtPath: fixture.url(path).path)
        let loaded = Self.load(reader, fixture)
        #expect(!loaded.counts.everyDeviceFile && loaded.counts.filesParsed == 1)
        #expect(try loaded.policy.get().device(id: "dev-0")?.addresses.map(\.text) == ["10.9.5.1"])
    }

    /// Random edits, each followed by a load through the reader that must give what a load from scratch gives; most
    /// of them look only at what changed.
    @Test func randomEditsThroughTheWatchLoadAsAFreshLoadDoes() throws {
        let fixture = try PolicyFixture(devices: Reload.base)
        defer { fixture.remove() }
        let reader = PolicyReader(directory: fixture.directory)
        var random = SplitMix64(seed: 0xD1EC_7ED5)
        var partial = 0
        let departments = ["it", "chem", "phys"]
        for step in 0..<150 {
            let files = try fixture.deviceTree().keys.filter { $0.hasSuffix(".yaml") && !$0.split(separator: "/").contains { $0.hasPrefix(".") } }.sorted()
            let pick = files.isEmpty ? nil : files[Int(random.next() % UInt64(files.count))]
            let department = departments[Int(random.next() % 3)]
            let id = pick.map { String($0.split(separator: "/").last?.dropLast(5) ?? "") } ?? "none"
            switch random.next() % 8 {
            case 0, 1:
                try fixture.write(Reload.device("r-\(step)", department: department, addresses: "10.8.\(step % 4).\(random.next() % 200 + 1)"),
                                  to: "devices.d/\(department)/r-\(step).yaml")
            case 2:
                if let pick { try FileManager.default.removeItem(at: fixture.url("devices.d/" + pick)) }
            case 3:
                if let pick, let owner = pick.split(separator: "/").first {
                    try fixture.write(Reload.device(id, department: String(owner), addresses: "10.9.\(random.next() % 3).\(random.next() % 250 + 1)"),
                                      to: "devices.d/" + pick)
                }
            case 4:
                if let pick { try fixture.write("id: [broken\n", to: "devices.d/" + pick) }
            case 5:
                // The id of another device, in another directory (a clash, or a move when it is the same directory).
                try fixture.write(Reload.device(id, department: department, addresses: "10.7.\(step % 250).1"), to: "devices.d/\(department)/\(id).yaml")
            case 6:
                // Renamed into place over the old file, as the editor writes.
                if let pick, let owner = pick.split(separator: "/").first {
                    try fixture.write(Reload.device(id, department: String(owner), addresses: "10.6.\(step % 250).1"), to: "devices.d/\(owner)/.\(id).yaml.tmp-\(step)")
                    #expect(rename(fixture.url("devices.d/\(owner)/.\(id).yaml.tmp-\(step)").path, fixture.url("devices.d/" + pick).path) == 0)
                }
            default:
                try fixture.write(PolicyFixture.policyYAML + "\n# step \(step)\n", to: "policy.yaml")
            }
            if !Self.load(reader, fixture).counts.everyDeviceFile { partial += 1 }
        }
        #expect(partial == 149, "every load but the first looks only at what changed")
    }
}
