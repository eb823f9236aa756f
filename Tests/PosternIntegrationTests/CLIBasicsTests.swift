import Foundation
import XCTest

/// Basics a postmaster expects of the `postern` command itself, with the real binary.
final class CLIBasicsTests: XCTestCase {
    func testVersionIsPrinted() throws {
        let result = try Shell.run([Repo.posternBinary.path, "--version"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertNotNil(result.output.range(of: #"^\d+\.\d+\.\d+\n$"#, options: .regularExpression), result.output)
    }
}

/// `postern explain` with the real binary: input it must refuse, and what it says when it judges without a directory.
/// (Its agreement with the running gateway, case by case, is DemoReadmeTests'.)
final class ExplainCLITests: XCTestCase {
    func explain(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let result = try Shell.run([Repo.posternBinary.path, "explain"] + arguments)
        return (result.status, result.output)
    }

    func testAClientThatIsNotAnAddressIsRefused() throws {
        for client in ["10.1.2", "10.1.2.300", "scanner.example.edu", ""] {
            let result = try explain(["--policies", Repo.policies.path, "--listener", "device", "--client", client,
                                      "--from", "scanner@example.edu"])
            XCTAssertEqual(result.status, 64, result.output)
            XCTAssertTrue(result.output.contains("is not an IP address"), result.output)
        }
    }

    func testAnUnregisteredDeviceIsRefusedAtMailFromAsTheGatewayDoes() throws {
        let result = try explain(["--policies", Repo.policies.path, "--listener", "device", "--client", "127.0.0.2",
                                  "--from", "scanner@example.edu", "--rcpt", "bob@example.edu"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("decision:  refuse (at MAIL FROM)\nreply:     554 5.7.1 127.0.0.2 is not a registered device\n"),
                      result.output)
    }

    func testWithoutADirectoryTheAnswerSaysSo() throws {
        let result = try explain(["--policies", Repo.policies.path, "--listener", "submission", "--client", "192.0.2.1",
                                  "--login", "alice", "--from", "alice@example.edu", "--rcpt", "x@gmail.com"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("login:     alice: not consulted (no directory configured); addresses (none given)"), result.output)
        XCTAssertTrue(result.output.contains("reply:     553 5.7.1 Sender address not owned by user"), result.output)
        XCTAssertTrue(result.output.contains("note:      the directory was not asked"), result.output)
    }

    func testAListenerTheConfigurationLacksIsNamedWithTheOnesItHas() throws {
        let result = try explain(["--config", Repo.policies.appendingPathComponent("postern.yaml").path, "--listener", "mx",
                                  "--client", "127.0.0.1"])
        XCTAssertEqual(result.status, 64, result.output)
        XCTAssertTrue(result.output.contains("has no listener 'mx'; it has: device (device), submission (submission), submissions (submissions)"),
                      result.output)
    }
}

/// `postern check` with the real binary: every problem in one pass (an error in postern.yaml does not hide the
/// policy's), warnings apart from errors, on standard error, a count, and the documented exit codes.
final class CheckCLITests: XCTestCase {
    let shipped = Repo.policies.appendingPathComponent("postern.yaml").path

    func testExitCodesAndWarningsOnStandardError() throws {
        let plain = try Shell.run([Repo.posternBinary.path, "check", "--config", shipped])
        XCTAssertEqual(plain.status, 0, plain.output)
        // The demo keeps one expired device on purpose (the page shows how expired devices look).
        XCTAssertTrue(plain.output.contains("chem-copier-old.yaml:3: warning: device 'chem-copier-old' expired"), plain.output)
        XCTAssertTrue(plain.output.contains("postern check: 0 errors, 1 warning\n"), plain.output)
        let strict = try Shell.run([Repo.posternBinary.path, "check", "--strict", "--config", shipped])
        XCTAssertEqual(strict.status, 1, strict.output)
        let quiet = try Shell.run(["/bin/bash", "-c", "'\(Repo.posternBinary.path)' check --config '\(shipped)' 2>/dev/null"])
        XCTAssertFalse(quiet.output.contains("warning"), "warnings and the count go to standard error: \(quiet.output)")
        XCTAssertTrue(quiet.output.contains("12 devices"), quiet.output)
    }

    func testAnErrorInPosternYAMLDoesNotHideThePolicysErrors() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-check-both-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        for name in ["policy.yaml", "departments.yaml", "devices.d"] {
            try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent(name), to: policies.appendingPathComponent(name))
        }
        // A device whose last day does not exist, and a device far past the global sunset.
        let scanner = policies.appendingPathComponent("devices.d/it/demo-scanner.yaml")
        try String(contentsOf: scanner, encoding: .utf8).replacingOccurrences(of: "sunset: 2027-08-31", with: "sunset: 2027-02-30")
            .write(to: scanner, atomically: true, encoding: .utf8)
        let config = directory.appendingPathComponent("postern.yaml")
        try "policies: policies\nlistners: []\n".write(to: config, atomically: true, encoding: .utf8)
        let result = try Shell.run([Repo.posternBinary.path, "check", "--config", config.path])
        XCTAssertEqual(result.status, 2, result.output)
        XCTAssertTrue(result.output.contains("postern.yaml:2: error: top level: unknown key 'listners'"), result.output)
        XCTAssertTrue(result.output.contains("devices.d/it/demo-scanner.yaml:"), "the policy was checked too: \(result.output)")
        XCTAssertTrue(result.output.contains("2027-02-30"), result.output)
        XCTAssertNotNil(result.output.range(of: #"postern check: [2-9] errors, \d+ warnings?\n"#, options: .regularExpression), result.output)
    }
}
