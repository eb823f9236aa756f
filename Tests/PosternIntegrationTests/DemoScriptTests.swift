import Foundation
import PosternTestSupport
import XCTest

/// `scripts/demo.sh` itself (what `make demo` runs), on ports moved by one offset so that all of them are free:
/// its banner names every endpoint and every demo login, each endpoint answers, mail goes through to the sink,
/// the gateway runs on the scratch copy of the policies (a device added there takes effect; the tracked
/// policies/ stay as they were), and Ctrl-C stops everything and exits 0.
final class DemoScriptTests: XCTestCase {
    static let ports = [2525, 2587, 2465, 2526, 3389, 3636, 9025, 8443]

    /// An offset that moves every demo port onto a free one (the demo binds fixed ports by design).
    static func freeOffset() throws -> Int {
        for _ in 0..<50 {
            let offset = Int.random(in: 20_000...40_000)
            if ports.allSatisfy({ portIsFree($0 + offset) }) { return offset }
        }
        throw HarnessError("no offset with all demo ports free")
    }

    static func portIsFree(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        // As the servers bind: a port whose only sockets are closed connections in TIME_WAIT is free.
        var on: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        } == 0
    }

    static func trackedPolicyDigest() throws -> String {
        try Shell.run(["/bin/bash", "-c", "cd '\(Repo.policies.path)' && find . -type f | sort | xargs sha256sum"]).output
    }

    func testDemoScriptServesEveryEndpointOnAScratchPolicyAndStopsCleanlyOnCtrlC() async throws {
        try Repo.ensureCertificates()
        let offset = try Self.freeOffset()
        func port(_ p: Int) -> Int { p + offset }
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("postern-demo-script-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        let log = scratch.appendingPathComponent("demo.log").path
        let tracked = try Self.trackedPolicyDigest()

        let demo = try spawnProcess([Repo.root.appendingPathComponent("scripts/demo.sh").path], output: log,
                                    environment: ["DEMO_VAR": scratch.appendingPathComponent("var").path,
                                                  "DEMO_PORT_OFFSET": "\(offset)", "POSTERN_BIN": Repo.posternBinary.path],
                                    ownProcessGroup: true)
        var stopped = false
        defer {
            if !stopped {
                kill(-demo, SIGTERM)
                _ = waitForExit(demo)
            }
        }
        func output() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        var up = false
        for _ in 0..<300 where !up {
            up = (try? Shell.run(["swaks", "--server", "127.0.0.1:\(port(2587))", "--quit-after", "CONNECT"], timeout: 5))?.output
                .contains("220 localhost ESMTP Postern") == true
            if !up { try await Task.sleep(for: .milliseconds(200)) }
        }
        XCTAssertTrue(up, output())
        guard up else { return }

        // The banner: every endpoint with its port, and every demo login.
        let banner = output()
        for text in ["127.0.0.1:\(port(2525))", "127.0.0.1:\(port(2587))", "127.0.0.1:\(port(2465))", "https://127.0.0.1:\(port(8443))/",
                     "http://127.0.0.1:\(port(9025))/metrics", "127.0.0.1:\(port(2526))", "ldaps://127.0.0.1:\(port(3636))",
                     "alice / alice-demo-pass", "bob / bob-demo-pass", "webapp / webapp-demo-pass"] {
            XCTAssertTrue(banner.contains(text), "the banner lacks \(text):\n\(banner)")
        }
        // Each endpoint answers.
        let metrics = try Shell.run(["curl", "-sS", "--max-time", "10", "http://127.0.0.1:\(port(9025))/metrics"])
        XCTAssertTrue(metrics.output.contains("postern_"), metrics.output)
        let page = try Shell.run(["curl", "-sS", "-k", "--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}",
                                  "https://127.0.0.1:\(port(8443))/"])
        XCTAssertTrue(["200", "303"].contains(page.output), "registration page: \(page.output)")
        let implicit = try Shell.run(["swaks", "--server", "127.0.0.1:\(port(2465))", "--tlsc", "--quit-after", "EHLO"], timeout: 30)
        XCTAssertTrue(implicit.output.contains("250"), implicit.output)

        // Mail goes through to the sink.
        let sent = try Shell.run(["swaks", "--server", "127.0.0.1:\(port(2525))", "--from", "scanner@example.edu", "--to", "bob@example.edu"],
                                 timeout: 30)
        XCTAssertTrue(sent.output.contains("250 2.0.0 Ok: queued as"), sent.output)
        let outbox = scratch.appendingPathComponent("var/outbox").path
        var delivered = false
        for _ in 0..<100 where !delivered {
            delivered = ((try? FileManager.default.contentsOfDirectory(atPath: outbox)) ?? []).contains { $0.hasSuffix(".eml") }
            if !delivered { try await Task.sleep(for: .milliseconds(100)) }
        }
        XCTAssertTrue(delivered, output())

        // The gateway runs on the scratch copy: a device added there takes effect; policies/ is untouched.
        let copy = scratch.appendingPathComponent("var/demo/policies").path
        let added = try Shell.run([Repo.posternBinary.path, "devices", "add", "--policies", copy, "--id", "demo-scanner-3", "--department", "it",
                                   "--owner", "it-helpdesk@example.edu", "--address", "127.0.0.3", "--sender", "scanner3@example.edu"])
        XCTAssertEqual(added.status, 0, added.output)
        var accepted = false
        for _ in 0..<50 where !accepted {
            accepted = (try Shell.run(["swaks", "--server", "127.0.0.1:\(port(2525))", "--local-interface", "127.0.0.3",
                                       "--from", "scanner3@example.edu", "--to", "bob@example.edu"], timeout: 30)).output
                .contains("250 2.0.0 Ok: queued as")
            if !accepted { try await Task.sleep(for: .milliseconds(200)) }
        }
        XCTAssertTrue(accepted, "the device added to the scratch copy did not take effect\n\(output())")
        XCTAssertEqual(try Self.trackedPolicyDigest(), tracked, "the demo changed the tracked policies/")

        // Ctrl-C: SIGINT to the demo's process group, as a terminal sends it.
        kill(-demo, SIGINT)
        let status = waitForExit(demo)
        stopped = true
        XCTAssertEqual(status, 0, output())
        XCTAssertFalse(output().contains("Error"), output())
        for p in Self.ports {
            XCTAssertTrue(Self.portIsFree(port(p)), "port \(port(p)) still in use after Ctrl-C")
        }
    }
}
