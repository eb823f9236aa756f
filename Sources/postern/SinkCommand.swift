import ArgumentParser
import Foundation
import Logging
import NIOPosix
import PosternSink

/// `postern sink`: a receiving SMTP server (`SMTPSession`, as on the gateway's listeners) that requires a
/// client certificate; the demo upstream and the benchmark sink.
struct SinkCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sink",
        abstract: "Run a small SMTP server that requires client certificates and stores or discards what it receives.")

    @Option(help: "Address to listen on, ADDR:PORT (loopback only is wise).") var listen: String = "127.0.0.1:2525"
    @Option(help: "starttls or implicit.") var tls: String = "starttls"
    @Option(help: "Server certificate (PEM).") var cert: String
    @Option(help: "Server key (PEM).") var key: String
    @Option(help: "CA bundle that client certificates must chain to.") var ca: String
    @Option(help: "Directory to write received messages to.") var outbox: String?
    @Flag(help: "Discard messages (benchmarks).") var discard = false
    @Option(help: "Name in the greeting and EHLO.") var hostname: String = "sink.localhost"
    @Option(help: "Failure injection: reply to every RCPT with this, e.g. \"450 4.7.230 throttled\".") var rcptReply: String?
    @Option(help: "Failure injection: reply to DATA's end with this.") var dataReply: String?
    @Flag(help: "Failure injection: drop the connection after the message data.") var dropAfterData = false
    @Option(help: "Benchmarks: keep FILE updated (about every 10 ms, replaced atomically) with one line `received N connections C at T`, T the Unix time (s) the count last changed.")
    var statsFile: String?

    func validate() throws {
        guard (outbox != nil) != discard else { throw ValidationError("give exactly one of --outbox DIR and --discard") }
        guard SinkConfiguration.TLSMode(rawValue: tls) != nil else { throw ValidationError("--tls must be starttls or implicit") }
        guard hostAndPort != nil else { throw ValidationError("--listen must be ADDR:PORT with a port from 0 to 65535") }
        for (option, reply) in [("--rcpt-reply", rcptReply), ("--data-reply", dataReply)] {
            if let reply, !SinkFaults.isValidReply(reply) {
                throw ValidationError("\(option) must be one SMTP reply line, e.g. \"450 4.7.230 throttled\"")
            }
        }
    }

    /// `--listen` split; nil unless the port is one a socket can have (NIO would bind 99999 as 34463).
    var hostAndPort: (host: String, port: Int)? {
        guard let colon = listen.lastIndex(of: ":"), let port = Int(listen[listen.index(after: colon)...]), (0...65535).contains(port) else { return nil }
        var host = String(listen[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        return (host, port)
    }

    func run() async throws {
        // `validate()` ran first and checked both.
        guard let (host, port) = hostAndPort, let mode = SinkConfiguration.TLSMode(rawValue: tls) else { throw ValidationError("bad --listen or --tls") }
        let configuration = SinkConfiguration(
            host: host, port: port, tls: mode, certificateFile: cert, keyFile: key,
            clientCAFile: ca, outbox: discard ? nil : outbox, hostname: hostname,
            faults: SinkFaults(rcptReply: rcptReply, dataReply: dataReply, dropAfterData: dropAfterData))
        let sink = SinkServer(configuration: configuration, group: MultiThreadedEventLoopGroup.singleton, logger: Logger(label: "postern.sink"))
        let bound = try await sink.start()
        print("sink listening on \(host):\(bound)")
        // Runs until the process is stopped (SIGINT/SIGTERM end it).
        if let statsFile {
            var last = (-1, -1)
            var changedAt = Date().timeIntervalSince1970
            while !Task.isCancelled {
                let now = (sink.receivedCount, sink.connectionCount)
                if now != last {
                    if now.0 != last.0 { changedAt = Date().timeIntervalSince1970 }
                    last = now
                    let line = "received \(now.0) connections \(now.1) at \(String(format: "%.6f", changedAt))\n"
                    let tmp = statsFile + ".tmp"
                    if FileManager.default.createFile(atPath: tmp, contents: Data(line.utf8)) {
                        _ = rename(tmp, statsFile)
                    }
                }
                try await Task.sleep(for: .milliseconds(10))
            }
        }
        while !Task.isCancelled {
            try await Task.sleep(for: .seconds(3600))
        }
        await sink.stop()
    }
}
