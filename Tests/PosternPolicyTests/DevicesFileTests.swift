import Foundation
import PosternPolicy
import Testing

@Suite struct DevicesFileTests {
    let today = berlinTime("2026-11-24", 9)

    func registration(_ id: String, address: String, department: String = "chem") -> DeviceRegistration {
        DeviceRegistration(id: id, department: department, owner: "j.doe@chem.example.edu", location: "Room 1.23, \"east\" wing",
                           addresses: [address], senders: ["scan2@chem.example.edu"])
    }

    @Test func addAppendsAValidatedEntryAndKeepsTheExistingText() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let added = try DevicesFileEditor.append(
            DeviceRegistration(id: "chem-scanner-2", department: "chem", owner: "j.doe@chem.example.edu",
                               location: "Room 1.23, \"east\" wing", addresses: ["10.1.3.4", "2001:db8:1::4"],
                               senders: ["scan2@chem.example.edu", "*.lab.chem.example.edu"], maxMessageSize: "5M", maxRate: "30/hour"),
            directory: fixture.directory, now: today).get()
        #expect(added.registered == CalendarDate("2026-11-24"))
        #expect(added.sunset == CalendarDate("2027-08-31"))  // the global sunset
        #expect(added.location == "Room 1.23, \"east\" wing")
        #expect(added.maxMessageSize == 5 << 20)
        #expect(added.maxRate?.description == "30/hour")
        let text = try String(contentsOf: fixture.directory.appendingPathComponent("devices.yaml"), encoding: .utf8)
        #expect(text.hasPrefix(PolicyFixture.devicesYAML))
        #expect(text.contains("# keep this comment"))
        let policy = try fixture.load()
        #expect(policy.device(forAddress: "2001:db8:1::4")?.id == "chem-scanner-2")
        #expect(policy.devices.count == 5)
    }

    @Test func explicitSunsetIsKept() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        var r = registration("phys-new", address: "10.5.0.1", department: "phys")
        r.sunset = CalendarDate("2027-01-15")
        #expect(try DevicesFileEditor.append(r, directory: fixture.directory, now: today).get().sunset == CalendarDate("2027-01-15"))
    }

    @Test(arguments: [
        ("demo-scanner", "10.9.9.9", "chem", "device 'demo-scanner' is already registered"),
        ("new-one", "10.1.2.0/30", "chem", "overlaps 10.1.2.3 of device 'chem-scanner-1'"),
        ("new-one", "::ffff:127.0.0.1", "chem", "overlaps 127.0.0.1 of device 'demo-scanner'"),
        ("new-one", "10.9.9.9", "astro", "unknown department 'astro'"),
        ("new-one", "10.9.9.300", "chem", "is not an IPv4 or IPv6 address"),
    ])
    func addRefusesInvalidEntriesAndLeavesTheFileAlone(_ id: String, _ address: String, _ department: String, _ message: String) throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let file = fixture.directory.appendingPathComponent("devices.yaml")
        let before = try Data(contentsOf: file)
        let result = DevicesFileEditor.append(registration(id, address: address, department: department),
                                              directory: fixture.directory, now: today)
        guard case .failure(let errors) = result else {
            Issue.record("accepted \(id) \(address)")
            return
        }
        #expect(errors.issues.contains { $0.message.contains(message) }, "\(errors)")
        #expect(try Data(contentsOf: file) == before)
    }

    @Test func addToAnEmptyDeviceList() throws {
        let fixture = try PolicyFixture(devices: "# none yet\ndevices: []\n")
        defer { fixture.remove() }
        _ = try DevicesFileEditor.append(registration("first", address: "10.7.0.1"), directory: fixture.directory, now: today).get()
        let policy = try fixture.load()
        #expect(policy.devices.map(\.id) == ["first"])
    }

    @Test func concurrentAddsAllLandIntact() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let directory = fixture.directory
        let now = today
        let count = 12
        let failures = Failures()
        DispatchQueue.concurrentPerform(iterations: count) { i in
            let r = DeviceRegistration(id: "par-\(i)", department: "it", owner: "it@example.edu",
                                       addresses: ["10.200.0.\(i)"], senders: ["par\(i)@example.edu"])
            if case .failure(let e) = DevicesFileEditor.append(r, directory: directory, now: now) { failures.add("\(e)") }
        }
        #expect(failures.all.isEmpty, "\(failures.all)")
        let policy = try fixture.load()
        #expect(policy.devices.count == 4 + count)
        for i in 0..<count { #expect(policy.device(forAddress: "10.200.0.\(i)")?.id == "par-\(i)") }
        let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.contains(".tmp-") }
        #expect(leftovers.isEmpty)
    }
}

final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ s: String) { lock.withLock { items.append(s) } }
    var all: [String] { lock.withLock { items } }
}
