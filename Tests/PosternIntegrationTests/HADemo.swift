import Foundation
import PosternTestSupport
import XCTest

/// `scripts/ha-demo.sh` (what `make ha-demo` runs) for a test: HAProxy and two `postern serve` nodes on ports moved
/// by one offset, in a scratch directory, stopped (SIGTERM to its process group) by `stop`.
final class HADemo {
    /// Every port the script binds before the offset: HAProxy's three frontends and stats, the sink, slapd, and
    /// each node's listeners and admin endpoint.
    static let ports = [2525, 2587, 2465, 8404, 2526, 3389, 3636, 2535, 2597, 2475, 9035, 2545, 2607, 2485, 9045]

    let offset: Int
    let directory: URL
    let pid: pid_t
    let log: String
    private var stopped = false

    var ha: URL { directory.appendingPathComponent("var/ha") }
    func port(_ base: Int) -> Int { base + offset }
    /// The node's admin port (node 1 or 2).
    func adminPort(node: Int) -> Int { port(9025 + 10 * node) }
    func devicePort(node: Int) -> Int { port(2525 + 10 * node) }

    /// Starts the script and waits until HAProxy sees both nodes up on every backend.
    init(restartSeconds: Int, maxConnectionsPerClient: Int = 50) throws {
        try Repo.ensureCertificates()
        var offset: Int?
        for _ in 0..<50 where offset == nil {
            let candidate = Int.random(in: 20_000...30_000)
            if Self.ports.allSatisfy({ DemoScriptTests.portIsFree($0 + candidate) }) { offset = candidate }
        }
        guard let offset else { throw HarnessError("no offset with all HA demo ports free") }
        self.offset = offset
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-ha-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        log = directory.appendingPathComponent("ha-demo.log").path
        pid = try spawnProcess([Repo.root.appendingPathComponent("scripts/ha-demo.sh").path], output: log,
                               environment: ["DEMO_VAR": directory.appendingPathComponent("var").path, "DEMO_PORT_OFFSET": "\(offset)",
                                             "POSTERN_BIN": Repo.posternBinary.path, "HA_RESTART_SECONDS": "\(restartSeconds)",
                                             "HA_MAX_CONNECTIONS_PER_CLIENT": "\(maxConnectionsPerClient)"],
                               ownProcessGroup: true)
        do {
            try waitFor("both nodes up in HAProxy", timeout: 120) {
                let servers = (try? self.servers()) ?? [:]
                return servers.count == 6 && servers.values.allSatisfy { $0.status == "UP" }
            }
        } catch {
            stop()
            throw HarnessError("\(error)\n\(output())")
        }
    }

    func output() -> String {
        var text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
        for file in ["node1.log", "node2.log", "haproxy.log"] {
            let content = (try? String(contentsOf: ha.appendingPathComponent(file), encoding: .utf8)) ?? ""
            text += "\n--- \(file) (last 40 lines)\n" + content.split(separator: "\n").suffix(40).joined(separator: "\n")
        }
        return text
    }

    /// HAProxy's view of each server, by "backend/server": status and sessions since start.
    func servers() throws -> [String: (status: String, sessions: Int)] {
        let csv = try HTTP.get(port: port(8404), path: "/;csv")
        var result: [String: (status: String, sessions: Int)] = [:]
        for line in csv.body.split(separator: "\n") where !line.hasPrefix("#") {
            let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            guard fields.count > 17, fields[1].hasPrefix("node") else { continue }
            result["\(fields[0])/\(fields[1])"] = (fields[17], Int(fields[7]) ?? 0)
        }
        return result
    }

    func nodePID(_ node: Int) throws -> pid_t {
        let text = try String(contentsOf: ha.appendingPathComponent("node\(node).pid"), encoding: .utf8)
        guard let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw HarnessError("no pid in node\(node).pid") }
        return pid
    }

    /// A counter of a node's /metrics (0 when absent or the node does not answer).
    func metric(node: Int, _ name: String, _ labels: [String: String] = [:]) -> Double {
        guard let scrape = try? HTTP.get(port: adminPort(node: node), path: "/metrics"), scrape.status == 200,
              let metrics = try? PrometheusText(scrape.body) else { return 0 }
        return metrics[name, labels] ?? 0
    }

    /// Stops the demo's upstream (the sink): the nodes keep accepting and queue what they cannot relay.
    func stopUpstream() throws {
        let text = try String(contentsOf: ha.appendingPathComponent("sink.pid"), encoding: .utf8)
        guard let sink = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)) else { throw HarnessError("no pid in sink.pid") }
        kill(sink, SIGTERM)
        try waitFor("the sink to stop", timeout: 20) { kill(sink, 0) != 0 }
    }

    /// The upstream again, as the script starts it (the test stops it; the script's cleanup does not know it).
    func startUpstream() throws -> Spawned {
        let certs = Repo.certs.path
        let sink = try Spawned([Repo.posternBinary.path, "sink", "--listen", "127.0.0.1:\(port(2526))", "--tls", "starttls",
                                "--cert", "\(certs)/server.pem", "--key", "\(certs)/server.key", "--ca", "\(certs)/ca.pem",
                                "--outbox", ha.appendingPathComponent("outbox").path, "--hostname", "sink.localhost"],
                               output: directory.appendingPathComponent("sink-again.log").path)
        try waitFor("the sink to listen again", timeout: 20) { !DemoScriptTests.portIsFree(port(2526)) }
        return sink
    }

    /// How many copies of each X-HA-Id the sink has written to its outbox.
    func delivered() -> [String: Int] {
        let outbox = ha.appendingPathComponent("outbox")
        var copies: [String: Int] = [:]
        for name in (try? FileManager.default.contentsOfDirectory(atPath: outbox.path)) ?? [] where name.hasSuffix(".eml") {
            guard let text = try? String(contentsOf: outbox.appendingPathComponent(name), encoding: .utf8) else { continue }
            for line in text.split(separator: "\r\n", omittingEmptySubsequences: false).prefix(40) where line.hasPrefix("X-HA-Id: ") {
                copies[String(line.dropFirst(9)), default: 0] += 1
            }
        }
        return copies
    }

    /// Starts the bounded load client (scripts/ha-load.py) against HAProxy's device frontend.
    func startLoad(prefix: String, clients: Int, messages: Int, seconds: Int, perConnection: Int = 20) throws -> (Spawned, summary: String, accepted: String) {
        let summary = directory.appendingPathComponent("\(prefix)-summary.json").path
        let accepted = directory.appendingPathComponent("\(prefix)-accepted.txt").path
        let load = try Spawned(["/usr/bin/python3", Repo.root.appendingPathComponent("scripts/ha-load.py").path,
                                "--port", "\(port(2525))", "--clients", "\(clients)", "--messages", "\(messages)",
                                "--seconds", "\(seconds)", "--pause", "0.03", "--per-connection", "\(perConnection)", "--prefix", prefix, "--accepted", accepted],
                               output: summary)
        return (load, summary, accepted)
    }

    struct LoadSummary: Decodable {
        var accepted: Int
        var unique_accepted: Int
        var seconds: Double
        var failures: [String: Int]
        var failover_seconds: Double
        var outages: Int
    }

    func stop() {
        guard !stopped else { return }
        stopped = true
        kill(-pid, SIGTERM)
        // The nodes drain (3 s of notice each, in parallel) before the script exits; bounded all the same.
        var status: Int32 = 0
        for _ in 0..<600 where waitpid(pid, &status, WNOHANG) == 0 { usleep(100_000) }
        if waitpid(pid, &status, WNOHANG) == 0 {
            kill(-pid, SIGKILL)
            _ = waitForExit(pid)
        }
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }
}
