import Foundation
import PosternTestSupport
import XCTest

/// Upstream AUTH with the real `postern serve` against a stand-in for Microsoft 365 on loopback
/// (Fixtures/m365_upstream.py): an HTTPS token endpoint that implements the client-credentials grant and checks
/// client assertions against the registered certificate, and an SMTP upstream that checks the XOAUTH2 string and
/// the token, and PLAIN. The upstream closes each connection after a message, so every message authenticates anew.
final class M365UpstreamTests: XCTestCase {
    var work: URL!
    var fixture: M365Fixture!
    var gateway: Spawned?
    let clientSecret = "s3cret-Value~with.odd+chars"

    override func setUpWithError() throws {
        try Repo.ensureCertificates()
        work = FileManager.default.temporaryDirectory.appendingPathComponent("postern-m365-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
    }

    override func tearDown() {
        gateway?.kill()
        fixture?.stop()
        try? FileManager.default.removeItem(at: work)
    }

    func startFixture(lifetime: Int = 3600, errorChallenge: Bool = false, clientCertificate: String? = nil, dropReusedSession: Bool = false) throws {
        fixture = try M365Fixture(directory: work, clientSecret: clientSecret, lifetime: lifetime, errorChallenge: errorChallenge,
                                  clientCertificate: clientCertificate ?? Repo.certs.appendingPathComponent("client.pem").path,
                                  dropReusedSession: dropReusedSession)
    }

    var devicePort = 0
    var adminPort = 0
    var config: URL { work.appendingPathComponent("postern.yaml") }

    /// Starts the gateway with `auth` (a YAML flow mapping) on its one upstream, the fixture's SMTP port.
    func serve(auth: String) throws {
        devicePort = freeLoopbackPort()
        adminPort = freeLoopbackPort()
        let certs = Repo.certs.path
        try """
            hostname: m365.test
            policies: \(Repo.policies.path)
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:\(devicePort)" }
            delivery:
              spool: \(work.path)/spool
              relay:
                upstreams:
                  - name: m365
                    host: 127.0.0.1
                    port: \(fixture.smtpPort)
                    server-name: localhost
                    ca-file: \(certs)/ca.pem
                    certificate: \(certs)/client.pem
                    key: \(certs)/client.key
                    auth: \(auth)
                retry: { initial-seconds: 1, max-seconds: 2, scan-seconds: 1 }
            audit: { output: \(work.path)/audit.jsonl }
            admin: { listen: "127.0.0.1:\(adminPort)" }
            """.write(to: config, atomically: true, encoding: .utf8)
        let spawned = try Spawned([Repo.posternBinary.path, "serve", "--config", config.path, "--log-level", "debug"],
                                  output: work.appendingPathComponent("serve.log").path)
        gateway = spawned
        try spawned.waitUntilAccepting(port: devicePort)
    }

    func xoauth2(secret: String? = nil) -> String {
        let endpoint = "https://127.0.0.1:\(fixture.tokenPort)/tenant/oauth2/v2.0/token"
        try? (secret ?? clientSecret).write(to: work.appendingPathComponent("client-secret"), atomically: true, encoding: .utf8)
        return "{ mechanism: xoauth2, token-endpoint: \"\(endpoint)\", client-id: app-1, client-secret-file: \(work.path)/client-secret, "
            + "user: relay@example.edu, ca-file: \(Repo.certs.path)/ca.pem }"
    }

    /// The recipients this test sent to (the gateway may relay a sunset reminder of its own besides).
    var sent: [String] = []

    func send(to recipient: String) throws {
        sent.append(recipient)
        let output = try Shell.run(["swaks", "--server", "127.0.0.1:\(devicePort)", "--from", "scanner@example.edu", "--to", recipient]).output
        XCTAssertTrue(output.contains("250 2.0.0 Ok: queued as"), output)
    }

    /// What the upstream received from the scanner (the gateway may also relay a sunset reminder of the
    /// repository's policies, from `<>`).
    func scannerMessages() -> [M365Fixture.State.Message] {
        fixture.state().messages.filter { $0.from == "scanner@example.edu" }
    }

    /// Waits until the upstream has `count` messages from the scanner; a timeout says what the relay and the endpoint saw.
    func waitForScannerMessages(_ count: Int, timeout: TimeInterval = 15) throws {
        do {
            try waitFor("\(count) message(s) at the upstream", timeout: timeout) { scannerMessages().count == count }
        } catch {
            let relays = ((try? relayEvents()) ?? []).map { "\($0["outcome"] ?? "") \($0["reply"] ?? "")" }
            throw HarnessError("\(error); relay: \(relays); token requests: \(fixture.state().token_requests.map { "\($0.client_auth) \($0.ok)" })")
        }
    }

    /// The spool is empty: whatever the gateway relays on its own at start (a sunset reminder) is through.
    func waitForEmptyQueue() throws {
        try waitFor("an empty queue", timeout: 15) {
            ((try? Shell.run([Repo.posternBinary.path, "queue", "list", "--config", config.path]).output) ?? "").contains("0 message(s) queued")
        }
    }

    /// The relay's audit events for what this test sent, once there is one for each: the upstream records a message
    /// before its 250 goes out, the gateway writes the event after reading it.
    func relayOutcomes() throws -> [[String: Any]] {
        try waitFor("a relay event for each message", timeout: 5) { ((try? self.relayEvents()) ?? []).count >= sent.count }
        return try relayEvents()
    }

    func relayEvents() throws -> [[String: Any]] {
        let text = (try? String(contentsOf: work.appendingPathComponent("audit.jsonl"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .filter { $0["event"] as? String == "relay" && sent.contains($0["recipient"] as? String ?? "") }
    }

    func metrics() throws -> String {
        try Shell.run(["curl", "-s", "http://127.0.0.1:\(adminPort)/metrics"]).output
    }

    /// Neither the client secret nor any token the endpoint issued is in the audit log, the gateway's log (debug
    /// level), the metrics or the queue listing.
    func assertNoSecretLeaked(file: StaticString = #filePath, line: UInt = #line) throws {
        let texts = ["audit": (try? String(contentsOf: work.appendingPathComponent("audit.jsonl"), encoding: .utf8)) ?? "",
                     "log": gateway?.log() ?? "", "metrics": try metrics(),
                     "queue": try Shell.run([Repo.posternBinary.path, "queue", "list", "--config", config.path]).output]
        let secrets = [clientSecret] + fixture.state().issuedTokens
        for (name, text) in texts {
            XCTAssertFalse(text.isEmpty && name != "queue", "\(name) is empty", file: file, line: line)
            for secret in secrets { XCTAssertFalse(text.contains(secret), "a secret in the \(name)", file: file, line: line) }
        }
    }

    func testXOAUTH2WithAClientSecretReusesTheTokenAndRefreshesItBeforeItExpires() throws {
        // 8 s: long enough that the first two messages share the token on a loaded machine, short for a test.
        try startFixture(lifetime: 8)
        try serve(auth: xoauth2())
        try send(to: "one@example.edu")
        try waitForScannerMessages(1, timeout: 15)
        try send(to: "two@example.edu")
        try waitForScannerMessages(2, timeout: 15)
        XCTAssertEqual(fixture.state().tokensIssued, 1, "a new connection reuses the cached token")
        // Past 90 % of the 8 s lifetime: the next connection gets a new token rather than present one about to expire.
        Thread.sleep(forTimeInterval: 8.2)
        try send(to: "three@example.edu")
        try waitForScannerMessages(3, timeout: 15)
        let state = fixture.state()
        let events = try relayOutcomes()
        let log = (try? String(contentsOf: work.appendingPathComponent("serve.log"), encoding: .utf8)) ?? ""
        XCTAssertEqual(state.tokensIssued, 2, "\(state.tokenRequests) \(state.auth)\n\(log)")
        XCTAssertTrue(state.auth.allSatisfy(\.ok), "no token was refused: \(state.auth)")
        XCTAssertEqual(scannerMessages().map(\.login), Array(repeating: "relay@example.edu", count: 3))
        XCTAssertEqual(events.compactMap { $0["outcome"] as? String }, ["delivered", "delivered", "delivered"], "\(events)\n\(log)")
        try assertNoSecretLeaked()
    }

    /// An idle session the upstream closed just as the relay took it for the next message (here: closed at its
    /// second MAIL, before any reply): the message goes at once on a new session, on its first attempt, not deferred.
    func testAReusedSessionTheUpstreamClosedIsReplacedWithoutADeferral() throws {
        try startFixture(dropReusedSession: true)
        try fixture.plainPassword.write(to: work.appendingPathComponent("hve-password"), atomically: true, encoding: .utf8)
        try serve(auth: "{ mechanism: plain, username: \(fixture.plainUser), password-file: \(work.path)/hve-password }")
        try send(to: "first@example.edu")
        try waitForScannerMessages(1, timeout: 15)
        try send(to: "second@example.edu")
        try waitForScannerMessages(2, timeout: 15)
        XCTAssertGreaterThanOrEqual(fixture.state().dropped, 1, "the second message was offered to the idle session first")
        let events = try relayOutcomes()
        XCTAssertEqual(events.compactMap { $0["outcome"] as? String }, ["delivered", "delivered"], "\(events)")
        XCTAssertEqual(events.compactMap { $0["attempt"] as? String }, ["1", "1"])
    }

    /// A revoked token is refused (here with XOAUTH2's 334 error challenge first): one new token, one retry, and the
    /// message goes on its first attempt.
    func testARevokedTokenIsReplacedOnceAndTheMailGoesOnItsFirstAttempt() throws {
        try startFixture(errorChallenge: true)
        try serve(auth: xoauth2())
        try send(to: "before@example.edu")
        try waitForScannerMessages(1, timeout: 15)
        try waitForEmptyQueue()
        let before = fixture.state()
        try fixture.command("revoke")
        try send(to: "after@example.edu")
        try waitForScannerMessages(2, timeout: 15)
        let state = fixture.state()
        let since = Array(state.auth.dropFirst(before.auth.count))
        XCTAssertEqual(since.map(\.ok), [false, true], "\(state.auth)")
        XCTAssertEqual(since.first?.reason, "revoked token")
        XCTAssertEqual(state.tokensIssued, before.tokensIssued + 1)
        let events = try relayOutcomes()
        XCTAssertEqual(events.compactMap { $0["outcome"] as? String }, ["delivered", "delivered"])
        XCTAssertEqual(events.compactMap { $0["attempt"] as? String }, ["1", "1"])
        try assertNoSecretLeaked()
    }

    /// The token endpoint is down: the message is deferred with the reason and kept; once the endpoint is back it is
    /// delivered.
    func testTheTokenEndpointDownDefersTheMailAndItGoesWhenTheEndpointIsBack() throws {
        try startFixture()
        try fixture.command("down")
        try serve(auth: xoauth2())
        try send(to: "waiting@example.edu")
        try waitFor("a deferral", timeout: 15) { ((try? self.relayEvents()) ?? []).contains { $0["outcome"] as? String == "deferred" } }
        let deferred = try XCTUnwrap(try relayEvents().first)
        let reason = deferred["reply"] as? String ?? ""
        XCTAssertTrue(reason.hasPrefix("no credentials for AUTH: the token endpoint https://127.0.0.1:\(fixture.tokenPort)/tenant/oauth2/v2.0/token"),
                      reason)
        XCTAssertTrue(reason.contains("refused the connection"), reason)
        let queue = try Shell.run([Repo.posternBinary.path, "queue", "list", "--config", config.path]).output
        XCTAssertTrue(queue.contains("1 message(s) queued") || queue.contains("2 message(s) queued"), queue)
        XCTAssertTrue(queue.contains("token endpoint"), queue)
        XCTAssertEqual(fixture.state().messages.count, 0)
        try fixture.command("up")
        try waitForScannerMessages(1, timeout: 20)
        XCTAssertEqual(scannerMessages().first?.to, ["waiting@example.edu"])
        try waitFor("the delivered outcome", timeout: 5) { ((try? self.relayEvents()) ?? []).contains { $0["outcome"] as? String == "delivered" } }
        try assertNoSecretLeaked()
    }

    /// A wrong client secret: the endpoint's refusal is the reason in the audit and the queue, the mail stays queued,
    /// and the wrong secret itself is shown nowhere.
    func testAWrongSecretDefersTheMailWithAClearReason() throws {
        try startFixture()
        let wrong = "wrong-Secret-0123456789"
        try serve(auth: xoauth2(secret: wrong))
        try send(to: "held-back@example.edu")
        try waitFor("a deferral", timeout: 15) { ((try? self.relayEvents()) ?? []).contains { $0["outcome"] as? String == "deferred" } }
        let reason = try XCTUnwrap(try relayEvents().first?["reply"] as? String)
        XCTAssertEqual(reason, "no credentials for AUTH: the token endpoint https://127.0.0.1:\(fixture.tokenPort)/tenant/oauth2/v2.0/token answered 401: "
                       + "invalid_client: AADSTS7000215: Invalid client secret provided. (check the client id and the client secret or certificate)")
        XCTAssertEqual(fixture.state().messages.count, 0)
        XCTAssertTrue(fixture.state().tokenRequests.allSatisfy { !$0.ok })
        let queue = try Shell.run([Repo.posternBinary.path, "queue", "list", "--config", config.path]).output
        XCTAssertTrue(queue.contains("AADSTS7000215"), queue)
        for text in [try String(contentsOf: work.appendingPathComponent("audit.jsonl"), encoding: .utf8), gateway?.log() ?? "", try metrics(), queue] {
            XCTAssertFalse(text.contains(wrong))
        }
        try assertNoSecretLeaked()
    }

    /// `private_key_jwt`: an RS256 client assertion for an RSA certificate (what Entra ID takes), whose signature,
    /// thumbprint, audience, issuer and subject the endpoint checks.
    func testACertificateClientAssertionGetsATokenAndTheMailGoes() throws {
        let key = work.appendingPathComponent("app.key").path, certificate = work.appendingPathComponent("app.pem").path
        let made = try Shell.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", certificate,
                                  "-subj", "/CN=postern-relay-app", "-days", "30"])
        XCTAssertEqual(made.status, 0, made.output)
        try startFixture(clientCertificate: certificate)
        let endpoint = "https://127.0.0.1:\(fixture.tokenPort)/tenant/oauth2/v2.0/token"
        try serve(auth: "{ mechanism: xoauth2, token-endpoint: \"\(endpoint)\", client-id: app-1, client-certificate: \(certificate), "
                  + "client-key: \(key), user: relay@example.edu, ca-file: \(Repo.certs.path)/ca.pem }")
        try send(to: "signed@example.edu")
        try waitForScannerMessages(1, timeout: 15)
        let request = try XCTUnwrap(fixture.state().tokenRequests.last)
        XCTAssertEqual(request.clientAuth, "assertion")
        XCTAssertEqual(request.alg, "RS256")
        XCTAssertTrue(request.ok)
    }

    /// PLAIN and LOGIN with a password from a file, as for Microsoft's High Volume Email.
    func testPLAINAndLOGINWithAPasswordFile() throws {
        try startFixture()
        try fixture.plainPassword.write(to: work.appendingPathComponent("hve-password"), atomically: true, encoding: .utf8)
        for (index, mechanism) in ["plain", "login"].enumerated() {
            try serve(auth: "{ mechanism: \(mechanism), username: \(fixture.plainUser), password-file: \(work.path)/hve-password }")
            try send(to: "\(mechanism)@example.edu")
            try waitFor("the \(mechanism) message", timeout: 15) { scannerMessages().count == index + 1 }
            gateway?.signal(SIGTERM)
            _ = try gateway?.waitForExit(timeout: 20)
        }
        let state = fixture.state()
        XCTAssertEqual(Set(state.auth.map(\.mechanism)), ["PLAIN", "LOGIN"])
        XCTAssertTrue(state.auth.allSatisfy(\.ok), "\(state.auth)")
        XCTAssertEqual(scannerMessages().map(\.login), [fixture.plainUser, fixture.plainUser])
        XCTAssertFalse((gateway?.log() ?? "").contains(fixture.plainPassword))
    }
}

/// Fixtures/m365_upstream.py as a child process: commands on its standard input, its state read from the JSON file
/// it rewrites after every event.
final class M365Fixture {
    struct State: Decodable {
        struct TokenRequest: Decodable {
            var client_auth: String
            var ok: Bool
            var alg: String?
            var clientAuth: String { client_auth }
        }
        struct Auth: Decodable {
            var mechanism: String
            var ok: Bool
            var reason: String?
        }
        struct Message: Decodable {
            var from: String
            var to: [String]
            var login: String
        }
        var dropped: Int
        var token_port: Int
        var smtp_port: Int
        var commands: Int
        var tokens_issued: Int
        var issued: [String]
        var token_requests: [TokenRequest]
        var auth: [Auth]
        var messages: [Message]
        var tokensIssued: Int { tokens_issued }
        var issuedTokens: [String] { issued }
        var tokenRequests: [TokenRequest] { token_requests }
    }

    let process = Process()
    let input = Pipe()
    let stateFile: URL
    let plainUser = "hve-scanner@example.edu"
    let plainPassword = "hve-Password-42"
    private(set) var tokenPort = 0
    private(set) var smtpPort = 0

    static var script: URL { Repo.root.appendingPathComponent("Tests/PosternIntegrationTests/Fixtures/m365_upstream.py") }

    /// `dropReusedSession`: sessions stay open after a message and are closed without a reply at their second MAIL;
    /// otherwise each is closed 50 ms after its message.
    init(directory: URL, clientSecret: String, lifetime: Int, errorChallenge: Bool, clientCertificate: String, dropReusedSession: Bool = false) throws {
        stateFile = directory.appendingPathComponent("m365-state.json")
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [Self.script.path, "--certs", Repo.certs.path, "--state", stateFile.path, "--client-id", "app-1",
                             "--client-secret", clientSecret, "--client-certificate", clientCertificate, "--mailbox", "relay@example.edu",
                             "--plain-user", plainUser, "--plain-password", plainPassword, "--lifetime", "\(lifetime)",
                             dropReusedSession ? "--drop-reused-session" : "--close-after-message"] + (errorChallenge ? ["--error-challenge"] : [])
        process.standardInput = input
        let log = directory.appendingPathComponent("m365-fixture.log")
        _ = FileManager.default.createFile(atPath: log.path, contents: nil)
        let handle = try FileHandle(forWritingTo: log)
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        try waitFor("the M365 fixture's ports", timeout: 20) { (try? self.read())?.smtp_port ?? 0 > 0 || !self.process.isRunning }
        guard process.isRunning, let state = try? read() else {
            throw HarnessError("m365_upstream.py did not start: \((try? String(contentsOf: log, encoding: .utf8)) ?? "")")
        }
        tokenPort = state.token_port
        smtpPort = state.smtp_port
    }

    private func read() throws -> State {
        try JSONDecoder().decode(State.self, from: Data(contentsOf: stateFile))
    }

    /// The fixture's state now (the last one it wrote).
    func state() -> State {
        (try? read()) ?? State(dropped: 0, token_port: 0, smtp_port: 0, commands: 0, tokens_issued: 0, issued: [], token_requests: [], auth: [], messages: [])
    }

    /// Sends `command` (revoke, down, up, lifetime N) and waits until it is done.
    func command(_ command: String) throws {
        let before = state().commands
        input.fileHandleForWriting.write(Data("\(command)\n".utf8))
        try waitFor("the fixture to do '\(command)'", timeout: 10) { self.state().commands > before }
    }

    func stop() {
        try? input.fileHandleForWriting.close()
        for _ in 0..<100 where process.isRunning { usleep(20_000) }
        if process.isRunning { process.terminate() }
    }
}
