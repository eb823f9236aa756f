import Foundation
import PosternTestSupport
import XCTest

/// `postern queue` and the spool's intake log, with the real binaries: a message accepted a moment ago is still in
/// the log; the tool lists and shows it, a change asks the running gateway to make it a queue file first (or says
/// it is being delivered right now), and after a SIGKILL the tool moves what the log holds itself.
final class IntakeQueueToolTests: XCTestCase {
    var work: URL!
    var config: URL { work.appendingPathComponent("postern.yaml") }
    var spool: URL { work.appendingPathComponent("spool") }

    override func setUp() async throws {
        try Repo.ensureCertificates()
        work = FileManager.default.temporaryDirectory.appendingPathComponent("postern-intake-tool-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: work)
    }

    func queue(_ arguments: [String]) throws -> Shell.Result {
        try Shell.run([Repo.posternBinary.path, "queue"] + arguments + ["--config", config.path])
    }

    func send(port: Int, to recipient: String) throws -> String {
        let output = try Shell.run(["swaks", "--server", "127.0.0.1:\(port)", "--from", "scanner@example.edu", "--to", recipient]).output
        guard let range = output.range(of: "queued as ") else {
            XCTFail("not queued: \(output)")
            return ""
        }
        return String(output[range.upperBound...].prefix { $0.isLetter || $0.isNumber })
    }

    /// The ids `postern queue list --json` shows.
    func listedIDs() throws -> [String] {
        let list = try queue(["list", "--json"])
        XCTAssertEqual(list.status, 0, list.output)
        let start = list.output.firstIndex(of: "[") ?? list.output.endIndex
        let entries = (try? JSONSerialization.jsonObject(with: Data(list.output[start...].utf8))) as? [[String: Any]]
        return (entries ?? []).compactMap { $0["id"] as? String }
    }

    func auditActions() -> [String] {
        let text = (try? String(contentsOf: work.appendingPathComponent("audit.jsonl"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line -> String? in
            guard let event = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any],
                  let name = event["event"] as? String, name.hasPrefix("queue_") else { return nil }
            return "\(name) \(event["queue_id"] ?? "")"
        }
    }

    func testJustAcceptedMessagesAreListedChangedAfterASettleAndRecoveredByTheToolAfterAKill() throws {
        // An upstream that accepts the connection and never greets: the relay's one connection waits on it,
        // holding the first message; the second waits its turn in the intake log.
        let upstreamPort = freeLoopbackPort()
        let silent = try Spawned(["/usr/bin/python3", "-u", "-c", """
            import socket
            s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", \(upstreamPort))); s.listen(16); held = []
            while True:
                held.append(s.accept()); print("accepted", flush=True)
            """], output: work.appendingPathComponent("silent.log").path)
        defer { silent.kill() }
        try silent.waitUntilAccepting(port: upstreamPort)
        let port = freeLoopbackPort(), adminPort = freeLoopbackPort()
        let certs = Repo.certs.path
        try """
            hostname: intake.test
            policies: \(Repo.policies.path)
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:\(port)" }
            delivery:
              spool: \(spool.path)
              relay:
                upstreams:
                  - { name: hub, host: 127.0.0.1, port: \(upstreamPort), tls: starttls, server-name: localhost, ca-file: \(certs)/ca.pem, certificate: \(certs)/client.pem, key: \(certs)/client.key, max-connections: 1 }
            audit: { output: \(work.appendingPathComponent("audit.jsonl").path) }
            admin: { listen: "127.0.0.1:\(adminPort)" }
            """.write(to: config, atomically: true, encoding: .utf8)
        let gateway = try Spawned([Repo.posternBinary.path, "serve", "--config", config.path, "--log-level", "info"],
                                  output: work.appendingPathComponent("serve.log").path)
        defer { gateway.kill() }
        try gateway.waitUntilAccepting(port: port)

        let first = try send(port: port, to: "first@example.edu")
        // The relay's connection to the silent upstream (after the probe's, if any): the first message is claimed.
        try waitFor("the relay connected", timeout: 10) { silent.log().components(separatedBy: "accepted").count - 1 >= 1 }
        let second = try send(port: port, to: "second@example.edu")
        let intake = (try? FileManager.default.contentsOfDirectory(atPath: spool.appendingPathComponent("intake").path)) ?? []
        XCTAssertTrue(intake.contains { $0.hasSuffix(".log") }, "\(intake)")

        // Listed and shown from the log, where they are (with a sunset reminder the gateway queued at its start,
        // when the repository's policies have a device near its sunset).
        let listed = try listedIDs()
        XCTAssertTrue(Set(listed).isSuperset(of: [first, second]), "\(listed)")
        // The log in the metrics: what is in it now, and what was written, in at most as many batches.
        let scrape = try HTTP.get(port: adminPort, path: "/metrics")
        let metrics = try PrometheusText(scrape.body)
        XCTAssertEqual(metrics["postern_spool_intake_messages", [:]], Double(listed.count), scrape.body)
        let written = try XCTUnwrap(metrics["postern_spool_intake_messages_written_total", [:]], scrape.body)
        let batches = try XCTUnwrap(metrics["postern_spool_intake_batches_total", [:]], scrape.body)
        XCTAssertGreaterThanOrEqual(written, 2, scrape.body)
        XCTAssertTrue((1...written).contains(batches), scrape.body)
        let show = try queue(["show", second])
        XCTAssertEqual(show.status, 0, show.output)
        XCTAssertTrue(show.output.contains("second@example.edu"), show.output)

        // A change: the running gateway moves the waiting one into queue/ on the tool's request; the one it is
        // delivering (the earliest queued) stays where it is, and the tool says so.
        let deleted = try queue(["delete", second])
        XCTAssertEqual(deleted.status, 0, deleted.output)
        XCTAssertTrue(gateway.log().contains("moved into the queue"), gateway.log())
        let busyID = try XCTUnwrap(listed.min())
        let busy = try queue(["delete", busyID])
        XCTAssertEqual(busy.status, 1, busy.output)
        XCTAssertTrue(busy.output.contains("being delivered right now"), busy.output)
        XCTAssertEqual(auditActions(), ["queue_delete \(second)"])

        // A SIGKILL: the rest is left in the log. With no gateway running the tool lists it from there, and a
        // change moves it into queue/ under the spool's owner lock, then deletes it.
        gateway.signal(SIGKILL)
        _ = try gateway.waitForExit(timeout: 10)
        let rest = listed.filter { $0 != second }.sorted()
        XCTAssertEqual(try listedIDs().sorted(), rest)
        for id in rest {
            let removed = try queue(["delete", id])
            XCTAssertEqual(removed.status, 0, removed.output)
        }
        XCTAssertEqual(auditActions(), ["queue_delete \(second)"] + rest.map { "queue_delete \($0)" })
        let left = try FileManager.default.contentsOfDirectory(atPath: spool.appendingPathComponent("intake").path)
            + FileManager.default.contentsOfDirectory(atPath: spool.appendingPathComponent("queue").path)
        XCTAssertEqual(left, [], "nothing left in the log or the queue")
        XCTAssertEqual(try listedIDs(), [])
    }
}
