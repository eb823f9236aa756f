import PosternSMTP
import XCTest
@testable import PosternRelay

/// The dialogue with an upstream as a state machine, without a socket: replies in, commands out.
final class UpstreamSessionTests: XCTestCase {
    typealias Session = UpstreamSession

    static func ehlo(_ keywords: [String]) -> SMTPReply {
        SMTPReply(code: 250, enhancedStatus: nil, lines: ["mx.example.org"] + keywords)
    }

    static let ok = SMTPReply(250, "2.0.0", "Ok")
    static let go = SMTPReply(354, nil, "go ahead")

    /// A session set up over STARTTLS with `keywords` offered after TLS.
    func ready(_ keywords: [String]) -> Session {
        var session = Session(hostname: "postern.test", tls: .startTLS)
        XCTAssertEqual(session.start(), .send("", expecting: 1))
        XCTAssertEqual(session.receive([SMTPReply(220, nil, "mx ESMTP")]), .send("EHLO postern.test\r\n", expecting: 1))
        XCTAssertEqual(session.receive([Self.ehlo(["STARTTLS", "PIPELINING"])]), .startTLS)
        XCTAssertEqual(session.tlsEstablished(), .send("EHLO postern.test\r\n", expecting: 1), "RFC 3207: EHLO again over TLS")
        XCTAssertEqual(session.receive([Self.ehlo(keywords)]), .ready(extensions: Set(keywords)))
        return session
    }

    // MARK: Setup

    func testSetupNeverGoesOnWithoutTLS() {
        var stripped = Session(hostname: "p", tls: .startTLS)
        _ = stripped.receive([SMTPReply(220, nil, "mx")])
        XCTAssertEqual(stripped.receive([Self.ehlo(["PIPELINING"])]), .fail(.startTLSNotOffered))
        XCTAssertEqual(stripped.send(OutboundMessage(sender: "a@x", recipients: ["b@y"], size: 1), needsReset: false),
                       .fail(.protocolState("a message in state failed")), "nothing is sent after a failed setup")

        var implicit = Session(hostname: "p", tls: .implicit)
        _ = implicit.receive([SMTPReply(220, nil, "mx")])
        XCTAssertEqual(implicit.receive([Self.ehlo(["PIPELINING"])]), .ready(extensions: ["PIPELINING"]), "implicit TLS: already secured")
    }

    func testARefusingGreetingOrEHLOEndsTheSetupWithTheirReply() {
        var busy = Session(hostname: "p", tls: .startTLS)
        let refusal = SMTPReply(421, "4.3.2", "busy")
        XCTAssertEqual(busy.receive([refusal]), .fail(.greetingRefused(refusal)))
        var noEHLO = Session(hostname: "p", tls: .startTLS)
        _ = noEHLO.receive([SMTPReply(220, nil, "mx")])
        let bad = SMTPReply(502, "5.5.1", "no")
        XCTAssertEqual(noEHLO.receive([bad]), .fail(.ehloRefused(bad)))
    }

    func testWhatWasOfferedBeforeTLSIsForgotten() {
        var session = Session(hostname: "p", tls: .startTLS)
        _ = session.receive([SMTPReply(220, nil, "mx")])
        _ = session.receive([Self.ehlo(["STARTTLS", "PIPELINING", "8BITMIME"])])
        _ = session.tlsEstablished()
        _ = session.receive([Self.ehlo(["SIZE 100"])])
        XCTAssertEqual(session.extensions, ["SIZE"])
        XCTAssertFalse(session.supportsPipelining)
    }

    // MARK: Transactions

    func testAPipelinedTransactionIsOneWriteAndGivesEachRecipientItsReply() {
        var session = ready(["PIPELINING", "SIZE", "8BITMIME"])
        let message = OutboundMessage(sender: "a@example.edu", recipients: ["b@x.org", "c@x.org", "d@x.org"], size: 42, bodyType: "8BITMIME")
        XCTAssertEqual(session.send(message, needsReset: true), .send(
            "RSET\r\nMAIL FROM:<a@example.edu> BODY=8BITMIME SIZE=42\r\nRCPT TO:<b@x.org>\r\nRCPT TO:<c@x.org>\r\nRCPT TO:<d@x.org>\r\nDATA\r\n",
            expecting: 6))
        let unknown = SMTPReply(550, "5.1.1", "No such user")
        let later = SMTPReply(451, "4.3.0", "later")
        XCTAssertEqual(session.receive([Self.ok, Self.ok, Self.ok, unknown, later, Self.go]), .sendMessage)
        let queued = SMTPReply(250, "2.0.0", "queued")
        XCTAssertEqual(session.receive([queued]), .finished(TransactionResult(replies: ["b@x.org": queued, "c@x.org": unknown, "d@x.org": later],
                                                                              connectionReusable: true)))
        XCTAssertEqual(session.state, .ready, "the session takes the next message")
    }

    func testWithoutPipeliningOneCommandAtATimeAndNoDATAWhenNobodyWasAccepted() {
        var session = ready(["SIZE"])
        let message = OutboundMessage(sender: "", recipients: ["b@x.org", "c@x.org"], size: 7, bodyType: "8BITMIME")
        XCTAssertEqual(session.send(message, needsReset: false), .send("MAIL FROM:<> SIZE=7\r\n", expecting: 1), "no BODY= unless offered")
        XCTAssertEqual(session.receive([Self.ok]), .send("RCPT TO:<b@x.org>\r\n", expecting: 1))
        let refused = SMTPReply(550, "5.7.1", "no")
        XCTAssertEqual(session.receive([refused]), .send("RCPT TO:<c@x.org>\r\n", expecting: 1))
        XCTAssertEqual(session.receive([refused]), .finished(TransactionResult(replies: ["b@x.org": refused, "c@x.org": refused], connectionReusable: true)))

        XCTAssertEqual(session.send(message, needsReset: true), .send("RSET\r\nMAIL FROM:<> SIZE=7\r\n", expecting: 2))
        XCTAssertEqual(session.receive([Self.ok, Self.ok]), .send("RCPT TO:<b@x.org>\r\n", expecting: 1))
        XCTAssertEqual(session.receive([Self.ok]), .send("RCPT TO:<c@x.org>\r\n", expecting: 1))
        XCTAssertEqual(session.receive([Self.ok]), .send("DATA\r\n", expecting: 1))
        let full = SMTPReply(452, "4.3.1", "full")
        XCTAssertEqual(session.receive([full]), .finished(TransactionResult(replies: ["b@x.org": full, "c@x.org": full], connectionReusable: true)),
                       "DATA refused: its reply for every accepted recipient")
    }

    func testARefusedMAILAnswersForEveryRecipient() {
        var pipelined = ready(["PIPELINING"])
        let throttled = SMTPReply(450, "4.7.230", "throttled")
        _ = pipelined.send(OutboundMessage(sender: "a@x", recipients: ["b@y", "c@y"], size: 1), needsReset: false)
        let badSequence = SMTPReply(503, "5.5.1", "Need MAIL")
        let noRecipients = SMTPReply(554, "5.5.1", "No valid recipients")
        XCTAssertEqual(pipelined.receive([throttled, badSequence, badSequence, noRecipients]),
                       .finished(TransactionResult(replies: ["b@y": throttled, "c@y": throttled], connectionReusable: true)))

        var single = ready([])
        _ = single.send(OutboundMessage(sender: "a@x", recipients: ["b@y"], size: 1), needsReset: false)
        XCTAssertEqual(single.receive([throttled]), .finished(TransactionResult(replies: ["b@y": throttled], connectionReusable: true)))
    }

    func testAnUpstreamThatWantsDataForNobodyGetsAnEmptyMessagesEnd() {
        var session = ready(["PIPELINING"])
        _ = session.send(OutboundMessage(sender: "a@x", recipients: ["b@y"], size: 1), needsReset: false)
        let refused = SMTPReply(550, "5.1.1", "unknown")
        XCTAssertEqual(session.receive([Self.ok, refused, Self.go]), .send(".\r\n", expecting: 1))
        XCTAssertEqual(session.receive([SMTPReply(554, "5.5.1", "no recipients")]),
                       .finished(TransactionResult(replies: ["b@y": refused], connectionReusable: true)))
    }

    /// A call the state cannot take is a failed connection, not a trap.
    func testCallsInTheWrongStateFailTheConnection() {
        var session = Session(hostname: "p", tls: .startTLS)
        XCTAssertEqual(session.tlsEstablished(), .fail(.protocolState("TLS established in state greeting")))
        var pipelined = ready(["PIPELINING"])
        _ = pipelined.send(OutboundMessage(sender: "a@x", recipients: ["b@y"], size: 1), needsReset: false)
        guard case .fail = pipelined.receive([Self.ok]) else { return XCTFail("one reply for three commands") }
        var idle = ready([])
        guard case .fail = idle.receive([Self.ok]) else { return XCTFail("a reply nobody asked for") }
    }
}
