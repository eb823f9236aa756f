import Foundation
import PosternTestSupport
import XCTest

/// Two gateways behind HAProxy, as `make ha-demo` runs them (scripts/ha-demo.sh itself: HAProxy in TCP mode with
/// send-proxy-v2 from 127.0.0.5, two `postern serve` nodes with their own spools on one policy directory, the demo
/// sink as upstream). Load goes through HAProxy from scripts/ha-load.py, a client that reconnects and sends again
/// after anything but a 250 or a 5xx, as MTAs do; the sink counts each message by its unique X-HA-Id.
final class HighAvailabilityTests: XCTestCase {
    func summary(_ path: String) throws -> HADemo.LoadSummary {
        let text = try String(contentsOfFile: path, encoding: .utf8)
        guard let line = text.split(separator: "\n").last(where: { $0.hasPrefix("{") }) else { throw HarnessError("no summary: \(text)") }
        return try JSONDecoder().decode(HADemo.LoadSummary.self, from: Data(line.utf8))
    }

    func acceptedIDs(_ path: String) throws -> [String] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map(String.init)
    }

    /// Waits until a node has accepted `count` messages of the load (so that the kill lands under load).
    func waitForLoad(on demo: HADemo, node: Int, count: Double) throws {
        try waitFor("node\(node) to accept \(Int(count)) messages", timeout: 60) {
            demo.metric(node: node, "postern_messages_accepted_total", ["listener": "device"]) >= count
        }
    }

    func testKillingANodeUnderLoadLosesNoAcceptedMessageAndClientsFailOverThroughHAProxy() throws {
        // node1 stays down 8 s: long enough that clients must fail over to node2, not wait for node1.
        let demo = try HADemo(restartSeconds: 8)
        // The upstream is down while the load runs, so that what node1 accepted is still in its spool when it is
        // killed: delivered only once it comes back on that spool.
        try demo.stopUpstream()
        let (load, summaryPath, acceptedPath) = try demo.startLoad(prefix: "kill", clients: 6, messages: 1000, seconds: 150)
        defer { load.kill() }
        try waitForLoad(on: demo, node: 1, count: 30)

        let killed = Date()
        kill(try demo.nodePID(1), SIGKILL)
        try waitFor("HAProxy to mark node1 down", timeout: 20) { (try? demo.servers())?["device/node1"]?.status.hasPrefix("DOWN") == true }
        let detected = Date().timeIntervalSince(killed)
        XCTAssertEqual(try load.waitForExit(timeout: 170), 0, demo.output())
        let result = try summary(summaryPath)
        let accepted = try acceptedIDs(acceptedPath)

        // Every message was accepted in the end (a client sends again after a cut), none refused.
        XCTAssertEqual(result.unique_accepted, 1000, "\(result)")
        XCTAssertNil(result.failures["refused"], "\(result)")
        XCTAssertNil(result.failures["temporary"].flatMap { $0 > 50 ? $0 : nil }, "\(result)")
        // The kill cut sessions in progress: without that, nothing here tested a failover.
        XCTAssertGreaterThan((result.failures["cut"] ?? 0) + (result.failures["unanswered"] ?? 0) + (result.failures["before-greeting"] ?? 0), 0,
                             "\(result)")

        // node1 comes back on its own spool (the script restarts it), the upstream comes back, and then every 250 is
        // at the sink.
        try waitFor("node1 up again in HAProxy", timeout: 60) { (try? demo.servers())?["device/node1"]?.status == "UP" }
        let sink = try demo.startUpstream()
        defer { sink.kill() }
        var copies: [String: Int] = [:]
        do {
            try waitFor("every accepted message at the sink", timeout: 90) {
                copies = demo.delivered()
                return accepted.allSatisfy { copies[$0] != nil }
            }
        } catch {
            let missing = accepted.filter { copies[$0] == nil }
            XCTFail("\(missing.count) accepted message(s) not delivered, e.g. \(missing.prefix(5)): \(error)\n\(demo.output())")
        }
        let duplicates = copies.values.filter { $0 > 1 }.count
        // What node1 had accepted before the kill was in its spool only: it delivered at least that after the restart
        // (its metrics start again from zero).
        var afterRestart = 0.0
        try waitFor("node1's deliveries counted", timeout: 20) {
            afterRestart = demo.metric(node: 1, "postern_relay_outcomes_total", ["upstream": "demo-sink", "code": "250"])
            return afterRestart >= 30
        }
        let servers = try demo.servers()
        print("""
            HA kill -9: \(result.unique_accepted) messages accepted through HAProxy in \(result.seconds) s by 6 clients; \
            connections per node: node1 \(servers["device/node1"]?.sessions ?? -1), node2 \(servers["device/node2"]?.sessions ?? -1); \
            HAProxy marked node1 down \(String(format: "%.2f", detected)) s after the kill; longest client failover \
            (first failure to next 250) \(result.failover_seconds) s over \(result.outages) interrupted clients; failures \(result.failures); \
            delivered by node1 after its restart: \(Int(afterRestart)); delivered twice: \(duplicates)
            """)
        demo.stop()
    }

    func testSIGTERMUnderLoadDrainsThroughHAProxyLosingAndRefusingNothing() throws {
        let demo = try HADemo(restartSeconds: 5)
        // Clients keep their connections: those on node1 are still there when its drain notice ends.
        let (load, summaryPath, acceptedPath) = try demo.startLoad(prefix: "term", clients: 6, messages: 800, seconds: 150, perConnection: 100_000)
        defer { load.kill() }
        try waitForLoad(on: demo, node: 1, count: 30)

        let node1 = try demo.nodePID(1)
        let signalled = Date()
        kill(node1, SIGTERM)
        // /health says draining at once, while node1 still accepts; HAProxy takes it out before it stops accepting.
        var health: HTTP.Response?
        try waitFor("node1's /health to say draining", timeout: 10) {
            health = try? HTTP.get(port: demo.adminPort(node: 1), path: "/health")
            return health?.status == 503
        }
        XCTAssertTrue(health?.body.contains("draining") ?? false, health?.body ?? "")
        // During the notice node1 still greets a new connection (one made straight to it, not through HAProxy).
        let direct = try Shell.python("""
            import socket, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            print(s.makefile("rb").readline().decode().strip())
            """, ["\(demo.devicePort(node: 1))"], timeout: 10).output
        XCTAssertTrue(direct.contains("220 node1.localhost ESMTP Postern"), direct)
        XCTAssertLessThan(Date().timeIntervalSince(signalled), 3, "the check came after the drain notice; it proves nothing")
        try waitFor("HAProxy to mark node1 down", timeout: 10) { (try? demo.servers())?["device/node1"]?.status.hasPrefix("DOWN") == true }
        let outOfRotation = Date().timeIntervalSince(signalled)
        XCTAssertLessThan(outOfRotation, 3, "HAProxy took node1 out only after the 3 s drain notice: \(demo.output())")
        try waitFor("node1 to exit", timeout: 40) { kill(node1, 0) != 0 }
        XCTAssertTrue((try String(contentsOfFile: demo.log, encoding: .utf8)).contains("node1 ended (status 0)"), demo.output())

        XCTAssertEqual(try load.waitForExit(timeout: 170), 0, demo.output())
        let result = try summary(summaryPath)
        XCTAssertEqual(result.unique_accepted, 800, "\(result)")
        // Only what a client retries by the rules: a 4xx (421 from a session closed by the drain), or a connection
        // refused or closed before the greeting. No session cut mid-transaction, no message left unanswered, no 5xx.
        XCTAssertEqual(Set(result.failures.keys).subtracting(["temporary", "before-greeting"]), [], "\(result)")
        // The sessions node1 still had were closed with a 421 and their clients went on through node2.
        XCTAssertGreaterThan(result.failures["temporary"] ?? 0, 0, "\(result)")

        try waitFor("node1 up again in HAProxy", timeout: 60) { (try? demo.servers())?["device/node1"]?.status == "UP" }
        let accepted = try acceptedIDs(acceptedPath)
        var copies: [String: Int] = [:]
        do {
            try waitFor("every accepted message at the sink", timeout: 90) {
                copies = demo.delivered()
                return accepted.allSatisfy { copies[$0] != nil }
            }
        } catch {
            XCTFail("\(accepted.filter { copies[$0] == nil }.count) accepted message(s) not delivered: \(error)\n\(demo.output())")
        }
        let servers = try demo.servers()
        print("""
            HA SIGTERM: \(result.unique_accepted) messages accepted in \(result.seconds) s; connections per node: node1 \
            \(servers["device/node1"]?.sessions ?? -1), node2 \(servers["device/node2"]?.sessions ?? -1); node1 out of HAProxy's \
            rotation \(String(format: "%.2f", outOfRotation)) s after SIGTERM; client-visible failures \(result.failures); \
            longest client wait \(result.failover_seconds) s; delivered twice: \(copies.values.filter { $0 > 1 }.count)
            """)
        demo.stop()
    }

    func testALostNodesSpoolIsAdoptedByTheOtherNodeAndDelivered() throws {
        // node1 is not started again (as good as lost); the upstream is down, so both spools hold what they accepted.
        let demo = try HADemo(restartSeconds: 3600)
        try demo.stopUpstream()
        let (load, summaryPath, acceptedPath) = try demo.startLoad(prefix: "adopt", clients: 4, messages: 200, seconds: 120)
        defer { load.kill() }
        XCTAssertEqual(try load.waitForExit(timeout: 130), 0, demo.output())
        XCTAssertEqual(try summary(summaryPath).unique_accepted, 200)
        let accepted = try acceptedIDs(acceptedPath)
        let onNode1 = demo.metric(node: 1, "postern_messages_accepted_total", ["listener": "device"])
        XCTAssertGreaterThan(onNode1, 0)
        kill(try demo.nodePID(1), SIGKILL)

        // The procedure of docs/production.md: node1's spool (here in place; after a loss, its disk or a copy) is
        // adopted by node2 while node2 runs.
        let lostSpool = demo.ha.appendingPathComponent("node1/spool")
        let config = demo.ha.appendingPathComponent("node2/postern.yaml").path
        let environment = ["POSTERN_LDAP_PASSWORD": "postern-demo-pass"]
        // A queue file damaged on the way (a bad copy) is named and left where it is; the others are adopted.
        let damaged = lostSpool.appendingPathComponent("queue/damaged-copy.msg")
        try Data("POSTERN-SPOOL 1 not what it should be\n".utf8).write(to: damaged)
        let adopt = try Shell.run([Repo.posternBinary.path, "queue", "adopt", lostSpool.path, "--config", config], environment: environment)
        XCTAssertEqual(adopt.status, 1, adopt.output)
        XCTAssertTrue(adopt.output.contains("not adopted: damaged-copy:"), adopt.output)
        XCTAssertTrue(FileManager.default.fileExists(atPath: damaged.path))
        try FileManager.default.removeItem(at: damaged)
        // What node1 accepted of the load, and whatever else it had queued (a sunset reminder due that day).
        let count = adopt.output.split(separator: "\n").first { $0.contains(" message(s) adopted from \(lostSpool.path)") }
            .flatMap { Int($0.prefix { $0 != " " }) }
        XCTAssertGreaterThanOrEqual(count ?? -1, Int(onNode1), adopt.output)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: lostSpool.appendingPathComponent("queue").path).filter { $0.hasSuffix(".msg") },
                       [])
        let again = try Shell.run([Repo.posternBinary.path, "queue", "adopt", lostSpool.path, "--config", config], environment: environment)
        XCTAssertTrue(again.output.contains("0 message(s) adopted"), again.output)
        XCTAssertEqual(again.status, 0, again.output)
        let audit = try String(contentsOf: demo.ha.appendingPathComponent("node2/audit.jsonl"), encoding: .utf8)
        XCTAssertEqual(audit.components(separatedBy: "\"event\":\"queue_adopt\"").count - 1, count, String(audit.suffix(2000)))

        let sink = try demo.startUpstream()
        defer { sink.kill() }
        // The upstream was down: node2's retry (10 s, then backoff) brings everything, its own and node1's.
        var copies: [String: Int] = [:]
        do {
            try waitFor("every accepted message at the sink", timeout: 120) {
                copies = demo.delivered()
                return accepted.allSatisfy { copies[$0] != nil }
            }
        } catch {
            XCTFail("\(accepted.filter { copies[$0] == nil }.count) accepted message(s) not delivered: \(error)\n\(demo.output())")
        }
        XCTAssertEqual(copies.values.filter { $0 > 1 }.count, 0)
        demo.stop()
    }

    /// One client through HAProxy: greeting and the reply to MAIL, from a given source address.
    static let client = """
        import socket, sys
        port, source, hold = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        held = []
        for i in range(hold):
            s = socket.socket(); s.bind((source, 0)); s.settimeout(10); s.connect(("127.0.0.1", port))
            f = s.makefile("rb")
            line = f.readline().decode().strip()
            print("greeting", line)
            held.append((s, f))
            if not line.startswith("220"): break
        s, f = held[0]
        if len(sys.argv) > 4:
            s.sendall(sys.argv[4].encode() + b"\\r\\n"); print("header", f.readline().decode().strip())
        s.sendall(b"EHLO c.test\\r\\n")
        while True:
            l = f.readline().decode()
            if l[3] != "-": break
        s.sendall(b"MAIL FROM:<scanner@example.edu>\\r\\n"); print("mail", f.readline().decode().strip())
        """

    func testTheClientAddressFromHAProxyIsWhatPolicyLimitsAndTheAuditLogSee() throws {
        let demo = try HADemo(restartSeconds: 3, maxConnectionsPerClient: 3)
        let frontend = "\(demo.port(2525))"
        // HAProxy connects from 127.0.0.5, which is no registered device: 127.0.0.1 (demo-scanner) is accepted only
        // because its address came across in the PROXY header; 127.0.0.2 is refused by its own name.
        let registered = try Shell.python(Self.client, [frontend, "127.0.0.1", "1"]).output
        XCTAssertTrue(registered.contains("mail 250 2.1.0"), registered)
        let unregistered = try Shell.python(Self.client, [frontend, "127.0.0.2", "1"]).output
        XCTAssertTrue(unregistered.contains("mail 554 5.7.1 127.0.0.2 is not a registered device"), unregistered)

        // The per-client connection limit (3 per node here) counts 127.0.0.3's own connections, not the balancer's:
        // 127.0.0.3 gets 3 on each node and its 7th is refused, while 127.0.0.4 still gets in.
        let crowd = try Shell.python(Self.client, [frontend, "127.0.0.3", "7"]).output
        let greeted = crowd.split(separator: "\n").filter { $0.hasPrefix("greeting 220") }.count
        XCTAssertEqual(greeted, 6, crowd)
        XCTAssertTrue(crowd.contains("greeting 421 4.7.0 Too many connections from your address"), crowd)
        let other = try Shell.python(Self.client, [frontend, "127.0.0.4", "1"]).output
        XCTAssertTrue(other.contains("greeting 220"), other)

        // The audit log names the client and the balancer it came through.
        var connections: [[String: Any]] = []
        try waitFor("the audit lines", timeout: 10) {
            connections = [1, 2].flatMap { node -> [[String: Any]] in
                let file = demo.ha.appendingPathComponent("node\(node)/audit.jsonl")
                let text = (try? String(contentsOf: file, encoding: .utf8)) ?? ""
                return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
                    .filter { $0["event"] as? String == "connection" }
            }
            return connections.contains { $0["client"] as? String == "127.0.0.4" }
        }
        for client in ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"] {
            XCTAssertTrue(connections.contains { $0["client"] as? String == client && $0["proxy_peer"] as? String == "127.0.0.5" },
                          "no connection of \(client) through 127.0.0.5: \(connections)")
        }

        // A PROXY header from anyone but the balancer is not believed: straight to node1 from 127.0.0.6, claiming
        // to be demo-scanner, it is an unknown command and the real address decides.
        let spoofed = try Shell.python(Self.client, ["\(demo.devicePort(node: 1))", "127.0.0.6", "1",
                                                     "PROXY TCP4 127.0.0.1 127.0.0.1 40000 25"]).output
        XCTAssertTrue(spoofed.contains("header 500 5.5.2"), spoofed)
        XCTAssertTrue(spoofed.contains("mail 554 5.7.1 127.0.0.6 is not a registered device"), spoofed)

        // One view: both nodes name the same policy and generation, on /health and /metrics.
        let health = try [1, 2].map { try HTTP.get(port: demo.adminPort(node: $0), path: "/health").body }
        XCTAssertEqual(health[0], health[1])
        let version = try XCTUnwrap(health[0].split(separator: "\n").last.map(String.init), health[0])
        XCTAssertTrue(version.hasPrefix("policy ") && version.hasSuffix(" generation 1"), health[0])
        let fingerprint = version.split(separator: " ")[1]
        for node in [1, 2] {
            XCTAssertEqual(demo.metric(node: node, "postern_policy_info", ["fingerprint": String(fingerprint)]), 1)
            XCTAssertEqual(demo.metric(node: node, "postern_policy_generation"), 1)
        }
        demo.stop()
    }
}
