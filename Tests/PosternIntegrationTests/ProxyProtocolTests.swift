import Foundation
import XCTest

/// PROXY protocol v1 and v2 on a device listener that trusts only 127.0.0.5 as its load balancer.
final class ProxyProtocolTests: XCTestCase {
    static let script = """
        import socket, struct, sys
        port, source, version, reported = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
        s = socket.socket(); s.bind((source, 0)); s.settimeout(5); s.connect(("127.0.0.1", port))
        if version == "v1":
            s.sendall(("PROXY TCP4 %s 127.0.0.1 40000 25\\r\\n" % reported).encode())
        elif version == "v2":
            sig = b"\\r\\n\\r\\n\\x00\\r\\nQUIT\\n"
            addrs = socket.inet_aton(reported) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", 40000, 25)
            s.sendall(sig + bytes([0x21, 0x11]) + struct.pack("!H", len(addrs)) + addrs)
        f = s.makefile("rb")
        def reply():
            while True:
                l = f.readline().decode()
                if len(l) < 4 or l[3] != "-": return l.strip()
        print("greeting", reply())
        if len(sys.argv) > 5: print("header answered", reply())
        s.sendall(b"EHLO lb-client\\r\\n"); reply()
        s.sendall(b"MAIL FROM:<scanner@example.edu>\\r\\n"); print("mail", reply())
        """

    func run(_ harness: GatewayHarness, source: String, version: String, reported: String, untrusted: Bool = false) throws -> String {
        try Shell.python(Self.script, ["\(harness.port("device"))", source, version, reported] + (untrusted ? ["untrusted"] : [])).output
    }

    func testTrustedBalancerReportsTheClientAddressPolicySees() async throws {
        let harness = try await GatewayHarness.start(listeners: """
              - name: device
                kind: device
                listen: 127.0.0.1:0
                proxy-protocol-from: [127.0.0.5]
            """)
        // v1 and v2 from the trusted balancer: the reported address decides.
        let v1Registered = try run(harness, source: "127.0.0.5", version: "v1", reported: "127.0.0.1")
        XCTAssertTrue(v1Registered.contains("mail 250 2.1.0"), v1Registered)
        let v1Unregistered = try run(harness, source: "127.0.0.5", version: "v1", reported: "127.0.0.2")
        XCTAssertTrue(v1Unregistered.contains("mail 554 5.7.1 127.0.0.2 is not a registered device"), v1Unregistered)
        let v2Registered = try run(harness, source: "127.0.0.5", version: "v2", reported: "127.0.0.1")
        XCTAssertTrue(v2Registered.contains("mail 250 2.1.0"), v2Registered)
        let v2Unregistered = try run(harness, source: "127.0.0.5", version: "v2", reported: "127.0.0.9")
        XCTAssertTrue(v2Unregistered.contains("mail 554 5.7.1 127.0.0.9 is not a registered device"), v2Unregistered)
        // The balancer itself without a header is not a device: no greeting before a valid header, then closed.
        let garbage = try run(harness, source: "127.0.0.5", version: "none", reported: "-")
        XCTAssertFalse(garbage.contains("mail 250"), garbage)
        // From an untrusted address a PROXY header is not believed: it is an unknown command, and the real address counts.
        let spoofed = try run(harness, source: "127.0.0.2", version: "v1", reported: "127.0.0.1", untrusted: true)
        XCTAssertTrue(spoofed.contains("header answered 500 5.5.2"), spoofed)
        XCTAssertTrue(spoofed.contains("mail 554 5.7.1 127.0.0.2 is not a registered device"), spoofed)
        await harness.stop()
    }
}
