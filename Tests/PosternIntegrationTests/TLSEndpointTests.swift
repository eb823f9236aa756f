import Foundation
import XCTest

/// The TLS endpoints through the real listener, with swaks and Python's smtplib/ssl as clients.
final class TLSEndpointTests: XCTestCase {
    var harness: GatewayHarness!

    override func setUp() async throws {
        harness = try await GatewayHarness.start()
    }

    override func tearDown() async throws {
        await harness.stop()
    }

    func testPlaintextMailOnSubmissionGets530() throws {
        let result = try Shell.run(["swaks", "--server", "127.0.0.1:\(harness.port("submission"))", "--from", "alice@example.edu",
                                    "--to", "bob@example.edu", "--quit-after", "MAIL"])
        XCTAssertTrue(result.output.contains("530 5.7.0 Must issue a STARTTLS command first"), result.output)
        XCTAssertTrue(result.output.contains("250 STARTTLS") || result.output.contains("250-STARTTLS"), "STARTTLS is offered in plaintext")
        XCTAssertFalse(result.output.contains("AUTH PLAIN"), "no AUTH before TLS")
    }

    func testStartTLSThenTheSessionStartsOver() throws {
        let result = try Shell.run(["swaks", "--server", "127.0.0.1:\(harness.port("submission"))", "--tls", "--from", "alice@example.edu",
                                    "--to", "bob@example.edu", "--quit-after", "MAIL"])
        XCTAssertTrue(result.output.contains("220 2.0.0 Ready to start TLS"), result.output)
        XCTAssertTrue(result.output.contains("TLS started"), result.output)
        // After TLS the only obstacle left is authentication, not STARTTLS.
        XCTAssertTrue(result.output.contains("530 5.7.0 Authentication required"), result.output)
        let lines = result.output.split(separator: "\n").filter { $0.contains("<~ ") }
        XCTAssertFalse(lines.contains { $0.contains("STARTTLS") }, "STARTTLS is not offered again inside TLS")
    }

    func testImplicitTLSWorksWithTLS13() throws {
        let script = """
            import smtplib, ssl, sys
            ctx = ssl.create_default_context(cafile=sys.argv[2])
            s = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=10)
            code, _ = s.ehlo("client.test")
            print("ehlo", code, s.sock.version(), s.sock.cipher()[0])
            print("features", sorted(s.esmtp_features))
            print("mail", s.docmd("MAIL", "FROM:<alice@example.edu>"))
            s.quit()
            """
        let result = try Shell.python(script, ["\(harness.port("submissions"))", Repo.certs.appendingPathComponent("ca.pem").path])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("ehlo 250 TLSv1.3"), result.output)
        XCTAssertFalse(result.output.contains("'starttls'"), result.output)
        XCTAssertTrue(result.output.contains("530"), result.output)
    }

    func testTLS12UsesOnlyForwardSecretAEADSuitesAndOldVersionsFail() throws {
        let script = """
            import socket, ssl, sys
            port = int(sys.argv[1])
            def hello(ctx):
                raw = socket.create_connection(("127.0.0.1", port), timeout=5)
                try:
                    s = ctx.wrap_socket(raw, server_hostname="localhost")
                    return s.version(), s.cipher()[0]
                except (ssl.SSLError, ConnectionResetError) as e:
                    return "refused", type(e).__name__
            ctx12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx12.check_hostname = False; ctx12.verify_mode = ssl.CERT_NONE
            ctx12.maximum_version = ssl.TLSVersion.TLSv1_2
            print("tls12", *hello(ctx12))
            for name, v in (("tls10", ssl.TLSVersion.TLSv1), ("tls11", ssl.TLSVersion.TLSv1_1)):
                c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE
                c.set_ciphers("ALL:@SECLEVEL=0")
                c.minimum_version = v; c.maximum_version = v
                print(name, *hello(c))
            weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); weak.check_hostname = False; weak.verify_mode = ssl.CERT_NONE
            weak.maximum_version = ssl.TLSVersion.TLSv1_2
            weak.set_ciphers("AES128-SHA:AES256-SHA:AES128-GCM-SHA256:ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA")
            print("weak", *hello(weak))
            """
        let result = try Shell.python(script, ["\(harness.port("submissions"))"])
        XCTAssertEqual(result.status, 0, result.output)
        let out = result.output
        XCTAssertTrue(out.contains("tls12 TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256") || out.contains("tls12 TLSv1.2 ECDHE-ECDSA-AES256-GCM-SHA384")
                      || out.contains("tls12 TLSv1.2 ECDHE-ECDSA-CHACHA20-POLY1305"), out)
        XCTAssertTrue(out.contains("tls10 refused"), out)
        XCTAssertTrue(out.contains("tls11 refused"), out)
        XCTAssertTrue(out.contains("weak refused"), "non-AEAD or non-ECDHE suites are refused: \(out)")
    }

    /// CVE-2011-0411: commands pipelined after STARTTLS in the same packet are discarded, never executed.
    func testStartTLSInjectionIsDiscarded() throws {
        let script = """
            import socket, ssl, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            f = s.makefile("rb")
            def reply():
                lines = []
                while True:
                    l = f.readline().decode()
                    lines.append(l.strip())
                    if len(l) < 4 or l[3] != "-": return lines
            reply()
            s.sendall(b"EHLO client\\r\\n"); reply()
            s.sendall(b"STARTTLS\\r\\nNOOP\\r\\nMAIL FROM:<injected@ext.com>\\r\\n")
            print("starttls", reply())
            ctx = ssl.create_default_context(cafile=sys.argv[2])
            t = ctx.wrap_socket(s, server_hostname="localhost")
            t.settimeout(1.0)
            try:
                data = t.recv(4096)
                print("unexpected", data)
            except (socket.timeout, TimeoutError):
                print("silent")
            t.settimeout(5)
            t.sendall(b"NOOP\\r\\n")
            print("noop", t.recv(4096))
            """
        let result = try Shell.python(script, ["\(harness.port("submission"))", Repo.certs.appendingPathComponent("ca.pem").path])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("starttls ['220 2.0.0 Ready to start TLS']"), result.output)
        XCTAssertTrue(result.output.contains("silent"), "no reply to the injected NOOP/MAIL: \(result.output)")
        XCTAssertTrue(result.output.contains("noop b'250 2.0.0 Ok\\r\\n'"), result.output)
    }
}
