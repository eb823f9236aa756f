import Foundation
import XCTest

/// `postern config` with the real binary: the effective configuration with defaults (`postconf`), only what the file
/// sets with -n (`postconf -n`), key selection, no secrets, and errors as `postern check` gives them.
final class ConfigCLITests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-config-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func config(_ arguments: [String], environment: [String: String]? = nil) throws -> Shell.Result {
        try Shell.run([Repo.posternBinary.path, "config"] + arguments, environment: environment)
    }

    /// A postern.yaml beside the shipped policies: `extra` goes after the listeners.
    func write(_ text: String) throws -> String {
        let file = directory.appendingPathComponent("postern.yaml")
        try text.write(to: file, atomically: true, encoding: .utf8)
        return file.path
    }

    func testTheShippedConfigurationWithItsDefaults() throws {
        let shipped = Repo.policies.appendingPathComponent("postern.yaml").path
        let all = try config(["--config", shipped], environment: ["POSTERN_LDAP_PASSWORD": "not-in-the-output-7f3a"])
        XCTAssertEqual(all.status, 0, all.output)
        let lines = all.output.split(separator: "\n").map(String.init)
        // Set in the file, defaults, taken from another key, and paths made absolute.
        for line in ["hostname = localhost", "limits.max-message-size = 25M", "limits.messages-per-user-per-hour = none",
                     "listeners[0].name = device", "listeners[0].listen = 127.0.0.1:2525", "delivery.relay.retry.initial-seconds = 60",
                     "directory.bind-password-env = POSTERN_LDAP_PASSWORD", "directory.throttle.lockout-after = 10",
                     "registration.tls.certificate = \(Repo.root.path)/certs/server.pem", "registration.contact = postmaster@localhost",
                     "delivery.spool = \(Repo.root.path)/var/spool", "admin.listen = 127.0.0.1:9025", "admin.drain-notice-seconds = 0"] {
            XCTAssertTrue(lines.contains(line), "missing '\(line)' in:\n\(all.output)")
        }
        XCTAssertFalse(all.output.contains("not-in-the-output-7f3a"), "a secret was printed")
        XCTAssertEqual(Set(lines).count, lines.count, "a key twice")

        // -n: only keys the file has; every one of them is also in the full listing with the same value.
        let set = try config(["-n", "--config", shipped])
        XCTAssertEqual(set.status, 0, set.output)
        let setLines = set.output.split(separator: "\n").map(String.init)
        XCTAssertTrue(setLines.contains("listeners[0].listen = 127.0.0.1:2525"), set.output)
        XCTAssertFalse(set.output.contains("directory.throttle."), "the shipped file sets no throttle: \(set.output)")
        XCTAssertFalse(set.output.contains("registration.university-name"), set.output)
        XCTAssertTrue(Set(setLines).isSubset(of: Set(lines)))
        XCTAssertLessThan(setLines.count, lines.count)

        // Keys: a section gives what is under it, a key itself; an unknown one is an error.
        let some = try config(["--config", shipped, "limits", "listeners[1]", "registration.contact"])
        XCTAssertEqual(some.status, 0, some.output)
        XCTAssertTrue(some.output.split(separator: "\n").allSatisfy {
            $0.hasPrefix("limits.") || $0.hasPrefix("listeners[1].") || $0.hasPrefix("registration.contact =")
        }, some.output)
        XCTAssertTrue(some.output.contains("listeners[1].kind = submission\n"), some.output)
        XCTAssertEqual(some.output.split(separator: "\n").count, 7 + 6 + 1, some.output)
        let unknown = try config(["--config", shipped, "limits.max-messagesize"])
        XCTAssertEqual(unknown.status, 2, unknown.output)
        XCTAssertTrue(unknown.output.contains("no such key: limits.max-messagesize"), unknown.output)
    }

    func testAListenersOwnSizeAndTheDefaultsTheFileDoesNotSet() throws {
        let file = try write("""
            hostname: gw.example.edu
            policies: \(Repo.policies.path)
            limits: { max-message-size: 10M, max-recipients: 7 }
            listeners:
              - { name: scanners, kind: device, listen: "127.0.0.1:0", max-message-size: 5M }
              - { name: other, kind: device, listen: "[::1]:0" }
            delivery: { outbox: out }
            audit: { output: audit.log }
            """)
        let all = try config(["--config", file])
        XCTAssertEqual(all.status, 0, all.output)
        for line in ["limits.max-message-size = 10M", "limits.max-recipients = 7", "limits.idle-timeout-seconds = 300",
                     "listeners[0].max-message-size = 5M", "listeners[1].max-message-size = 10M", "listeners[1].listen = [::1]:0",
                     "delivery.outbox = \(directory.path)/out", "audit.output = \(directory.path)/audit.log", "audit.rotate.size = none",
                     "audit.rotate.keep-days = forever"] {
            XCTAssertTrue(all.output.contains(line + "\n"), "missing '\(line)' in:\n\(all.output)")
        }
        XCTAssertFalse(all.output.contains("directory."), "no directory section, no directory keys: \(all.output)")
        let set = try config(["-n", "--config", file])
        XCTAssertEqual(set.output.split(separator: "\n").map { String($0.split(separator: " ")[0]) },
                       ["hostname", "policies", "limits.max-message-size", "limits.max-recipients",
                        "listeners[0].name", "listeners[0].kind", "listeners[0].listen", "listeners[0].max-message-size",
                        "listeners[1].name", "listeners[1].kind", "listeners[1].listen", "delivery.outbox", "audit.output"], set.output)
    }

    func testAConfigurationWithErrorsIsListedAsCheckListsIt() throws {
        let file = try write("""
            listeners:
              - { name: d, kind: device, listen: "127.0.0.1:0" }
            limits: { max-mesage-size: 10M }
            """)
        let result = try config(["--config", file])
        XCTAssertEqual(result.status, 2, result.output)
        XCTAssertTrue(result.output.contains("postern.yaml:3: error: limits: unknown key 'max-mesage-size' (fix: did you mean 'max-message-size'?"),
                      result.output)
        XCTAssertTrue(result.output.contains("postern config: \(file) has 1 error\n"), result.output)
        XCTAssertFalse(result.output.contains(" = "), result.output)
    }
}
