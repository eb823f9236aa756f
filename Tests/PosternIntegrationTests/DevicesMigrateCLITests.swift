import Foundation
import XCTest

/// `postern devices migrate` with the real binary: a devices.yaml holding the demo's devices becomes a devices.d
/// that `postern devices list` and `postern check` read as the shipped one; a devices.yaml that does not load, or
/// one beside an existing devices.d, changes nothing.
final class DevicesMigrateCLITests: XCTestCase {
    /// A policy directory with the shipped policy.yaml and departments.yaml and `devicesYAML` as devices.yaml.
    func legacyDirectory(_ devicesYAML: String) throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-migrate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for name in ["policy.yaml", "departments.yaml"] {
            try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent(name), to: directory.appendingPathComponent(name))
        }
        try devicesYAML.write(to: directory.appendingPathComponent("devices.yaml"), atomically: true, encoding: .utf8)
        return directory
    }

    /// The shipped device files as one devices.yaml of earlier versions: each file's lines (comments left out) as one entry.
    func shippedDevicesAsOneFile() throws -> (yaml: String, files: [String]) {
        let root = Repo.policies.appendingPathComponent("devices.d")
        var yaml = "# The devices of the demo, in the layout of earlier versions.\ndevices:\n"
        var files: [String] = []
        for department in try FileManager.default.contentsOfDirectory(atPath: root.path).sorted() {
            for name in try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(department).path).sorted() {
                let text = try String(contentsOf: root.appendingPathComponent(department).appendingPathComponent(name), encoding: .utf8)
                let lines = text.split(separator: "\n").filter { !$0.hasPrefix("#") }
                yaml += lines.enumerated().map { ($0.offset == 0 ? "  - " : "    ") + $0.element }.joined(separator: "\n") + "\n"
                files.append("devices.d/\(department)/\(name)")
            }
        }
        return (yaml, files)
    }

    func postern(_ arguments: [String]) throws -> Shell.Result {
        try Shell.run([Repo.posternBinary.path] + arguments)
    }

    /// `postern check` with a configuration whose policy directory is `policies`.
    func check(_ policies: URL) throws -> Shell.Result {
        try Repo.ensureCertificates()
        let config = policies.deletingLastPathComponent().appendingPathComponent(policies.lastPathComponent + ".postern.yaml")
        try """
            policies: \(policies.path)
            tls: { certificate: \(Repo.certs.path)/server.pem, key: \(Repo.certs.path)/server.key }
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:0" }
            """.write(to: config, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(at: config) }
        return try postern(["check", "--config", config.path])
    }

    func testMigrateWritesOneFilePerDeviceThatListsAsTheShippedDevicesD() throws {
        let (yaml, shippedFiles) = try shippedDevicesAsOneFile()
        let directory = try legacyDirectory(yaml)
        defer { try? FileManager.default.removeItem(at: directory) }

        let migrated = try postern(["devices", "migrate", "--policies", directory.path])
        XCTAssertEqual(migrated.status, 0, migrated.output)
        XCTAssertTrue(migrated.output.contains("migrated \(shippedFiles.count) devices into 5 department directories of \(directory.path)/devices.d; "
                                               + "moved devices.yaml to \(directory.path)/devices.yaml.migrated"), migrated.output)
        XCTAssertTrue(migrated.output.contains("note: the 1 comment lines of devices.yaml are not in the device files"), migrated.output)
        for file in shippedFiles { XCTAssertTrue(migrated.output.contains("wrote \(directory.path)/\(file)\n"), "\(file) in \(migrated.output)") }

        // The same files as the shipped devices.d, and nothing else (no staging directory, no temporary file).
        let written = try FileManager.default.subpathsOfDirectory(atPath: directory.appendingPathComponent("devices.d").path)
            .filter { $0.hasSuffix(".yaml") }.map { "devices.d/" + $0 }.sorted()
        XCTAssertEqual(written, shippedFiles)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted(),
                       ["departments.yaml", "devices.d", "devices.yaml.migrated", "policy.yaml"])
        XCTAssertEqual(try String(contentsOf: directory.appendingPathComponent("devices.yaml.migrated"), encoding: .utf8), yaml)

        // Listed exactly as the shipped devices, on the same day.
        let list = ["devices", "list", "--json", "--at", "2026-06-01"]
        let fromMigrated = try postern(list + ["--policies", directory.path])
        let fromShipped = try postern(list + ["--policies", Repo.policies.path])
        XCTAssertEqual(fromMigrated.status, 0, fromMigrated.output)
        XCTAssertEqual(fromShipped.status, 0, fromShipped.output)
        XCTAssertEqual(fromMigrated.output, fromShipped.output)
        XCTAssertTrue(fromMigrated.output.contains("\"id\" : \"phys-plotter\""), fromMigrated.output)

        // Run again: nothing left to migrate, and devices.d is not touched.
        let again = try postern(["devices", "migrate", "--policies", directory.path])
        XCTAssertEqual(again.status, 1, again.output)
        XCTAssertTrue(again.output.contains("devices.yaml:0: there is no devices.yaml to migrate"), again.output)
        XCTAssertTrue(again.output.contains("nothing was migrated"), again.output)
    }

    func testADevicesYAMLThatDoesNotLoadIsNotMigratedAndCheckSaysToMigrate() throws {
        let (yaml, _) = try shippedDevicesAsOneFile()
        // phys-scanner-1 moved into chem's network, where chem-scanner-1 sits.
        let broken = yaml.replacingOccurrences(of: "department: phys\n    owner: m.curie@phys.example.edu\n    location: Physics",
                                               with: "department: astro\n    owner: m.curie@phys.example.edu\n    location: Physics")
        XCTAssertNotEqual(broken, yaml)
        let directory = try legacyDirectory(broken)
        defer { try? FileManager.default.removeItem(at: directory) }

        let checked = try check(directory)
        XCTAssertEqual(checked.status, 2, checked.output)
        XCTAssertTrue(checked.output.contains("\(directory.path)/devices.yaml:0: error: devices.yaml is no longer read"), checked.output)
        XCTAssertTrue(checked.output.contains("run `postern devices migrate --policies \(directory.path)`"), checked.output)

        let refused = try postern(["devices", "migrate", "--policies", directory.path])
        XCTAssertEqual(refused.status, 1, refused.output)
        XCTAssertNotNil(refused.output.range(of: #"devices\.yaml:\d+: device '[a-z0-9-]+' names unknown department 'astro'"#, options: .regularExpression),
                        refused.output)
        XCTAssertTrue(refused.output.contains("devices.yaml does not load, so nothing was migrated"), refused.output)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted(), ["departments.yaml", "devices.yaml", "policy.yaml"])
        XCTAssertEqual(try String(contentsOf: directory.appendingPathComponent("devices.yaml"), encoding: .utf8), broken)

        // Put right, it migrates, and check passes on the result.
        try yaml.write(to: directory.appendingPathComponent("devices.yaml"), atomically: true, encoding: .utf8)
        let migrated = try postern(["devices", "migrate", "--policies", directory.path])
        XCTAssertEqual(migrated.status, 0, migrated.output)
        let passed = try check(directory)
        XCTAssertEqual(passed.status, 0, passed.output)
        XCTAssertNotNil(passed.output.range(of: "\(directory.path): [1-9][0-9]* devices, ", options: .regularExpression), passed.output)
    }

    func testAnExistingDevicesDIsNeverWrittenOver() throws {
        let (yaml, _) = try shippedDevicesAsOneFile()
        let directory = try legacyDirectory(yaml)
        defer { try? FileManager.default.removeItem(at: directory) }
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("devices.d/it"), withIntermediateDirectories: true)
        let own = "id: kept\ndepartment: it\n"
        try own.write(to: directory.appendingPathComponent("devices.d/it/kept.yaml"), atomically: true, encoding: .utf8)

        let refused = try postern(["devices", "migrate", "--policies", directory.path])
        XCTAssertEqual(refused.status, 1, refused.output)
        XCTAssertTrue(refused.output.contains("devices.d:0: devices.d already exists; migrate writes a new one and never overwrites files"), refused.output)
        XCTAssertEqual(try FileManager.default.subpathsOfDirectory(atPath: directory.appendingPathComponent("devices.d").path).sorted(), ["it", "it/kept.yaml"])
        XCTAssertEqual(try String(contentsOf: directory.appendingPathComponent("devices.d/it/kept.yaml"), encoding: .utf8), own)
        XCTAssertTrue(FileManager.default.fileExists(atPath: directory.appendingPathComponent("devices.yaml").path))
    }
}
