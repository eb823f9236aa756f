import Foundation
import PosternGateway
@testable import PosternListener
import PosternTestSupport
import XCTest

/// Clients that send without reading their replies, against the real binary; and pipelining clients that do
/// read, which backpressure must not get in the way of.
final class SlowReaderTests: XCTestCase {
    /// Twenty connections from 127.0.0.2 that send HELP and NOOP as fast as the gateway takes them and never
    /// read (`bench/slow-readers.py attack`; its `measure` mode gives the same figures for any build).
    static var attacker: String { Repo.root.appendingPathComponent("bench/slow-readers.py").path }

    func testTwentyClientsThatNeverReadTheirRepliesDoNotHoldUpANewClient() throws {
        try Repo.ensureCertificates()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-slow-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let port = freeLoopbackPort()
        let adminPort = freeLoopbackPort()
        // The attack comes from one address; the per-address limit is not what is under test here.
        let server = try PosternProcess.serve(in: directory, listeners: "  - { name: device, kind: device, listen: \"127.0.0.1:\(port)\" }",
                                              extra: "limits: { max-connections-per-client: 500 }\nadmin: { listen: \"127.0.0.1:\(adminPort)\" }")
        defer { server.kill() }
        try server.waitUntilAccepting(port: port)

        // Baseline: some sessions first, so that it includes what any traffic allocates.
        var quiet: [Double] = []
        for _ in 0..<20 { quiet.append(try Self.greetingAndEHLO(port: port).greeting) }
        let rssBefore = try Self.resident(pid: server.pid)

        let attackerLog = directory.appendingPathComponent("attacker.log")
        let attacker = try Spawned(["/usr/bin/python3", Self.attacker, "attack", "\(port)", "20", "8"], output: attackerLog.path)
        defer { attacker.kill() }
        try waitFor("the attacker to connect", timeout: 10) { (try? String(contentsOf: attackerLog, encoding: .utf8))?.contains("started") ?? false }
        Thread.sleep(forTimeInterval: 1.5)  // the attack takes hold: kernel buffers fill, the first cut-offs come

        var greetings: [Double] = []
        var ehlos: [Double] = []
        var rssPeak = rssBefore
        var sendQueue = (total: 0, largest: 0)
        for _ in 0..<50 where attacker.isRunning {
            let probe = try Self.greetingAndEHLO(port: port)
            greetings.append(probe.greeting)
            ehlos.append(probe.ehlo)
            rssPeak = max(rssPeak, try Self.resident(pid: server.pid))
            let queues = try Self.sendQueues(port: port)
            sendQueue = (max(sendQueue.total, queues.total), max(sendQueue.largest, queues.largest))
            Thread.sleep(forTimeInterval: 0.1)
        }
        XCTAssertEqual(try attacker.waitForExit(timeout: 60), 0, (try? String(contentsOf: attackerLog, encoding: .utf8)) ?? "")
        let attack = (try? String(contentsOf: attackerLog, encoding: .utf8)) ?? ""
        Thread.sleep(forTimeInterval: 1)
        let rssAfter = try Self.resident(pid: server.pid)
        let metrics = try PrometheusText(try HTTP.get(port: adminPort, path: "/metrics").body)
        let cutOff = metrics.sum("postern_slow_readers_closed_total", [:])

        let figures = """
            greeting without attack: p50 \(Self.ms(Self.percentile(quiet, 0.5))) ms, max \(Self.ms(quiet.max() ?? 0)) ms
            under attack (\(greetings.count) clients): greeting p50 \(Self.ms(Self.percentile(greetings, 0.5))) ms, \
            max \(Self.ms(greetings.max() ?? 0)) ms; EHLO reply p50 \(Self.ms(Self.percentile(ehlos, 0.5))) ms, max \(Self.ms(ehlos.max() ?? 0)) ms
            gateway RSS: before \(rssBefore / 1024) MiB, peak \(rssPeak / 1024) MiB, after \(rssAfter / 1024) MiB
            kernel send queues of the gateway's connections: total up to \(sendQueue.total / 1024) KiB, largest \(sendQueue.largest / 1024) KiB
            attacker: \(attack.split(separator: "\n").last ?? ""); cut off (metric): \(Int(cutOff))
            """
        print("slow readers:\n\(figures)")

        XCTAssertGreaterThanOrEqual(greetings.count, 30, figures)
        XCTAssertLessThan(greetings.max() ?? .infinity, 0.100, "a new client waited too long for its 220:\n\(figures)")
        XCTAssertTrue(attack.contains("first_closed 20\n"), "every attacking connection is closed:\n\(attack)")
        XCTAssertGreaterThanOrEqual(cutOff, 20, figures)
        XCTAssertTrue(server.log().contains("closing a client that does not read its replies"), server.log())
        // Each connection's unread replies are bounded in the kernel: SO_SNDBUF, which Linux doubles, and one
        // more segment of up to 64 KiB that it queues past the limit (before: megabytes per connection) ...
        XCTAssertLessThanOrEqual(sendQueue.largest, 2 * ServerConnectionStateMachine.socketSendBuffer + 64 * 1024, figures)
        // ... and in the process (the write buffer's high water mark and a turn's replies per connection).
        XCTAssertLessThan(rssPeak - rssBefore, 16 * 1024, figures)
        XCTAssertTrue(server.isRunning, server.log())
    }

    // MARK: Pipelining clients that read

    func testAPipeliningClientGetsEveryReplyToAHundredRecipientsAndSendsAFiveMegabyteMessage() async throws {
        let harness = try await GatewayHarness.start()
        let script = AttackMatrixTests.prelude + """
            s, f = connect(int(sys.argv[1]), timeout=60)
            reply(f)
            cmd(s, f, "EHLO pipelining.test")
            body = b"Subject: large\\r\\n\\r\\n" + b"".join(b"line %07d " % i + b"x" * 88 + b"\\r\\n" for i in range(50000))
            for n in range(2):
                group = b"MAIL FROM:<scanner@example.edu>\\r\\n" + b"".join(b"RCPT TO:<user%d@example.edu>\\r\\n" % i for i in range(100)) + b"DATA\\r\\n"
                s.sendall(group)
                codes = [reply(f) for _ in range(102)]
                print("mail", codes[0][:3], "rcpt", sum(c.startswith("250 2.1.5") for c in codes[1:101]), "data", codes[101][:3])
                s.sendall(body + b".\\r\\n")
                print("end", reply(f)[:3])
            s.sendall(b"RSET\\r\\nNOOP\\r\\nQUIT\\r\\n")
            print("after", [reply(f)[:3] for _ in range(3)])
            print("eof", reply(f))
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"], timeout: 120)
        let files = harness.outboxFiles()
        let sizes = files.map { (try? FileManager.default.attributesOfItem(atPath: $0.path)[.size] as? Int) ?? 0 }
        let metrics = try PrometheusText(String(decoding: harness.gateway.metrics.exposition(), as: UTF8.self))
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(result.output, """
            mail 250 rcpt 100 data 354
            end 250
            mail 250 rcpt 100 data 354
            end 250
            after ['250', '250', '221']
            eof EOF

            """)
        XCTAssertEqual(files.count, 2)
        XCTAssertTrue(sizes.allSatisfy { $0 > 5_000_000 }, "\(sizes)")
        XCTAssertEqual(metrics.sum("postern_slow_readers_closed_total", [:]), 0)
    }

    /// 10,000 commands (60 KB, more than a TCP window) written in one go while another thread reads the
    /// replies: the gateway answers them a turn at a time and never mistakes the client for one that does not read.
    func testAClientThatReadsWhileItPipelinesTenThousandCommandsIsServedInFull() async throws {
        let harness = try await GatewayHarness.start()
        let script = AttackMatrixTests.prelude + """
            import threading
            s, f = connect(int(sys.argv[1]), timeout=60)
            reply(f)
            cmd(s, f, "EHLO reader.test")
            writer = threading.Thread(target=lambda: s.sendall(b"NOOP\\r\\n" * 10000 + b"QUIT\\r\\n"))
            writer.start()
            codes = [reply(f)[:3] for _ in range(10001)]
            writer.join()
            print("ok", codes.count("250"), "last", codes[-1], "then", reply(f))
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"], timeout: 120)
        let metrics = try PrometheusText(String(decoding: harness.gateway.metrics.exposition(), as: UTF8.self))
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(result.output, "ok 10000 last 221 then EOF\n")
        XCTAssertEqual(metrics.sum("postern_slow_readers_closed_total", [:]), 0)
    }

    /// Turns and held reads under TLS: STARTTLS handled in a later turn than the read that brought it; then,
    /// after STARTTLS and on implicit TLS, a pipelined batch gets every reply.
    func testPipelinedCommandsOverTLSAreAllAnswered() async throws {
        let harness = try await GatewayHarness.start()
        let script = """
            import socket, ssl, sys
            ctx = ssl.create_default_context(cafile=sys.argv[3])
            def replies(f, n):
                out = []
                while len(out) < n:
                    line = f.readline().decode()
                    if not line:
                        out.append("EOF")
                        break
                    if line[3:4] != "-":
                        out.append(line[:3])
                return out
            def batch(s, f, label):
                s.sendall(b"EHLO tls.test\\r\\n" + b"RSET\\r\\nNOOP\\r\\n" * 300 + b"MAIL FROM:<alice@example.edu>\\r\\n")
                codes = replies(f, 602)
                print(label, codes[0], codes[1:601].count("250"), codes[601])
            raw = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
            f = raw.makefile("rb")
            replies(f, 1)
            # STARTTLS comes in a later turn than the read that brought it: the handshake must still get its reads.
            raw.sendall(b"EHLO tls.test\\r\\n" + b"NOOP\\r\\n" * 20 + b"STARTTLS\\r\\n")
            codes = replies(f, 22)
            print("starttls", codes[0], codes[1:21].count("250"), codes[21])
            s = ctx.wrap_socket(raw, server_hostname="localhost")
            batch(s, s.makefile("rb"), "submission")
            s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=30), server_hostname="localhost")
            f = s.makefile("rb")
            replies(f, 1)
            batch(s, f, "submissions")
            """
        let result = try Shell.python(script, ["\(harness.port("submission"))", "\(harness.port("submissions"))",
                                                Repo.certs.appendingPathComponent("ca.pem").path])
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertEqual(result.output, "starttls 250 20 220\nsubmission 250 600 530\nsubmissions 250 600 530\n")
    }

    // MARK: Helpers

    /// Seconds from connect to the 220, and from EHLO to its reply.
    static func greetingAndEHLO(port: Int) throws -> (greeting: Double, ehlo: Double) {
        let start = DispatchTime.now().uptimeNanoseconds
        let client = try ClientSocket(port: port)
        defer { client.close() }
        let greeting = try client.reply()
        let greeted = DispatchTime.now().uptimeNanoseconds
        guard greeting.hasPrefix("220 ") else { throw HarnessError("greeting: \(greeting)") }
        try client.send("EHLO probe.test\r\n")
        let ehlo = try client.reply()
        guard ehlo.hasPrefix("250 ") else { throw HarnessError("EHLO: \(ehlo)") }
        let answered = DispatchTime.now().uptimeNanoseconds
        return (Double(greeted - start) / 1e9, Double(answered - greeted) / 1e9)
    }

    /// VmRSS of a process in KiB.
    static func resident(pid: pid_t) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else {
            throw HarnessError("no VmRSS in /proc/\(pid)/status")
        }
        return kib
    }

    /// Bytes in the kernel send queues of established TCP connections on local port `port` (/proc/net/tcp
    /// `tx_queue`, as `ss` shows Send-Q): the total and the largest.
    static func sendQueues(port: Int) throws -> (total: Int, largest: Int) {
        let table = try String(contentsOfFile: "/proc/net/tcp", encoding: .utf8)
        var total = 0
        var largest = 0
        for line in table.split(separator: "\n").dropFirst() {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count > 4, fields[3] == "01",  // ESTABLISHED
                  let local = fields[1].split(separator: ":").last, Int(local, radix: 16) == port,
                  let tx = fields[4].split(separator: ":").first, let queued = Int(tx, radix: 16) else { continue }
            total += queued
            largest = max(largest, queued)
        }
        return (total, largest)
    }

    static func percentile(_ values: [Double], _ p: Double) -> Double {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
    }

    static func ms(_ seconds: Double) -> String { String(format: "%.1f", seconds * 1000) }
}
