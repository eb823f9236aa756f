import Foundation
import Logging
import NIOCore
import PosternGateway
import PosternTestSupport
import XCTest

/// `postern serve` in this process (`GatewayServices`, what the command runs) with every part configured: the SMTP
/// listeners, the directory, the spool and relay, the admin endpoint and the registration page. It runs one
/// event-loop group, and once it has stopped no thread it started is left.
final class ServeThreadsTests: XCTestCase {
    /// The names of this process's threads (`/proc/self/task/*/comm`): NIO names its event-loop threads
    /// `NIO-ELT-<group>-#<n>` and its thread pools' threads `TP-#<n>`.
    static func threads() -> [String] {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
        return tasks.compactMap { try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8) }
            .map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }.sorted()
    }

    /// The threads that something in the process started, which is all but the Swift concurrency runtime's
    /// workers: libdispatch's root-queue threads (`com.apple.root.default-qos`, shown as `oot.default-qos`), which
    /// the runtime starts as tasks need them and keeps for the process (every test's `async` code uses them).
    static func startedThreads() -> [String] {
        threads().filter { !$0.contains("-qos") }
    }

    /// `startedThreads` once there are no more than `before` (or 10 s have passed): a thread ends a moment after
    /// its pool or loop is shut down.
    static func threadsSettling(toAtMost before: Int) async throws -> [String] {
        var after = startedThreads()
        let deadline = Date().addingTimeInterval(10)
        while after.count > before, Date() < deadline {
            try await Task.sleep(for: .milliseconds(100))
            after = startedThreads()
        }
        return after
    }

    /// NIO's threads: event loops (`NIO-ELT-<group>-#<n>`, the singleton group's `NIO-SGLTN-<group>-#<n>`) and
    /// thread pools (`TP-#<n>`).
    static func nioThreads(_ threads: [String]) -> [String] {
        threads.filter { $0.hasPrefix("NIO-") || $0.hasPrefix("TP-#") }
    }

    /// `ELT-3` for `NIO-ELT-3-#1`: which event-loop group a loop's thread belongs to.
    static func groupID(_ thread: String) -> String? {
        let parts = thread.split(separator: "-")
        guard parts.count == 4, parts[0] == "NIO" else { return nil }
        return "\(parts[1])-\(parts[2])"
    }

    func testServeRunsOneEventLoopGroupAndLeavesNoThreadBehind() async throws {
        try Repo.ensureCertificates()
        let slapd = try TestSlapd()
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-serve-threads-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("policies"), withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        for name in ["policy.yaml", "departments.yaml", "devices.d"] {
            try FileManager.default.copyItem(at: Repo.policies.appendingPathComponent(name), to: directory.appendingPathComponent("policies/\(name)"))
        }
        try slapd.bindPassword.write(to: directory.appendingPathComponent("ldap-password"), atomically: true, encoding: .utf8)
        let certs = Repo.certs.path
        let yaml = """
            hostname: gw.test
            policies: policies
            tls: { certificate: \(certs)/server.pem, key: \(certs)/server.key }
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:0" }
              - { name: submission, kind: submission, listen: "127.0.0.1:0" }
            directory:
              uris: [\(slapd.ldapsURI)]
              ca-file: \(slapd.caFile)
              bind-dn: \(slapd.bindDN)
              bind-password-file: ldap-password
              search-base: ou=people,dc=example,dc=edu
              group-attribute: memberOf
              group-base: ou=groups,dc=example,dc=edu
            delivery:
              spool: spool
              relay:
                upstreams:
                  - { name: nowhere, host: 127.0.0.1, port: \(freeLoopbackPort()), ca-file: \(certs)/ca.pem,
                      certificate: \(certs)/client.pem, key: \(certs)/client.key }
            audit: { output: audit.jsonl }
            admin: { listen: "127.0.0.1:0" }
            registration:
              listen: 127.0.0.1:0
              admin-groups: [postern-admins]
              campus-ranges: [127.0.0.0/8]
              state: state
            """
        let config = directory.appendingPathComponent("postern.yaml")
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        var logger = Logger(label: "serve-threads")
        logger.logLevel = .warning

        let before = Self.startedThreads()
        let services = try await GatewayServices.start(configurationFile: config.path, logger: logger, gracefulShutdownSignals: [])
        let running = Task { try await services.run() }
        // Use every part once: a message into the spool (the relay then tries its upstream), a scrape, the page.
        let webPort = try await XCTUnwrap(services.registration).port()
        let client = try ClientSocket(port: try XCTUnwrap(services.gateway.boundPort(listener: "device")))
        _ = try client.reply()
        for command in ["EHLO c.test", "MAIL FROM:<scanner@example.edu>", "RCPT TO:<bob@example.edu>", "DATA"] {
            try client.send(command + "\r\n")
            _ = try client.reply()
        }
        try client.send("Subject: threads\r\n\r\nbody\r\n.\r\n")
        let queued = try client.reply()
        client.close()
        XCTAssertTrue(queued.hasPrefix("250"), queued)
        XCTAssertEqual(try HTTP.get(port: try XCTUnwrap(services.gateway.adminPort), path: "/health").status, 200)
        let page = try Shell.run(["curl", "-sS", "--max-time", "10", "--cacert", "\(certs)/ca.pem", "-o", "/dev/null", "-w", "%{http_code}",
                                  "https://localhost:\(webPort)/login"]).output
        XCTAssertEqual(page, "200")

        let during = Self.threads()
        let newLoops = during.filter { Self.groupID($0) != nil && !before.contains($0) }
        XCTAssertEqual(Set(newLoops.compactMap(Self.groupID)).count, 1, "event-loop groups started: \(newLoops)")
        XCTAssertEqual(newLoops.count, System.coreCount + 1, "one accept loop and a loop per core: \(newLoops)")
        let newPoolThreads = during.filter { $0.hasPrefix("TP-#") }.count - before.filter { $0.hasPrefix("TP-#") }.count
        XCTAssertGreaterThanOrEqual(newPoolThreads, 8 + 16, "the gateway's and the spool's thread pools")

        await services.stop()
        try await running.value
        let after = try await Self.threadsSettling(toAtMost: before.count)
        XCTAssertLessThanOrEqual(after.count, before.count, """
            threads left: \(after.count) now, \(before.count) before; new: \(after.filter { !before.contains($0) })
            """)
        XCTAssertEqual(Self.nioThreads(after), Self.nioThreads(before))
    }

    func testASecondGatewayOnAnEndpointInUseDoesNotStart() async throws {
        let first = try await GatewayHarness.start()
        defer { Task { await first.stop() } }
        let port = try XCTUnwrap(first.gateway.boundPort(listener: "device"))
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-second-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let config = directory.appendingPathComponent("postern.yaml")
        try """
            policies: \(Repo.policies.path)
            listeners: [{ name: device, kind: device, listen: "127.0.0.1:\(port)" }]
            delivery: { outbox: \(directory.path)/outbox }
            audit: { output: \(directory.path)/audit.jsonl }
            """.write(to: config, atomically: true, encoding: .utf8)
        let before = Self.startedThreads()
        do {
            _ = try await GatewayServices.start(configurationFile: config.path, logger: Logger(label: "second"), gracefulShutdownSignals: [])
            XCTFail("a second gateway started on 127.0.0.1:\(port), which the first one listens on")
        } catch {
            XCTAssertTrue("\(error)".contains("Address already in use"), "\(error)")
        }
        let after = try await Self.threadsSettling(toAtMost: before.count)
        XCTAssertLessThanOrEqual(after.count, before.count, "a start that failed left threads: \(after.filter { !before.contains($0) })")
        XCTAssertEqual(Self.nioThreads(after), Self.nioThreads(before))
    }
}
