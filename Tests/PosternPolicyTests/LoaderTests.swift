import Foundation
import PosternPolicy
import PosternSMTP
import Testing

@Suite struct LoaderTests {
    static let shippedPolicies = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("policies")

    @Test func shippedPoliciesLoadAndMatchTheDemo() throws {
        let policy = try PolicyLoader.load(directory: Self.shippedPolicies).get()
        #expect(policy.devices.count == 12)
        #expect(policy.timeZone.identifier == "Europe/Berlin")
        #expect(policy.internalDomains.map(\.description) == ["example.edu", "*.example.edu"])
        let demo = try #require(policy.device(forAddress: "127.0.0.1"))
        #expect(demo.id == "demo-scanner")
        #expect(demo.senders.map(\.description) == ["scanner@example.edu"])
        #expect(policy.device(forAddress: "127.0.0.2") == nil)
        // At least one device is already past its sunset (whatever today is, the 2025 one is).
        let expired = policy.devices.filter { policy.effectiveSunset(for: $0).date < CalendarDate("2026-01-01")! }
        #expect(expired.map(\.id) == ["chem-copier-old"])
        let departments = Set(policy.devices.map(\.department))
        #expect(departments.isSubset(of: Set(policy.departments.keys)) && departments.count >= 4)
        #expect(!FileManager.default.fileExists(atPath: Self.shippedPolicies.appendingPathComponent("devices.yaml").path))
    }

    @Test func devicesAreListedByIDAndFoundByID() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let policy = try fixture.load()
        #expect(policy.devices.map(\.id) == ["chem-scanner-1", "demo-scanner", "phys-old", "phys-plotter"])
        #expect(policy.device(id: "phys-old")?.department == "phys")
        #expect(policy.device(id: "phys") == nil)
        #expect(policy.device(id: "zzz") == nil)
    }

    @Test func filesOtherThanThePolicyFilesAreIgnoredBesideDevicesD() throws {
        let fixture = try PolicyFixture(extraFiles: ["postern.yaml": "listeners: [this is: not policy", "users.ldif": "dn: x",
                                                     "devices.d/.gitkeep": "", "devices.d/it/.demo-scanner.yaml.tmp-1-2": "not: [yaml"])
        defer { fixture.remove() }
        #expect(fixture.errors().isEmpty)
    }

    // MARK: Errors name file, line and fix

    struct BadCase: CustomTestStringConvertible, Sendable {
        var name: String
        /// In the policy directory.
        var file: String
        var replace: String
        var with: String
        var line: Int
        var message: String
        var fix: String
        var testDescription: String { name }
    }

    static let demo = "devices.d/it/demo-scanner.yaml"
    static let chem = "devices.d/chem/chem-scanner-1.yaml"
    static let physOld = "devices.d/phys/phys-old.yaml"

    static let badCases: [BadCase] = [
        BadCase(name: "unknown key in a device", file: demo, replace: "location: loopback", with: "locaton: loopback",
                line: 4, message: "unknown key 'locaton' in device", fix: "did you mean 'location'?"),
        BadCase(name: "unknown top-level key", file: "policy.yaml", replace: "timezone: Europe/Berlin", with: "timezone: Europe/Berlin\ninternal-domain: [x.edu]",
                line: 2, message: "unknown key 'internal-domain'", fix: "did you mean 'internal-domains'?"),
        BadCase(name: "unknown listener kind", file: "policy.yaml", replace: "  submissions: {enabled: true}", with: "  smtps: {enabled: true}",
                line: 10, message: "unknown key 'smtps' in listeners", fix: "listener kinds are submission, submissions and device"),
        BadCase(name: "bad address", file: chem, replace: "addresses: [10.1.2.3]", with: "addresses: [10.1.2.300]",
                line: 5, message: "'10.1.2.300' is not an IPv4 or IPv6 address", fix: "write e.g. 10.1.2.3"),
        BadCase(name: "CIDR with host bits", file: chem, replace: "addresses: [10.1.2.3]", with: "addresses: [10.1.2.3/24]",
                line: 5, message: "'10.1.2.3/24' has host bits set", fix: "write the network 10.1.2.0/24"),
        BadCase(name: "bad prefix length", file: chem, replace: "addresses: [10.1.2.3]", with: "addresses: [10.1.2.3/33]",
                line: 5, message: "bad prefix length", fix: "/0-/32"),
        BadCase(name: "overlapping ranges of devices of two departments", file: physOld, replace: "addresses: [10.2.9.9]", with: "addresses: [10.1.2.0/28]",
                line: 4, message: "address 10.1.2.0/28 of device 'phys-old' overlaps 10.1.2.3 of device 'chem-scanner-1' (", fix: "give each device its own addresses"),
        BadCase(name: "the same address in two files", file: physOld, replace: "addresses: [10.2.9.9]", with: "addresses: [\"::ffff:127.0.0.1\"]",
                line: 4, message: "overlaps 127.0.0.1 of device 'demo-scanner' (", fix: "give each device its own addresses"),
        BadCase(name: "overlap within one device", file: physOld, replace: "addresses: [10.2.9.9]", with: "addresses: [10.2.9.0/24, 10.2.9.9]",
                line: 4, message: "address 10.2.9.9 overlaps 10.2.9.0/24 of the same device", fix: "list each address once"),
        BadCase(name: "sunset before registration", file: physOld, replace: "sunset: 2025-12-31", with: "sunset: 2018-12-31",
                line: 7, message: "sunset 2018-12-31 of device 'phys-old' is before its registration 2019-04-01", fix: "set sunset on or after 2019-04-01"),
        BadCase(name: "a file in another department's directory", file: chem, replace: "department: chem", with: "department: phys",
                line: 3, message: "device 'chem-scanner-1' names department 'phys' but its file is in the directory of 'chem'",
                fix: "move the file to devices.d/phys/ (git mv), or correct department:"),
        BadCase(name: "an id that is not the file name", file: demo, replace: "id: demo-scanner", with: "id: demo-scanner-2",
                line: 1, message: "device id 'demo-scanner-2' does not match the file name 'demo-scanner.yaml'", fix: "name the file demo-scanner-2.yaml"),
        BadCase(name: "an id that is no file name", file: demo, replace: "id: demo-scanner", with: "id: ../../etc/passwd",
                line: 1, message: "device id '../../etc/passwd' is not a name of a-z, 0-9", fix: "it is also the device's file name"),
        BadCase(name: "bad date", file: chem, replace: "registered: 2023-09-12", with: "registered: 2023-02-30",
                line: 7, message: "'2023-02-30' is not a valid date for registered: 2023-02-30 does not exist: February 2023 has 28 days",
                fix: "write a day that exists, as YYYY-MM-DD"),
        BadCase(name: "no month 13", file: chem, replace: "sunset: 2027-12-31", with: "sunset: 2027-13-01",
                line: 8, message: "'2027-13-01' is not a valid date for sunset: 2027-13-01 does not exist: there is no month 13", fix: "YYYY-MM-DD"),
        BadCase(name: "not a date", file: chem, replace: "sunset: 2027-12-31", with: "sunset: 31.12.2027",
                line: 8, message: "'31.12.2027' is not a valid date for sunset", fix: "write the date as YYYY-MM-DD"),
        BadCase(name: "a revocation without its reason", file: physOld, replace: "sunset: 2025-12-31", with: "sunset: 2025-12-31\nrevoked: 2025-06-01\nrevoked-by: alice",
                line: 8, message: "device 'phys-old' has revoked, revoked-by but not revoke-reason", fix: "`postern devices revoke` writes them"),
        BadCase(name: "a revocation before the registration", file: physOld, replace: "sunset: 2025-12-31",
                with: "sunset: 2025-12-31\nrevoked: 2019-01-01\nrevoked-by: alice\nrevoke-reason: gone",
                line: 8, message: "device 'phys-old' is revoked on 2019-01-01, before its registration 2019-04-01", fix: "correct revoked:"),
        BadCase(name: "a reason with a line separator", file: physOld, replace: "sunset: 2025-12-31",
                with: "sunset: 2025-12-31\nrevoked: 2025-06-01\nrevoked-by: alice\nrevoke-reason: \"gone\\u2028away\"",
                line: 10, message: "revoke-reason of device 'phys-old': line or paragraph separator U+2028 is not allowed", fix: "plain text"),
        BadCase(name: "missing sunset", file: physOld, replace: "sunset: 2025-12-31", with: "",
                line: 1, message: "device is missing 'sunset'", fix: "add 'sunset: ...'"),
        BadCase(name: "a key twice", file: physOld, replace: "sunset: 2025-12-31", with: "sunset: 2025-12-31\nsunset: 2026-12-31",
                line: 7, message: "key 'sunset' appears twice", fix: "check indentation"),
        BadCase(name: "unknown time zone", file: "policy.yaml", replace: "Europe/Berlin", with: "Europe/Atlantis",
                line: 1, message: "unknown time zone 'Europe/Atlantis'", fix: "IANA name"),
        BadCase(name: "bad internal domain", file: "policy.yaml", replace: "  - example.edu", with: "  - example..edu",
                line: 3, message: "'example..edu' is not a domain", fix: "*.example.edu"),
        BadCase(name: "YAML syntax error", file: demo, replace: "senders: [scanner@example.edu]", with: "senders: [scanner@example.edu",
                line: 7, message: "YAML syntax error", fix: "check indentation"),
        BadCase(name: "bad sender", file: demo, replace: "senders: [scanner@example.edu]", with: "senders: [\"scanner@\"]",
                line: 6, message: "'scanner@' is not an address or domain", fix: "scanner@chem.example.edu"),
        BadCase(name: "bad rate", file: chem, replace: "max-message-size: 10M", with: "max-rate: lots",
                line: 9, message: "'lots' is not a rate", fix: "60/hour"),
        BadCase(name: "duplicate department", file: "departments.yaml", replace: "  - id: phys", with: "  - id: it",
                line: 8, message: "department 'it' is defined twice", fix: "remove or rename"),
        BadCase(name: "a recipient rule that is none", file: chem, replace: "max-message-size: 10M", with: "recipients: [owner, \"bob@\"]",
                line: 9, message: "'bob@' is not a recipient rule", fix: "*@chem.example.edu"),
        BadCase(name: "a recipient rule outside the internal domains", file: chem, replace: "max-message-size: 10M",
                with: "recipients: [\"*@gmail.com\"]", line: 9,
                message: "device 'chem-scanner-1': recipient rule *@gmail.com is outside the internal domains (example.edu, *.example.edu)",
                fix: "write one inside them"),
        BadCase(name: "an empty recipients list", file: chem, replace: "max-message-size: 10M", with: "recipients: []",
                line: 9, message: "device 'chem-scanner-1' has an empty recipients list", fix: "leave recipients out"),
        BadCase(name: "an anchor", file: demo, replace: "senders: [scanner@example.edu]", with: "senders: &s [scanner@example.edu]",
                line: 6, message: "reads as a YAML anchor", fix: "write each value out"),
    ]

    static func texts() -> [String: String] {
        var texts = ["policy.yaml": PolicyFixture.policyYAML, "departments.yaml": PolicyFixture.departmentsYAML]
        for (path, text) in PolicyFixture.deviceFiles { texts["devices.d/" + path] = text }
        return texts
    }

    static func fixture(_ texts: [String: String]) throws -> PolicyFixture {
        var devices: [String: String] = [:]
        for (path, text) in texts where path.hasPrefix("devices.d/") { devices[String(path.dropFirst("devices.d/".count))] = text }
        return try PolicyFixture(policy: texts["policy.yaml"] ?? "", departments: texts["departments.yaml"] ?? "", devices: devices)
    }

    @Test(arguments: badCases)
    func invalidPolicyIsRefusedWithFileLineAndFix(_ c: BadCase) throws {
        var texts = Self.texts()
        let original = try #require(texts[c.file])
        #expect(original.contains(c.replace), "fixture lacks \(c.replace)")
        texts[c.file] = original.replacingOccurrences(of: c.replace, with: c.with)
        let fixture = try Self.fixture(texts)
        defer { fixture.remove() }
        let issues = fixture.errors()
        let issue = try #require(issues.first(where: { $0.message.contains(c.message) }), "got: \(issues)")
        #expect(issue.file == fixture.display(c.file))
        #expect(issue.line == c.line, "\(issue)")
        #expect(issue.fix.contains(c.fix), "\(issue)")
        #expect(issue.description == "\(issue.file):\(issue.line): \(issue.message) (fix: \(issue.fix))")
    }

    @Test func anOverlapNamesTheOtherDevicesFileAndLine() throws {
        var texts = Self.texts()
        texts[Self.physOld] = texts[Self.physOld]?.replacingOccurrences(of: "addresses: [10.2.9.9]", with: "addresses: [10.1.2.0/28]")
        let fixture = try Self.fixture(texts)
        defer { fixture.remove() }
        let overlaps = fixture.errors().filter { $0.message.contains("overlaps") }
        #expect(overlaps.map(\.description) == [
            "\(fixture.display(Self.physOld)):4: address 10.1.2.0/28 of device 'phys-old' overlaps 10.1.2.3 of device 'chem-scanner-1' "
                + "(\(fixture.display(Self.chem)):5) (fix: give each device its own addresses; narrow or remove one of the two)",
        ])
    }

    @Test func theSameIDInTwoDepartmentsIsRefusedNamingBothFiles() throws {
        var devices = PolicyFixture.deviceFiles
        devices["chem/phys-old.yaml"] = devices["phys/phys-old.yaml"]?.replacingOccurrences(of: "department: phys", with: "department: chem")
            .replacingOccurrences(of: "10.2.9.9", with: "10.1.9.9").replacingOccurrences(of: "[phys.example.edu]", with: "[chem.example.edu]")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        #expect(fixture.errors().map(\.description) == [
            "\(fixture.display("devices.d/phys/phys-old.yaml")):1: device 'phys-old' is already registered in \(fixture.display("devices.d/chem/phys-old.yaml")):1 "
                + "(fix: a device is registered once: remove one of the two, or choose another id)",
        ])
    }

    @Test func aDirectoryThatIsNoDepartmentIsRefused() throws {
        var devices = PolicyFixture.deviceFiles
        devices["astro/telescope.yaml"] = devices["phys/phys-old.yaml"]?.replacingOccurrences(of: "department: phys", with: "department: astro")
            .replacingOccurrences(of: "id: phys-old", with: "id: telescope").replacingOccurrences(of: "10.2.9.9", with: "10.7.0.1")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        #expect(fixture.errors().map(\.description) == [
            "\(fixture.display("devices.d/astro")):0: directory 'astro' is not a department in departments.yaml (fix: use one of: chem, it, phys, or add it to departments.yaml)",
        ])
    }

    @Test func aLeftoverDevicesYAMLIsAnErrorThatSaysToMigrate() throws {
        let fixture = try PolicyFixture(extraFiles: ["devices.yaml": PolicyFixture.legacyDevicesYAML])
        defer { fixture.remove() }
        let issues = fixture.errors()
        #expect(issues.count == 1, "\(issues)")
        #expect(issues.first?.file == fixture.display("devices.yaml"))
        #expect(issues.first?.message.contains("devices.yaml is no longer read") == true)
        #expect(issues.first?.fix.contains("postern devices migrate --policies \(fixture.directory.relativePath)") == true)
    }

    @Test func aMissingDevicesDirectoryIsReported() throws {
        let fixture = try PolicyFixture(devices: [:])
        defer { fixture.remove() }
        #expect(fixture.errors().isEmpty, "an empty devices.d is no devices")
        try FileManager.default.removeItem(at: fixture.url("devices.d"))
        let issues = fixture.errors()
        #expect(issues.map(\.file) == [fixture.display("devices.d")])
        #expect(issues.first?.message == "the devices directory does not exist")
    }

    @Test func whatIsNoDeviceFileInDevicesDIsReported() throws {
        let fixture = try PolicyFixture(extraFiles: ["devices.d/stray.yaml": "id: x", "devices.d/it/notes.txt": "hello",
                                                     "devices.d/it/scanner.yml": "id: scanner", "devices.d/it/sub/x.yaml": "id: x"])
        defer { fixture.remove() }
        try FileManager.default.createSymbolicLink(atPath: fixture.url("devices.d/phys/link.yaml").path, withDestinationPath: "phys-old.yaml")
        let issues = fixture.errors()
        #expect(issues.map(\.file) == ["devices.d/it/notes.txt", "devices.d/it/scanner.yml", "devices.d/it/sub", "devices.d/phys/link.yaml",
                                       "devices.d/stray.yaml"].map(fixture.display), "\(issues)")
        #expect(issues.first { $0.file.hasSuffix("link.yaml") }?.message.contains("not a regular file") == true)
    }

    @Test func aDeviceFileTooLargeOrNotUTF8IsRefusedWithoutParsing() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        try fixture.write(String(repeating: "# padding\n", count: 7000), to: "devices.d/it/big.yaml")
        try Data([0x69, 0x64, 0x3A, 0x20, 0xFF, 0xFE, 0x0A]).write(to: fixture.url("devices.d/it/binary.yaml"))
        let issues = fixture.errors()
        #expect(issues.map(\.description) == [
            "\(fixture.display("devices.d/it/big.yaml")):0: file is larger than 64 KiB (fix: make it a readable UTF-8 text file of a few lines)",
            "\(fixture.display("devices.d/it/binary.yaml")):0: file is not valid UTF-8 (fix: make it a readable UTF-8 text file of a few lines)",
        ])
    }

    @Test func missingFileIsReported() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        try FileManager.default.removeItem(at: fixture.url("departments.yaml"))
        let issues = fixture.errors()
        #expect(issues.count == 1, "\(issues)")
        #expect(issues.first?.file.hasSuffix("/departments.yaml") == true)
        #expect(issues.first?.message.hasPrefix("cannot read file") == true)
    }

    @Test func everyErrorIsReportedNotJustTheFirst() throws {
        var devices = PolicyFixture.deviceFiles
        devices["chem/chem-scanner-1.yaml"] = devices["chem/chem-scanner-1.yaml"]?.replacingOccurrences(of: "[10.1.2.3]", with: "[10.1.2.999]")
        devices["it/demo-scanner.yaml"] = devices["it/demo-scanner.yaml"]?.replacingOccurrences(of: "location: loopback", with: "colour: beige")
        devices["phys/phys-old.yaml"] = devices["phys/phys-old.yaml"]?.replacingOccurrences(of: "owner: m.curie@phys.example.edu", with: "owner: nobody")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        let places = fixture.errors().map { "\($0.file.split(separator: "/").suffix(2).joined(separator: "/")):\($0.line)" }
        #expect(places == ["chem/chem-scanner-1.yaml:5", "it/demo-scanner.yaml:4", "phys/phys-old.yaml:3"], "\(fixture.errors())")
    }

    @Test func aDeviceFileWithALineSeparatorInAFieldIsRefusedAndInACommentLoads() throws {
        var devices = PolicyFixture.deviceFiles
        devices["it/demo-scanner.yaml"] = devices["it/demo-scanner.yaml"]?.replacingOccurrences(of: "location: loopback", with: "location: \"Lab\\u2028B\"")
        // libyaml ends a line at U+2028, U+2029 and NEL as at LF: a comment may end in them, not go on after them.
        devices["phys/phys-old.yaml"] = "# a comment that ends in a raw line separator\u{2028}\u{2029}\u{85}\n" + (devices["phys/phys-old.yaml"] ?? "")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        #expect(fixture.errors().map(\.description) == [
            "\(fixture.display(Self.demo)):4: location of device 'demo-scanner': line or paragraph separator U+2028 is not allowed (fix: write it in plain text)",
        ])
    }

    // MARK: Index

    /// 100,000 device files (the size BENCHMARKS.md measures) load, and every device is found by its id and by each of
    /// its addresses; addresses beside them find none. Mismatches are gathered and expected empty once: an expectation
    /// per lookup would make this test slow.
    @Test func hundredThousandDeviceFilesLoadAndEveryLookupFindsItsDevice() throws {
        let count = 100_000
        let clock = ContinuousClock()
        let start = clock.now
        let fixture = try PolicyFixture(devices: [:])
        defer { fixture.remove() }
        let departments = ["it", "chem", "phys"]
        for department in departments {
            try FileManager.default.createDirectory(at: fixture.url("devices.d/" + department), withIntermediateDirectories: true)
        }
        for i in 0..<count {
            let a = i >> 16, b = (i >> 8) & 0xff, c = i & 0xff
            // Even devices: one IPv4 address each; odd devices: an IPv4 /31 and an IPv6 /64.
            let addresses = i % 2 == 0 ? "[10.\(a).\(b).\(c)]" : "[\"11.\(a).\(b).\(c & 0xfe)/31\", \"2001:db8:\(a):\(String(i & 0xffff, radix: 16))::/64\"]"
            let department = departments[i % 3]
            let text = """
                id: dev-\(i)
                department: \(department)
                owner: owner\(i)@example.edu
                addresses: \(addresses)
                senders: [dev\(i)@example.edu]
                registered: 2024-01-01
                sunset: 2027-08-31

                """
            // open/write/close: Foundation's Data.write took 20 times longer for these files here.
            let path = fixture.url("devices.d/\(department)/dev-\(i).yaml").path
            let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0o644)
            let length = text.utf8.count
            let wrote = text.utf8.withContiguousStorageIfAvailable { fd >= 0 ? write(fd, $0.baseAddress, length) : -1 }
            if fd >= 0 { close(fd) }
            guard wrote == length else {
                Issue.record("cannot write \(path): errno \(errno)")
                return
            }
        }
        let written = clock.now
        let policy = try fixture.load()
        let loaded = clock.now
        #expect(policy.devices.count == count)
        var misses: [String] = []
        func expect(_ address: String, _ id: String?) {
            let found = policy.device(forAddress: address)?.id
            if found != id { misses.append("\(address): \(found ?? "none"), expected \(id ?? "none")") }
        }
        for (a, b) in zip(policy.devices, policy.devices.dropFirst()) where a.id >= b.id {
            misses.append("devices not sorted by id at \(b.id)")
        }
        for i in 0..<count {
            let a = i >> 16, b = (i >> 8) & 0xff, c = i & 0xff
            let id = "dev-\(i)"
            if i % 2 == 0 {
                expect("10.\(a).\(b).\(c)", id)
                expect("::ffff:10.\(a).\(b).\(c)", id)
                expect("12.\(a).\(b).\(c)", nil)
            } else {
                expect("11.\(a).\(b).\(c & 0xfe)", id)
                expect("11.\(a).\(b).\(c)", id)
                expect("2001:db8:\(a):\(String(i & 0xffff, radix: 16)):0:1234::", id)
                expect("2001:db8:\(a + 2):\(String(i & 0xffff, radix: 16))::1", nil)
            }
            if policy.device(id: id)?.id != id { misses.append("id \(id) not found") }
        }
        expect("12.0.0.1", nil)
        expect("not an address", nil)
        #expect(misses.isEmpty, "\(misses.count) lookups went wrong, first: \(misses.prefix(5))")
        print("100,000 device files: written in \(written - start), loaded in \(loaded - written), checked in \(clock.now - loaded)")
    }
}
