import ArgumentParser
import Foundation
import NIOCore
import NIOPosix

/// Completes a promise with the time the first `220 ` line arrived; then ignores everything.
final class GreetingHandler: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    let promise: EventLoopPromise<Void>
    private var seen = ByteBuffer()
    private var done = false

    init(promise: EventLoopPromise<Void>) { self.promise = promise }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        var bytes = unwrapInboundIn(data)
        seen.writeBuffer(&bytes)
        if let text = seen.getString(at: seen.readerIndex, length: seen.readableBytes), text.contains("\n") {
            done = true
            if text.hasPrefix("220 ") || text.hasPrefix("220-") { promise.succeed(()) } else {
                promise.fail(SMTPLoadError("greeting: \(text.trimmingCharacters(in: .whitespacesAndNewlines))"))
            }
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if !done { done = true; promise.fail(SMTPLoadError("closed before the greeting")) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if !done { done = true; promise.fail(error) }
        context.close(promise: nil)
    }
}

func rssKiB(pid: Int32) -> Int? {
    guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
    for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }
    return nil
}

struct IdleLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "idle",
        abstract: "Opens N connections that read the greeting and stay idle; reports the server's RSS and how long new clients wait for 220.")

    @Option var host = "127.0.0.1"
    @Option var port: Int
    @Option var connections = 10_000
    @Option(help: "Connections being opened at once.") var concurrency = 200
    @Option(help: "New clients timed (one after another) while the idle ones are open.") var probes = 50
    @Option(help: "The server's process id, for its RSS.") var pid: Int32?
    @Option(help: "Give up after this many seconds.") var timeout = 300

    /// Connects and waits for the greeting; returns the channel and the seconds it took.
    static func open(_ host: String, _ port: Int, group: EventLoopGroup) async throws -> (Channel, Double) {
        let start = NIODeadline.now()
        let loop = group.next()
        let promise = loop.makePromise(of: Void.self)
        let channel = try await ClientBootstrap(group: loop)
            .connectTimeout(.seconds(10))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(GreetingHandler(promise: promise)) }
            }
            .connect(host: host, port: port).get()
        do {
            try await promise.futureResult.get()
        } catch {
            try? await channel.close()
            throw error
        }
        return (channel, Double((NIODeadline.now() - start).nanoseconds) / 1e9)
    }

    func validate() throws {
        // `0..<probes` and NIO's port conversion trap outside these.
        guard (1...65535).contains(port), connections >= 0, concurrency >= 1, probes >= 0 else {
            throw ValidationError("--port must be 1-65535, --concurrency at least 1, --connections and --probes at least 0")
        }
    }

    func run() async throws {
        armWatchdog(seconds: timeout, what: "the idle-connection check")
        let group = MultiThreadedEventLoopGroup.singleton
        let rssBefore = pid.flatMap(rssKiB)
        let host = self.host, port = self.port, connections = self.connections, concurrency = self.concurrency
        let started = NIODeadline.now()
        var channels: [Channel] = []
        var failures = 0
        var firstError: String?
        channels.reserveCapacity(connections)
        await withTaskGroup(of: Result<Channel, Error>.self) { tasks in
            var launched = 0
            func launch() {
                tasks.addTask { do { return .success(try await Self.open(host, port, group: group).0) } catch { return .failure(error) } }
                launched += 1
            }
            while launched < min(concurrency, connections) { launch() }
            for await r in tasks {
                switch r {
                case .success(let c): channels.append(c)
                case .failure(let e): failures += 1; if firstError == nil { firstError = "\(e)" }
                }
                if launched < connections { launch() }
            }
        }
        let openSeconds = Double((NIODeadline.now() - started).nanoseconds) / 1e9
        try await Task.sleep(for: .seconds(2))  // let the server settle
        let rssIdle = pid.flatMap(rssKiB)
        var waits: [Double] = []
        for _ in 0..<probes {
            do {
                let (c, seconds) = try await Self.open(host, port, group: group)
                waits.append(seconds * 1000)
                try? await c.close()
            } catch {
                failures += 1; if firstError == nil { firstError = "probe: \(error)" }
            }
        }
        waits.sort()
        let rssAfter = pid.flatMap(rssKiB)
        if let firstError { FileHandle.standardError.write(Data("postern-load: \(firstError)\n".utf8)) }
        let open = channels.count
        for c in channels { c.close(promise: nil) }
        func mib(_ k: Int?) -> String { k.map { String(format: "%.1f", Double($0) / 1024) } ?? "n/a" }
        let perConnection = (rssIdle != nil && rssBefore != nil && open > 0) ? String(format: "%.1f", Double(rssIdle! - rssBefore!) / Double(open)) : "n/a"  // `!`: checked first
        print(String(format: "RESULT label=idle connections=%d open=%d failures=%d open_seconds=%.2f rss_before_mib=%@ rss_idle_mib=%@ rss_after_probes_mib=%@ kib_per_connection=%@ greet_p50_ms=%.2f greet_max_ms=%.2f probes=%d",
                     connections, open, failures, openSeconds, mib(rssBefore), mib(rssIdle), mib(rssAfter), perConnection,
                     waits.isEmpty ? Double.nan : waits[waits.count / 2], waits.last ?? .nan, waits.count))
        try await Task.sleep(for: .milliseconds(500))
    }
}
