import Foundation
import PosternTestSupport
import XCTest

/// SMTP AUTH on the TLS endpoints against a real slapd (policies/demo-directory.ldif), with swaks and smtplib.
final class SubmissionAuthTests: XCTestCase {
    nonisolated(unsafe) static var slapd: TestSlapd!

    override class func setUp() {
        super.setUp()
        slapd = try! TestSlapd()
    }

    override class func tearDown() {
        try? slapd.stop()
        slapd = nil
        super.tearDown()
    }

    var harness: GatewayHarness!

    func startGateway(requiredGroups: String = "[mail-submitters]", throttle: String = "{ slow-down-after: 3, delay-step-ms: 50, max-delay-ms: 100, lockout-after: 6, lockout-seconds: 600 }") async throws {
        harness = try await GatewayHarness.start(extra: try Self.slapd.gatewayDirectorySection(requiredGroups: requiredGroups, throttle: throttle))
    }

    override func tearDown() async throws {
        await harness?.stop()
    }

    func swaks(_ endpoint: String, user: String, password: String, from: String, to: String = "someone@gmail.com", extra: [String] = []) throws -> String {
        let port = harness.port(endpoint)
        let tls = endpoint == "submissions" ? ["--tlsc"] : ["--tls"]
        return try Shell.run(["swaks", "--server", "127.0.0.1:\(port)"] + tls + ["--auth", "PLAIN", "--auth-user", user,
                              "--auth-password", password, "--from", from, "--to", to] + extra).output
    }

    func testRightPasswordSendsAnywhereWrongPasswordAndUnknownUserGet535() async throws {
        try await startGateway()
        let ok = try swaks("submission", user: "alice", password: "alice-demo-pass", from: "alice@example.edu")
        XCTAssertTrue(ok.contains("235 2.7.0 Authentication successful"), ok)
        XCTAssertTrue(ok.contains("250 2.0.0 Ok: queued as"), ok)
        let wrong = try swaks("submission", user: "alice", password: "nope", from: "alice@example.edu")
        XCTAssertTrue(wrong.contains("535 5.7.8 Authentication credentials invalid"), wrong)
        let unknown = try swaks("submissions", user: "mallory", password: "whatever", from: "alice@example.edu")
        XCTAssertTrue(unknown.contains("535 5.7.8 Authentication credentials invalid"), unknown)
        let files = harness.outboxFiles()
        XCTAssertEqual(files.count, 1)
        let text = try String(contentsOf: try XCTUnwrap(files.first), encoding: .utf8)
        XCTAssertTrue(text.contains("with ESMTPSA id"), "Received header records TLS and AUTH: \(text.prefix(300))")
    }

    func testAliasAddressIsAcceptedOtherSendersAndNullSenderAreNot() async throws {
        try await startGateway()
        let alias = try swaks("submissions", user: "alice", password: "alice-demo-pass", from: "a.smith@EXAMPLE.edu")
        XCTAssertTrue(alias.contains("250 2.0.0 Ok: queued as"), alias)
        let other = try swaks("submissions", user: "alice", password: "alice-demo-pass", from: "bob@example.edu")
        XCTAssertTrue(other.contains("553 5.7.1 Sender address not owned by user"), other)
        let caseOfLocalPart = try swaks("submissions", user: "alice", password: "alice-demo-pass", from: "Alice@example.edu")
        XCTAssertTrue(caseOfLocalPart.contains("553 5.7.1"), "local parts compare exactly: \(caseOfLocalPart)")
        let null = try swaks("submissions", user: "alice", password: "alice-demo-pass", from: "<>")
        XCTAssertTrue(null.contains("553 5.7.1"), null)
        // The service account may send as any address of its domain.
        let service = try swaks("submission", user: "webapp", password: "webapp-demo-pass", from: "noreply@example.edu")
        XCTAssertTrue(service.contains("250 2.0.0 Ok: queued as"), service)
    }

    func testGroupRestriction() async throws {
        try await startGateway()
        // bob's password is right, but he is not in mail-submitters: the same answer as a wrong password.
        let bob = try swaks("submission", user: "bob", password: "bob-demo-pass", from: "bob@example.edu")
        XCTAssertTrue(bob.contains("535 5.7.8 Authentication credentials invalid"), bob)
        await harness.stop()
        try await startGateway(requiredGroups: "[]")
        let bobAllowed = try swaks("submission", user: "bob", password: "bob-demo-pass", from: "bob@example.edu")
        XCTAssertTrue(bobAllowed.contains("250 2.0.0 Ok: queued as"), bobAllowed)
    }

    /// Filter metacharacters, a NUL and an empty password never authenticate, over smtplib and both TLS kinds.
    func testHostileLoginsNeverAuthenticate() async throws {
        try await startGateway()
        let script = """
            import base64, smtplib, ssl, sys
            port_sub, port_subs, ca = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
            ctx = ssl.create_default_context(cafile=ca)
            cases = [("*", "alice-demo-pass"), ("x)(uid=*", "alice-demo-pass"), ("a\\0b", "alice-demo-pass"),
                     ("*)(uid=alice", "alice-demo-pass"), ("alice", ""), ("alic*", "alice-demo-pass")]
            for i, (user, password) in enumerate(cases):
                if i % 2 == 0:
                    s = smtplib.SMTP("127.0.0.1", port_sub, timeout=10); s.starttls(context=ctx)
                else:
                    s = smtplib.SMTP_SSL("127.0.0.1", port_subs, context=ctx, timeout=10)
                s.ehlo("client")
                blob = base64.b64encode(b"\\0" + user.encode() + b"\\0" + password.encode()).decode()
                code, msg = s.docmd("AUTH", "PLAIN " + blob)
                print(repr(user), repr(password), code, msg.decode())
                s.close()
            s = smtplib.SMTP_SSL("127.0.0.1", port_subs, context=ctx, timeout=10)
            s.login("alice", "alice-demo-pass")  # AUTH LOGIN or PLAIN as smtplib prefers
            print("login ok", s.sendmail("alice@example.edu", ["x@gmail.com"], b"Subject: hi\\r\\n\\r\\nhello\\r\\n"))
            s.quit()
            """
        let result = try Shell.python(script, ["\(harness.port("submission"))", "\(harness.port("submissions"))", Repo.certs.appendingPathComponent("ca.pem").path])
        XCTAssertEqual(result.status, 0, result.output)
        let lines = result.output.split(separator: "\n")
        XCTAssertEqual(lines.filter { $0.contains(" 535 ") }.count, 6, result.output)
        XCTAssertFalse(result.output.contains(" 235 "), result.output)
        XCTAssertTrue(result.output.contains("login ok {}"), result.output)
    }

    func testAuthIsNotOfferedOrAcceptedWithoutTLS() async throws {
        try await startGateway()
        let plain = try Shell.run(["swaks", "--server", "127.0.0.1:\(harness.port("submission"))", "--auth", "PLAIN", "--auth-user", "alice",
                                   "--auth-password", "alice-demo-pass", "--from", "alice@example.edu", "--to", "bob@example.edu"]).output
        XCTAssertTrue(plain.contains("Host did not advertise authentication"), plain)
        XCTAssertFalse(plain.contains("235"), plain)
        let device = try Shell.python("""
            import socket, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5); f = s.makefile("rb"); f.readline()
            s.sendall(b"EHLO x\\r\\n")
            while True:
                l = f.readline().decode()
                if "AUTH" in l: print("offered")
                if l[3] == " ": break
            s.sendall(b"AUTH PLAIN AGFsaWNlAGFsaWNlLWRlbW8tcGFzcw==\\r\\n"); print(f.readline().decode().strip())
            """, ["\(harness.port("device"))"]).output
        XCTAssertFalse(device.contains("offered"), device)
        XCTAssertTrue(device.contains("502 5.5.1"), device)
    }

    func testDirectoryOutageGives454AndRecovers() async throws {
        try await startGateway()
        try Self.slapd.stop()
        let down = try swaks("submission", user: "alice", password: "alice-demo-pass", from: "alice@example.edu")
        XCTAssertTrue(down.contains("454 4.7.0 Temporary authentication failure"), down)
        XCTAssertFalse(down.contains("535"), down)
        try Self.slapd.start()
        let back = try swaks("submission", user: "alice", password: "alice-demo-pass", from: "alice@example.edu")
        XCTAssertTrue(back.contains("235 2.7.0"), back)
    }

    /// A wrong-password loop is slowed, then refused with 421 without binding: binds stay bounded.
    func testBruteForceIsThrottledAndBindsStayBounded() async throws {
        try await startGateway()
        let dn = "uid=bob,\(TestSlapd.peopleBase)"
        let before = Self.slapd.bindCount(dn: dn)
        let script = """
            import base64, smtplib, ssl, sys
            ctx = ssl.create_default_context(cafile=sys.argv[2])
            results = []
            for i in range(20):
                s = smtplib.SMTP_SSL("127.0.0.1", int(sys.argv[1]), context=ctx, timeout=20)
                s.ehlo("x")
                code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\\0bob\\0guess%d" % i).decode())
                results.append(code)
                try: s.close()
                except Exception: pass
            print(" ".join(map(str, results)))
            """
        let result = try Shell.python(script, ["\(harness.port("submissions"))", Repo.certs.appendingPathComponent("ca.pem").path], timeout: 120)
        let codes = result.output.split(separator: "\n").last.map { $0.split(separator: " ").map(String.init) } ?? []
        XCTAssertEqual(codes.count, 20, result.output)
        XCTAssertEqual(codes.prefix(6).filter { $0 == "535" }.count, 6, result.output)
        XCTAssertEqual(codes.dropFirst(6).filter { $0 == "421" }.count, 14, "locked out after 6 failures: \(result.output)")
        let binds = Self.slapd.bindCount(dn: dn) - before
        XCTAssertLessThanOrEqual(binds, 6, "LDAP binds for bob stay bounded under the loop")
        let right = try swaks("submissions", user: "bob", password: "bob-demo-pass", from: "bob@example.edu")
        XCTAssertTrue(right.contains("421 4.7.0"), "still locked out, even with the right password: \(right)")
    }
}
