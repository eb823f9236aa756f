import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternCore
import PosternGateway
import PosternPolicy
import PosternSink
import PosternSession
import XCTest

/// Paths in the repository, found from this file.
enum Repo {
    static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var certs: URL { root.appendingPathComponent("certs") }
    static var policies: URL { root.appendingPathComponent("policies") }

    /// Makes the dev certificates if they are not there yet.
    static func ensureCertificates() throws {
        let result = try Shell.run([certs.appendingPathComponent("make-dev-certs.sh").path])
        guard result.status == 0 else { throw HarnessError("make-dev-certs.sh failed: \(result.output)") }
    }

    static var posternBinary: URL {
        // `swift build --build-tests` builds the executable beside the test bundle.
        let besideTests = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("postern")
        if FileManager.default.isExecutableFile(atPath: besideTests.path) { return besideTests }
        return root.appendingPathComponent(".build/debug/postern")
    }
}

struct HarnessError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a program to completion with a time limit, capturing stdout and stderr together.
enum Shell {
    struct Result {
        var status: Int32
        var output: String
    }

    static func run(_ arguments: [String], input: Data? = nil, timeout: TimeInterval = 60, environment: [String: String]? = nil) throws -> Result {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: arguments[0].hasPrefix("/") ? arguments[0] : "/usr/bin/env")
        process.arguments = arguments[0].hasPrefix("/") ? Array(arguments.dropFirst()) : arguments
        if let environment { process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 } }
        let outputFile = FileManager.default.temporaryDirectory.appendingPathComponent("postern-shell-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: outputFile.path, contents: nil)
        let handle = try FileHandle(forWritingTo: outputFile)
        defer { try? FileManager.default.removeItem(at: outputFile) }
        process.standardOutput = handle
        process.standardError = handle
        let inputPipe = Pipe()
        process.standardInput = inputPipe
        try process.run()
        if let input { inputPipe.fileHandleForWriting.write(input) }
        try? inputPipe.fileHandleForWriting.close()
        let deadline = Date().addingTimeInterval(timeout)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
            throw HarnessError("\(arguments.joined(separator: " ")) timed out after \(timeout)s")
        }
        try handle.close()
        let output = (try? String(contentsOf: outputFile, encoding: .utf8)) ?? ""
        return Result(status: process.terminationStatus, output: output)
    }

    /// Runs a Python 3 script with Debian's interpreter (which has python3-aiosmtpd).
    static func python(_ script: String, _ arguments: [String] = [], timeout: TimeInterval = 60) throws -> Result {
        try run(["/usr/bin/python3", "-c", script] + arguments, timeout: timeout)
    }
}

/// A gateway started in this process on free loopback ports with a config written to a temp directory.
final class GatewayHarness: @unchecked Sendable {
    let directory: URL
    let gateway: Gateway
    let configuration: GatewayConfiguration

    var outbox: URL { directory.appendingPathComponent("outbox") }

    func port(_ listener: String) -> Int { gateway.boundPort(listener: listener)! }

    /// `listeners` and `extra` are YAML fragments; listen addresses use port 0.
    static func start(limits: String = "", listeners: String? = nil, extra: String = "", delivery: String? = nil, policies: URL? = nil,
                      auditRetention: AuditRetention? = nil, now: @escaping @Sendable () -> Date = { Date() }) async throws -> GatewayHarness {
        try Repo.ensureCertificates()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let yaml = """
            hostname: gw.test
            policies: \((policies ?? Repo.policies).path)
            tls:
              certificate: \(Repo.certs.path)/server.pem
              key: \(Repo.certs.path)/server.key
            \(limits)
            listeners:
            \(listeners ?? """
              - name: device
                kind: device
                listen: 127.0.0.1:0
              - name: submission
                kind: submission
                listen: 127.0.0.1:0
              - name: submissions
                kind: submissions
                listen: 127.0.0.1:0
            """)
            \(delivery ?? "delivery: { outbox: \(directory.path)/outbox }")
            \(extra)
            """
        let file = directory.appendingPathComponent("postern.yaml")
        try yaml.write(to: file, atomically: true, encoding: .utf8)
        let configuration = try GatewayConfiguration.load(path: file.path)
        var logger = Logger(label: "postern-test")
        logger.logLevel = .notice
        let store = try PolicyStore(directory: URL(fileURLWithPath: configuration.policyDirectory), logger: logger,
                                    userMessagesPerHour: configuration.limits.messagesPerUserPerHour)
        let metrics = GatewayMetrics()
        let audit = try AuditLog.make(output: directory.appendingPathComponent("audit.jsonl").path, retention: auditRetention,
                                      countDecision: metrics.decision)
        let gateway = try Gateway(configuration: configuration, rules: { store.rules(now: now, audit: audit) },
                                  logger: logger, audit: audit, drainTimeout: .seconds(5), now: now,
                                  metrics: metrics, refreshPolicyGauges: { $0.refreshSunsets(policy: store.policy, now: now()) })
        try await gateway.start()
        return GatewayHarness(directory: directory, gateway: gateway, configuration: configuration, policies: store)
    }

    let policies: PolicyStore

    private init(directory: URL, gateway: Gateway, configuration: GatewayConfiguration, policies: PolicyStore) {
        self.directory = directory
        self.gateway = gateway
        self.configuration = configuration
        self.policies = policies
    }

    func stop() async {
        await gateway.shutdown()
        try? FileManager.default.removeItem(at: directory)
    }

    /// The audit log's events so far, parsed.
    func auditEvents() throws -> [[String: Any]] {
        let text = try String(contentsOf: directory.appendingPathComponent("audit.jsonl"), encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
        }
    }

    func outboxFiles() -> [URL] {
        ((try? FileManager.default.contentsOfDirectory(at: outbox, includingPropertiesForKeys: nil)) ?? [])
            .filter { $0.pathExtension == "eml" }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
    }
}

/// The upstream of the relay tests: an in-process sink on a free loopback port that requires the dev
/// client certificate and writes what it receives to `outbox` (its memory keeps the last thousand).
final class SinkFixture: @unchecked Sendable {
    let group: MultiThreadedEventLoopGroup
    let sink: SinkServer
    let port: Int

    private init(group: MultiThreadedEventLoopGroup, sink: SinkServer, port: Int) {
        self.group = group
        self.sink = sink
        self.port = port
    }

    static func start(outbox: URL) async throws -> SinkFixture {
        try Repo.ensureCertificates()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let certs = Repo.certs.path
        let sink = SinkServer(configuration: SinkConfiguration(certificateFile: "\(certs)/server.pem", keyFile: "\(certs)/server.key",
                                                               clientCAFile: "\(certs)/ca.pem", outbox: outbox.path),
                              group: group, logger: Logger(label: "sink"))
        do {
            return SinkFixture(group: group, sink: sink, port: try await sink.start())
        } catch {
            try? await group.shutdownGracefully()
            throw error
        }
    }

    func stop() async {
        await sink.stop()
        try? await group.shutdownGracefully()
    }
}
