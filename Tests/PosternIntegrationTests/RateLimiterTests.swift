import Foundation
import Logging
import PosternCore
import PosternGateway
import PosternPolicy
import PosternSMTP
import PosternSession
import XCTest

/// The shared message rate limiter on its own (injected time) and inside the policy rules.
final class RateLimiterTests: XCTestCase {
    let start = Date(timeIntervalSince1970: 1_800_000_000)

    func testBurstThenOneMessagePerIntervalRefills() {
        let limiter = RateLimiter()
        let limit = RateLimit("60/hour")!
        for i in 0..<60 { XCTAssertTrue(limiter.admit("device:a", limit: limit, at: start), "message \(i)") }
        XCTAssertFalse(limiter.admit("device:a", limit: limit, at: start))
        XCTAssertFalse(limiter.admit("device:a", limit: limit, at: start.addingTimeInterval(59)), "one message per minute refills")
        XCTAssertTrue(limiter.admit("device:a", limit: limit, at: start.addingTimeInterval(60)))
        XCTAssertFalse(limiter.admit("device:a", limit: limit, at: start.addingTimeInterval(61)))
        XCTAssertTrue(limiter.admit("device:b", limit: limit, at: start), "keys are independent")
        // A clock that steps back does not mint messages.
        XCTAssertFalse(limiter.admit("device:a", limit: limit, at: start.addingTimeInterval(-3600)))
    }

    func testMemoryStaysBoundedUnderManyKeys() {
        let limiter = RateLimiter(maxKeys: 1000)
        let limit = RateLimit("1/day")!
        for i in 0..<20_000 {
            XCTAssertTrue(limiter.admit("user:u\(i)", limit: limit, at: start.addingTimeInterval(Double(i))))
            XCTAssertLessThanOrEqual(limiter.count, 1000)
        }
        // The most recent keys are still remembered.
        XCTAssertFalse(limiter.admit("user:u19999", limit: limit, at: start.addingTimeInterval(20_000)))
    }

    /// The gateway-wide per-user limit counts every session of one account (its DN, however the login was spelled), and is audited.
    func testPerUserLimitRefusesWith450AndIsAudited() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-rate-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let auditFile = directory.appendingPathComponent("audit.jsonl")
        let store = try PolicyStore(directory: Repo.policies, logger: Logger(label: "test"), userMessagesPerHour: 2)
        let audit = try AuditLog.make(output: auditFile.path)
        let now = start
        let sender = ReversePath.mailbox(try AddressParser.parseMailbox("alice@example.edu"))
        func session(_ id: String, login: String, dn: String = "uid=alice,ou=people,dc=example,dc=edu") -> ConnectionFacts {
            var facts = ConnectionFacts(listenerName: "submission", kind: .submission, clientAddress: "192.0.2.7", sessionID: id)
            facts.tls = TLSInfo(version: "TLSv1.3")
            facts.user = AuthenticatedUser(login: login, distinguishedName: dn, addresses: ["alice@example.edu"], groups: [])
            return facts
        }
        // Rules are made per session, as the listener does; the limiter behind them is the store's.
        XCTAssertEqual(store.rules(now: { now }, audit: audit).checkSender(session("s1", login: "alice"), sender: sender), .accept)
        // Another login of the same entry (an alias the user filter takes, a DN written in other case) is the same account.
        XCTAssertEqual(store.rules(now: { now }, audit: audit).checkSender(session("s2", login: "a.smith", dn: "UID=alice, ou=people,dc=example,dc=edu"),
                                                                           sender: sender), .accept)
        let third = store.rules(now: { now }, audit: audit).checkSender(session("s3", login: "alice"), sender: sender)
        guard case .refuse(let reply) = third else { return XCTFail("third message in the hour accepted") }
        XCTAssertEqual(reply.code, 450)
        XCTAssertEqual(reply.enhancedStatus, "4.7.1")
        // A sender policy refuses is not counted: it is refused for that reason, not the rate.
        let foreign = ReversePath.mailbox(try AddressParser.parseMailbox("mallory@example.edu"))
        guard case .refuse(let notOwned) = store.rules(now: { now }, audit: audit).checkSender(session("s4", login: "bob"), sender: foreign) else {
            return XCTFail("foreign sender accepted")
        }
        XCTAssertEqual(notOwned.code, 553)
        let later = now.addingTimeInterval(1800)
        XCTAssertEqual(store.rules(now: { later }, audit: audit).checkSender(session("s5", login: "alice"), sender: sender), .accept,
                       "half an hour later one more message is allowed")
        let audited = try String(contentsOf: auditFile, encoding: .utf8)
        XCTAssertTrue(audited.contains("rate-limit user:uid=alice,ou=people,dc=example,dc=edu 2/hour"), audited)
    }
}
