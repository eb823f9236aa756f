import Foundation
import PosternPolicy
import PosternTestSupport
import XCTest

/// The page's mail goes through the gateway's own delivery path: the real `postern serve` with its durable spool
/// and mutual-TLS relay, and the real `postern sink` as the upstream. A request mails the admins; a decision mails
/// the request's contact, a rejection with its reason; the sunset reminder takes the same path.
final class NotificationRelayTests: XCTestCase {
    func testRequestDecisionAndReminderMailsReachTheUpstreamThroughTheRelay() async throws {
        let slapd = try TestSlapd()
        let directory = try Repo.temporaryDirectory("postern-web-mail")
        defer { try? FileManager.default.removeItem(at: directory) }
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        try Repo.copyPolicies(to: policies)
        // demo-scanner (owner it-helpdesk@example.edu) ends ten days from now: a reminder is due when the gateway starts.
        let soon = try PolicyLoader.load(directory: policies).get().today(Date()).adding(days: 10)
        let devicesFile = policies.appendingPathComponent("devices.d/it/demo-scanner.yaml")
        var devices = try String(contentsOf: devicesFile, encoding: .utf8)
        let sunset = try XCTUnwrap(devices.range(of: "sunset: 2027-08-31"))
        devices.replaceSubrange(sunset, with: "sunset: \(soon)")
        try devices.write(to: devicesFile, atomically: true, encoding: .utf8)

        let certs = slapd.certificateDirectory
        let smtpPort = freeLoopbackPort(), webPort = freeLoopbackPort(), sinkPort = freeLoopbackPort()
        let yaml = """
            hostname: gw.test
            policies: policies
            tls: { certificate: \(certs)/server.pem, key: \(certs)/server.key }
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:\(smtpPort)" }
            delivery:
              spool: spool
              relay:
                upstreams:
                  - { name: sink, host: 127.0.0.1, port: \(sinkPort), tls: starttls, server-name: localhost,
                      ca-file: \(certs)/ca.pem, certificate: \(certs)/client.pem, key: \(certs)/client.key }
                default: sink
            audit: { output: audit.jsonl }
            directory:
              uris: [\(slapd.ldapsURI)]
              ca-file: \(slapd.caFile)
              bind-dn: \(slapd.bindDN)
              bind-password-env: POSTERN_LDAP_PASSWORD
              search-base: ou=people,dc=example,dc=edu
              group-attribute: memberOf
              group-base: ou=groups,dc=example,dc=edu
            registration:
              listen: 127.0.0.1:\(webPort)
              admin-groups: [postern-admins]
              department-groups: { it: [dept-it] }
              campus-ranges: [127.0.0.0/8, 10.0.0.0/8]
              state: state
              university-name: Universität Beispiel
              contact: postern-help@example.edu
              notify-admins: [postern-admins@example.edu]
              public-url: https://devices.example.edu
            """
        let config = directory.appendingPathComponent("postern.yaml")
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        setenv("POSTERN_LDAP_PASSWORD", slapd.bindPassword, 1)
        let upstream = directory.appendingPathComponent("upstream")
        let sinkLog = directory.appendingPathComponent("sink.log").path, serveLog = directory.appendingPathComponent("serve.log").path
        let sink = try spawnProcess([Repo.posternBinary.path, "sink", "--listen", "127.0.0.1:\(sinkPort)", "--tls", "starttls",
                                     "--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key", "--ca", "\(certs)/ca.pem",
                                     "--outbox", upstream.path, "--hostname", "sink.localhost"], output: sinkLog)
        let serve = try spawnProcess([Repo.posternBinary.path, "serve", "--config", config.path], output: serveLog)
        defer {
            kill(serve, SIGTERM)
            _ = waitForExit(serve)
            kill(sink, SIGTERM)
            _ = waitForExit(sink)
        }
        func logs() -> String {
            ((try? String(contentsOfFile: serveLog, encoding: .utf8)) ?? "") + ((try? String(contentsOfFile: sinkLog, encoding: .utf8)) ?? "")
        }
        let bob = try WebClient(base: "https://127.0.0.1:\(webPort)", caFile: slapd.caFile)
        var up = false
        for _ in 0..<150 where !up {
            up = (try? await bob.get("/login"))?.status == 200
            if !up { try await Task.sleep(for: .milliseconds(200)) }
        }
        XCTAssertTrue(up, logs())
        guard up else { return }

        _ = try await bob.login("bob", "bob-demo-pass")
        let token = try await bob.sessionToken()
        let (_, submitted) = try await bob.postAndFollow("/register", [("csrf", token)] + RegistrationFixture.form())
        XCTAssertTrue(submitted.body.contains("A mail tells the gateway admins."), submitted.body)
        _ = try await bob.postAndFollow("/register", [("csrf", token)] + RegistrationFixture.form(device: "it-copier-7", address: "10.77.0.7"))
        let alice = try WebClient(base: bob.base, caFile: slapd.caFile)
        _ = try await alice.login("alice", "alice-demo-pass")
        let list = try await alice.get("/devices")
        let adminToken = try XCTUnwrap(list.csrf)
        func requestID(_ device: String) throws -> String {
            let pattern = #"id="approve-\#(device)" href="/requests/([0-9a-f]+)/approve""#
            let match = try XCTUnwrap(list.body.firstMatch(of: try Regex(pattern)), list.body)
            return String(try XCTUnwrap(match.output[1].substring))
        }
        let scannerRequest = try requestID("it-scanner-9"), copierRequest = try requestID("it-copier-7")
        let (_, approved) = try await alice.postAndFollow("/requests/\(scannerRequest)/approve", [("csrf", adminToken)])
        XCTAssertTrue(approved.body.contains("A mail tells it-helpdesk@example.edu."), approved.body)
        let reason = "Use scan to folder instead; see ticket #42."
        _ = try await alice.postAndFollow("/requests/\(copierRequest)/reject", [("csrf", adminToken), ("reason", reason)])

        // Two requests, two decisions and the reminder, as the upstream received them.
        // Waits for these five by subject, not for five mails: other devices' reminders (phys-plotter's, once the
        // real date is within its reminder window) arrive too, and counting them ended the wait before the rejection.
        let expected = ["Device registration request: it-scanner-9 (IT Services)", "Device registration request: it-copier-7 (IT Services)",
                        "Device it-scanner-9: registration approved", "Device it-copier-7: registration rejected",
                        "Device demo-scanner: mail registration ends on \(soon)"]
        var received: [String] = []
        func allArrived() -> Bool { expected.allSatisfy { subject in received.contains { $0.contains("\r\nSubject: \(subject)") } } }
        for _ in 0..<150 where !allArrived() {
            received = ((try? FileManager.default.contentsOfDirectory(atPath: upstream.path)) ?? []).filter { $0.hasSuffix(".eml") }.sorted()
                .compactMap { try? String(contentsOf: upstream.appendingPathComponent($0), encoding: .utf8) }
            if !allArrived() { try await Task.sleep(for: .milliseconds(200)) }
        }
        func mail(_ subject: String) -> String? { received.first { $0.contains("\r\nSubject: \(subject)\r\n") } }
        let requestMail = try XCTUnwrap(mail("Device registration request: it-scanner-9 (IT Services)"), received.joined(separator: "\n----\n") + logs())
        XCTAssertTrue(requestMail.contains("X-Sink-Recipients: postern-admins@example.edu\r\n"), requestMail)
        XCTAssertTrue(requestMail.contains("https://devices.example.edu/requests/\(scannerRequest)/approve\r\n"), requestMail)
        XCTAssertNotNil(mail("Device registration request: it-copier-7 (IT Services)"), received.joined(separator: "\n----\n"))
        let approval = try XCTUnwrap(mail("Device it-scanner-9: registration approved"), received.joined(separator: "\n----\n"))
        XCTAssertTrue(approval.contains("X-Sink-Recipients: it-helpdesk@example.edu\r\n"), approval)
        XCTAssertTrue(approval.contains("until 2027-06-30 (the last day)"), approval)
        let rejection = try XCTUnwrap(mail("Device it-copier-7: registration rejected"), received.joined(separator: "\n----\n"))
        XCTAssertTrue(rejection.contains("X-Sink-Recipients: it-helpdesk@example.edu\r\n"), rejection)
        XCTAssertTrue(rejection.contains("Reason:\r\n  \(reason)\r\n"), rejection)
        let reminder = try XCTUnwrap(received.first { $0.contains("Subject: Device demo-scanner: mail registration ends on \(soon)") },
                                     received.joined(separator: "\n----\n"))
        XCTAssertTrue(reminder.contains("X-Sink-Recipients: it-helpdesk@example.edu\r\n"), reminder)
        for message in [requestMail, approval, rejection, reminder] {
            // The null sender, and the relay's client certificate, which the sink verified.
            XCTAssertTrue(message.hasPrefix("Return-Path: <>\r\n"), message)
            XCTAssertTrue(message.contains("X-Sink-Client-Certificate: "), message)
        }
        for message in [requestMail, approval, rejection] {
            // "Universität Beispiel device registration", encoded (RFC 2047); replies go to the page's contact.
            XCTAssertTrue(message.contains("From: =?utf-8?B?VW5pdmVyc2l0w6R0IEJlaXNwaWVsIGRldmljZSByZWdpc3RyYXRpb24=?= <postmaster@gw.test>\r\n"), message)
            XCTAssertTrue(message.contains("Reply-To: <postern-help@example.edu>\r\n"), message)
        }

        // The audit log ties each mail to its delivery: queued by the page, delivered by the relay.
        let audit = (try? String(contentsOf: directory.appendingPathComponent("audit.jsonl"), encoding: .utf8)) ?? ""
        let events = try audit.split(separator: "\n").map { try XCTUnwrap(try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]) }
        let mails = events.filter { $0["event"] as? String == "registration_mail" }
        XCTAssertEqual(mails.compactMap { $0["kind"] as? String }.sorted(), ["approved", "rejected", "request", "request"], audit)
        XCTAssertTrue(mails.allSatisfy { $0["outcome"] as? String == "queued" }, audit)
        for id in mails.compactMap({ $0["queue_id"] as? String }) {
            XCTAssertTrue(events.contains { $0["event"] as? String == "relay" && $0["queue_id"] as? String == id && $0["outcome"] as? String == "delivered" },
                          "no delivery of \(id): \(audit)")
        }
    }
}
