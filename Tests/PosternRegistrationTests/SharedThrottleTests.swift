import Foundation
import PosternTestSupport
import XCTest

/// The real `postern serve` with the registration page: the page and SMTP AUTH go through one throttle, so a
/// lockout earned on either holds on both, and the page's failures show in the gateway's metrics.
final class SharedThrottleTests: XCTestCase {
    func testALockoutEarnedOnEitherDoorHoldsOnBoth() async throws {
        let slapd = try TestSlapd()
        let directory = try Repo.temporaryDirectory("postern-shared")
        defer { try? FileManager.default.removeItem(at: directory) }
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        try Repo.copyPolicies(to: policies)
        let certs = slapd.certificateDirectory
        let smtpPort = freeLoopbackPort(), webPort = freeLoopbackPort(), adminPort = freeLoopbackPort()
        try slapd.bindPassword.write(to: directory.appendingPathComponent("ldap-password"), atomically: true, encoding: .utf8)
        let yaml = """
            hostname: gw.test
            policies: policies
            tls: { certificate: \(certs)/server.pem, key: \(certs)/server.key }
            listeners:
              - { name: submissions, kind: submissions, listen: "127.0.0.1:\(smtpPort)" }
            delivery: { outbox: outbox }
            audit: { output: audit.jsonl }
            admin: { listen: "127.0.0.1:\(adminPort)" }
            directory:
              uris: [\(slapd.ldapsURI)]
              ca-file: \(slapd.caFile)
              bind-dn: \(slapd.bindDN)
              bind-password-file: ldap-password
              search-base: ou=people,dc=example,dc=edu
              group-attribute: memberOf
              group-base: ou=groups,dc=example,dc=edu
              required-groups: [mail-submitters]
              throttle: { slow-down-after: 100, lockout-after: 3, lockout-seconds: 600 }
            registration:
              listen: 127.0.0.1:\(webPort)
              admin-groups: [postern-admins]
              department-groups: { it: [dept-it] }
              campus-ranges: [127.0.0.0/8]
              state: state
            """
        let config = directory.appendingPathComponent("postern.yaml")
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        let log = directory.appendingPathComponent("serve.log").path
        let pid = try spawnProcess([Repo.posternBinary.path, "serve", "--config", config.path], output: log)
        defer {
            kill(pid, SIGTERM)
            _ = waitForExit(pid)
        }
        func serveLog() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        let web = try WebClient(base: "https://127.0.0.1:\(webPort)", caFile: slapd.caFile)
        var ready: HTTPResult?
        for _ in 0..<150 where ready == nil {
            ready = try? await web.get("/login")
            if ready == nil { try await Task.sleep(for: .milliseconds(200)) }
        }
        XCTAssertEqual(ready?.status, 200, serveLog())
        guard ready != nil else { return }

        func smtpAuth(_ login: String, _ password: String) async throws -> String {
            let script = """
                import base64, smtplib, ssl, sys
                ctx = ssl.create_default_context(cafile=sys.argv[2])
                s = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=20)
                s.ehlo("client")
                code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\\0" + sys.argv[3].encode() + b"\\0" + sys.argv[4].encode()).decode())
                print(code, text.decode())
                """
            return try await runProgram(["/usr/bin/python3", "-c", script, "\(smtpPort)", slapd.caFile, login, password]).output
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }

        // Three wrong passwords for alice over SMTP: the page refuses her right one with 429.
        for n in 0..<3 {
            let reply = try await smtpAuth("alice", "smtp-guess-\(n)")
            XCTAssertTrue(reply.hasPrefix("535 5.7.8"), reply)
        }
        let alicePage = try await web.login("alice", "alice-demo-pass")
        XCTAssertEqual(alicePage.status, 429, alicePage.body)
        XCTAssertNotNil(alicePage.headers("Retry-After").first)

        // Three wrong passwords for webapp on the page: SMTP AUTH refuses its right one.
        for n in 0..<3 {
            let page = try await web.login("webapp", "page-guess-\(n)")
            XCTAssertEqual(page.status, 401)
        }
        let webappSMTP = try await smtpAuth("webapp", "webapp-demo-pass")
        XCTAssertTrue(webappSMTP.hasPrefix("421 4.7.0"), webappSMTP)
        XCTAssertEqual(slapd.bindCount(dn: "uid=webapp,ou=people,dc=example,dc=edu"), 3, "three binds for webapp, all from the page")

        // The page's failures are in the gateway's audit log and metrics.
        let audit = (try? String(contentsOf: directory.appendingPathComponent("audit.jsonl"), encoding: .utf8)) ?? ""
        XCTAssertEqual(audit.components(separatedBy: "\"event\":\"registration_login_failed\"").count - 1, 4, audit)
        let metrics = try await runProgram(["/usr/bin/curl", "-sS", "http://127.0.0.1:\(adminPort)/metrics"]).output
        XCTAssertTrue(metrics.contains(#"postern_registration_logins_total{result="invalid_credentials"} 3"#), metrics)
        XCTAssertTrue(metrics.contains(#"postern_registration_logins_total{result="throttled"} 1"#), metrics)
        XCTAssertTrue(metrics.contains(#"postern_auth_attempts_total{result="throttled"} 1"#), metrics)
    }
}
