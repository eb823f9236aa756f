import Foundation
import PosternPolicy
import PosternTestSupport
import XCTest

/// The real `postern serve` with a `registration:` section: a request approved on the page reaches the
/// running gateway's device listener without a restart.
final class EndToEndTests: XCTestCase {
    static let smtpProbe = """
        import smtplib, sys
        port, source = int(sys.argv[1]), sys.argv[2]
        try:
            s = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10)
            s.sendmail("scanner9@example.edu", ["bob@example.edu"], "Subject: registered\\r\\n\\r\\nhello\\r\\n")
            s.quit()
            print("ACCEPTED")
        except (smtplib.SMTPException, OSError) as e:
            print("REFUSED", e)
        """

    func smtp(port: Int, from source: String) async throws -> String {
        try await runProgram(["/usr/bin/python3", "-c", Self.smtpProbe, "\(port)", source]).output
    }

    func testApprovedRequestIsAcceptedByTheRunningGatewayWithoutARestart() async throws {
        let slapd = try TestSlapd()
        let directory = try Repo.temporaryDirectory("postern-web-e2e")
        defer { try? FileManager.default.removeItem(at: directory) }
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        try Repo.copyPolicies(to: policies)
        let certs = slapd.certificateDirectory
        let smtpPort = freeLoopbackPort(), webPort = freeLoopbackPort()
        let yaml = """
            hostname: gw.test
            policies: policies
            tls: { certificate: \(certs)/server.pem, key: \(certs)/server.key }
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:\(smtpPort)" }
            delivery: { outbox: outbox }
            audit: { output: audit.jsonl }
            directory:
              uris: [\(slapd.ldapsURI)]
              ca-file: \(slapd.caFile)
              bind-dn: \(slapd.bindDN)
              bind-password-env: POSTERN_LDAP_PASSWORD
              search-base: ou=people,dc=example,dc=edu
              group-attribute: memberOf
              group-base: ou=groups,dc=example,dc=edu
              required-groups: [mail-submitters]
            registration:
              listen: 127.0.0.1:\(webPort)
              admin-groups: [postern-admins]
              department-groups: { it: [dept-it] }
              campus-ranges: [127.0.0.0/8, 10.0.0.0/8]
              state: state
            """
        let config = directory.appendingPathComponent("postern.yaml")
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        setenv("POSTERN_LDAP_PASSWORD", slapd.bindPassword, 1)
        let log = directory.appendingPathComponent("serve.log").path
        let pid = try spawnProcess([Repo.posternBinary.path, "serve", "--config", config.path], output: log)
        defer {
            kill(pid, SIGTERM)
            _ = waitForExit(pid)
        }
        func serveLog() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        let web = try WebClient(base: "https://127.0.0.1:\(webPort)", caFile: slapd.caFile)
        var loginPage: HTTPResult?
        for _ in 0..<150 where loginPage == nil {
            loginPage = try? await web.get("/login")
            if loginPage == nil { try await Task.sleep(for: .milliseconds(200)) }
        }
        XCTAssertEqual(loginPage?.status, 200, serveLog())
        guard loginPage != nil else { return }

        let before = try await smtp(port: smtpPort, from: "127.0.0.9")
        XCTAssertTrue(before.contains("REFUSED") && before.contains("not a registered device"), before)

        _ = try await web.login("bob", "bob-demo-pass")
        let token = try await web.sessionToken()
        let made = try await web.post("/register", [("csrf", token)] + RegistrationFixture.form())
        XCTAssertEqual(made.status, 303, made.body)
        let pending = try await web.get("/devices")
        XCTAssertTrue(pending.body.contains("it-scanner-9") && pending.body.contains("pending"))

        let admin = try WebClient(base: web.base, caFile: slapd.caFile)
        _ = try await admin.login("alice", "alice-demo-pass")
        let page = try await admin.get("/devices")
        guard let r = page.body.range(of: #"/requests/[0-9a-f]+/approve"#, options: .regularExpression) else {
            return XCTFail("no approve button: \(page.body)")
        }
        let approved = try await admin.post(String(page.body[r]), [("csrf", try XCTUnwrap(page.csrf))])
        XCTAssertEqual(approved.status, 303, approved.body)
        XCTAssertNotNil(try PolicyLoader.load(directory: policies).get().device(forAddress: "127.0.0.9"))

        // The gateway polls its policy files every 2 s.
        var after = ""
        for _ in 0..<40 {
            after = try await smtp(port: smtpPort, from: "127.0.0.9")
            if after.contains("ACCEPTED") { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        XCTAssertTrue(after.contains("ACCEPTED"), after + "\n" + serveLog())
        // (The outbox also gets the gateway's own sunset reminders; count only the device's message.)
        let outbox = directory.appendingPathComponent("outbox")
        let messages = ((try? FileManager.default.contentsOfDirectory(atPath: outbox.path)) ?? []).filter { $0.hasSuffix(".eml") }
            .compactMap { try? String(contentsOf: outbox.appendingPathComponent($0), encoding: .utf8) }
        XCTAssertEqual(messages.filter { $0.contains("Subject: registered") }.count, 1, messages.joined(separator: "\n----\n"))
        let audit = (try? String(contentsOf: directory.appendingPathComponent("audit.jsonl"), encoding: .utf8)) ?? ""
        XCTAssertTrue(audit.contains("\"event\":\"registration_approved\""), audit)
        XCTAssertTrue(audit.contains("\"actor\":\"alice\""), audit)
    }
}
