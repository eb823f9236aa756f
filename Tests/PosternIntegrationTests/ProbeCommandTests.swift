import Foundation
import PosternTestSupport
import XCTest

/// `postern probe UPSTREAM` with the real binary: against the demo's sink (`postern sink` as scripts/demo.sh starts
/// it, and the demo's postern.yaml), against the Microsoft 365 stand-in with XOAUTH2, and against nothing.
final class ProbeCommandTests: XCTestCase {
    var work: URL!
    var sink: Spawned?
    var fixture: M365Fixture?

    override func setUpWithError() throws {
        try Repo.ensureCertificates()
        work = FileManager.default.temporaryDirectory.appendingPathComponent("postern-probe-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    }

    override func tearDown() {
        sink?.kill()
        fixture?.stop()
        try? FileManager.default.removeItem(at: work)
    }

    /// policies/postern.yaml with its relative paths made absolute and the sink on `port`, as demo.sh rewrites it.
    func demoConfiguration(sinkPort: Int) throws -> URL {
        var text = try String(contentsOf: Repo.policies.appendingPathComponent("postern.yaml"), encoding: .utf8)
        text = text.replacingOccurrences(of: "../certs/", with: Repo.certs.path + "/")
            .replacingOccurrences(of: "policies: .", with: "policies: \(Repo.policies.path)")
            .replacingOccurrences(of: "../var/spool", with: work.appendingPathComponent("spool").path)
            .replacingOccurrences(of: "port: 2526", with: "port: \(sinkPort)")
        let file = work.appendingPathComponent("postern.yaml")
        try text.write(to: file, atomically: true, encoding: .utf8)
        return file
    }

    func probe(_ upstream: String, _ config: URL) throws -> Shell.Result {
        try Shell.run([Repo.posternBinary.path, "probe", upstream, "--config", config.path])
    }

    func testProbeReportsTheDemoSinksCertificateTLSAndExtensionsAndSendsNoMail() throws {
        let port = freeLoopbackPort()
        let certs = Repo.certs.path
        let outbox = work.appendingPathComponent("outbox")
        let started = try Spawned([Repo.posternBinary.path, "sink", "--listen", "127.0.0.1:\(port)", "--tls", "starttls", "--cert", "\(certs)/server.pem",
                                   "--key", "\(certs)/server.key", "--ca", "\(certs)/ca.pem", "--outbox", outbox.path, "--hostname", "sink.localhost"],
                                  output: work.appendingPathComponent("sink.log").path)
        sink = started
        try started.waitUntilAccepting(port: port)
        let result = try probe("demo-sink", try demoConfiguration(sinkPort: port))
        XCTAssertEqual(result.status, 0, result.output)
        let lines = result.output.split(separator: "\n").map(String.init)
        XCTAssertEqual(lines.first, "upstream demo-sink: 127.0.0.1:\(port), starttls, certificate name localhost")
        XCTAssertTrue(lines.contains("TLS: TLS 1.3, client certificate \(certs)/client.pem"), result.output)
        XCTAssertTrue(lines.contains("upstream certificate: subject CN=localhost,O=Postern Dev"), result.output)
        XCTAssertTrue(lines.contains("  issuer CN=Postern Development CA,O=Postern Dev"), result.output)
        XCTAssertTrue(lines.contains("  names DNS:localhost, IP:127.0.0.1, IP:0:0:0:0:0:0:0:1"), result.output)
        XCTAssertTrue(lines.contains { $0.hasPrefix("  expires 20") && $0.hasSuffix(" days)") }, result.output)
        let extensions = try XCTUnwrap(lines.first { $0.hasPrefix("EHLO extensions: ") })
        XCTAssertTrue(extensions.contains("PIPELINING") && extensions.contains("SIZE") && !extensions.contains("STARTTLS"),
                      "over TLS, STARTTLS is no longer offered: \(extensions)")
        XCTAssertEqual(lines.suffix(2), ["AUTH: not configured (the client certificate is the credential)", "no mail sent"])
        let stored = (try? FileManager.default.contentsOfDirectory(atPath: outbox.path)) ?? []
        XCTAssertEqual(stored.filter { $0.hasSuffix(".eml") }, [], "the probe sends no mail")

        // And `postern check` on the demo's own configuration: nothing to complain about but its expired device.
        let check = try Shell.run([Repo.posternBinary.path, "check", "--config", Repo.policies.appendingPathComponent("postern.yaml").path])
        XCTAssertEqual(check.status, 0, check.output)
        XCTAssertFalse(check.output.contains("error:"), check.output)
        XCTAssertEqual(check.output.split(separator: "\n").filter { $0.contains("warning:") }.count, 1, check.output)
        XCTAssertTrue(check.output.contains("warning: device 'chem-copier-old' expired"), check.output)
    }

    func testProbeAuthenticatesWithXOAUTH2AndSaysWhyWhenItCannot() throws {
        let m365 = try M365Fixture(directory: work, clientSecret: "probe-secret", lifetime: 3600, errorChallenge: false,
                                   clientCertificate: Repo.certs.appendingPathComponent("client.pem").path)
        fixture = m365
        for (secret, expectedStatus) in [("probe-secret", Int32(0)), ("not-the-secret", Int32(1))] {
            try secret.write(to: work.appendingPathComponent("secret"), atomically: true, encoding: .utf8)
            let config = work.appendingPathComponent("postern.yaml")
            let certs = Repo.certs.path
            try """
                hostname: probe.test
                policies: \(Repo.policies.path)
                listeners:
                  - { name: device, kind: device, listen: "127.0.0.1:0" }
                delivery:
                  spool: \(work.path)/spool
                  relay:
                    upstreams:
                      - name: m365
                        host: 127.0.0.1
                        port: \(m365.smtpPort)
                        server-name: localhost
                        ca-file: \(certs)/ca.pem
                        certificate: \(certs)/client.pem
                        key: \(certs)/client.key
                        auth: { mechanism: xoauth2, token-endpoint: "https://127.0.0.1:\(m365.tokenPort)/tenant/oauth2/v2.0/token", client-id: app-1, client-secret-file: \(work.path)/secret, user: relay@example.edu, ca-file: \(certs)/ca.pem }
                """.write(to: config, atomically: true, encoding: .utf8)
            let result = try probe("m365", config)
            XCTAssertEqual(result.status, expectedStatus, result.output)
            XCTAssertTrue(result.output.contains("EHLO extensions: SIZE 33554432, 8BITMIME, AUTH LOGIN PLAIN XOAUTH2, HELP"), result.output)
            if expectedStatus == 0 {
                XCTAssertTrue(result.output.contains("AUTH XOAUTH2 as relay@example.edu: 235 2.7.0 Authentication successful"), result.output)
            } else {
                XCTAssertTrue(result.output.contains("AUTH failed: no credentials for AUTH: the token endpoint https://127.0.0.1:\(m365.tokenPort)/tenant/oauth2/v2.0/token answered 401: invalid_client"),
                              result.output)
                XCTAssertFalse(result.output.contains("not-the-secret"))
            }
        }
        XCTAssertEqual(m365.state().messages.count, 0, "no mail sent")
        XCTAssertEqual(m365.state().auth.map(\.ok), [true])
    }

    func testProbeOfNothingAndOfAnUnknownNameFails() throws {
        let closed = freeLoopbackPort()
        let config = try demoConfiguration(sinkPort: closed)
        let refused = try probe("demo-sink", config)
        XCTAssertEqual(refused.status, 1, refused.output)
        XCTAssertTrue(refused.output.contains("setup failed: connect failed: 127.0.0.1:\(closed) refused the connection (nothing listens on that port)"),
                      refused.output)
        let unknown = try probe("nowhere", config)
        XCTAssertEqual(unknown.status, 1)
        XCTAssertTrue(unknown.output.contains("no upstream named 'nowhere' (upstreams: demo-sink)"), unknown.output)
    }
}
