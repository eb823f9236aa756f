import Foundation
import PosternCore
import Logging
import PosternGateway
import PosternPolicy
import PosternTestSupport
import XCTest

/// Certificates made here with openssl (a CA, one certificate that expires in 10 days, one that expired in 2020):
/// the expiry metric, the audit warnings at 30/14/7 days (once each), and `postern check`'s certificate and
/// Microsoft 365 findings.
final class CertificateChecksTests: XCTestCase {
    var work: URL!

    override func setUpWithError() throws {
        try Repo.ensureCertificates()
        work = FileManager.default.temporaryDirectory.appendingPathComponent("postern-certs-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        try makeCertificates()
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: work)
    }

    func path(_ name: String) -> String { work.appendingPathComponent(name).path }

    func openssl(_ arguments: [String]) throws {
        let result = try Shell.run(["openssl"] + arguments)
        guard result.status == 0 else { throw HarnessError("openssl \(arguments.joined(separator: " ")): \(result.output)") }
    }

    /// ca.pem; soon.pem (10 days, CN soon.example.edu); old.pem (2020-01-01 to 2020-02-01, CN old.example.edu); fresh.pem
    /// (a year). `openssl ca` because only it sets dates in the past.
    func makeCertificates() throws {
        try openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path("ca.key")])
        try openssl(["req", "-x509", "-new", "-key", path("ca.key"), "-sha256", "-days", "3650", "-subj", "/CN=Check Test CA",
                     "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", path("ca.pem")])
        try """
            [ ca ]
            default_ca = test
            [ test ]
            database = \(path("index.txt"))
            new_certs_dir = \(work.path)
            certificate = \(path("ca.pem"))
            private_key = \(path("ca.key"))
            default_md = sha256
            policy = any
            serial = \(path("serial"))
            unique_subject = no
            copy_extensions = copy
            [ any ]
            commonName = supplied
            """.write(toFile: path("ca.cnf"), atomically: true, encoding: .utf8)
        try "".write(toFile: path("index.txt"), atomically: true, encoding: .utf8)
        try "01\n".write(toFile: path("serial"), atomically: true, encoding: .utf8)
        for (name, dates) in [("soon", ["-days", "10"]), ("old", ["-startdate", "20200101000000Z", "-enddate", "20200201000000Z"]),
                              ("fresh", ["-days", "365"])] {
            try openssl(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", path("\(name).key")])
            try openssl(["req", "-new", "-key", path("\(name).key"), "-subj", "/CN=\(name).example.edu",
                         "-addext", "subjectAltName=DNS:\(name).example.edu", "-out", path("\(name).csr")])
            try openssl(["ca", "-batch", "-config", path("ca.cnf"), "-in", path("\(name).csr"), "-out", path("\(name).pem")] + dates)
        }
    }

    /// A configuration with `server` as the listeners' certificate and `client` as the relay client certificate.
    func configuration(server: String, client: String, acceptedDomains: String? = nil) throws -> URL {
        let file = work.appendingPathComponent("postern-\(UUID().uuidString).yaml")
        try """
            hostname: certs.test
            policies: \(Repo.policies.path)
            tls: { certificate: \(path("\(server).pem")), key: \(path("\(server).key")) }
            listeners:
              - { name: submission, kind: submission, listen: "127.0.0.1:0" }
            delivery:
              spool: \(work.path)/spool
              relay:
                upstreams:
                  - name: hub
                    host: 127.0.0.1
                    port: 2526
                    ca-file: \(path("ca.pem"))
                    certificate: \(client.hasPrefix("/") ? client : path("\(client).pem"))
                    key: \(client.hasPrefix("/") ? client.replacingOccurrences(of: ".pem", with: ".key") : path("\(client).key"))
            \(acceptedDomains.map { "        accepted-domains: \($0)" } ?? "")
            """.write(to: file, atomically: true, encoding: .utf8)
        return file
    }

    final class Clock: @unchecked Sendable {
        var now = Date()
    }

    func testTheExpiryMetricAndTheAuditWarningsComeOnceForEachThreshold() throws {
        let configuration = try GatewayConfiguration.load(path: try configuration(server: "soon", client: "old").path)
        let metrics = GatewayMetrics()
        let auditFile = path("audit.jsonl")
        let audit = try AuditLog.make(output: auditFile, countDecision: metrics.decision)
        let clock = Clock()
        let state = work.appendingPathComponent("certificate-warnings.json")
        func watch() -> CertificateExpiryWatch {
            CertificateExpiryWatch(configuration: configuration, metrics: metrics, audit: audit, stateFile: state, now: { clock.now },
                                   logger: Logger(label: "test"))
        }
        func events() throws -> [[String: String]] {
            try String(contentsOfFile: auditFile, encoding: .utf8).split(separator: "\n").map {
                try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: String])
            }
        }
        let first = watch()
        XCTAssertEqual(first.check().count, 2, "the server's 14-day warning and the relay client's expiry")
        var seen = try events()
        XCTAssertEqual(seen.map { $0["event"] }, ["certificate_expiring", "certificate_expired"])
        XCTAssertEqual(seen[0]["certificate"], "server")
        XCTAssertEqual(seen[0]["threshold_days"], "14", "10 days left: the 30-day warning is passed over, the 14-day one given")
        XCTAssertEqual(seen[0]["days_left"], "9")
        XCTAssertEqual(seen[0]["subject"], "CN=soon.example.edu")
        XCTAssertEqual(seen[1]["certificate"], "relay-client:hub")
        XCTAssertEqual(seen[1]["not_after"], "2020-02-01T00:00:00Z")
        XCTAssertEqual(first.check(), [], "not at every check")
        XCTAssertEqual(watch().check(), [], "nor after a restart")

        clock.now = clock.now.addingTimeInterval(3 * 86_400)
        XCTAssertEqual(first.check().count, 1)
        seen = try events()
        XCTAssertEqual(seen.last?["threshold_days"], "7")
        XCTAssertEqual(first.check(), [])
        XCTAssertEqual(try events().count, 3)

        let exposition = String(decoding: metrics.exposition(), as: UTF8.self)
        let soonExpiry = try XCTUnwrap(try WatchedCertificateFile(label: "server", file: path("soon.pem")).earliest().notValidAfter)
        XCTAssertTrue(exposition.contains("postern_certificate_expiry_timestamp_seconds{certificate=\"server\"} \(soonExpiry.timeIntervalSince1970)")
                      || exposition.contains("postern_certificate_expiry_timestamp_seconds{certificate=\"server\"} \(Int(soonExpiry.timeIntervalSince1970)).0"),
                      exposition)
        XCTAssertTrue(exposition.contains("postern_certificate_expiry_timestamp_seconds{certificate=\"relay-client:hub\"} 1580515200"), exposition)
        XCTAssertTrue(exposition.contains("postern_certificate_expiry_timestamp_seconds{certificate=\"ca:hub\"}"), exposition)

        // Renewed in place: the gauge follows and nothing is due.
        try FileManager.default.removeItem(atPath: path("soon.pem"))
        try FileManager.default.copyItem(atPath: path("fresh.pem"), toPath: path("soon.pem"))
        XCTAssertEqual(first.check(), [])
        let renewed = String(decoding: metrics.exposition(), as: UTF8.self)
        XCTAssertFalse(renewed.contains("certificate=\"server\"} \(soonExpiry.timeIntervalSince1970)"), renewed)
    }

    func check(_ config: URL) throws -> Shell.Result {
        try Shell.run([Repo.posternBinary.path, "check", "--config", config.path])
    }

    func testCheckGivesAWarningUnder30DaysAndAnErrorOnceExpired() throws {
        let soon = try check(try configuration(server: "soon", client: "fresh"))
        XCTAssertEqual(soon.status, 0, soon.output)
        XCTAssertTrue(soon.output.contains("\(path("soon.pem")): warning: server: CN=soon.example.edu expires on "), soon.output)
        XCTAssertTrue(soon.output.contains(", in 9 days (fix: renew it before then)"), soon.output)

        let expired = try check(try configuration(server: "fresh", client: "old"))
        XCTAssertEqual(expired.status, 2, expired.output)
        XCTAssertTrue(expired.output.contains("\(path("old.pem")): error: relay-client:hub: CN=old.example.edu expired on 2020-02-01T00:00:00Z (fix: renew it)"),
                      expired.output)
    }

    func testCheckWarnsOfAChainThatLeadsToNoKnownRoot() throws {
        // The repository's dev server certificate is from another CA than this configuration's ca-file.
        let config = try configuration(server: "fresh", client: Repo.certs.appendingPathComponent("client.pem").path)
        let result = try check(config)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("warning: relay-client:hub: the chain of CN=postern-gateway.example.edu,O=Postern Dev does not lead to a root"),
                      result.output)
        XCTAssertFalse(result.output.contains("warning: server:"), "fresh.pem chains to the configuration's CA file: \(result.output)")
    }

    /// The dev client certificate names postern-gateway.example.edu: within example.edu, so Exchange Online would
    /// attribute relayed mail; the devices' senders in subdomains are warned about, and the check says what it cannot see.
    func testCheckTellsWhetherMicrosoft365WillTakeTheMail() throws {
        let client = Repo.certs.appendingPathComponent("client.pem").path
        let fine = try check(try configuration(server: "fresh", client: client, acceptedDomains: "[example.edu]"))
        XCTAssertEqual(fine.status, 0, fine.output)
        XCTAssertFalse(fine.output.contains("5.7.64"), fine.output)
        let devices = Repo.policies.appendingPathComponent("devices.d/phys/phys-scanner-1.yaml").path
        XCTAssertTrue(fine.output.contains("\(devices):"), fine.output)
        XCTAssertTrue(fine.output.contains(": warning: device phys-scanner-1: sender domain phys.example.edu is not an accepted domain of upstream hub (example.edu)"),
                      fine.output)
        XCTAssertFalse(fine.output.contains("device demo-scanner:"), "scanner@example.edu is in an accepted domain: \(fine.output)")
        XCTAssertTrue(fine.output.contains("info: upstream hub: directory users' own addresses come from LDAP at AUTH time and are not checked here"),
                      fine.output)

        let foreign = try check(try configuration(server: "fresh", client: client, acceptedDomains: "[example.ac.uk]"))
        XCTAssertEqual(foreign.status, 2, foreign.output)
        XCTAssertTrue(foreign.output.contains("\(client): error: relay-client:hub: the certificate's names (postern-gateway.example.edu) "
                                              + "are in none of the accepted domains (example.ac.uk); Exchange Online refuses relayed mail with 550 5.7.64 TenantAttribution"),
                      foreign.output)
        XCTAssertTrue(foreign.output.contains("error: device demo-scanner: sender domain example.edu is not an accepted domain of upstream hub"), foreign.output)
        XCTAssertTrue(foreign.output.contains("error: directory users' domain example.edu is not an accepted domain"), foreign.output)
    }

    /// The system bundle as an upstream's CA file (as for Microsoft 365): it keeps expired roots, so it is neither
    /// an error for `postern check` nor watched for the metric; the check says so.
    func testASystemBundleAsCAFileIsNotCheckedRootByRoot() throws {
        let bundle = "/etc/ssl/certs/ca-certificates.crt"
        let config = try configuration(server: "fresh", client: "fresh")
        let text = try String(contentsOf: config, encoding: .utf8).replacingOccurrences(of: "ca-file: \(path("ca.pem"))", with: "ca-file: \(bundle)")
        try text.write(to: config, atomically: true, encoding: .utf8)
        let result = try check(config)
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("\(bundle): info: ca:hub: a bundle of "), result.output)
        XCTAssertFalse(result.output.contains("\(bundle): error"), result.output)

        let metrics = GatewayMetrics()
        let watch = CertificateExpiryWatch(configuration: try GatewayConfiguration.load(path: config.path), metrics: metrics, audit: .disabled,
                                           stateFile: work.appendingPathComponent("state.json"), logger: Logger(label: "test"))
        XCTAssertEqual(watch.check(), [])
        let exposition = String(decoding: metrics.exposition(), as: UTF8.self)
        XCTAssertTrue(exposition.contains("certificate=\"server\"") && exposition.contains("certificate=\"relay-client:hub\""), exposition)
        XCTAssertFalse(exposition.contains("certificate=\"ca:hub\""), exposition)
    }

    func testAcceptedDomainsAndAuthAreValidatedWithFileAndLine() throws {
        let file = work.appendingPathComponent("bad.yaml")
        try """
            hostname: certs.test
            policies: \(Repo.policies.path)
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:0" }
            delivery:
              spool: \(work.path)/spool
              relay:
                upstreams:
                  - name: m365
                    host: 127.0.0.1
                    port: 25
                    ca-file: \(path("ca.pem"))
                    certificate: \(path("fresh.pem"))
                    key: \(path("fresh.key"))
                    accepted-domains: [example.edu, "not a domain"]
                    auth: { mechanism: xoauth2, token-endpoint: "http://login.example.test/token", client-id: app, client-secret-env: X, user: relay@example.edu }
                  - name: hve
                    host: 127.0.0.1
                    port: 587
                    ca-file: \(path("ca.pem"))
                    certificate: \(path("fresh.pem"))
                    key: \(path("fresh.key"))
                    auth: { mechanism: plain, username: hve@example.edu, password-file: /nonexistent/pw, password-env: ALSO }
                  - name: other
                    host: 127.0.0.1
                    port: 587
                    ca-file: \(path("ca.pem"))
                    certificate: \(path("fresh.pem"))
                    key: \(path("fresh.key"))
                    auth: { mechanism: cram-md5 }
            """.write(to: file, atomically: true, encoding: .utf8)
        let result = try check(file)
        XCTAssertEqual(result.status, 2, result.output)
        for expected in ["bad.yaml:15: error: accepted-domains: 'not a domain' is not a domain name",
                         "bad.yaml:16: error: auth.token-endpoint must be an https:// URL, not 'http://login.example.test/token'",
                         "bad.yaml:23: error: auth needs exactly one of password-file and password-env (fix: the secret never goes into this file)",
                         "bad.yaml:30: error: unknown auth mechanism 'cram-md5' (fix: plain, login or xoauth2)"] {
            XCTAssertTrue(result.output.contains(expected), "\(expected)\n\(result.output)")
        }
    }
}
