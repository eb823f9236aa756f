import NIOCore
import XCTest
@testable import PosternSMTP
@testable import PosternSession

/// Results and commands that arrive in a state that cannot take them used to be `preconditionFailure`
/// (issue #13): a trap ends every listener. Now the session closes with `421 4.3.0` and says why.
extension SMTPSessionTests {
    func assertClosedWithInternalError(_ action: SessionAction, _ s: SMTPSession, mentioning: String,
                                       file: StaticString = #filePath, line: UInt = #line) {
        guard case .close(let reply) = action else { return XCTFail("expected a close, got \(action)", file: file, line: line) }
        XCTAssertEqual(reply.code, 421, file: file, line: line)
        XCTAssertEqual(reply.enhancedStatus, "4.3.0", file: file, line: line)
        XCTAssertTrue(s.isClosed, file: file, line: line)
        let reason = s.internalError ?? ""
        XCTAssertTrue(reason.contains(mentioning), "\(reason)", file: file, line: line)
    }

    func testResultsInTheWrongStateCloseWith421() {
        var s = makeSession(.device)
        send(&s, "EHLO scanner")
        assertClosedWithInternalError(s.authCompleted(.success(alice)), s, mentioning: "authentication result in state ready")

        s = makeSession(.device)
        send(&s, "EHLO scanner")
        send(&s, "MAIL FROM:<scan@example.edu>")
        assertClosedWithInternalError(s.dataCompleted(.message(ByteBuffer(string: "x\r\n"))), s, mentioning: "end of DATA in state transaction")

        s = makeSession(.device)
        send(&s, "EHLO scanner")
        assertClosedWithInternalError(s.deliveryCompleted(.queued(id: "Q1")), s, mentioning: "delivery result in state ready")
    }

    func testCommandsInAWaitingOrClosedStateCloseWith421() {
        var s = makeSession(.submissions)
        s.tlsEstablished(TLSInfo(version: "TLSv1.3"))
        send(&s, "EHLO client")
        guard case .authenticate = send(&s, "AUTH PLAIN AGFsaWNlAHNlY3JldA==") else { return XCTFail() }
        let action = s.receive(.noop)
        assertClosedWithInternalError(action, s, mentioning: "command noop in state authenticating")
        XCTAssertFalse(s.internalError?.contains("c2VjcmV0") ?? true, "no credentials in the reason")

        s = makeSession(.device)
        send(&s, "QUIT")
        assertClosedWithInternalError(s.receive(.rset), s, mentioning: "command rset in state closed")
    }

    /// The reachable one: the idle timeout (or a shutdown) closes a session while the directory is
    /// still checking its AUTH; the directory's answer then arrives for a closed session.
    func testAuthenticationResultForASessionClosedMeanwhileDoesNotTrap() {
        var s = makeSession(.submissions)
        s.tlsEstablished(TLSInfo(version: "TLSv1.3"))
        send(&s, "EHLO client")
        guard case .authenticate = send(&s, "AUTH PLAIN AGFsaWNlAHNlY3JldA==") else { return XCTFail() }
        XCTAssertEqual(reply(s.close(with: .idleTimeout)), .idleTimeout)
        assertClosedWithInternalError(s.authCompleted(.success(alice)), s, mentioning: "authentication result in state closed")
        XCTAssertNil(s.facts.user, "a late success does not log the closed session in")
    }
}
