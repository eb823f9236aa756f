import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternSink
import PosternTestSupport
import XCTest

/// The relay's backoff and the queue tool, with the real binary: deliveries in flight that a throttling
/// upstream refuses together raise the pause one step, and `postern queue retry` lifts it.
final class ThrottleAndFlushTests: XCTestCase {
    var fixture: SinkFixture!
    var sink: SinkServer { fixture.sink }
    var sinkPort: Int { fixture.port }
    var work: URL!

    override func setUp() async throws {
        work = FileManager.default.temporaryDirectory.appendingPathComponent("postern-throttle-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        fixture = try await SinkFixture.start(outbox: work.appendingPathComponent("sink"))
    }

    override func tearDown() async throws {
        await fixture.stop()
        try? FileManager.default.removeItem(at: work)
    }

    var spool: String { work.appendingPathComponent("spool").path }

    func config(port: Int, upstreamPort: Int, initialSeconds: Int) throws -> URL {
        let certs = Repo.certs.path
        let file = work.appendingPathComponent("postern.yaml")
        try """
            hostname: throttle.test
            policies: \(Repo.policies.path)
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:\(port)" }
            delivery:
              spool: \(spool)
              relay:
                upstreams:
                  - { name: hub, host: 127.0.0.1, port: \(upstreamPort), tls: starttls, server-name: localhost, ca-file: \(certs)/ca.pem, certificate: \(certs)/client.pem, key: \(certs)/client.key, max-connections: 4 }
                retry: { initial-seconds: \(initialSeconds), max-seconds: 3600, scan-seconds: 1 }
            audit: { output: \(work.appendingPathComponent("audit.jsonl").path) }
            """.write(to: file, atomically: true, encoding: .utf8)
        return file
    }

    func serve(_ config: URL, log: String) throws -> Spawned {
        try Spawned([Repo.posternBinary.path, "serve", "--config", config.path, "--log-level", "info"],
                    output: work.appendingPathComponent(log).path)
    }

    func testThrottledDeliveriesInFlightAreOneBackoffStepAndAFlushLiftsThePause() throws {
        let port = freeLoopbackPort()
        // 1. Eight messages queue up while the upstream is unreachable (a closed port).
        let closed = freeLoopbackPort()
        let first = try serve(try config(port: port, upstreamPort: closed, initialSeconds: 1), log: "serve-1.log")
        defer { first.kill() }
        try first.waitUntilAccepting(port: port)
        for i in 0..<7 {
            let output = try Shell.run(["swaks", "--server", "127.0.0.1:\(port)", "--from", "scanner@example.edu", "--to", "u\(i)@example.edu"]).output
            XCTAssertTrue(output.contains("250 2.0.0 Ok: queued as"), output)
        }
        // One of them names a recipient three times, in two spellings: one 250 each, one delivery.
        let repeated = try Shell.run(["swaks", "--server", "127.0.0.1:\(port)", "--from", "scanner@example.edu",
                                      "--to", "dup@example.edu,dup@example.edu,Dup@Example.EDU"]).output
        XCTAssertTrue(repeated.contains("250 2.0.0 Ok: queued as"), repeated)
        first.signal(SIGTERM)
        _ = try first.waitForExit(timeout: 20)
        // Due now, all of them, at the next start (the queue tool works on a stopped gateway's spool).
        XCTAssertEqual(try Shell.run([Repo.posternBinary.path, "queue", "flush", "--config", work.appendingPathComponent("postern.yaml").path]).status, 0)

        // 2. The next start meets a throttling upstream with all of them due and four connections allowed.
        sink.setFaults(SinkFaults(rcptReply: "450 4.7.230 Too many connections, throttled"))
        let second = try serve(try config(port: port, upstreamPort: sinkPort, initialSeconds: 60), log: "serve-2.log")
        defer { second.kill() }
        try second.waitUntilAccepting(port: port)
        try waitFor("a throttled attempt", timeout: 15) { second.log().contains("450 4.7.230") && second.log().contains("upstream backing off") }
        sleep(1)
        let steps = second.log().components(separatedBy: "\n").filter { $0.contains("upstream backing off") }
        XCTAssertEqual(steps.count, 1, "one event, one step: \(steps)")
        XCTAssertTrue(steps.first?.contains("level=1") ?? false, "\(steps)")
        let seconds = steps.first.flatMap { $0.range(of: "seconds=") }.flatMap { range in Int(steps[0][range.upperBound...].prefix { $0.isNumber }) }
        XCTAssertTrue((60...72).contains(seconds ?? 0), "the first step of a 60 s schedule, with at most 20 % jitter: \(steps)")
        let throttled = second.log().components(separatedBy: "\n").filter { $0.contains("result=deferred") && $0.contains("450 4.7.230") }
        XCTAssertGreaterThanOrEqual(throttled.count, 1)
        print("throttled deliveries in the first event: \(throttled.count), backoff steps: \(steps.count)")
        let list = try Shell.run([Repo.posternBinary.path, "queue", "list", "--spool", spool]).output
        XCTAssertTrue(list.contains("8 message(s) queued") || list.contains("9 message(s) queued"), list)  // and perhaps a sunset reminder

        // 3. The upstream recovers; the postmaster flushes rather than wait out the minute.
        sink.setFaults(SinkFaults())
        let flushed = Date()
        let retry = try Shell.run([Repo.posternBinary.path, "queue", "retry", "--config", work.appendingPathComponent("postern.yaml").path])
        XCTAssertEqual(retry.status, 0, retry.output)
        XCTAssertTrue(retry.output.contains("upstream pauses lifted"), retry.output)
        try waitFor("everything delivered after the flush", timeout: 15) {
            Set(sink.messages.flatMap(\.recipients)).isSuperset(of: (0..<7).map { "u\($0)@example.edu" } + ["dup@example.edu"])
        }
        XCTAssertLessThan(Date().timeIntervalSince(flushed), 15)
        XCTAssertEqual(sink.messages.filter { $0.recipients.contains { $0.lowercased() == "dup@example.edu" } }.map(\.recipients), [["dup@example.edu"]])
        XCTAssertTrue(second.log().contains("upstream pause lifted by a queue flush"), second.log())
        XCTAssertTrue(second.isRunning)
    }
}
