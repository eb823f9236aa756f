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
    }

    @Test func filesOtherThanThePolicyFilesAreIgnored() throws {
        let fixture = try PolicyFixture(extraFiles: ["postern.yaml": "listeners: [this is: not policy", "users.ldif": "dn: x"])
        defer { fixture.remove() }
        #expect(fixture.errors().isEmpty)
    }

    // MARK: Errors name file, line and fix

    struct BadCase: CustomTestStringConvertible, Sendable {
        var name: String
        var file: String
        var replace: String
        var with: String
        var line: Int
        var message: String
        var fix: String
        var testDescription: String { name }
    }

    static let badCases: [BadCase] = [
        BadCase(name: "unknown key in a device", file: "devices.yaml", replace: "    location: loopback", with: "    locaton: loopback",
                line: 6, message: "unknown key 'locaton' in device", fix: "did you mean 'location'?"),
        BadCase(name: "unknown top-level key", file: "policy.yaml", replace: "timezone: Europe/Berlin", with: "timezone: Europe/Berlin\ninternal-domain: [x.edu]",
                line: 2, message: "unknown key 'internal-domain'", fix: "did you mean 'internal-domains'?"),
        BadCase(name: "unknown listener kind", file: "policy.yaml", replace: "  submissions: {enabled: true}", with: "  smtps: {enabled: true}",
                line: 10, message: "unknown key 'smtps' in listeners", fix: "listener kinds are submission, submissions and device"),
        BadCase(name: "bad address", file: "devices.yaml", replace: "addresses: [10.1.2.3]", with: "addresses: [10.1.2.300]",
                line: 14, message: "'10.1.2.300' is not an IPv4 or IPv6 address", fix: "write e.g. 10.1.2.3"),
        BadCase(name: "CIDR with host bits", file: "devices.yaml", replace: "addresses: [10.1.2.3]", with: "addresses: [10.1.2.3/24]",
                line: 14, message: "'10.1.2.3/24' has host bits set", fix: "write the network 10.1.2.0/24"),
        BadCase(name: "bad prefix length", file: "devices.yaml", replace: "addresses: [10.1.2.3]", with: "addresses: [10.1.2.3/33]",
                line: 14, message: "bad prefix length", fix: "/0-/32"),
        BadCase(name: "overlapping ranges of two devices", file: "devices.yaml", replace: "addresses: [10.2.9.9]", with: "addresses: [10.1.2.0/28]",
                line: 26, message: "address 10.1.2.0/28 of device 'phys-old' overlaps 10.1.2.3 of device 'chem-scanner-1' (line 11)",
                fix: "give each device its own addresses"),
        BadCase(name: "same address twice in the file", file: "devices.yaml", replace: "addresses: [10.2.9.9]", with: "addresses: [\"::ffff:127.0.0.1\"]",
                line: 26, message: "overlaps 127.0.0.1 of device 'demo-scanner' (line 3)", fix: "give each device its own addresses"),
        BadCase(name: "sunset before registration", file: "devices.yaml", replace: "    sunset: 2025-12-31", with: "    sunset: 2018-12-31",
                line: 32, message: "sunset 2018-12-31 of device 'phys-old' is before its registration 2019-04-01", fix: "set sunset on or after 2019-04-01"),
        BadCase(name: "unknown department", file: "devices.yaml", replace: "    department: chem", with: "    department: chemistry",
                line: 12, message: "device 'chem-scanner-1' names unknown department 'chemistry'", fix: "use one of: chem, it, phys"),
        BadCase(name: "bad date", file: "devices.yaml", replace: "registered: 2023-09-12", with: "registered: 2023-02-30",
                line: 16, message: "'2023-02-30' is not a valid date for registered", fix: "YYYY-MM-DD"),
        BadCase(name: "duplicate device id", file: "devices.yaml", replace: "  - id: phys-old", with: "  - id: demo-scanner",
                line: 26, message: "device 'demo-scanner' is already registered at line 3", fix: "choose another id"),
        BadCase(name: "missing sunset", file: "devices.yaml", replace: "    sunset: 2025-12-31", with: "",
                line: 26, message: "device is missing 'sunset'", fix: "add 'sunset: ...'"),
        BadCase(name: "unknown time zone", file: "policy.yaml", replace: "Europe/Berlin", with: "Europe/Atlantis",
                line: 1, message: "unknown time zone 'Europe/Atlantis'", fix: "IANA name"),
        BadCase(name: "bad internal domain", file: "policy.yaml", replace: "  - example.edu", with: "  - example..edu",
                line: 3, message: "'example..edu' is not a domain", fix: "*.example.edu"),
        BadCase(name: "YAML syntax error", file: "devices.yaml", replace: "    senders: [scanner@example.edu]", with: "    senders: [scanner@example.edu",
                line: 9, message: "YAML syntax error", fix: "check indentation"),
        BadCase(name: "bad sender", file: "devices.yaml", replace: "senders: [scanner@example.edu]", with: "senders: [\"scanner@\"]",
                line: 8, message: "'scanner@' is not an address or domain", fix: "scanner@chem.example.edu"),
        BadCase(name: "bad rate", file: "devices.yaml", replace: "    max-message-size: 10M", with: "    max-rate: lots",
                line: 18, message: "'lots' is not a rate", fix: "60/hour"),
        BadCase(name: "duplicate department", file: "departments.yaml", replace: "  - id: phys", with: "  - id: it",
                line: 8, message: "department 'it' is defined twice", fix: "remove or rename"),
    ]

    @Test(arguments: badCases)
    func invalidPolicyIsRefusedWithFileLineAndFix(_ c: BadCase) throws {
        var texts = ["policy.yaml": PolicyFixture.policyYAML, "departments.yaml": PolicyFixture.departmentsYAML,
                     "devices.yaml": PolicyFixture.devicesYAML]
        let original = try #require(texts[c.file])
        #expect(original.contains(c.replace), "fixture lacks \(c.replace)")
        texts[c.file] = original.replacingOccurrences(of: c.replace, with: c.with)
        let fixture = try PolicyFixture(policy: texts["policy.yaml"]!, departments: texts["departments.yaml"]!, devices: texts["devices.yaml"]!)
        defer { fixture.remove() }
        let issues = fixture.errors()
        let issue = try #require(issues.first(where: { $0.message.contains(c.message) }), "got: \(issues)")
        #expect(issue.file == fixture.directory.relativePath + "/" + c.file)
        #expect(issue.line == c.line, "\(issue)")
        #expect(issue.fix.contains(c.fix), "\(issue)")
        #expect(issue.description == "\(issue.file):\(issue.line): \(issue.message) (fix: \(issue.fix))")
    }

    @Test func missingFileIsReported() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        try FileManager.default.removeItem(at: fixture.directory.appendingPathComponent("departments.yaml"))
        let issues = fixture.errors()
        #expect(issues.count == 1)
        #expect(issues.first?.file.hasSuffix("/departments.yaml") == true)
        #expect(issues.first?.message.hasPrefix("cannot read file") == true)
    }

    @Test func everyErrorIsReportedNotJustTheFirst() throws {
        let devices = PolicyFixture.devicesYAML
            .replacingOccurrences(of: "addresses: [10.1.2.3]", with: "addresses: [10.1.2.999]")
            .replacingOccurrences(of: "    location: loopback", with: "    colour: beige")
            .replacingOccurrences(of: "department: phys\n    owner: m.curie@phys.example.edu\n    addresses: [10.2.9.9]",
                                  with: "department: astro\n    owner: m.curie@phys.example.edu\n    addresses: [10.2.9.9]")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        let lines = fixture.errors().map(\.line)
        #expect(lines == [6, 14, 27], "\(fixture.errors())")
    }

    @Test func fingerprintChangesWhenAPolicyFileChanges() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        let before = PolicyLoader.fingerprint(directory: fixture.directory)
        #expect(before == PolicyLoader.fingerprint(directory: fixture.directory))
        try Data((PolicyFixture.devicesYAML + "\n# edited\n").utf8).write(to: fixture.directory.appendingPathComponent("devices.yaml"))
        let after = PolicyLoader.fingerprint(directory: fixture.directory)
        #expect(after["devices.yaml"] != before["devices.yaml"])
        #expect(after["policy.yaml"] == before["policy.yaml"])
    }

    @Test func anchorsAndAliasesAreResolved() throws {
        let devices = PolicyFixture.devicesYAML
            .replacingOccurrences(of: "senders: [scanner@example.edu]", with: "senders: &shared [scanner@example.edu]")
            .replacingOccurrences(of: "senders: [\"*.phys.example.edu\"]", with: "senders: *shared")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        let policy = try fixture.load()
        #expect(policy.device(id: "phys-plotter")?.senders.map(\.description) == ["scanner@example.edu"])
    }

    // MARK: Index

    @Test func hundredThousandDevicesLoadAndEveryLookupFindsItsDevice() throws {
        var yaml = "devices:\n"
        yaml.reserveCapacity(100_000 * 200)
        for i in 0..<100_000 {
            let a = i >> 16, b = (i >> 8) & 0xff, c = i & 0xff
            // Even devices: one IPv4 address each; odd devices: an IPv4 /31 and an IPv6 /64.
            let addresses = i % 2 == 0 ? "[10.\(a).\(b).\(c)]" : "[\"11.\(a).\(b).\(c & 0xfe)/31\", \"2001:db8:\(a):\(String(i & 0xffff, radix: 16))::/64\"]"
            yaml += """
                  - id: dev-\(i)
                    department: it
                    owner: owner\(i)@example.edu
                    addresses: \(addresses)
                    senders: [dev\(i)@example.edu]
                    registered: 2024-01-01
                    sunset: 2027-08-31

                """
        }
        let fixture = try PolicyFixture(devices: yaml)
        defer { fixture.remove() }
        let policy = try fixture.load()
        #expect(policy.devices.count == 100_000)
        for i in stride(from: 0, to: 100_000, by: 97) {
            let a = i >> 16, b = (i >> 8) & 0xff, c = i & 0xff
            if i % 2 == 0 {
                #expect(policy.device(forAddress: "10.\(a).\(b).\(c)")?.id == "dev-\(i)")
                #expect(policy.device(forAddress: "::ffff:10.\(a).\(b).\(c)")?.id == "dev-\(i)")
                #expect(policy.device(forAddress: "12.\(a).\(b).\(c)") == nil)
            } else {
                #expect(policy.device(forAddress: "11.\(a).\(b).\(c & 0xfe)")?.id == "dev-\(i)")
                #expect(policy.device(forAddress: "11.\(a).\(b).\(c)")?.id == "dev-\(i)")
                #expect(policy.device(forAddress: "2001:db8:\(a):\(String(i & 0xffff, radix: 16)):0:1234::")?.id == "dev-\(i)")
                #expect(policy.device(forAddress: "2001:db8:\(a + 2):\(String(i & 0xffff, radix: 16))::1") == nil)
            }
        }
        #expect(policy.device(forAddress: "12.0.0.1") == nil)
        #expect(policy.device(forAddress: "not an address") == nil)
    }
}
