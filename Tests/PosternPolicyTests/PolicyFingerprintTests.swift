import Foundation
import Logging
import PosternPolicy
import XCTest

/// The policy fingerprint `/health` and `/metrics` show, so that an operator sees when nodes disagree: the same
/// files give the same fingerprint wherever and in whatever order they were written; any edit changes it.
final class PolicyFingerprintTests: XCTestCase {
    func testTheSameFilesInTwoDirectoriesHaveOneFingerprintAndAnEditChangesIt() throws {
        let first = try PolicyFixture()
        // The same files written in the opposite order (another inode order, another listing order).
        let second = try PolicyFixture(devices: [:])
        for (path, text) in PolicyFixture.deviceFiles.sorted(by: { $0.key > $1.key }) { try second.write(text, to: "devices.d/" + path) }
        defer {
            try? FileManager.default.removeItem(at: first.directory)
            try? FileManager.default.removeItem(at: second.directory)
        }
        let fingerprint = try first.load().fingerprint
        XCTAssertEqual(fingerprint.count, 16)
        XCTAssertTrue(fingerprint.allSatisfy { $0.isHexDigit }, fingerprint)
        XCTAssertEqual(try second.load().fingerprint, fingerprint)

        let store = try PolicyStore(directory: second.directory, logger: Logger(label: "test"))
        XCTAssertEqual(store.inForce.generation, 1)
        XCTAssertEqual(store.inForce.policy.fingerprint, fingerprint)

        // One device file edited (a comment only): another fingerprint, the next generation.
        let scanner = try second.read("devices.d/it/demo-scanner.yaml")
        try second.write(scanner + "\n# moved to room 2\n", to: "devices.d/it/demo-scanner.yaml")
        XCTAssertNil(store.reload(reason: "test"))
        XCTAssertEqual(store.inForce.generation, 2)
        XCTAssertNotEqual(store.inForce.policy.fingerprint, fingerprint)

        // Put back: the fingerprint of the first directory again (it is the content's), and a generation more.
        try second.write(scanner, to: "devices.d/it/demo-scanner.yaml")
        XCTAssertNil(store.reload(reason: "test"))
        XCTAssertEqual(store.inForce.generation, 3)
        XCTAssertEqual(store.inForce.policy.fingerprint, fingerprint)

        // policy.yaml counts too; a refused reload changes neither.
        try first.write(PolicyFixture.policyYAML + "\n# reviewed\n", to: "policy.yaml")
        XCTAssertNotEqual(try first.load().fingerprint, fingerprint)
        try second.write("timezone: Nowhere/Else\n", to: "policy.yaml")
        XCTAssertNotNil(store.reload(reason: "test"))
        XCTAssertEqual(store.inForce.generation, 3)
        XCTAssertEqual(store.inForce.policy.fingerprint, fingerprint)
    }
}
