import Foundation
import PosternSMTP
import XCTest
@testable import PosternRelay

/// AUTH towards the upstream as steps of the state machine, without a socket: what is sent for PLAIN, LOGIN and
/// XOAUTH2, the one retry with a fresh token after a refused cached one, and what never gets a retry.
final class UpstreamAuthSessionTests: XCTestCase {
    typealias Session = UpstreamSession

    static let welcome = SMTPReply(235, "2.7.0", "Authentication successful")
    static let refused = SMTPReply(535, "5.7.3", "Authentication unsuccessful")

    /// A session over STARTTLS whose EHLO over TLS offers `lines`.
    func ready(_ lines: [String] = ["PIPELINING", "AUTH LOGIN PLAIN XOAUTH2", "SIZE 36700160"]) -> Session {
        var session = Session(hostname: "postern.test", tls: .startTLS)
        _ = session.receive([SMTPReply(220, nil, "mx")])
        XCTAssertEqual(session.receive([SMTPReply(code: 250, enhancedStatus: nil, lines: ["mx", "STARTTLS", "AUTH PLAIN"])]), .startTLS)
        _ = session.tlsEstablished()
        guard case .ready = session.receive([SMTPReply(code: 250, enhancedStatus: nil, lines: ["mx"] + lines)]) else {
            XCTFail("not ready")
            return session
        }
        return session
    }

    func credential(_ mechanism: String, fresh: Bool = false, secret: String = "s3cret") -> UpstreamCredential {
        UpstreamCredential(mechanism: mechanism, username: "relay@example.edu", secret: secret, fresh: fresh)
    }

    func testXOAUTH2SendsTheSASLStringMicrosoftDocuments() {
        var session = ready()
        XCTAssertEqual(session.authMechanisms, ["LOGIN", "PLAIN", "XOAUTH2"])
        XCTAssertEqual(session.extensionLines, ["PIPELINING", "AUTH LOGIN PLAIN XOAUTH2", "SIZE 36700160"])
        let action = session.authenticate(with: credential("XOAUTH2", secret: "EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA"))
        // base64("user=relay@example.edu\u{1}auth=Bearer EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA\u{1}\u{1}"), written out:
        let expected = "dXNlcj1yZWxheUBleGFtcGxlLmVkdQFhdXRoPUJlYXJlciBFd0JBQWwzQkFBVUZGcFVBbzdKM1ZlMGJqTEJXWldDY2xSQzNFb0FBAQE="
        XCTAssertEqual(action, .sendCredentials("AUTH XOAUTH2 \(expected)\r\n"))
        XCTAssertEqual(String(decoding: Data(base64Encoded: expected)!, as: UTF8.self),
                       "user=relay@example.edu\u{1}auth=Bearer EwBAAl3BAAUFFpUAo7J3Ve0bjLBWZWCclRC3EoAA\u{1}\u{1}")
        XCTAssertEqual(session.receive([Self.welcome]), .authenticated)
        XCTAssertEqual(session.state, .ready)
        XCTAssertEqual(session.send(OutboundMessage(sender: "a@example.edu", recipients: ["b@x.org"], size: 1), needsReset: false),
                       .send("MAIL FROM:<a@example.edu> SIZE=1\r\nRCPT TO:<b@x.org>\r\nDATA\r\n", expecting: 3), "mail after AUTH")
    }

    func testPLAINIsOneLineAndLOGINThreeSteps() {
        var plain = ready()
        XCTAssertEqual(plain.authenticate(with: credential("PLAIN", fresh: true)),
                       .sendCredentials("AUTH PLAIN \(Data("\0relay@example.edu\0s3cret".utf8).base64EncodedString())\r\n"))
        XCTAssertEqual(plain.receive([Self.welcome]), .authenticated)

        var login = ready()
        XCTAssertEqual(login.authenticate(with: credential("LOGIN", fresh: true)), .sendCredentials("AUTH LOGIN\r\n"))
        XCTAssertEqual(login.receive([SMTPReply(334, nil, "VXNlcm5hbWU6")]), .sendCredentials("cmVsYXlAZXhhbXBsZS5lZHU=\r\n"))
        XCTAssertEqual(login.receive([SMTPReply(334, nil, "UGFzc3dvcmQ6")]), .sendCredentials("czNjcmV0\r\n"))
        XCTAssertEqual(login.receive([Self.welcome]), .authenticated)
    }

    /// A cached token refused with 535: one fresh one, one retry; refused again: the setup ends with the reply.
    func testARefusedCachedTokenIsReplacedOnceAndASecondRefusalEndsTheSetup() {
        var session = ready()
        _ = session.authenticate(with: credential("XOAUTH2", fresh: false))
        XCTAssertEqual(session.receive([Self.refused]), .retryWithFreshCredential(rejection: Self.refused))
        guard case .sendCredentials = session.authenticate(with: credential("XOAUTH2", fresh: true, secret: "new")) else { return XCTFail() }
        XCTAssertEqual(session.receive([Self.refused]),
                       .fail(.authRejected(mechanism: "XOAUTH2", user: "relay@example.edu", reply: Self.refused, detail: nil)))

        // Even a second cached one gets no second retry on the same session.
        var twice = ready()
        _ = twice.authenticate(with: credential("XOAUTH2", fresh: false))
        _ = twice.receive([Self.refused])
        _ = twice.authenticate(with: credential("XOAUTH2", fresh: false, secret: "other"))
        guard case .fail(.authRejected) = twice.receive([Self.refused]) else { return XCTFail("one retry per session") }
    }

    /// XOAUTH2's error: a 334 with base64 JSON, answered with an empty line, then the final refusal.
    func testXOAUTH2ErrorChallengeIsAcknowledgedThenCountsAsARefusal() {
        var session = ready()
        _ = session.authenticate(with: credential("XOAUTH2", fresh: false))
        let json = #"{"status":"401","schemes":"bearer","scope":"https://outlook.office365.com/.default"}"#
        XCTAssertEqual(session.receive([SMTPReply(334, nil, Data(json.utf8).base64EncodedString())]), .sendCredentials("\r\n"))
        XCTAssertEqual(session.receive([Self.refused]), .retryWithFreshCredential(rejection: Self.refused))
        _ = session.authenticate(with: credential("XOAUTH2", fresh: true, secret: "t2"))
        _ = session.receive([SMTPReply(334, nil, Data(json.utf8).base64EncodedString())])
        XCTAssertEqual(session.receive([Self.refused]),
                       .fail(.authRejected(mechanism: "XOAUTH2", user: "relay@example.edu", reply: Self.refused, detail: json)))
    }

    func testAFreshCredentialOrATemporaryAnswerGetsNoRetry() {
        var fresh = ready()
        _ = fresh.authenticate(with: credential("XOAUTH2", fresh: true))
        guard case .fail(.authRejected) = fresh.receive([Self.refused]) else { return XCTFail("a token just fetched is not fetched again") }
        var temporary = ready()
        _ = temporary.authenticate(with: credential("XOAUTH2", fresh: false))
        let busy = SMTPReply(454, "4.7.0", "Temporary authentication failure")
        XCTAssertEqual(temporary.receive([busy]), .fail(.authRejected(mechanism: "XOAUTH2", user: "relay@example.edu", reply: busy, detail: nil)))
        var password = ready()
        _ = password.authenticate(with: credential("PLAIN", fresh: true))
        guard case .fail(.authRejected) = password.receive([Self.refused]) else { return XCTFail("a password is not retried") }
    }

    func testAMechanismTheUpstreamDoesNotOfferIsRefusedBeforeAnythingIsSent() {
        var session = ready(["PIPELINING", "AUTH LOGIN PLAIN"])
        XCTAssertEqual(session.authenticate(with: credential("XOAUTH2")), .fail(.authNotOffered(mechanism: "XOAUTH2", offered: ["LOGIN", "PLAIN"])))
        var none = ready(["PIPELINING"])
        XCTAssertEqual(none.authenticate(with: credential("PLAIN")), .fail(.authNotOffered(mechanism: "PLAIN", offered: [])))
        XCTAssertEqual(UpstreamConnectionError.authNotOffered(mechanism: "PLAIN", offered: []).description,
                       "the upstream does not offer AUTH PLAIN over TLS (it offers: no AUTH)")
    }

    /// AUTH is never sent before TLS: before setup is `ready` (TLS up, EHLO again) the call fails the connection.
    func testNoAUTHBeforeTLS() {
        var session = Session(hostname: "p", tls: .startTLS)
        _ = session.receive([SMTPReply(220, nil, "mx")])
        guard case .fail(.protocolState) = session.authenticate(with: credential("PLAIN", fresh: true)) else { return XCTFail() }
    }

    /// Secrets stay out of every text an operator or a log can see.
    func testDescriptionsNeverShowTheSecret() {
        var session = ready()
        let secret = "TOKEN-abcdef-123456"
        let action = session.authenticate(with: credential("XOAUTH2", fresh: false, secret: secret))
        XCTAssertFalse(action.name.contains(secret))
        XCTAssertFalse("\(credential("XOAUTH2", secret: secret))".contains(secret))
        XCTAssertFalse("\(session.state)".contains(secret))
        let rejection = UpstreamConnectionError.authRejected(mechanism: "XOAUTH2", user: "relay@example.edu", reply: Self.refused, detail: nil)
        XCTAssertEqual(rejection.description,
                       "AUTH XOAUTH2 as relay@example.edu refused: 535 5.7.3 Authentication unsuccessful -- Exchange Online refused the credentials: "
                       + "for xoauth2 check the app registration's SMTP.SendAsApp permission and the mailbox's service principal (docs/production.md, Microsoft 365)")
    }
}
