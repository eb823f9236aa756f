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
