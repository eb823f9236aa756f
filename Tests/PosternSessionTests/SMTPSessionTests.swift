import NIOCore
import XCTest
@testable import PosternSMTP
@testable import PosternSession

/// Rules for driving the state machine: senders from "blocked.example" and recipients outside example.edu are refused;
/// a message with "From: spoof" is refused and one without "From:" gets the sender's.
struct TestRules: SessionRules {
    var sizeLimit: Int?
    func checkSender(_ facts: ConnectionFacts, sender: ReversePath) -> Verdict {
        sender.mailbox?.normalizedDomain == "blocked.example" ? .refuse(SMTPReply(553, "5.7.1", "Sender refused")) : .accept
    }
    func checkRecipient(_ facts: ConnectionFacts, sender: ReversePath, recipient: Mailbox) -> Verdict {
        recipient.normalizedDomain == "example.edu" ? .accept : .refuse(SMTPReply(550, "5.7.1", "\(recipient): internal only"))
    }
    func messageSizeLimit(_ facts: ConnectionFacts) -> Int? { sizeLimit }
    func checkMessage(_ facts: ConnectionFacts, sender: ReversePath, message: ByteBuffer) -> MessageVerdict {
        let text = String(buffer: message)
        if text.contains("From: spoof") { return .refuse(SMTPReply(550, "5.7.1", "From: header address refused")) }
        return text.contains("From:") ? .accept : .acceptAdding("From: \(sender.mailbox?.description ?? "")\r\n")
    }
}

final class SMTPSessionTests: XCTestCase {
    func makeSession(_ kind: ListenerKind, auth: Bool = true, maxRecipients: Int = 100, rules: TestRules = TestRules()) -> SMTPSession {
        SMTPSession(configuration: SessionConfiguration(hostname: "gw.example.edu", listenerName: kind.rawValue, kind: kind,
                                                        maxMessageSize: 10_000, maxRecipients: maxRecipients, authAvailable: auth),
                    facts: ConnectionFacts(listenerName: kind.rawValue, kind: kind, clientAddress: "127.0.0.1", sessionID: "t"),
                    rules: rules)
    }

    /// Feeds one command line and returns the action.
    @discardableResult
    func send(_ session: inout SMTPSession, _ line: String) -> SessionAction {
        session.receive(.line(line))
    }

    func reply(_ action: SessionAction) -> SMTPReply? {
        switch action {
        case .reply(let r), .close(let r), .startTLS(let r), .startData(let r, _): return r
        default: return nil
        }
    }

    let alice = AuthenticatedUser(login: "alice", distinguishedName: "uid=alice", addresses: ["alice@example.edu"], groups: [])

    func testGreetingHasHostnameFirstAndNoStatusCode() {
        XCTAssertEqual(makeSession(.device).greeting().wireString, "220 gw.example.edu ESMTP Postern\r\n")
    }

    func testEhloOnSubmissionOffersStartTLSButNotAuthBeforeTLS() {
        var s = makeSession(.submission)
        let lines = reply(send(&s, "EHLO client"))!.lines
        XCTAssertEqual(lines, ["gw.example.edu", "PIPELINING", "SIZE 10000", "8BITMIME", "ENHANCEDSTATUSCODES", "STARTTLS"])
        s.tlsEstablished(TLSInfo(version: "TLSv1.3"))
        let afterTLS = reply(send(&s, "EHLO client"))!.lines
        XCTAssertFalse(afterTLS.contains("STARTTLS"))
        XCTAssertTrue(afterTLS.contains("AUTH PLAIN LOGIN"))
    }

    func testDeviceOffersNeitherStartTLSNorAuth() {
        var s = makeSession(.device)
        let lines = reply(send(&s, "EHLO scanner"))!.lines
        XCTAssertFalse(lines.contains { $0.hasPrefix("STARTTLS") || $0.hasPrefix("AUTH") })
        XCTAssertEqual(reply(send(&s, "STARTTLS"))?.code, 502)
        XCTAssertEqual(reply(send(&s, "AUTH PLAIN AGFsaWNlAHB3")), SMTPReply(502, "5.5.1", "Authentication not available on this endpoint"))
    }

    func testPlaintextMailOnSubmissionNeedsStartTLS() {
        var s = makeSession(.submission)
        send(&s, "EHLO client")
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<alice@example.edu>")), .mustStartTLS)
        XCTAssertEqual(reply(send(&s, "AUTH PLAIN AGFsaWNlAHB3"))?.code, 538)
        guard case .startTLS(let r) = send(&s, "STARTTLS") else { return XCTFail() }
        XCTAssertEqual(r.wireString, "220 2.0.0 Ready to start TLS\r\n")
    }

    func testTLSResetsSessionSoEhloMustBeRepeated() {
        var s = makeSession(.submission)
        send(&s, "EHLO client")
        _ = send(&s, "STARTTLS")
        s.tlsEstablished(TLSInfo(version: "TLSv1.3"))
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<alice@example.edu>"))?.code, 503)
    }

    func testMailNeedsAuthenticationOnSubmission() {
        var s = makeSession(.submissions)
        s.tlsEstablished(TLSInfo(version: "TLSv1.3"))
        send(&s, "EHLO client")
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<alice@example.edu>")), SMTPReply(530, "5.7.0", "Authentication required"))
    }

    func testAuthPlainWithInitialResponse() {
        var s = makeSession(.submissions)
        s.tlsEstablished(TLSInfo(version: "TLSv1.3"))
        send(&s, "EHLO client")
        // "\0alice\0secret"
        guard case .authenticate(let c) = send(&s, "AUTH PLAIN AGFsaWNlAHNlY3JldA==") else { return XCTFail() }
        XCTAssertEqual(c, Credentials(mechanism: "PLAIN", login: "alice", password: "secret"))
        XCTAssertEqual(reply(s.authCompleted(.success(alice))), SMTPReply(235, "2.7.0", "Authentication successful"))
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<alice@example.edu>"))?.code, 250)
        XCTAssertEqual(reply(send(&s, "AUTH PLAIN AGFsaWNlAHNlY3JldA=="))?.code, 503)
    }

    func testAuthLoginExchangeAndCancel() {
        var s = makeSession(.submissions)
        s.tlsEstablished(TLSInfo(version: "TLSv1.3"))
        send(&s, "EHLO client")
        XCTAssertEqual(reply(send(&s, "AUTH LOGIN")), SMTPReply(334, nil, "VXNlcm5hbWU6"))
        XCTAssertEqual(s.maxLineLength, 12288)
        XCTAssertEqual(reply(send(&s, "YWxpY2U=")), SMTPReply(334, nil, "UGFzc3dvcmQ6"))
        guard case .authenticate(let c) = send(&s, "c2VjcmV0") else { return XCTFail() }
        XCTAssertEqual(c.login, "alice")
        XCTAssertEqual(c.password, "secret")
        XCTAssertEqual(reply(s.authCompleted(.invalidCredentials)), SMTPReply(535, "5.7.8", "Authentication credentials invalid"))
        XCTAssertEqual(reply(send(&s, "AUTH LOGIN")), SMTPReply(334, nil, "VXNlcm5hbWU6"))
        XCTAssertEqual(reply(send(&s, "*"))?.code, 501)
        XCTAssertEqual(reply(send(&s, "AUTH PLAIN !!!notbase64"))?.code, 501)
    }

    func testDirectoryOutageIsTemporaryNever535() {
        var s = makeSession(.submissions)
        s.tlsEstablished(TLSInfo(version: "TLSv1.3"))
        send(&s, "EHLO client")
        _ = send(&s, "AUTH PLAIN AGFsaWNlAHNlY3JldA==")
        XCTAssertEqual(reply(s.authCompleted(.temporaryFailure)), SMTPReply(454, "4.7.0", "Temporary authentication failure"))
    }

    func testDeviceTransactionToDelivery() {
        var s = makeSession(.device)
        send(&s, "HELO scanner")
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<scan@example.edu> BODY=8BITMIME"))?.code, 555, "no ESMTP parameters after HELO")
        send(&s, "EHLO scanner")
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<scan@example.edu> BODY=8BITMIME SIZE=100"))?.code, 250)
        XCTAssertEqual(reply(send(&s, "RCPT TO:<x@gmail.com>"))?.code, 550)
        XCTAssertEqual(reply(send(&s, "DATA")), SMTPReply(554, "5.5.1", "No valid recipients"))
        XCTAssertEqual(reply(send(&s, "RCPT TO:<bob@Example.EDU>"))?.code, 250)
        guard case .startData(let r, let limits) = send(&s, "DATA") else { return XCTFail() }
        XCTAssertEqual(r.code, 354)
        XCTAssertEqual(limits.maxMessageSize, 10_000)
        guard case .deliver(let envelope, _) = s.dataCompleted(.message(ByteBuffer(string: "x\r\n"))) else { return XCTFail() }
        XCTAssertEqual(envelope.recipients.map(\.description), ["bob@Example.EDU"])
        XCTAssertEqual(envelope.bodyType, "8BITMIME")
        XCTAssertEqual(reply(s.deliveryCompleted(.queued(id: "Q1"))), SMTPReply(250, "2.0.0", "Ok: queued as Q1"))
        XCTAssertEqual(reply(send(&s, "RCPT TO:<bob@example.edu>"))?.code, 503, "the transaction is over")
    }

    func testMessageRefusedByTheRulesAtTheEndOfDataIsNotDeliveredAndTheSessionGoesOn() {
        var s = makeSession(.device)
        send(&s, "EHLO scanner")
        send(&s, "MAIL FROM:<scan@example.edu>")
        send(&s, "RCPT TO:<bob@example.edu>")
        _ = send(&s, "DATA")
        XCTAssertEqual(s.dataCompleted(.message(ByteBuffer(string: "From: spoof@example.edu\r\n\r\nx\r\n"))),
                       .reply(SMTPReply(550, "5.7.1", "From: header address refused")))
        XCTAssertFalse(s.isInData)
        XCTAssertEqual(reply(send(&s, "RCPT TO:<bob@example.edu>"))?.code, 503, "the refused transaction is over")
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<scan@example.edu>"))?.code, 250)
    }

    func testFieldsTheRulesAddComeBeforeTheMessage() {
        var s = makeSession(.device)
        send(&s, "EHLO scanner")
        send(&s, "MAIL FROM:<scan@example.edu>")
        send(&s, "RCPT TO:<bob@example.edu>")
        _ = send(&s, "DATA")
        guard case .deliver(_, let body) = s.dataCompleted(.message(ByteBuffer(string: "Subject: x\r\n\r\nx\r\n"))) else { return XCTFail() }
        XCTAssertEqual(String(buffer: body), "From: scan@example.edu\r\nSubject: x\r\n\r\nx\r\n")
    }

    func testSpoolFailureIsTemporaryAndSessionGoesOn() {
        var s = makeSession(.device)
        send(&s, "EHLO scanner")
        send(&s, "MAIL FROM:<scan@example.edu>")
        send(&s, "RCPT TO:<bob@example.edu>")
        _ = send(&s, "DATA")
        _ = s.dataCompleted(.message(ByteBuffer(string: "x\r\n")))
        let full = SMTPReply(452, "4.3.1", "Insufficient system storage")
        XCTAssertEqual(reply(s.deliveryCompleted(.temporaryFailure(full))), full)
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<scan@example.edu>"))?.code, 250)
    }

    func testSizeParameterOverLimitIsRefused() {
        var s = makeSession(.device, rules: TestRules(sizeLimit: 5000))
        XCTAssertTrue(reply(send(&s, "EHLO scanner"))!.lines.contains("SIZE 5000"))
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<scan@example.edu> SIZE=5001")), .messageTooBig)
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<scan@example.edu> SMTPUTF8"))?.code, 555)
    }

    func testRecipientLimitGives452() {
        var s = makeSession(.device, maxRecipients: 3)
        send(&s, "EHLO scanner")
        send(&s, "MAIL FROM:<scan@example.edu>")
        for i in 0..<3 { XCTAssertEqual(reply(send(&s, "RCPT TO:<u\(i)@example.edu>"))?.code, 250) }
        XCTAssertEqual(reply(send(&s, "RCPT TO:<u4@example.edu>")), SMTPReply(452, "4.5.3", "Too many recipients"))
    }

    func testRepeatedRecipientGets250ButIsDeliveredOnceAndDoesNotCountAgainstTheLimit() {
        var s = makeSession(.device, maxRecipients: 2)
        send(&s, "EHLO scanner")
        send(&s, "MAIL FROM:<scan@example.edu>")
        for line in ["RCPT TO:<bob@example.edu>", "RCPT TO:<bob@example.edu>", "RCPT TO:<bob@EXAMPLE.edu>", "RCPT TO:<\"bob\"@example.edu>",
                     "RCPT TO:<carol@example.edu>", "RCPT TO:<carol@example.edu>"] {
            XCTAssertEqual(reply(send(&s, line)), SMTPReply(250, "2.1.5", "Ok"), line)
        }
        _ = send(&s, "DATA")
        guard case .deliver(let envelope, _) = s.dataCompleted(.message(ByteBuffer(string: "x\r\n"))) else { return XCTFail("no delivery") }
        XCTAssertEqual(envelope.recipients.map(\.description), ["bob@example.edu", "carol@example.edu"])
        // The filter is per transaction: after RSET the same recipient is new again.
        _ = s.deliveryCompleted(.queued(id: "q1"))
        send(&s, "MAIL FROM:<scan@example.edu>")
        XCTAssertEqual(reply(send(&s, "RCPT TO:<bob@example.edu>"))?.code, 250)
        send(&s, "RSET")
        send(&s, "MAIL FROM:<scan@example.edu>")
        XCTAssertEqual(reply(send(&s, "RCPT TO:<bob@example.edu>"))?.code, 250)
        XCTAssertEqual(reply(send(&s, "RCPT TO:<Bob@example.edu>"))?.code, 250, "another local part's case: a different mailbox by default")
        _ = send(&s, "DATA")
        guard case .deliver(let second, _) = s.dataCompleted(.message(ByteBuffer(string: "x\r\n"))) else { return XCTFail("no delivery") }
        XCTAssertEqual(second.recipients.map(\.description), ["bob@example.edu", "Bob@example.edu"])
    }

    func testStartTLSWithoutACertificateGives454AndTheSessionGoesOnInPlaintext() {
        var s = makeSession(.submission)
        send(&s, "EHLO client")
        guard case .startTLS = send(&s, "STARTTLS") else { return XCTFail("no STARTTLS") }
        XCTAssertEqual(reply(s.tlsUnavailable()), SMTPReply(454, "4.7.0", "TLS not available due to temporary reason"))
        XCTAssertEqual(reply(send(&s, "NOOP"))?.code, 250)
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<alice@example.edu>")), .mustStartTLS)
    }

    func testDataRefusalsMapToReplies() {
        for (rejection, expected) in [(DataFramer.Rejection.bareLineEnding, "550 5.6.0"), (.tooBig, "552 5.3.4"), (.lineTooLong, "550 5.6.0")] {
            var s = makeSession(.device)
            send(&s, "EHLO scanner")
            send(&s, "MAIL FROM:<scan@example.edu>")
            send(&s, "RCPT TO:<bob@example.edu>")
            _ = send(&s, "DATA")
            XCTAssertTrue(reply(s.dataCompleted(.rejected(rejection)))!.wireString.hasPrefix(expected))
        }
    }

    func testSequenceErrorsAndMiscCommands() {
        var s = makeSession(.device)
        XCTAssertEqual(reply(send(&s, "MAIL FROM:<a@example.edu>"))?.code, 503)
        send(&s, "EHLO scanner")
        XCTAssertEqual(reply(send(&s, "RCPT TO:<a@example.edu>"))?.code, 503)
        XCTAssertEqual(reply(send(&s, "VRFY alice")), .vrfyCannotVerify)
        XCTAssertEqual(reply(send(&s, "HELP"))?.code, 214)
        XCTAssertEqual(reply(send(&s, "NOOP")), .ok)
        XCTAssertEqual(reply(send(&s, "RSET")), .ok)
        XCTAssertEqual(reply(s.receive(.tooLong)), .commandLineTooLong)
        XCTAssertEqual(reply(s.receive(.bareLF)), .bareLFInCommand)
        guard case .close(let bye) = send(&s, "QUIT") else { return XCTFail() }
        XCTAssertEqual(bye, .bye)
        XCTAssertTrue(s.isClosed)
    }

    func testTooManyErrorsCloseTheSession() {
        var s = makeSession(.device)
        var last: SessionAction = .reply(.ok)
        for _ in 0..<20 { last = send(&s, "BOGUS") }
        guard case .close(let r) = last else { return XCTFail("\(last)") }
        XCTAssertEqual(r.code, 421)
    }

    /// The session and the DATA framer together: a smuggled second message after a bad ending is never a transaction.
    func testSmugglingThroughSessionAcceptsAtMostOneMessage() {
        for ending in DataFramerTests_smugglingEndings {
            for normalize in [false, true] {
                var s = SMTPSession(configuration: SessionConfiguration(hostname: "gw", listenerName: "device", kind: .device, normalizeBareLF: normalize),
                                    facts: ConnectionFacts(listenerName: "device", kind: .device, clientAddress: "127.0.0.1", sessionID: "t"), rules: TestRules())
                var input = ByteBuffer(string: "EHLO a\r\nMAIL FROM:<scan@example.edu>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\nbody" + ending
                                       + "MAIL FROM:<scan@example.edu>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\nsecond\r\n.\r\nQUIT\r\n")
                var framer = LineFramer()
                var data: DataFramer?
                var delivered = 0
                loop: while true {
                    let action: SessionAction
                    if data != nil {
                        guard let outcome = data!.feed(&input) else { break }
                        data = nil
                        action = s.dataCompleted(outcome)
                    } else {
                        guard let line = framer.next(&input) else { break }
                        action = s.receive(line)
                    }
                    switch action {
                    case .startData(_, let limits): data = DataFramer(maxMessageSize: limits.maxMessageSize, normalizeBareLF: limits.normalizeBareLF)
                    case .deliver: delivered += 1; _ = s.deliveryCompleted(.queued(id: "Q\(delivered)"))
                    case .close: break loop
                    default: break
                    }
                }
                XCTAssertLessThanOrEqual(delivered, 1, "ending \(ending.debugDescription) normalize=\(normalize)")
                XCTAssertTrue(s.isClosed, "QUIT was reached as a command")
            }
        }
    }
}

let DataFramerTests_smugglingEndings = ["\n.\n", "\r.\r", "\r.\n", "\n.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r"]
