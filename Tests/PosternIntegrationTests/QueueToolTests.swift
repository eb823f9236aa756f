import Foundation
import Logging
import NIOCore
import PosternCore
import PosternSpool
import XCTest

/// `postern queue` as a postmaster uses it, with the real binary on a spool no gateway runs on:
/// the columns postqueue shows, JSON, flush/hold/release/delete with audit events, and exit codes.
final class QueueToolTests: XCTestCase {
    var work: URL!
    var config: URL { work.appendingPathComponent("postern.yaml") }
    var spoolPath: URL { work.appendingPathComponent("spool") }
    var auditPath: URL { work.appendingPathComponent("audit.jsonl") }

    override func setUp() async throws {
        try Repo.ensureCertificates()
        work = FileManager.default.temporaryDirectory.appendingPathComponent("postern-queuetool-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let certs = Repo.certs.path
        try """
            hostname: queue.test
            policies: \(Repo.policies.path)
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:1" }
            delivery:
              spool: spool
              relay:
                upstreams:
                  - { name: hub, host: 127.0.0.1, port: 9, tls: starttls, server-name: localhost, ca-file: \(certs)/ca.pem, certificate: \(certs)/client.pem, key: \(certs)/client.key }
            audit: { output: audit.jsonl }
            """.write(to: config, atomically: true, encoding: .utf8)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: work)
    }

    /// Two queued messages, one with a deferral on record.
    func makeSpool() async throws -> [String] {
        let spool = try Spool(directory: spoolPath, logger: Logger(label: "test"))
        var ids: [String] = []
        for (i, recipients) in [["bob@example.edu"], ["carol@example.edu", "dave@example.edu"]].enumerated() {
            let id = QueueID.make()
            let envelope = SpoolEnvelope(sender: "scanner@example.edu", recipients: recipients, receivedAt: Date().addingTimeInterval(-7200),
                                         clientAddress: "127.0.0.1", listener: "device", messageID: "<m\(i)@test>")
            try await spool.enqueue(id: id, envelope: envelope, message: ByteBuffer(string: "Subject: s\(i)\r\n\r\n" + String(repeating: "x", count: 20_000) + "\r\n"))
            if i == 1 {
                var state = SpoolEntryState.initial(for: envelope)
                state.attempts = 3
                state.recipients[0].lastReply = "connect failed: 127.0.0.1:9 refused the connection (nothing listens on that port)"
                state.recipients[0].attempts = 3
                try spool.directory.writeState(id: id, state)
            }
            ids.append(id)
        }
        await spool.shutdown()
        return ids
    }

    func queue(_ arguments: [String], environment: [String: String]? = nil) throws -> Shell.Result {
        try Shell.run([Repo.posternBinary.path, "queue"] + arguments, environment: environment)
    }

    func auditEvents() -> [[String: Any]] {
        let text = (try? String(contentsOf: auditPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
    }

    func testListShowsWhatPostqueueShowsAndJSON() async throws {
        let ids = try await makeSpool()
        let list = try queue(["list", "--config", config.path])
        XCTAssertEqual(list.status, 0, list.output)
        XCTAssertTrue(list.output.contains("ID                    STATUS  SIZE   AGE     ATTEMPTS  NEXT TRY              SENDER"), list.output)
        XCTAssertTrue(list.output.contains("\(ids[1])  queued  19K    2h0m    3         "), list.output)
        XCTAssertTrue(list.output.contains("    (connect failed: 127.0.0.1:9 refused the connection (nothing listens on that port))\n    -> carol@example.edu\n    -> dave@example.edu"), list.output)
        XCTAssertTrue(list.output.contains("-- 2 message(s) queued, 0 held, 39K bytes in all"), list.output)
        // The spool directly, and the configuration from the environment, read the same.
        XCTAssertEqual(try queue(["list", "--spool", spoolPath.path]).output, list.output)
        XCTAssertEqual(try queue(["list"], environment: ["POSTERN_CONFIG": config.path]).output, list.output)

        let json = try queue(["list", "--json", "--config", config.path])
        let listed = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(json.output.utf8)) as? [[String: Any]], json.output)
        XCTAssertEqual(listed.count, 2)
        let second = try XCTUnwrap(listed.first { $0["id"] as? String == ids[1] })
        XCTAssertEqual(second["status"] as? String, "queued")
        XCTAssertEqual(second["attempts"] as? Int, 3)
        XCTAssertEqual(second["last_reason"] as? String, "connect failed: 127.0.0.1:9 refused the connection (nothing listens on that port)")
        XCTAssertEqual((second["recipients"] as? [[String: Any]])?.map { $0["address"] as? String }, ["carol@example.edu", "dave@example.edu"])
        XCTAssertEqual(second["message_id"] as? String, "<m1@test>")
        XCTAssertNotNil(second["age_seconds"] as? Int)

        let show = try queue(["show", ids[0], "--json", "--config", config.path])
        let shown = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(show.output.utf8)) as? [String: Any], show.output)
        XCTAssertEqual(shown["headers"] as? String, "Subject: s0")
        XCTAssertEqual((shown["message"] as? [String: Any])?["size"] as? Int, 20_017)  // "Subject: s0", blank line, 20,000 x, CRLF
        XCTAssertFalse(show.output.contains("xxxx"), "never the body")
    }

    func testChangesAreAuditedAndDeleteAllWantsYes() async throws {
        let ids = try await makeSpool()
        XCTAssertEqual(try queue(["hold", ids[0], "--config", config.path]).status, 0)
        XCTAssertEqual(try queue(["release", "--all", "--config", config.path]).status, 0)
        XCTAssertEqual(try queue(["flush", ids[1], "--config", config.path]).status, 0)
        let refused = try queue(["delete", "--all", "--config", config.path])
        XCTAssertEqual(refused.status, 1, refused.output)
        XCTAssertTrue(refused.output.contains("--all would delete 2 message(s) without a DSN; add --yes to do it"), refused.output)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: spoolPath.appendingPathComponent("queue").path).filter { $0.hasSuffix(".msg") }.count, 2)
        let deleted = try queue(["delete", "--all", "--yes", "--config", config.path])
        XCTAssertEqual(deleted.status, 0, deleted.output)
        XCTAssertTrue(deleted.output.contains("deleted 2 message(s)"), deleted.output)
        XCTAssertTrue(try queue(["list", "--config", config.path]).output.contains("-- 0 message(s) queued, 0 held"))

        let events = auditEvents()
        let actions = events.compactMap { event -> String? in
            guard let name = event["event"] as? String, name.hasPrefix("queue_") else { return nil }
            return "\(name) \(event["queue_id"] as? String ?? "")"
        }
        XCTAssertEqual(actions, ["queue_hold \(ids[0])", "queue_release \(ids[0])", "queue_flush \(ids[1])"]
                       + ["queue_delete \(ids[0])", "queue_delete \(ids[1])"], "\(events)")
        XCTAssertTrue(events.allSatisfy { ($0["actor"] as? String)?.isEmpty == false }, "\(events)")
    }

    func testErrorsArePlainAndExitCodesAreDocumented() async throws {
        let ids = try await makeSpool()
        // Not found: exit 1, a sentence, no usage text.
        let missing = try queue(["show", "00NOSUCHMESSAGE0000", "--config", config.path])
        XCTAssertEqual(missing.status, 1, missing.output)
        XCTAssertEqual(missing.output, "postern queue: no queued or held message 00NOSUCHMESSAGE0000\n")
        let notHeld = try queue(["release", ids[0], "--config", config.path])
        XCTAssertEqual(notHeld.status, 1)
        XCTAssertTrue(notHeld.output.contains("\(ids[0]) is not held") && !notHeld.output.contains("USAGE"), notHeld.output)
        // No configuration to find the spool and the audit log: exit 2, and what to give instead.
        let nowhere = try queue(["list"], environment: ["POSTERN_CONFIG": work.appendingPathComponent("none.yaml").path])
        XCTAssertEqual(nowhere.status, 2, nowhere.output)
        XCTAssertTrue(nowhere.output.contains("cannot use the configuration") && nowhere.output.contains("give --config FILE, or --spool DIR"), nowhere.output)
        // A change needs the configuration's audit log, not just a spool.
        let unaudited = try queue(["hold", ids[0], "--spool", spoolPath.path], environment: ["POSTERN_CONFIG": work.appendingPathComponent("none.yaml").path])
        XCTAssertEqual(unaudited.status, 2, unaudited.output)
        // A usage error is ArgumentParser's 64.
        XCTAssertEqual(try queue(["delete", "--config", config.path]).status, 64)
    }
}
