import Foundation
import XCTest

/// Limits enforced by the real listener: connections per client, idle timeout, over-long lines.
final class LimitsTests: XCTestCase {
    func testConnectionsPerClientAreLimited() async throws {
        let harness = try await GatewayHarness.start(limits: "limits: { max-connections-per-client: 3 }")
        let script = """
            import socket, sys
            port = int(sys.argv[1])
            socks = []
            for i in range(4):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                socks.append(s)
                print(i, s.recv(200).decode().strip())
            socks[0].close()
            import time; time.sleep(0.3)
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            print("after", s.recv(200).decode().strip())
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"])
        await harness.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("2 220 gw.test ESMTP Postern"), result.output)
        XCTAssertTrue(result.output.contains("3 421 4.7.0 Too many connections from your address"), result.output)
        XCTAssertTrue(result.output.contains("after 220 gw.test"), "a slot is free again once a connection closes: \(result.output)")
    }

    func testIdleSessionIsClosedWith421() async throws {
        let harness = try await GatewayHarness.start(limits: "limits: { idle-timeout-seconds: 1 }")
        let script = """
            import socket, sys, time
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            s.recv(200)
            start = time.time()
            data = s.recv(200).decode().strip()
            print("got", data, round(time.time() - start, 1))
            print("eof", s.recv(200) == b"")
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"])
        await harness.stop()
        XCTAssertTrue(result.output.contains("got 421 4.4.2 Idle timeout"), result.output)
        XCTAssertTrue(result.output.contains("eof True"), result.output)
    }

    /// A 10 MB line without CRLF is refused without being buffered: the gateway's memory does not grow by it.
    func testTenMegabyteLineIsRefusedWithBoundedMemory() async throws {
        let harness = try await GatewayHarness.start()
        let before = residentBytes()
        let script = """
            import socket, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
            f = s.makefile("rb")
            f.readline()
            chunk = b"A" * 65536
            for _ in range(160):
                s.sendall(chunk)
            s.sendall(b"\\r\\nNOOP\\r\\n")
            print(f.readline().decode().strip())
            print(f.readline().decode().strip())
            """
        let result = try Shell.python(script, ["\(harness.port("device"))"])
        let growth = residentBytes() - before
        await harness.stop()
        XCTAssertTrue(result.output.contains("500 5.5.2 Line too long\n250 2.0.0 Ok"), result.output)
        XCTAssertLessThan(growth, 6 * 1024 * 1024, "resident memory grew by \(growth) bytes for a 10 MiB line")
    }

    func testCheckCommandReportsFileLineAndFix() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-check-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("bad.yaml")
        try """
            hostname: gw.test
            listners: []
            listeners:
              - name: dev
                kind: printer
                listen: 127.0.0.1:2525
              - name: sub
                kind: submission
                listen: nowhere
            """.write(to: file, atomically: true, encoding: .utf8)
        let result = try Shell.run([Repo.posternBinary.path, "check", "--config", file.path])
        XCTAssertEqual(result.status, 2, result.output)
        XCTAssertTrue(result.output.contains("bad.yaml:2: error: top level: unknown key 'listners' (fix: did you mean 'listeners'?"), result.output)
        XCTAssertTrue(result.output.contains("bad.yaml:5: error: unknown listener kind 'printer'"), result.output)
        XCTAssertTrue(result.output.contains("bad.yaml:9: error: listen address 'nowhere' is not HOST:PORT"), result.output)
    }

    private func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
        let fields = text.split(separator: " ")
        return (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE)))
    }
}
