import Foundation
import PosternTestSupport
import XCTest

/// One throttle per account, no password oracle, groups by DN: SMTP AUTH through the real listener against a
/// real slapd, whose log counts the binds that reached it.
final class AccountThrottleTests: XCTestCase {
    nonisolated(unsafe) static var slapd: TestSlapd!

    override class func setUp() {
        super.setUp()
        slapd = try! TestSlapd()
    }

    override class func tearDown() {
        slapd = nil
        super.tearDown()
    }

    static let alice = "uid=alice,ou=people,dc=example,dc=edu"
    var harness: GatewayHarness!

    override func tearDown() async throws {
        await harness?.stop()
    }

    /// lockout-after 6 per account (18 per client address), no slow-down to speak of.
    func startGateway(requiredGroups: String = "[mail-submitters]", groupBase: String? = TestSlapd.groupsBase, limits: String = "",
                      more: String = "") async throws {
        let directory = try Self.slapd.gatewayDirectorySection(
            requiredGroups: requiredGroups, groupBase: groupBase,
            throttle: "{ slow-down-after: 100, delay-step-ms: 10, max-delay-ms: 10, lockout-after: 6, lockout-seconds: 600 }", more: more)
        harness = try await GatewayHarness.start(limits: limits, extra: directory)
    }

    /// AUTH PLAIN attempts, each on its own connection (implicit TLS), all started together when `parallel`;
    /// `source` is the local address to connect from. Returns the reply line to each AUTH, in order.
    func auth(_ attempts: [(login: String, password: String)], parallel: Bool = false, source: String = "127.0.0.1") throws -> [String] {
        let script = """
            import base64, json, smtplib, ssl, sys, threading
            port, ca, source, parallel = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4] == "1"
            attempts = json.loads(sys.stdin.read())
            ctx = ssl.create_default_context(cafile=ca)
            results = [None] * len(attempts)
            ready = threading.Barrier(len(attempts)) if parallel else None
            def attempt(i, login, password):
                s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=60, source_address=(source, 0))
                s.ehlo("client")
                if ready: ready.wait()
                code, text = s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\\0" + login.encode() + b"\\0" + password.encode()).decode())
                results[i] = "%d %s" % (code, text.decode())
                try: s.close()
                except Exception: pass
            if parallel:
                threads = [threading.Thread(target=attempt, args=(i, l, p)) for i, (l, p) in enumerate(attempts)]
                for t in threads: t.start()
                for t in threads: t.join()
            else:
                for i, (l, p) in enumerate(attempts): attempt(i, l, p)
            print(json.dumps(results))
            """
        let input = try JSONSerialization.data(withJSONObject: attempts.map { [$0.login, $0.password] })
        let result = try Shell.run(["/usr/bin/python3", "-c", script, "\(harness.port("submissions"))", Repo.certs.appendingPathComponent("ca.pem").path,
                                    source, parallel ? "1" : "0"], input: input, timeout: 180)
        guard let last = result.output.split(separator: "\n").last, let replies = try? JSONSerialization.jsonObject(with: Data(last.utf8)) as? [String],
              replies.count == attempts.count else {
            XCTFail("python: \(result.output)")
            return Array(repeating: "no reply", count: attempts.count)
        }
        return replies
    }

    func authResults() throws -> [String] {
        try harness.auditEvents().filter { $0["event"] as? String == "auth" }.compactMap { $0["result"] as? String }
    }

    func testSpacesAndCaseInTheLoginDoNotEscapeALockout() async throws {
        try await startGateway()
        let before = Self.slapd.bindCount(dn: Self.alice)
        let guesses = try auth((0..<6).map { ("alice", "guess-\($0)") })
        XCTAssertEqual(guesses.filter { $0.hasPrefix("535 5.7.8") }.count, 6, "\(guesses)")
        // During the lockout, every spelling slapd would take for alice is refused, the right password too.
        let spellings = try auth([(" alice", "alice-demo-pass"), ("alice ", "alice-demo-pass"), ("Alice ", "alice-demo-pass"),
                                  ("ALICE", "alice-demo-pass"), ("ａｌｉｃｅ", "alice-demo-pass"), ("alice", "alice-demo-pass")])
        XCTAssertEqual(spellings, Array(repeating: "421 4.7.0 Too many failed authentication attempts; try again later", count: 6))
        XCTAssertEqual(Self.slapd.bindCount(dn: Self.alice) - before, 6, "no bind for alice after the lockout")
        // webapp, from the same address, is not locked: the address has 6 of its 18.
        let other = try auth([("webapp", "webapp-demo-pass")])
        XCTAssertEqual(other, ["235 2.7.0 Authentication successful"])
    }

    func testTwentyParallelWrongPasswordsReachSlapdAtMostLockoutAfterTimes() async throws {
        try await startGateway()
        let before = Self.slapd.bindCount(dn: Self.alice)
        let spellings = ["alice", " alice", "alice ", "Alice ", "ALICE"]
        let replies = try auth((0..<20).map { (spellings[$0 % spellings.count], "parallel-guess-\($0)") }, parallel: true)
        let binds = Self.slapd.bindCount(dn: Self.alice) - before
        XCTAssertLessThanOrEqual(binds, 6, "binds for alice in slapd's log: \(binds); replies: \(replies)")
        XCTAssertEqual(replies.filter { $0.hasPrefix("535 5.7.8") }.count, binds, "\(replies)")
        XCTAssertEqual(replies.filter { $0.hasPrefix("421 4.7.0") }.count, 20 - binds, "\(replies)")
        XCTAssertEqual(binds, 6, "the six slots were used: the lockout came from failures, not from refusing early")
        let right = try auth([("alice", "alice-demo-pass")])
        XCTAssertTrue(right[0].hasPrefix("421 4.7.0"), right[0])
    }

    func testClientAddressThrottleIsIndependentOfTheLogin() async throws {
        try await startGateway()
        // 18 wrong passwords for 18 different logins from 127.0.0.2: no account is locked, the address is.
        let guesses = try auth((0..<18).map { ("user\($0)", "guess") }, source: "127.0.0.2")
        XCTAssertEqual(guesses.filter { $0.hasPrefix("535") }.count, 18, "\(guesses)")
        let locked = try auth([("webapp", "webapp-demo-pass")], source: "127.0.0.2")
        XCTAssertTrue(locked[0].hasPrefix("421 4.7.0"), locked[0])
        // The same account from another address is fine.
        let elsewhere = try auth([("webapp", "webapp-demo-pass")], source: "127.0.0.3")
        XCTAssertEqual(elsewhere, ["235 2.7.0 Authentication successful"])
    }

    func testPerUserMessageRateKeysOnTheAccount() async throws {
        try await startGateway(limits: "limits: { messages-per-user-per-hour: 2 }")
        let script = """
            import smtplib, ssl, sys
            port, ca = int(sys.argv[1]), sys.argv[2]
            ctx = ssl.create_default_context(cafile=ca)
            for login in ["alice", " Alice", "ALICE "]:
                s = smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=20)
                s.login(login, "alice-demo-pass")
                code, text = s.mail("alice@example.edu")
                print(code, text.decode())
                s.close()
            """
        let result = try Shell.python(script, ["\(harness.port("submissions"))", Repo.certs.appendingPathComponent("ca.pem").path])
        let codes = result.output.split(separator: "\n").map { String($0.prefix(3)) }
        XCTAssertEqual(codes, ["250", "250", "450"], result.output)
        let rules = try harness.auditEvents().compactMap { $0["rule"] as? String }
        XCTAssertTrue(rules.contains("rate-limit user:uid=alice,ou=people,dc=example,dc=edu 2/hour"), "\(rules)")
    }

    /// bob's right password (bob is not in mail-submitters), bob's wrong one and an unknown login get the same bytes.
    func testARightPasswordWithoutTheRightToSubmitGetsTheWrongPasswordsReply() async throws {
        try await startGateway()
        let replies = try auth([("bob", "bob-demo-pass"), ("bob", "not-bobs"), ("nobody-here", "whatever")])
        XCTAssertEqual(replies, Array(repeating: "535 5.7.8 Authentication credentials invalid", count: 3))
        XCTAssertEqual(try authResults(), ["not_authorized", "invalid_credentials", "invalid_credentials"], "the reason is in the audit log")
        await harness.stop()
        // The distinct answer is an option, off by default.
        try await startGateway(more: "  reveal-not-authorized: true")
        let revealed = try auth([("bob", "bob-demo-pass"), ("bob", "not-bobs")])
        XCTAssertEqual(revealed, ["550 5.7.1 Not authorized to submit mail", "535 5.7.8 Authentication credentials invalid"])
    }

    func testBareGroupNamesCountOnlyDirectlyUnderTheGroupBase() async throws {
        // bob is a member of cn=mail-submitters,ou=clubs (a group users made themselves): not of Postern's.
        try await startGateway()
        XCTAssertEqual(try auth([("bob", "bob-demo-pass"), ("alice", "alice-demo-pass")]),
                       ["535 5.7.8 Authentication credentials invalid", "235 2.7.0 Authentication successful"])
        await harness.stop()
        // Without a group base a bare name matches nothing: nobody passes, and `postern check` says why.
        try await startGateway(groupBase: nil)
        XCTAssertEqual(try auth([("alice", "alice-demo-pass")]), ["535 5.7.8 Authentication credentials invalid"])
        XCTAssertEqual(try authResults(), ["not_authorized"])
        let check = try Shell.run([Repo.posternBinary.path, "check", "--config", harness.directory.appendingPathComponent("postern.yaml").path])
        XCTAssertEqual(check.status, 0, check.output)
        XCTAssertTrue(check.output.contains("postern.yaml:") && check.output.contains(": warning: directory.required-groups: bare group name 'mail-submitters' matches no group, because directory.group-base is not set"),
                      check.output)
        await harness.stop()
        // Full DNs need no base.
        try await startGateway(requiredGroups: "[\"cn=mail-submitters,ou=groups,dc=example,dc=edu\"]", groupBase: nil)
        XCTAssertEqual(try auth([("alice", "alice-demo-pass"), ("bob", "bob-demo-pass")]),
                       ["235 2.7.0 Authentication successful", "535 5.7.8 Authentication credentials invalid"])
    }
}
