import Foundation
import PosternCore
import PosternSink
import PosternTestSupport
import XCTest

/// `postern report` with the real binary over an audit log the real gateway wrote while relaying to a real
/// upstream (the mutual-TLS sink), rotated by size and gzip-compressed as it went: known counts, every outcome
/// the sink can cause, filters, CSV and JSON lines.
final class ReportCLITests: XCTestCase {
    func testReportOverRotatedAndGzipLogOfRelayedMailHasKnownCounts() async throws {
        let sinkOutbox = FileManager.default.temporaryDirectory.appendingPathComponent("postern-sink-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: sinkOutbox, withIntermediateDirectories: true)
        let fixture = try await SinkFixture.start(outbox: sinkOutbox)
        let spool = FileManager.default.temporaryDirectory.appendingPathComponent("postern-spool-\(UUID().uuidString)")
        defer {
            try? FileManager.default.removeItem(at: sinkOutbox)
            try? FileManager.default.removeItem(at: spool)
        }
        // dave is refused for good (a bounce), erin for now (still queued).
        fixture.sink.setFaults(SinkFaults(rcptReplies: ["dave@example.edu": "550 5.1.1 <dave@example.edu>: no such user",
                                                        "erin@example.edu": "450 4.2.1 <erin@example.edu>: mailbox busy"]))
        let certs = Repo.certs.path
        let delivery = """
            delivery:
              spool: \(spool.path)
              relay:
                upstreams:
                  - { name: sink, host: 127.0.0.1, port: \(fixture.port), tls: starttls, server-name: localhost, ca-file: \(certs)/ca.pem, certificate: \(certs)/client.pem, key: \(certs)/client.key }
                retry: { initial-seconds: 60, max-seconds: 120, scan-seconds: 1 }
            """
        // Small files, so that a few messages make several rotated (and compressed) ones.
        let harness = try await GatewayHarness.start(delivery: delivery, auditRetention: AuditRetention(rotateBytes: 1500))
        let body = harness.directory.appendingPathComponent("scan.eml")
        try "From: scanner@example.edu\r\nSubject: Payslip SECRET-SUBJECT\r\n\r\nSECRET-BODY\r\n".write(to: body, atomically: true, encoding: .utf8)
        var ids: [String] = []
        for recipients in ["bob@example.edu,carol@chem.example.edu", "dave@example.edu", "erin@example.edu,Bob@example.edu"] {
            let output = try Shell.run(["swaks", "--server", "127.0.0.1:\(harness.port("device"))", "--from", "scanner@example.edu",
                                        "--to", recipients, "--data", body.path]).output
            let id = try XCTUnwrap(output.range(of: #"queued as [0-9A-Za-z]+"#, options: .regularExpression).map { String(output[$0].dropFirst(10)) }, output)
            ids.append(id)
        }
        // Two messages delivered (bob and carol; bob of the third), dave bounced (his DSN to the scanner's sender is the
        // sink's third message), erin deferred and left queued.
        let settled = await waitUntil(20) { fixture.sink.receivedCount == 3 && harness.gateway.spool?.depth == 1 }
        XCTAssertTrue(settled, "sink has \(fixture.sink.messages.map(\.recipients)), spool \(String(describing: harness.gateway.spool?.depth))")
        // A refused connection's lines are in the log too (not messages).
        _ = try Shell.run(["swaks", "--server", "127.0.0.1:\(harness.port("device"))", "--local-interface", "127.0.0.2",
                           "--from", "scanner@example.edu", "--to", "bob@example.edu"])
        let audit = harness.directory.appendingPathComponent("audit.jsonl")
        let files = AuditFileSet(path: audit.path)
        let compressed = await waitUntil(10) { !files.rotated().isEmpty && files.rotated().allSatisfy { $0.path.hasSuffix(".gz") } }
        XCTAssertTrue(compressed, "rotated files: \(files.rotated().map(\.path))")
        XCTAssertGreaterThanOrEqual(files.rotated().count, 3)
        let everything = try files.all().map { path -> String in
            var text = ""
            try AuditFileReader.forEachLine(path: path) { text += String(decoding: $0, as: UTF8.self) + "\n" }
            return text
        }.joined()
        XCTAssertFalse(everything.contains("SECRET"), "no subject or body anywhere in the log")

        let report = try Shell.run([Repo.posternBinary.path, "report", "--audit", audit.path])
        XCTAssertEqual(report.status, 0, report.output)
        XCTAssertTrue(report.output.contains("Audit log: \(files.all().count) file(s)"), report.output)
        for expected in ["Messages:               3\n",
                         "Recipients:             5 (4 distinct addresses in 2 domains)\n",
                         "Internal / external:    5 internal, 0 external (0 messages with an external recipient)\n",
                         "Outcomes (recipients):  delivered 3, bounced 1, still queued 1, expired 0\n",
                         "  device demo-scanner            3 messages, 5 recipients\n",
                         "  example.edu                    4 recipients\n"] {
            XCTAssertTrue(report.output.contains(expected), "\(expected)in\n\(report.output)")
        }
        XCTAssertFalse(report.output.contains("SECRET"))

        // The detail: one line per message and recipient, with the sink's replies.
        let csv = try Shell.run([Repo.posternBinary.path, "report", "--audit", audit.path, "--format", "csv"])
        XCTAssertEqual(csv.status, 0, csv.output)
        let lines = csv.output.split(separator: "\r\n")
        XCTAssertEqual(lines.first.map(String.init), AuditReportDetail.columns.joined(separator: ","))
        XCTAssertEqual(lines.count, 6, csv.output)
        XCTAssertTrue(lines.contains { $0.contains(",dave@example.edu,example.edu,false,bounced,") }, csv.output)
        let jsonl = try Shell.run([Repo.posternBinary.path, "report", "--audit", audit.path, "--format", "jsonl", "--outcome", "bounced"])
        XCTAssertEqual(jsonl.status, 0, jsonl.output)
        let bounced = jsonl.output.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        XCTAssertEqual(bounced.count, 1, jsonl.output)
        XCTAssertEqual(bounced.first?["recipient"] as? String, "dave@example.edu")
        XCTAssertEqual(bounced.first?["queue_id"] as? String, ids[1])
        XCTAssertEqual(bounced.first?["device"] as? String, "demo-scanner")
        XCTAssertEqual(bounced.first?["external"] as? Bool, false)
        XCTAssertEqual(bounced.first?["upstream"] as? String, "sink")
        XCTAssertTrue((bounced.first?["last_reply"] as? String ?? "").contains("550 5.1.1"), jsonl.output)
        XCTAssertGreaterThan(bounced.first?["size"] as? Int ?? 0, 40)

        let queued = try Shell.run([Repo.posternBinary.path, "report", "--audit", audit.path, "--format", "jsonl", "--outcome", "queued",
                                    "--device", "demo-scanner", "--recipient-domain", "example.edu"])
        XCTAssertEqual(queued.output.split(separator: "\n").count, 1, queued.output)
        XCTAssertTrue(queued.output.contains("\"recipient\":\"erin@example.edu\""), queued.output)
        let byQueueID = try Shell.run([Repo.posternBinary.path, "report", "--audit", audit.path, "--queue-id", ids[0]])
        XCTAssertTrue(byQueueID.output.contains("Messages:               1\n") && byQueueID.output.contains("delivered 2,"), byQueueID.output)
        let none = try Shell.run([Repo.posternBinary.path, "report", "--audit", audit.path, "--external"])
        XCTAssertTrue(none.output.contains("Messages:               0\n"), none.output)
        let future = try Shell.run([Repo.posternBinary.path, "report", "--audit", audit.path, "--since", "2999-01-01"])
        XCTAssertTrue(future.output.contains("Messages:               0\n"), future.output)

        // A bad time is a usage error; no log is exit 2, and so is a configuration whose audit log is not a file.
        let journal = try Shell.run([Repo.posternBinary.path, "report", "--config", harness.directory.appendingPathComponent("postern.yaml").path])
        XCTAssertEqual(journal.status, 2, journal.output)
        XCTAssertTrue(journal.output.contains("not a file"), journal.output)
        let bad = try Shell.run([Repo.posternBinary.path, "report", "--audit", audit.path, "--since", "2026-02-30"])
        XCTAssertEqual(bad.status, 64, bad.output)
        let missing = try Shell.run([Repo.posternBinary.path, "report", "--audit", harness.directory.appendingPathComponent("nope.jsonl").path])
        XCTAssertEqual(missing.status, 2, missing.output)
        await harness.stop()
        await fixture.stop()
    }

    /// `postern serve` with `audit.rotate.keep-days`: at start it deletes the rotated files whose newest line is past
    /// keep-days, and `postern report --config` then covers exactly what is kept (the recent rotated file and the
    /// current one).
    func testServeDeletesAuditFilesPastKeepDaysAndTheReportCoversWhatIsKept() throws {
        try Repo.ensureCertificates()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-keepdays-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "yyyyMMdd'T'HHmmss.SSS'Z'"
        let audit = directory.appendingPathComponent("audit.jsonl")
        func planted(daysAgo: Int, queueID: String) throws -> URL {
            let file = URL(fileURLWithPath: audit.path + "." + formatter.string(from: Date().addingTimeInterval(-Double(daysAgo) * 86_400)))
            let line = #"{"event":"accepted","queue_id":"\#(queueID)","recipients":["<bob@example.edu>"],"sender":"<scanner@example.edu>","size":"100","time":"2026-01-01T00:00:00.000Z","device":"demo-scanner","external":[]}"#
            try Data((line + "\n").utf8).write(to: file)
            return file
        }
        let old = try planted(daysAgo: 40, queueID: "QOLD")
        let recent = try planted(daysAgo: 2, queueID: "QRECENT")
        let port = freeLoopbackPort()
        let config = directory.appendingPathComponent("postern.yaml")
        try """
            hostname: gw.test
            policies: \(Repo.policies.path)
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:\(port)" }
            delivery: { outbox: \(directory.path)/outbox }
            audit:
              output: audit.jsonl
              rotate: { size: 64K, keep-days: 30 }
            """.write(to: config, atomically: true, encoding: .utf8)
        let server = try Spawned([Repo.posternBinary.path, "serve", "--config", config.path], output: directory.appendingPathComponent("serve.log").path)
        defer { server.kill() }
        try server.waitUntilAccepting(port: port)
        let output = try Shell.run(["swaks", "--server", "127.0.0.1:\(port)", "--from", "scanner@example.edu", "--to", "bob@example.edu"]).output
        XCTAssertTrue(output.contains("queued as"), output)
        server.signal(SIGTERM)
        XCTAssertEqual(try server.waitForExit(timeout: 20), 0, server.log())
        XCTAssertFalse(FileManager.default.fileExists(atPath: old.path), "40 days old, past keep-days 30: \(server.log())")
        XCTAssertTrue(FileManager.default.fileExists(atPath: recent.path) || FileManager.default.fileExists(atPath: recent.path + ".gz"))
        XCTAssertTrue(server.log().contains("audit file past keep-days deleted"), server.log())

        let report = try Shell.run([Repo.posternBinary.path, "report", "--config", config.path, "--format", "jsonl"])
        XCTAssertEqual(report.status, 0, report.output)
        let ids = report.output.split(separator: "\n").compactMap { (try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])?["queue_id"] as? String }
        XCTAssertEqual(ids.count, 2, report.output)
        XCTAssertEqual(ids.first, "QRECENT")
        XCTAssertFalse(ids.contains("QOLD"))
    }

    /// `audit.rotate` as `postern check` reads it: errors with file, line and fix.
    func testCheckNamesWhatIsWrongWithAuditRotate() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-rotate-check-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("postern.yaml")
        func check(_ audit: String) throws -> Shell.Result {
            try "policies: \(Repo.policies.path)\nlisteners:\n  - { name: device, kind: device, listen: \"127.0.0.1:1\" }\naudit:\n\(audit)\n"
                .write(to: config, atomically: true, encoding: .utf8)
            return try Shell.run([Repo.posternBinary.path, "check", "--config", config.path])
        }
        let journal = try check("  rotate: { size: 100M }")
        XCTAssertEqual(journal.status, 2, journal.output)
        XCTAssertTrue(journal.output.contains("postern.yaml:5: error: audit.rotate needs audit.output to be a file"), journal.output)
        let small = try check("  output: audit.jsonl\n  rotate: { size: 1K, keep-days: 0 }")
        XCTAssertEqual(small.status, 2, small.output)
        XCTAssertTrue(small.output.contains("audit.rotate.size must be from 64K to 64G, not 1K"), small.output)
        XCTAssertTrue(small.output.contains("audit.rotate.keep-days"), small.output)
        let empty = try check("  output: audit.jsonl\n  rotate: {}")
        XCTAssertTrue(empty.output.contains("audit.rotate needs size, keep-days or both"), empty.output)
        let good = try check("  output: audit.jsonl\n  rotate: { size: 100M, keep-days: 90 }")
        XCTAssertFalse(good.output.contains("audit"), good.output)
    }

    func waitUntil(_ seconds: Double, _ condition: () -> Bool) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return condition()
    }
}
