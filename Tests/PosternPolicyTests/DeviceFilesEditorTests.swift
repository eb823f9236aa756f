import Foundation
import PosternPolicy
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// `postern devices add`, approval, revocation and sunset changes: one file written (or removed) atomically under
/// the lock of devices.d, after validation with the whole policy; no other file changes.
@Suite struct DeviceFilesEditorTests {
    let today = berlinTime("2026-11-24", 9)

    func registration(_ id: String, address: String, department: String = "chem", location: String? = "Room 1.23, \"east\" wing") -> DeviceRegistration {
        DeviceRegistration(id: id, department: department, owner: "j.doe@chem.example.edu", location: location,
                           addresses: [address], senders: ["scan2@chem.example.edu"])
    }

    /// Every file of devices.d but `except`, unchanged; no temporary file left over.
    func expectOthersUnchanged(_ fixture: PolicyFixture, before: [String: String], except: String?, sourceLocation: SourceLocation = #_sourceLocation) throws {
        var after = try fixture.deviceTree()
        after[".lock"] = nil
        var expected = before
        expected[".lock"] = nil
        if let except {
            after[except] = nil
            expected[except] = nil
        }
        #expect(after == expected, sourceLocation: sourceLocation)
    }

    @Test func addWritesOneValidatedFileAndNothingElse() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let before = try fixture.deviceTree()
        let added = try DeviceFilesEditor.add(
            DeviceRegistration(id: "chem-scanner-2", department: "chem", owner: "j.doe@chem.example.edu",
                               location: "Gebäude 1, Raum 1.23, \"east\" wing", addresses: ["10.1.3.4", "2001:db8:1::4"],
                               senders: ["scan2@chem.example.edu", "*.lab.chem.example.edu"], maxMessageSize: "5M", maxRate: "30/hour",
                               note: "model: Acme 3000"),
            directory: fixture.directory, now: today).get()
        #expect(added.registered == CalendarDate("2026-11-24"))
        #expect(added.sunset == CalendarDate("2027-08-31"))  // the global sunset
        #expect(added.location == "Gebäude 1, Raum 1.23, \"east\" wing; model: Acme 3000")
        #expect(added.maxMessageSize == 5 << 20)
        #expect(added.maxRate?.description == "30/hour")
        let text = try fixture.read("devices.d/chem/chem-scanner-2.yaml")
        #expect(text.contains("Gebäude"), "non-ASCII text stays readable: \(text)")
        #expect(text.hasPrefix("id: chem-scanner-2\ndepartment: chem\nowner: j.doe@chem.example.edu\n"), "\(text)")
        try expectOthersUnchanged(fixture, before: before, except: "chem/chem-scanner-2.yaml")
        let policy = try fixture.load()
        #expect(policy.device(forAddress: "2001:db8:1::4")?.id == "chem-scanner-2")
        #expect(policy.devices.count == 5)
    }

    @Test func addMakesTheDirectoryOfADepartmentsFirstDevice() throws {
        var devices = PolicyFixture.deviceFiles
        devices["phys/phys-old.yaml"] = nil
        devices["phys/phys-plotter.yaml"] = nil
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        #expect(!FileManager.default.fileExists(atPath: fixture.url("devices.d/phys").path))
        var r = registration("phys-new", address: "10.5.0.1", department: "phys")
        r.sunset = CalendarDate("2027-01-15")
        #expect(try DeviceFilesEditor.add(r, directory: fixture.directory, now: today).get().sunset == CalendarDate("2027-01-15"))
        #expect(try fixture.load().device(id: "phys-new")?.department == "phys")
    }

    @Test(arguments: [
        ("demo-scanner", "10.9.9.9", "chem", "device 'demo-scanner' is already registered"),
        ("phys-old", "10.9.9.9", "phys", "device 'phys-old' is already registered"),
        ("new-one", "10.1.2.0/30", "chem", "overlaps 10.1.2.3 of device 'chem-scanner-1'"),
        ("new-one", "::ffff:127.0.0.1", "chem", "overlaps 127.0.0.1 of device 'demo-scanner'"),
        ("new-one", "10.9.9.9", "astro", "unknown department 'astro'"),
        ("new-one", "10.9.9.300", "chem", "is not an IPv4 or IPv6 address"),
        ("../../outside", "10.9.9.9", "chem", "device id '../../outside' is not a name"),
        (".hidden", "10.9.9.9", "chem", "device id '.hidden' is not a name"),
        ("new-one", "10.9.9.9", "../chem", "unknown department '../chem'"),
        (String(repeating: "x", count: 300), "10.9.9.9", "chem", "is not a name"),
    ])
    func addRefusesInvalidEntriesAndWritesNothing(_ id: String, _ address: String, _ department: String, _ message: String) throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let before = try fixture.deviceTree()
        let outside = try FileManager.default.contentsOfDirectory(atPath: fixture.directory.path).sorted()
        let result = DeviceFilesEditor.add(registration(id, address: address, department: department), directory: fixture.directory, now: today)
        guard case .failure(let errors) = result else {
            Issue.record("accepted \(id) \(address)")
            return
        }
        #expect(errors.issues.contains { $0.message.contains(message) }, "\(errors)")
        try expectOthersUnchanged(fixture, before: before, except: nil)
        #expect(try FileManager.default.contentsOfDirectory(atPath: fixture.directory.path).sorted() == outside)
    }

    @Test(arguments: ["Lab\u{2028}B", "Lab\u{2029}B", "Lab\u{85}B", "Lab\u{202E}B", "Lab\rB", "Lab\u{7}B"])
    func addRefusesFreeTextWithBreaksOrControlsAndWritesNothing(_ location: String) throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let before = try fixture.deviceTree()
        let result = DeviceFilesEditor.add(registration("chem-new", address: "10.1.7.7", location: location), directory: fixture.directory, now: today)
        let issues = try #require(result.failure).issues
        #expect(issues.contains { $0.message.hasPrefix("location of device 'chem-new':") && $0.message.hasSuffix("is not allowed") }, "\(issues)")
        try expectOthersUnchanged(fixture, before: before, except: nil)
    }

    @Test func removeDeletesOnlyThatFile() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let before = try fixture.deviceTree()
        let removed = try DeviceFilesEditor.remove(id: "demo-scanner", directory: fixture.directory).get()
        #expect(removed.id == "demo-scanner")
        #expect(!FileManager.default.fileExists(atPath: fixture.url("devices.d/it/demo-scanner.yaml").path))
        try expectOthersUnchanged(fixture, before: before, except: "it/demo-scanner.yaml")
        let policy = try fixture.load()
        #expect(policy.devices.map(\.id) == ["chem-scanner-1", "phys-old", "phys-plotter"])
        #expect(policy.device(forAddress: "127.0.0.1") == nil)
    }

    @Test func removeUnknownDeviceIsRefusedAndNothingChanges() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let before = try fixture.deviceTree()
        let errors = try #require(DeviceFilesEditor.remove(id: "no-such", directory: fixture.directory).failure)
        #expect(errors.description.contains("'no-such' is not registered"))
        try expectOthersUnchanged(fixture, before: before, except: nil)
    }

    @Test func setSunsetRewritesOnlyThatFileWithTheNewDate() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let before = try fixture.deviceTree()
        let device = try DeviceFilesEditor.setSunset(id: "chem-scanner-1", date: CalendarDate("2027-03-15")!, directory: fixture.directory).get()
        #expect(device.sunset == CalendarDate("2027-03-15"))
        let after = try fixture.read("devices.d/chem/chem-scanner-1.yaml")
        let expected = PolicyFixture.deviceFiles["chem/chem-scanner-1.yaml"]!
            .replacingOccurrences(of: "# Chemistry's first scanner\n", with: "")  // written anew from its values
            .replacingOccurrences(of: "sunset: 2027-12-31", with: "sunset: 2027-03-15") + "\n"
        #expect(after == expected)
        try expectOthersUnchanged(fixture, before: before, except: "chem/chem-scanner-1.yaml")
        #expect(try fixture.load().device(id: "chem-scanner-1")?.registered == CalendarDate("2023-09-12"))
    }

    @Test func setSunsetBeforeRegistrationIsRefusedByValidation() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let before = try fixture.deviceTree()
        let errors = try #require(DeviceFilesEditor.setSunset(id: "demo-scanner", date: CalendarDate("2025-01-01")!, directory: fixture.directory).failure)
        #expect(errors.description.contains("before its registration"))
        try expectOthersUnchanged(fixture, before: before, except: nil)
    }

    /// A device file with line breaks libyaml counts but LF does not (the old editor's line arithmetic went wrong on
    /// them): edits work on values, not lines.
    @Test(arguments: ["\u{2028}", "\u{2029}", "\u{85}", "\r"])
    func filesWithOddLineBreaksInCommentsAreEditedLikeOthers(_ lineBreak: String) throws {
        var devices = PolicyFixture.deviceFiles
        devices["chem/chem-scanner-1.yaml"] = "# odd breaks" + String(repeating: lineBreak, count: 20) + "\n" + (devices["chem/chem-scanner-1.yaml"] ?? "")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        #expect(try fixture.load().device(id: "chem-scanner-1") != nil)
        _ = try DeviceFilesEditor.setSunset(id: "chem-scanner-1", date: CalendarDate("2027-02-01")!, directory: fixture.directory).get()
        #expect(try fixture.load().device(id: "chem-scanner-1")?.sunset == CalendarDate("2027-02-01"))
        _ = try DeviceFilesEditor.remove(id: "chem-scanner-1", directory: fixture.directory).get()
        #expect(try fixture.load().device(id: "chem-scanner-1") == nil)
    }

    @Test func anEditWaitsForTheLockOfDevicesD() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let fd = open(fixture.url("devices.d/.lock").path, O_CREAT | O_RDWR, 0o644)
        #expect(fd >= 0)
        #expect(flock(fd, LOCK_EX) == 0)
        let done = Failures()
        let directory = fixture.directory
        let now = today
        let thread = Thread {
            let result = DeviceFilesEditor.add(DeviceRegistration(id: "waiting", department: "it", owner: "a@example.edu", addresses: ["10.6.0.1"],
                                                                  senders: ["a@example.edu"]), directory: directory, now: now)
            done.add(result.failure.map { "\($0)" } ?? "added")
        }
        thread.start()
        Thread.sleep(forTimeInterval: 0.5)
        #expect(done.all.isEmpty, "the edit went ahead while devices.d was locked")
        #expect(!FileManager.default.fileExists(atPath: fixture.url("devices.d/it/waiting.yaml").path))
        flock(fd, LOCK_UN)
        close(fd)
        for _ in 0..<200 where done.all.isEmpty { Thread.sleep(forTimeInterval: 0.05) }
        #expect(done.all == ["added"])
        #expect(try fixture.load().device(id: "waiting") != nil)
    }

    @Test func concurrentEditsAllLandIntact() async throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let directory = fixture.directory
        let now = today
        let failures = Failures()
        await withTaskGroup(of: Void.self) { group in
            for i in 0..<12 {
                group.addTask {
                    let r = DeviceRegistration(id: "bulk-\(i)", department: "it", owner: "a@example.edu", addresses: ["10.8.0.\(i + 1)"], senders: ["a@example.edu"])
                    if case .failure(let e) = DeviceFilesEditor.add(r, directory: directory, now: now) { failures.add("\(e)") }
                }
            }
            group.addTask { if case .failure(let e) = DeviceFilesEditor.remove(id: "phys-old", directory: directory) { failures.add("\(e)") } }
            group.addTask {
                if case .failure(let e) = DeviceFilesEditor.setSunset(id: "demo-scanner", date: CalendarDate("2027-02-01")!, directory: directory) { failures.add("\(e)") }
            }
        }
        #expect(failures.all.isEmpty, "\(failures.all)")
        let policy = try fixture.load()
        #expect(Set(policy.devices.map(\.id)) == Set(["demo-scanner", "chem-scanner-1", "phys-plotter"] + (0..<12).map { "bulk-\($0)" }))
        #expect(policy.device(id: "demo-scanner")?.sunset == CalendarDate("2027-02-01"))
        #expect(try fixture.deviceTree().keys.filter { $0.contains(".tmp-") }.isEmpty)
    }

    @Test func anEditStartsOnlyFromAPolicyThatLoads() throws {
        let fixture = try PolicyFixture(extraFiles: ["devices.d/it/broken.yaml": "id: [broken\n"])
        defer { fixture.remove() }
        let errors = try #require(DeviceFilesEditor.add(registration("chem-new", address: "10.1.7.7"), directory: fixture.directory, now: today).failure)
        #expect(errors.issues.contains { $0.message.contains("the current policy does not load, so no device was added") })
        #expect(!FileManager.default.fileExists(atPath: fixture.url("devices.d/chem/chem-new.yaml").path))
    }

    @Test func anEditThroughAReaderSeesWhatTheReaderSees() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let reader = PolicyReader(directory: fixture.directory)
        _ = try reader.load().policy.get()
        _ = try DeviceFilesEditor.add(registration("chem-r1", address: "10.1.8.1"), directory: fixture.directory, now: today, reader: reader).get()
        let second = DeviceFilesEditor.add(registration("chem-r2", address: "10.1.8.1"), directory: fixture.directory, now: today, reader: reader)
        #expect(second.failure?.issues.contains { $0.message.contains("overlaps 10.1.8.1 of device 'chem-r1'") } == true)
        let load = reader.load()
        #expect(try load.policy.get().device(id: "chem-r1") != nil)
    }
}

final class Failures: @unchecked Sendable {
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ s: String) { lock.withLock { items.append(s) } }
    var all: [String] { lock.withLock { items } }
}
