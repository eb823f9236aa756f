import Foundation
import PosternPolicy
import Testing

/// `postern devices migrate`: a devices.yaml becomes devices.d with the same devices, or nothing changes.
@Suite struct DevicesMigrationTests {
    func legacyFixture(_ devicesYAML: String = PolicyFixture.legacyDevicesYAML) throws -> PolicyFixture {
        let fixture = try PolicyFixture(devices: [:], extraFiles: ["devices.yaml": devicesYAML])
        try FileManager.default.removeItem(at: fixture.url("devices.d"))
        return fixture
    }

    /// Equal but for the lines (an entry's line in devices.yaml, a file's first line).
    func expectSameDevices(_ a: PolicySet, _ b: PolicySet, sourceLocation: SourceLocation = #_sourceLocation) {
        #expect(a.devices.map(\.id) == b.devices.map(\.id), sourceLocation: sourceLocation)
        for (x, y) in zip(a.devices, b.devices) {
            var x = x
            x.line = y.line
            #expect(x == y, sourceLocation: sourceLocation)
        }
    }

    @Test func aMigratedDevicesYAMLGivesTheSamePolicy() throws {
        let fixture = try legacyFixture()
        defer { fixture.remove() }
        let report = try DevicesMigration.migrate(directory: fixture.directory).get()
        #expect(report.files == ["devices.d/chem/chem-scanner-1.yaml", "devices.d/it/demo-scanner.yaml",
                                 "devices.d/phys/phys-old.yaml", "devices.d/phys/phys-plotter.yaml"])
        #expect(report.departments == 3)
        #expect(report.commentLines == 1)
        #expect(report.movedAside == fixture.display("devices.yaml.migrated"))
        #expect(!FileManager.default.fileExists(atPath: fixture.url("devices.yaml").path))
        #expect(try fixture.read("devices.yaml.migrated") == PolicyFixture.legacyDevicesYAML)
        let migrated = try fixture.load()
        // The same devices as the per-file fixture written by hand.
        let byHand = try PolicyFixture()
        defer { byHand.remove() }
        expectSameDevices(migrated, try byHand.load())
        #expect(try fixture.read("devices.d/phys/phys-plotter.yaml") == """
            id: phys-plotter
            department: phys
            owner: m.curie@phys.example.edu
            addresses: ['2001:db8:2::40', 10.2.0.0/24]
            senders: ['*.phys.example.edu']
            registered: 2025-02-10
            sunset: 2026-06-30

            """)
        #expect(try fixture.deviceTree().keys.filter { $0.hasPrefix(".") }.isEmpty)
    }

    @Test func anchorsOfAnOldDevicesYAMLAreWrittenOut() throws {
        let yaml = PolicyFixture.legacyDevicesYAML
            .replacingOccurrences(of: "senders: [scanner@example.edu]", with: "senders: &shared [scanner@example.edu]")
            .replacingOccurrences(of: "senders: [\"*.phys.example.edu\"]", with: "senders: *shared")
        let fixture = try legacyFixture(yaml)
        defer { fixture.remove() }
        _ = try DevicesMigration.migrate(directory: fixture.directory).get()
        #expect(try fixture.load().device(id: "phys-plotter")?.senders.map(\.description) == ["scanner@example.edu"])
        #expect(try !fixture.read("devices.d/phys/phys-plotter.yaml").contains("*"))
    }

    @Test func anExistingDevicesDIsNeverWrittenOver() throws {
        let fixture = try PolicyFixture(extraFiles: ["devices.yaml": PolicyFixture.legacyDevicesYAML])
        defer { fixture.remove() }
        let before = try fixture.deviceTree()
        let errors = try #require(DevicesMigration.migrate(directory: fixture.directory).failure)
        #expect(errors.issues.map(\.message) == ["devices.d already exists; migrate writes a new one and never overwrites files"])
        #expect(try fixture.deviceTree() == before)
        #expect(FileManager.default.fileExists(atPath: fixture.url("devices.yaml").path))
    }

    @Test func aDevicesYAMLThatDoesNotLoadIsNotMigrated() throws {
        let yaml = PolicyFixture.legacyDevicesYAML
            .replacingOccurrences(of: "addresses: [10.2.9.9]", with: "addresses: [10.1.2.0/28]")
            .replacingOccurrences(of: "department: it", with: "department: astro")
        let fixture = try legacyFixture(yaml)
        defer { fixture.remove() }
        let errors = try #require(DevicesMigration.migrate(directory: fixture.directory).failure)
        let described = errors.issues.map(\.description)
        #expect(described.contains { $0.contains("devices.yaml:4: device 'demo-scanner' names unknown department 'astro'") }, "\(described)")
        #expect(described.contains { $0.contains("address 10.1.2.0/28 of device 'phys-old' overlaps 10.1.2.3 of device 'chem-scanner-1'") }, "\(described)")
        #expect(described.last?.contains("devices.yaml does not load, so nothing was migrated") == true)
        #expect(!FileManager.default.fileExists(atPath: fixture.url("devices.d").path))
        #expect(try fixture.read("devices.yaml") == yaml)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.directory.path).filter { $0.hasPrefix(".") }.isEmpty)
    }

    @Test func aThousandDevicesMigrateToTheSamePolicyAsTheirFilesWrittenByHand() throws {
        var yaml = "devices:\n"
        var files: [String: String] = [:]
        for i in 0..<1000 {
            let department = ["it", "chem", "phys"][i % 3]
            let location = "\"Building \(i / 10), room \(i % 10): \\\"quoted\\\" # not a comment\""
            let fields = ["id: dev-\(i)", "department: \(department)", "owner: owner\(i % 7)@example.edu", "location: \(location)",
                          "addresses: [10.\(i >> 8).\(i & 255).1]", "senders: [dev\(i)@example.edu]", "registered: 2024-01-01", "sunset: 2027-08-31"]
            yaml += "  - " + fields.joined(separator: "\n    ") + "\n\n"
            files["\(department)/dev-\(i).yaml"] = fields.joined(separator: "\n") + "\n"
        }
        let fixture = try legacyFixture(yaml)
        defer { fixture.remove() }
        _ = try DevicesMigration.migrate(directory: fixture.directory).get()
        let policy = try fixture.load()
        #expect(policy.devices.count == 1000)
        #expect(policy.device(id: "dev-42")?.location == "Building 4, room 2: \"quoted\" # not a comment")
        #expect(policy.device(forAddress: "10.3.231.1")?.id == "dev-999")
        let byHand = try PolicyFixture(devices: files)
        defer { byHand.remove() }
        expectSameDevices(policy, try byHand.load())
    }
}
