import Foundation
import PosternCore
import PosternGateway
import PosternPolicy
import XCTest

/// Sizes read the same in postern.yaml as in policy.yaml, and a policy.yaml limit that cannot take effect is pointed
/// out instead of ignored.
final class MessageSizeSettingsTests: XCTestCase {
    func configuration(limits: String, listener: String = "", policies: String = "/nonexistent") throws -> GatewayConfiguration {
        try GatewayConfiguration.parse("""
            policies: \(policies)
            limits: { \(limits) }
            listeners:
              - { name: dev, kind: device, listen: "127.0.0.1:0"\(listener) }
              - { name: other-dev, kind: device, listen: "127.0.0.1:0" }
            """, file: "/etc/postern/postern.yaml")
    }

    func testPosternYamlTakesTheSizesPolicyYamlTakes() throws {
        for (text, bytes) in [("26214400", 26_214_400), ("25M", 25 << 20), ("25MiB", 25 << 20), ("512K", 512 << 10), ("1G", 1 << 30), ("26_214_400", 26_214_400)] {
            let parsed = try configuration(limits: "max-message-size: \(text)", listener: ", max-message-size: \(text)")
            XCTAssertEqual(parsed.limits.maxMessageSize, bytes, text)
            XCTAssertEqual(parsed.listeners.first?.maxMessageSize, bytes, text)
            XCTAssertEqual(ByteSize.parse(text), bytes, "the policy files read \(text) through the same parser")
        }
    }

    func testASizeOutOfRangeOrNotASizeIsAnErrorWithItsLine() {
        for (text, expected) in [
            ("2G", "/etc/postern/postern.yaml:2: limits.max-message-size must be from 1K to 1G, not 2G (fix: write a size from 1K to 1G)"),
            ("99999999999999999999G", "/etc/postern/postern.yaml:2: limits.max-message-size must be a size, not '99999999999999999999G' (fix: write bytes, or a whole number with K, M or G, e.g. 25M, from 1K to 1G)"),
            ("25 MB", "/etc/postern/postern.yaml:2: limits.max-message-size must be a size, not '25 MB' (fix: write bytes, or a whole number with K, M or G, e.g. 25M, from 1K to 1G)"),
        ] {
            XCTAssertThrowsError(try configuration(limits: "max-message-size: \(text)")) { error in
                XCTAssertEqual((error as? ConfigErrors)?.issues.map(\.description), [expected])
            }
        }
    }

    /// The shipped policy with policy.yaml's device limit at 30M.
    func policyDirectory(deviceLimit: String) throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-sizes-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for name in ["policy.yaml", "departments.yaml", "devices.d"] {
            try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent(name), to: directory.appendingPathComponent(name))
        }
        let file = directory.appendingPathComponent("policy.yaml")
        let text = try String(contentsOf: file, encoding: .utf8)
        let changed = text.replacingOccurrences(of: "  device:\n    enabled: true\n    max-message-size: 20M", with: "  device:\n    enabled: true\n    max-message-size: \(deviceLimit)")
        XCTAssertNotEqual(changed, text, "the shipped policy.yaml has a device limit to change")
        try changed.write(to: file, atomically: true, encoding: .utf8)
        return directory
    }

    func testAPolicyLimitAboveWhatAListenerTakesIsAWarningWithFileLineAndFix() throws {
        let policies = try policyDirectory(deviceLimit: "30M")
        defer { try? FileManager.default.removeItem(at: policies) }
        let policy = try PolicyLoader.load(directory: policies).get()
        let line = try XCTUnwrap(String(contentsOf: policies.appendingPathComponent("policy.yaml"), encoding: .utf8)
            .components(separatedBy: "\n").firstIndex(of: "    max-message-size: 30M")) + 1

        // `dev` takes 40M of its own, `other-dev` the global 25M: only the second ignores the 30M.
        let gateway = try configuration(limits: "max-message-size: 25M", listener: ", max-message-size: 40M", policies: policies.path)
        XCTAssertEqual(gateway.policyWarnings(policy).map(\.description), [
            "\(policies.path)/policy.yaml:\(line): listeners.device.max-message-size 30M is above what listener 'other-dev' takes "
                + "(25M, limits.max-message-size in /etc/postern/postern.yaml), so it has no effect "
                + "(fix: lower it to 25M or less, or raise the listener's limit in /etc/postern/postern.yaml)",
        ])
        XCTAssertEqual(try configuration(limits: "max-message-size: 30M", policies: policies.path).policyWarnings(policy).count, 0)
        // The limit in force stays the smaller one.
        XCTAssertEqual(policy.messageSizeLimit(endpoint: .device, device: nil), 30 << 20)
    }

    func testCheckPrintsTheWarningAndStillSucceeds() throws {
        try Repo.ensureCertificates()
        let policies = try policyDirectory(deviceLimit: "30M")
        defer { try? FileManager.default.removeItem(at: policies) }
        let config = policies.appendingPathComponent("postern.yaml")
        try """
            policies: .
            limits: { max-message-size: 10M }
            listeners: [{ name: dev, kind: device, listen: "127.0.0.1:2525" }]
            """.write(to: config, atomically: true, encoding: .utf8)
        let result = try Shell.run([Repo.posternBinary.path, "check", "--config", config.path])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("policy.yaml:"), result.output)
        XCTAssertTrue(result.output.contains(": warning: listeners.device.max-message-size 30M is above what listener 'dev' takes (10M"), result.output)

        // The shipped configuration has nothing to warn about but the demo's deliberately expired device.
        let shipped = try Shell.run([Repo.posternBinary.path, "check", "--config", Repo.policies.appendingPathComponent("postern.yaml").path])
        XCTAssertEqual(shipped.output.split(separator: "\n").filter { $0.contains("warning") && !$0.contains("device 'chem-copier-old' expired") },
                       ["postern check: 0 errors, 1 warning"], shipped.output)
    }
}
