import Foundation
import PosternPolicy
import Testing

@Suite struct DevicesFileEditTests {
    static let commented = """
        # header comment stays
        devices:
          # the demo scanner
          - id: demo-scanner
            department: it
            owner: it-helpdesk@example.edu
            addresses: [127.0.0.1]
            senders: [scanner@example.edu]
            registered: 2026-01-15
            sunset: 2027-08-31

          # chemistry's scanner, keep this comment
          - id: chem-scanner-1
            department: chem
            owner: j.doe@chem.example.edu
            addresses: [10.1.2.3]
            senders: [scan@chem.example.edu]
            registered: 2023-09-12
            sunset: 2027-01-31

          - {id: phys-old, department: phys, owner: m.curie@phys.example.edu, addresses: [10.2.9.9], senders: [phys.example.edu], registered: 2019-04-01, sunset: 2025-12-31}
        """

    func text(_ fixture: PolicyFixture) throws -> String {
        try String(contentsOf: fixture.directory.appendingPathComponent("devices.yaml"), encoding: .utf8)
    }

    @Test func removeDropsOnlyThatEntryAndItsOwnComment() throws {
        let fixture = try PolicyFixture(devices: Self.commented)
        defer { fixture.remove() }
        let removed = try DevicesFileEditor.remove(id: "demo-scanner", directory: fixture.directory).get()
        #expect(removed.id == "demo-scanner")
        let after = try text(fixture)
        #expect(!after.contains("demo-scanner"))
        #expect(!after.contains("# the demo scanner"))
        #expect(after.contains("# header comment stays"))
        #expect(after.contains("# chemistry's scanner, keep this comment\n  - id: chem-scanner-1"))
        #expect(!after.contains("\n\n\n"))
        let policy = try fixture.load()
        #expect(policy.devices.map(\.id) == ["chem-scanner-1", "phys-old"])
        #expect(policy.device(forAddress: "127.0.0.1") == nil)
    }

    @Test func removeTheLastAndFlowStyleEntries() throws {
        let fixture = try PolicyFixture(devices: Self.commented)
        defer { fixture.remove() }
        _ = try DevicesFileEditor.remove(id: "phys-old", directory: fixture.directory).get()
        #expect(try fixture.load().devices.map(\.id) == ["demo-scanner", "chem-scanner-1"])
        _ = try DevicesFileEditor.remove(id: "chem-scanner-1", directory: fixture.directory).get()
        _ = try DevicesFileEditor.remove(id: "demo-scanner", directory: fixture.directory).get()
        #expect(try fixture.load().devices.isEmpty)
        #expect(try text(fixture).contains("devices: []"))
        // And the empty list takes a new entry again.
        _ = try DevicesFileEditor.append(DeviceRegistration(id: "again", department: "it", owner: "a@example.edu",
                                                            addresses: ["10.9.9.9"], senders: ["a@example.edu"]),
                                         directory: fixture.directory, now: berlinTime("2026-11-24", 9)).get()
        #expect(try fixture.load().devices.map(\.id) == ["again"])
    }

    @Test func removeUnknownDeviceIsRefusedAndFileUnchanged() throws {
        let fixture = try PolicyFixture(devices: Self.commented)
        defer { fixture.remove() }
        guard case .failure(let errors) = DevicesFileEditor.remove(id: "no-such", directory: fixture.directory) else {
            Issue.record("removing an unknown device succeeded")
            return
        }
        #expect(errors.description.contains("'no-such' is not registered"))
        #expect(try text(fixture) == Self.commented)
    }

    @Test func setSunsetChangesOnlyThatDate() throws {
        let fixture = try PolicyFixture(devices: Self.commented)
        defer { fixture.remove() }
        let device = try DevicesFileEditor.setSunset(id: "chem-scanner-1", date: CalendarDate("2027-03-15")!, directory: fixture.directory).get()
        #expect(device.sunset == CalendarDate("2027-03-15"))
        let after = try text(fixture)
        #expect(after == Self.commented.replacingOccurrences(of: "sunset: 2027-01-31", with: "sunset: 2027-03-15"))
        // A flow-style entry whose registered date comes first.
        _ = try DevicesFileEditor.setSunset(id: "phys-old", date: CalendarDate("2026-12-31")!, directory: fixture.directory).get()
        let policy = try fixture.load()
        #expect(policy.device(id: "phys-old")?.sunset == CalendarDate("2026-12-31"))
        #expect(policy.device(id: "phys-old")?.registered == CalendarDate("2019-04-01"))
    }

    @Test func setSunsetBeforeRegistrationIsRefusedByValidation() throws {
        let fixture = try PolicyFixture(devices: Self.commented)
        defer { fixture.remove() }
        guard case .failure(let errors) = DevicesFileEditor.setSunset(id: "demo-scanner", date: CalendarDate("2025-01-01")!, directory: fixture.directory) else {
            Issue.record("a sunset before registration was written")
            return
        }
        #expect(errors.description.contains("before its registration"))
        #expect(try text(fixture) == Self.commented)
    }

    @Test func concurrentEditsAllLand() async throws {
        let fixture = try PolicyFixture(devices: Self.commented)
        defer { fixture.remove() }
        let directory = fixture.directory
        let now = berlinTime("2026-11-24", 9)
        await withTaskGroup(of: Void.self) { group in
            for i in 0..<12 {
                group.addTask {
                    _ = DevicesFileEditor.append(DeviceRegistration(id: "bulk-\(i)", department: "it", owner: "a@example.edu",
                                                                    addresses: ["10.8.0.\(i + 1)"], senders: ["a@example.edu"]),
                                                 directory: directory, now: now)
                }
            }
            group.addTask { _ = DevicesFileEditor.remove(id: "phys-old", directory: directory) }
            group.addTask { _ = DevicesFileEditor.setSunset(id: "demo-scanner", date: CalendarDate("2027-02-01")!, directory: directory) }
        }
        let policy = try fixture.load()
        #expect(Set(policy.devices.map(\.id)) == Set(["demo-scanner", "chem-scanner-1"] + (0..<12).map { "bulk-\($0)" }))
        #expect(policy.device(id: "demo-scanner")?.sunset == CalendarDate("2027-02-01"))
    }
}
