import ArgumentParser
import Foundation
import NIOCore
import NIOPosix
import NIOSSL

@main
struct PosternLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "postern-load",
        abstract: "Load generator and micro-benchmarks for Postern (bench/run.sh drives it).",
        subcommands: [SMTPLoad.self, IdleLoad.self, PolicyBench.self])
}

/// Exits the process if the run has not finished in time: every load is bounded.
func armWatchdog(seconds: Int, what: String) {
    Thread.detachNewThread {
        Thread.sleep(forTimeInterval: TimeInterval(seconds))
        FileHandle.standardError.write(Data("postern-load: \(what) did not finish within \(seconds) s; giving up\n".utf8))
        exit(2)
    }
}

struct SMTPLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "smtp",
        abstract: "N concurrent sessions sending M messages in all; prints messages/s and DATA-end-to-reply latency.")

    @Option var host = "127.0.0.1"
    @Option var port: Int
    @Option(help: "device (plaintext) or submission (STARTTLS, then AUTH PLAIN).") var mode = "device"
    @Option(help: "Concurrent sessions.") var sessions = 50
    @Option(help: "Messages in all, spread over the sessions.") var messages = 20_000
    @Option(help: "Messages per connection; 1 reconnects for every message (like smtp-source without -d).") var perConnection = 1
    @Option(help: "Message size in bytes (headers and body).") var size = 10_240
    @Option var from = "scanner@example.edu"
    @Option var to = "bob@example.edu"
    @Option var user: String?
    @Option var password: String?
    @Option(help: "CA that signed the server's certificate (submission mode).") var ca: String?
    @Option var serverName = "localhost"
    @Option(help: "Give up after this many seconds.") var timeout = 600
    @Option(help: "A label for the RESULT line.") var label = "load"

    func validate() throws {
        // `total / sessions`, `0..<sessions` and NIO's port conversion trap outside these.
        guard (1...65535).contains(port), sessions >= 1, messages >= 0, size >= 0 else {
            throw ValidationError("--port must be 1-65535, --sessions at least 1, --messages and --size at least 0")
        }
    }

    func run() async throws {
        guard let loadMode = LoadMode(rawValue: mode) else { throw ValidationError("--mode must be device or submission") }
        armWatchdog(seconds: timeout, what: "the load")
        var tlsContext: NIOSSLContext?
        if loadMode == .submission {
            var tls = TLSConfiguration.makeClientConfiguration()
            if let ca { tls.trustRoots = .file(ca) }
            tlsContext = try NIOSSLContext(configuration: tls)
        }
        let settings = SessionSettings(host: host, port: port, mode: loadMode, sender: from, recipient: to, user: user,
                                       password: password, tlsContext: tlsContext, serverName: serverName,
                                       message: makeMessage(size: size, sender: from, recipient: to))
        let group = MultiThreadedEventLoopGroup.singleton
        let total = messages, sessions = self.sessions, perConnection = max(1, self.perConnection)
        let started = NIODeadline.now()
        let results = await withTaskGroup(of: SessionResult.self) { tasks in
            for i in 0..<sessions {
                let mine = total / sessions + (i < total % sessions ? 1 : 0)
                tasks.addTask {
                    var result = SessionResult()
                    var left = mine
                    while left > 0 {
                        let n = min(left, perConnection)
                        do {
                            try await runConnection(settings, count: n, group: group, result: &result)
                        } catch {
                            result.failed[0, default: 0] += n
                            if result.errors.count < 5 { result.errors.append("\(error)") }
                        }
                        left -= n
                    }
                    return result
                }
            }
            var all: [SessionResult] = []
            for await r in tasks { all.append(r) }
            return all
        }
        let seconds = Double((NIODeadline.now() - started).nanoseconds) / 1e9
        let accepted = results.reduce(0) { $0 + $1.accepted }
        var failed: [Int: Int] = [:]
        for r in results { for (k, v) in r.failed { failed[k, default: 0] += v } }
        let latencies = results.flatMap(\.latencies).sorted()
        for e in results.flatMap(\.errors).prefix(5) { FileHandle.standardError.write(Data("postern-load: \(e)\n".utf8)) }
        let failedText = failed.isEmpty ? "0" : failed.sorted { $0.key < $1.key }.map { "\($0.key == 0 ? "conn" : String($0.key)):\($0.value)" }.joined(separator: ",")
        print(String(format: "RESULT label=%@ mode=%@ sessions=%d messages=%d accepted=%d failed=%@ seconds=%.3f rate=%.1f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f",
                     label, mode, sessions, total, accepted, failedText, seconds, Double(accepted) / seconds,
                     percentile(latencies, 50), percentile(latencies, 99), percentile(latencies, 100)))
    }
}
