import Foundation
import NIOCore
import PosternSMTP
import PosternGateway
import PosternTestSupport
import XCTest

/// The admin endpoint (`/metrics`, `/health`) on the in-process gateway, and the real `postern serve`
/// binary's lifecycle: SIGHUP swaps the certificate, SIGTERM lets a message in DATA finish.
final class OperationsTests: XCTestCase {
    // MARK: /metrics and /health

    func testMetricsCountConnectionsTLSDecisionsAndAcceptedMessagesAfterTraffic() async throws {
        let harness = try await GatewayHarness.start(extra: #"admin: { listen: "127.0.0.1:0" }"#)
        do {
            let device = "127.0.0.1:\(harness.port("device"))"
            let accepted = try Shell.run(["swaks", "--server", device, "--from", "scanner@example.edu", "--to", "bob@example.edu"])
            XCTAssertTrue(accepted.output.contains("250 2.0.0 Ok: queued as "), accepted.output)
            let refused = try Shell.run(["swaks", "--server", device, "--from", "scanner@example.edu", "--to", "someone@gmail.com"])
            XCTAssertTrue(refused.output.contains("550 5.7.1"), refused.output)
            let tls = try Shell.run(["swaks", "--server", "127.0.0.1:\(harness.port("submissions"))", "--tlsc", "--quit-after", "EHLO"])
            XCTAssertTrue(tls.output.contains("TLS started"), tls.output)
            // Plaintext SMTP to the implicit-TLS port: the handshake fails.
            let failed = try Shell.python("""
                import socket, sys
                s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
                s.sendall(b"EHLO plaintext.test\\r\\n")
                try:
                    print("read", s.recv(100))
                except Exception as e:
                    print("closed", e)
                """, ["\(harness.port("submissions"))"])
            XCTAssertEqual(failed.status, 0, failed.output)
            harness.gateway.metrics.deliveryLatency(seconds: 0.3)

            let scrape = try HTTP.get(port: harness.gateway.adminPort!, path: "/metrics")
            XCTAssertEqual(scrape.status, 200, scrape.body)
            XCTAssertTrue(scrape.contentType.hasPrefix("text/plain; version=0.0.4"), scrape.contentType)
            let metrics = try PrometheusText(scrape.body)
            XCTAssertEqual(metrics["postern_connections_total", ["listener": "device"]], 2, scrape.body)
            XCTAssertEqual(metrics["postern_connections_total", ["listener": "submissions"]], 2, scrape.body)
            XCTAssertEqual(metrics["postern_tls_handshakes_total", ["listener": "submissions", "result": "success"]], 1, scrape.body)
            XCTAssertEqual(metrics["postern_tls_handshakes_total", ["listener": "submissions", "result": "failure"]], 1, scrape.body)
            XCTAssertEqual(metrics["postern_policy_decisions_total", ["code": "550", "rule": "internal-domains"]], 1, scrape.body)
            // MAIL, RCPT and header From of the accepted message, MAIL of the refused one.
            XCTAssertEqual(metrics.sum("postern_policy_decisions_total", ["code": "250"]), 4, scrape.body)
            XCTAssertEqual(metrics["postern_policy_decisions_total", ["code": "250", "rule": "header-from"]], 1, scrape.body)
            XCTAssertEqual(metrics["postern_messages_accepted_total", ["listener": "device"]], 1, scrape.body)
            XCTAssertEqual(metrics["postern_delivery_latency_seconds_bucket", ["le": "0.25"]], 0, scrape.body)
            XCTAssertEqual(metrics["postern_delivery_latency_seconds_bucket", ["le": "0.5"]], 1, scrape.body)
            XCTAssertEqual(metrics["postern_delivery_latency_seconds_bucket", ["le": "+Inf"]], 1, scrape.body)
            XCTAssertEqual(metrics["postern_delivery_latency_seconds_count", [:]], 1, scrape.body)
            // Refreshed at scrape time from the policy in force: demo-scanner (department it) ends 2027-08-31.
            let policy = harness.policies.policy
            let scanner = try XCTUnwrap(policy.device(id: "demo-scanner"))
            let days = policy.today(Date()).days(until: policy.effectiveSunset(for: scanner).date)
            XCTAssertEqual(metrics["postern_sunset_days_remaining", ["department": "it"]], Double(days), scrape.body)
            XCTAssertNotNil(metrics["postern_queue_depth", [:]], scrape.body)
        } catch {
            await harness.stop()
            throw error
        }
        await harness.stop()
    }

    func testHealthIsOkUntilTheSpoolDirectoryCannotBeWritten() async throws {
        let harness = try await GatewayHarness.start(extra: #"admin: { listen: "127.0.0.1:0" }"#)
        do {
            let port = try XCTUnwrap(harness.gateway.adminPort)
            let healthy = try HTTP.get(port: port, path: "/health")
            XCTAssertEqual(healthy.status, 200, healthy.body)
            XCTAssertEqual(healthy.body, "ok\n")

            // Root writes through any mode bits: make the path unusable instead (a regular file where the directory was).
            try FileManager.default.removeItem(at: harness.outbox)
            try Data("not a directory".utf8).write(to: harness.outbox)
            let broken = try HTTP.get(port: port, path: "/health")
            XCTAssertEqual(broken.status, 503, broken.body)
            XCTAssertTrue(broken.body.contains("spool: \(harness.outbox.path) is not writable"), broken.body)

            try FileManager.default.removeItem(at: harness.outbox)
            try FileManager.default.createDirectory(at: harness.outbox, withIntermediateDirectories: false)
            XCTAssertEqual(try HTTP.get(port: port, path: "/health").status, 200)
            XCTAssertEqual(try HTTP.get(port: port, path: "/nothing").status, 404)
        } catch {
            await harness.stop()
            throw error
        }
        await harness.stop()
    }

    func testHealthIs503WhileShuttingDown() async throws {
        let harness = try await GatewayHarness.start(extra: #"admin: { listen: "127.0.0.1:0" }"#)
        let adminPort = try XCTUnwrap(harness.gateway.adminPort)
        // A session in DATA holds the drain open (up to the harness's 5 s) while /health is asked.
        let client = try ClientSocket(port: harness.port("device"))
        defer { client.close() }
        _ = try client.reply()
        for command in ["EHLO c.test", "MAIL FROM:<scanner@example.edu>", "RCPT TO:<bob@example.edu>", "DATA"] {
            try client.send(command + "\r\n")
            _ = try client.reply()
        }
        let stopping = Task { await harness.gateway.shutdown() }
        var seen: HTTP.Response?
        for _ in 0..<100 {
            seen = try? HTTP.get(port: adminPort, path: "/health")
            if seen?.status == 503 { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        XCTAssertEqual(seen?.status, 503, seen?.body ?? "no answer")
        XCTAssertTrue(seen?.body.contains("shutting down") ?? false, seen?.body ?? "")
        try client.send("Subject: x\r\n\r\nbody\r\n.\r\n")
        XCTAssertTrue(try client.reply().hasPrefix("250"))
        await stopping.value
        try? FileManager.default.removeItem(at: harness.directory)
    }

    // MARK: The real binary

    func testSIGHUPWithANewCertificateChangesWhatNewClientsSee() throws {
        try Repo.ensureCertificates()
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let certificate = directory.appendingPathComponent("tls/cert.pem")
        let key = directory.appendingPathComponent("tls/key.pem")
        try FileManager.default.createDirectory(at: certificate.deletingLastPathComponent(), withIntermediateDirectories: true)
        try FileManager.default.copyItem(at: Repo.certs.appendingPathComponent("server.pem"), to: certificate)
        try FileManager.default.copyItem(at: Repo.certs.appendingPathComponent("server.key"), to: key)
        // The second certificate: self-signed, another name, another key.
        let second = try Shell.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                                    "-subj", "/CN=reloaded.postern.test", "-addext", "subjectAltName=DNS:localhost",
                                    "-keyout", directory.appendingPathComponent("key2.pem").path,
                                    "-out", directory.appendingPathComponent("cert2.pem").path])
        XCTAssertEqual(second.status, 0, second.output)

        let port = freeLoopbackPort()
        let server = try PosternProcess.serve(in: directory, listeners: "  - { name: submissions, kind: submissions, listen: \"127.0.0.1:\(port)\" }")
        defer { server.kill() }
        try server.waitUntilAccepting(port: port)

        let first = try peerCertificate(port: port, expected: certificate)
        XCTAssertEqual(first.peer, first.file, "before reload the first certificate is served")
        XCTAssertTrue(first.subject.contains("localhost"), first.subject)

        try Data(contentsOf: directory.appendingPathComponent("key2.pem")).write(to: key)
        try Data(contentsOf: directory.appendingPathComponent("cert2.pem")).write(to: certificate)
        server.signal(SIGHUP)
        try server.waitForLog("TLS certificate reloaded")
        let after = try peerCertificate(port: port, expected: certificate)
        XCTAssertEqual(after.peer, after.file, "after SIGHUP a new client sees the new certificate")
        XCTAssertNotEqual(after.peer, first.peer)
        XCTAssertTrue(after.subject.contains("reloaded.postern.test"), after.subject)
        XCTAssertTrue(server.isRunning, server.log())
    }

    func testARefusedPolicyReloadShowsInTheMetricsUntilAGoodOneIsApplied() throws {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.copyItem(at: Repo.policies, to: policies)
        let policyFile = policies.appendingPathComponent("policy.yaml")
        let good = try String(contentsOf: policyFile, encoding: .utf8)
        let port = freeLoopbackPort(), admin = freeLoopbackPort()
        let server = try PosternProcess.serve(in: directory, listeners: "  - { name: device, kind: device, listen: \"127.0.0.1:\(port)\" }",
                                              extra: "admin: { listen: \"127.0.0.1:\(admin)\" }", policies: policies)
        defer { server.kill() }
        try server.waitUntilAccepting(port: port)
        // The admin endpoint (Hummingbird) binds when the service group runs, after the SMTP listeners.
        try server.waitUntilAccepting(port: admin)
        func metrics() throws -> PrometheusText {
            let scrape = try HTTP.get(port: admin, path: "/metrics")
            XCTAssertEqual(scrape.status, 200, scrape.body)
            return try PrometheusText(scrape.body)
        }
        XCTAssertEqual(try metrics()["postern_policy_last_reload_successful", [:]], 1)

        // An edit with an unknown key: the watch reloads, the reload is refused, the old policy stays.
        try (good + "\nsunset-remindr-days: [30]\n").write(to: policyFile, atomically: true, encoding: .utf8)
        try server.waitForLog("policy reload refused")
        var m = try metrics()
        XCTAssertEqual(m["postern_policy_last_reload_successful", [:]], 0)
        XCTAssertEqual(m["postern_policy_reloads_total", ["result": "refused"]], 1)
        XCTAssertNil(m["postern_policy_reloads_total", ["result": "applied"]])
        let refusedAt = try XCTUnwrap(m["postern_policy_last_reload_timestamp_seconds", [:]])
        XCTAssertEqual(refusedAt, Date().timeIntervalSince1970, accuracy: 60)

        // Corrected, and a SIGHUP on top: applied, and the gauge says so again.
        try good.write(to: policyFile, atomically: true, encoding: .utf8)
        try server.waitForLog("policy reloaded")
        server.signal(SIGHUP)
        try server.waitForLog("reason=SIGHUP")
        m = try metrics()
        XCTAssertEqual(m["postern_policy_last_reload_successful", [:]], 1)
        XCTAssertEqual(m["postern_policy_reloads_total", ["result": "refused"]], 1)
        XCTAssertEqual(m["postern_policy_reloads_total", ["result": "applied"]], 2)
        XCTAssertTrue(server.isRunning, server.log())
    }

    func testSIGTERMDuringDataLosesNothing() throws {
        try Repo.ensureCertificates()
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let port = freeLoopbackPort()
        let server = try PosternProcess.serve(in: directory, listeners: "  - { name: device, kind: device, listen: \"127.0.0.1:\(port)\" }")
        defer { server.kill() }
        try server.waitUntilAccepting(port: port)

        let inData = directory.appendingPathComponent("in-data")
        let go = directory.appendingPathComponent("go")
        let clientOutput = directory.appendingPathComponent("client.log")
        let script = """
            import os, socket, sys, time
            port, in_data, go = int(sys.argv[1]), sys.argv[2], sys.argv[3]
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            f = s.makefile("rb")
            def reply():
                while True:
                    line = f.readline().decode()
                    if not line:
                        return "EOF"
                    if len(line) < 4 or line[3] != "-":
                        return line.strip()
            print("greeting", reply(), flush=True)
            for command in ["EHLO client.test", "MAIL FROM:<scanner@example.edu>", "RCPT TO:<bob@example.edu>", "DATA"]:
                s.sendall((command + "\\r\\n").encode())
                print(command.split()[0], reply(), flush=True)
            s.sendall(b"Subject: drain test\\r\\n\\r\\nfirst half of the body\\r\\n")
            open(in_data, "w").close()
            deadline = time.time() + 30
            while not os.path.exists(go) and time.time() < deadline:
                time.sleep(0.02)
            s.sendall(b"second half of the body\\r\\n.\\r\\n")
            print("END", reply(), flush=True)
            print("AFTER", reply(), flush=True)
            """
        let client = try Spawned(["/usr/bin/python3", "-c", script, "\(port)", inData.path, go.path], output: clientOutput.path)
        defer { client.kill() }
        try waitFor("the client to be in DATA", timeout: 10) { FileManager.default.fileExists(atPath: inData.path) }

        server.signal(SIGTERM)
        try server.waitForLog("shutting down")
        // Draining: no new connections, but the session in DATA goes on.
        try waitFor("the listener to stop accepting", timeout: 5) { !canConnect(port: port) }
        XCTAssertTrue(server.isRunning, "the message in DATA holds the process open")
        _ = FileManager.default.createFile(atPath: go.path, contents: nil)

        XCTAssertEqual(try client.waitForExit(timeout: 15), 0)
        let conversation = (try? String(contentsOf: clientOutput, encoding: .utf8)) ?? ""
        XCTAssertTrue(conversation.contains("DATA 354"), conversation)
        XCTAssertTrue(conversation.contains("END 250 2.0.0 Ok: queued as "), conversation)
        XCTAssertTrue(conversation.contains("AFTER 421"), conversation)
        XCTAssertEqual(try server.waitForExit(timeout: 15), 0, server.log())

        let outbox = directory.appendingPathComponent("outbox")
        // Besides the test message the outbox may hold sunset reminders the gateway sent on start.
        let files = try FileManager.default.contentsOfDirectory(at: outbox, includingPropertiesForKeys: nil).filter {
            $0.pathExtension == "eml" && ((try? String(contentsOf: $0, encoding: .utf8)) ?? "").contains("Subject: drain test")
        }
        XCTAssertEqual(files.count, 1)
        let stored = try String(contentsOf: try XCTUnwrap(files.first), encoding: .utf8)
        XCTAssertTrue(stored.hasSuffix("Subject: drain test\r\n\r\nfirst half of the body\r\nsecond half of the body\r\n"), stored)
    }

    // MARK: Helpers

    private func temporaryDirectory() throws -> URL {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-ops-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        return directory
    }

    /// The SHA-256 of the certificate a new TLS client is shown, of the first certificate in `expected`, and the peer's subject.
    private func peerCertificate(port: Int, expected: URL) throws -> (peer: String, file: String, subject: String) {
        let result = try Shell.python("""
            import hashlib, socket, ssl, subprocess, sys
            port, pem = int(sys.argv[1]), sys.argv[2]
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5), server_hostname="localhost") as s:
                der = s.getpeercert(binary_form=True)
            print("peer", hashlib.sha256(der).hexdigest())
            print("file", hashlib.sha256(ssl.PEM_cert_to_DER_cert(open(pem).read())).hexdigest())
            subject = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der, capture_output=True).stdout
            print("subject", subject.decode().strip())
            """, ["\(port)", expected.path])
        XCTAssertEqual(result.status, 0, result.output)
        func field(_ name: String) -> String {
            result.output.split(separator: "\n").first { $0.hasPrefix(name + " ") }.map { String($0.dropFirst(name.count + 1)) } ?? ""
        }
        return (field("peer"), field("file"), field("subject"))
    }
}

/// Waits for a condition, polling; throws with `what` when it does not come true in time.
func waitFor(_ what: String, timeout: TimeInterval, _ condition: () -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while !condition() {
        guard Date() < deadline else { throw HarnessError("timed out waiting for \(what)") }
        usleep(20_000)
    }
}

func canConnect(port: Int) -> Bool {
    guard let socket = try? ClientSocket(port: port) else { return false }
    socket.close()
    return true
}

/// A blocking TCP client for line-oriented tests, from 127.0.0.1 or another loopback `source` address.
final class ClientSocket: @unchecked Sendable {
    private let fd: Int32
    private var buffer = ByteBuffer()
    private var parser = SMTPReplyParser()

    init(port: Int, source: String? = nil, timeoutSeconds: Int = 10) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket: \(String(cString: strerror(errno)))") }
        if let source {
            var local = sockaddr_in()
            local.sin_family = sa_family_t(AF_INET)
            local.sin_addr.s_addr = inet_addr(source)
            let bound = withUnsafePointer(to: &local) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
            guard bound == 0 else {
                let error = errno
                Glibc.close(fd)
                throw HarnessError("bind to \(source): \(String(cString: strerror(error)))")
            }
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let error = errno
            Glibc.close(fd)
            throw HarnessError("connect to \(port): \(String(cString: strerror(error)))")
        }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    func send(_ text: String) throws { try send(Array(text.utf8)) }

    func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let n = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw HarnessError("send failed") }
            offset += n
        }
    }

    /// The next SMTP reply, read with the replies parser the relay uses.
    func smtpReply() throws -> SMTPReply {
        while true {
            if let reply = try parser.next(&buffer) { return reply }
            var chunk = [UInt8](repeating: 0, count: 4096)
            let count = recv(fd, &chunk, chunk.count, 0)
            guard count > 0 else { throw HarnessError("connection closed while reading a reply") }
            buffer.writeBytes(chunk[..<count])
        }
    }

    /// The last line of the next (possibly multi-line) SMTP reply, as it was written.
    func reply() throws -> String {
        let reply = try smtpReply()
        return "\(reply.code) " + (reply.enhancedStatus.map { "\($0) " } ?? "") + (reply.lines.last ?? "")
    }

    func close() { Glibc.close(fd) }
}

/// HTTP requests with curl.
enum HTTP {
    struct Response {
        var status: Int
        var contentType: String
        var body: String
    }

    static func get(port: Int, path: String) throws -> Response {
        let bodyFile = FileManager.default.temporaryDirectory.appendingPathComponent("postern-http-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: bodyFile) }
        let result = try Shell.run(["curl", "-sS", "--max-time", "10", "-o", bodyFile.path, "-w", "%{http_code} %{content_type}",
                                    "http://127.0.0.1:\(port)\(path)"])
        guard result.status == 0 else { throw HarnessError("curl failed: \(result.output)") }
        let parts = result.output.split(separator: " ", maxSplits: 1)
        return Response(status: Int(parts.first ?? "") ?? 0, contentType: parts.count > 1 ? String(parts[1]) : "",
                        body: (try? String(contentsOf: bodyFile, encoding: .utf8)) ?? "")
    }
}

/// Prometheus text exposition, parsed into samples.
struct PrometheusText {
    struct Sample {
        var name: String
        var labels: [String: String]
        var value: Double
    }

    var samples: [Sample] = []

    init(_ text: String) throws {
        for line in text.split(separator: "\n") where !line.hasPrefix("#") && !line.isEmpty {
            guard let space = line.lastIndex(of: " "), let value = Double(line[line.index(after: space)...]) else {
                throw HarnessError("not a sample line: \(line)")
            }
            let series = line[..<space]
            var labels: [String: String] = [:]
            let name: Substring
            if let brace = series.firstIndex(of: "{") {
                name = series[..<brace]
                let inner = series[series.index(after: brace)..<series.index(before: series.endIndex)]
                for pair in inner.split(separator: ",") {
                    guard let equals = pair.firstIndex(of: "=") else { throw HarnessError("bad label in \(line)") }
                    labels[String(pair[..<equals])] = String(pair[pair.index(equals, offsetBy: 2)..<pair.index(before: pair.endIndex)])
                }
            } else {
                name = series
            }
            samples.append(Sample(name: String(name), labels: labels, value: value))
        }
    }

    /// The sample with exactly these labels.
    subscript(name: String, labels: [String: String]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }

    /// The sum over samples whose labels include these.
    func sum(_ name: String, _ labels: [String: String]) -> Double {
        samples.filter { sample in sample.name == name && labels.allSatisfy { sample.labels[$0.key] == $0.value } }.map(\.value).reduce(0, +)
    }
}

/// A child process started with posix_spawn and a clean signal mask (Foundation's Process passes on
/// the test thread's blocked signals, and the child would never see SIGTERM or SIGHUP).
final class Spawned {
    let pid: pid_t
    let outputPath: String
    private var status: Int32?

    init(_ arguments: [String], output: String, environment: [String: String] = [:]) throws {
        outputPath = output
        let pid = try spawnProcess(arguments, output: output, environment: environment)
        self.pid = pid
    }

    var isRunning: Bool { poll() == nil }

    /// The exit code once the child has exited (-1 if a signal ended it), without blocking.
    private func poll() -> Int32? {
        if let status { return status }
        var raw: Int32 = 0
        guard waitpid(pid, &raw, WNOHANG) == pid else { return nil }
        // WIFEXITED and WEXITSTATUS are macros Swift cannot import.
        status = raw & 0x7f == 0 ? (raw >> 8) & 0xff : -1
        return status
    }

    func waitForExit(timeout: TimeInterval) throws -> Int32 {
        try waitFor("pid \(pid) to exit", timeout: timeout) { poll() != nil }
        return poll()!
    }

    func signal(_ signal: Int32) { Glibc.kill(pid, signal) }

    /// Ends the child if it still runs (test cleanup).
    func kill() {
        guard isRunning else { return }
        Glibc.kill(pid, SIGKILL)
        _ = try? waitForExit(timeout: 5)
    }

    func log() -> String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }
}

/// `postern serve` in a temp directory with the repository's policies and dev certificates.
enum PosternProcess {
    /// `extra` is more YAML for the top level (limits, admin).
    static func serve(in directory: URL, listeners: String, extra: String = "", policies: URL = Repo.policies) throws -> Spawned {
        let tls = directory.appendingPathComponent("tls/cert.pem")
        let certificate = FileManager.default.fileExists(atPath: tls.path) ? tls.path : Repo.certs.appendingPathComponent("server.pem").path
        let key = FileManager.default.fileExists(atPath: tls.path) ? directory.appendingPathComponent("tls/key.pem").path
            : Repo.certs.appendingPathComponent("server.key").path
        let yaml = """
            hostname: gw.test
            policies: \(policies.path)
            tls:
              certificate: \(certificate)
              key: \(key)
            listeners:
            \(listeners)
            delivery:
              outbox: \(directory.path)/outbox
            audit:
              output: \(directory.path)/audit.jsonl
            \(extra)
            """
        let config = directory.appendingPathComponent("postern.yaml")
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        let binary = Repo.posternBinary.path
        guard FileManager.default.isExecutableFile(atPath: binary) else { throw HarnessError("no postern binary at \(binary); swift build first") }
        return try Spawned([binary, "serve", "--config", config.path, "--log-level", "info"],
                           output: directory.appendingPathComponent("serve.log").path)
    }
}

extension Spawned {
    func waitUntilAccepting(port: Int) throws {
        do {
            try waitFor("postern to accept on \(port)", timeout: 20) {
                guard isRunning else { return true }
                return canConnect(port: port)
            }
        } catch {
            throw HarnessError("\(error); log:\n\(log())")
        }
        guard isRunning else { throw HarnessError("postern exited early:\n\(log())") }
    }

    func waitForLog(_ text: String, timeout: TimeInterval = 10) throws {
        do {
            try waitFor("'\(text)' in the log", timeout: timeout) { log().contains(text) }
        } catch {
            throw HarnessError("\(error); log:\n\(log())")
        }
    }
}
