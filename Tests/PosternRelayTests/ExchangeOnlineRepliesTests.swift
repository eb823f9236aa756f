import Foundation
import PosternSMTP
import PosternSpool
import XCTest
@testable import PosternRelay

/// Exchange Online's documented replies: each named with its hint, and which of them pause the whole upstream.
final class ExchangeOnlineRepliesTests: XCTestCase {
    func reply(_ text: String) throws -> SMTPReply { try SMTPReplyParser.parse(text) }

    func testEveryReplyOfTheIssueGetsItsHint() throws {
        let expected: [(String, String)] = [
            ("450 4.7.230 Connecting Exchange server version out of date; connection throttled", "out-of-date on-premises Exchange server"),
            ("550 5.7.230 Connecting Exchange server version out of date; connection blocked", "out-of-date on-premises Exchange server"),
            ("451 4.7.500 Access denied, please try again later", "throttling this sending IP address"),
            ("451 4.7.699 Access denied, please try again later", "throttling this sending IP address"),
            ("550 5.7.64 TenantAttribution; Relay Access Denied", "TenantAttribution"),
            ("550 5.7.68 TenantInboundAttribution; Rejecting", "TenantInboundAttribution"),
            ("550 5.7.233 Your message can't be sent because your tenant exceeded its daily limit", "external recipients (TERRL)"),
            ("421 4.7.66 TLS version not supported", "refused the TLS version"),
            ("550 5.7.30 Basic authentication is not supported for Client Submission", "use auth mechanism xoauth2"),
        ]
        for (text, fragment) in expected {
            let annotated = ExchangeOnlineReplies.annotated(try reply(text))
            XCTAssertTrue(annotated.hasPrefix(try reply(text).description + " -- "), annotated)
            XCTAssertTrue(annotated.contains(fragment), "\(text): \(annotated)")
        }
    }

    func testRepliesOutsideTheTableKeepTheirTextAlone() throws {
        for text in ["451 4.7.499 Something else", "451 4.7.700 Something else", "550 5.1.1 No such user", "250 2.0.0 Ok", "450 4.2.0 Mailbox busy"] {
            XCTAssertEqual(ExchangeOnlineReplies.annotated(try reply(text)), try reply(text).description, text)
        }
        XCTAssertNil(ExchangeOnlineReplies.hint(for: SMTPReply(code: 554, enhancedStatus: nil, lines: ["no status"])))
    }

    func testIPThrottlingAndOtherSecurityPausesAreUpstreamWideButPermanentRefusalsAreNot() throws {
        for text in ["451 4.7.500 Access denied", "451 4.7.650 Access denied", "451 4.7.699 Access denied", "450 4.7.230 throttled",
                     "421 4.7.66 TLS version", "421 4.3.2 busy"] {
            XCTAssertTrue(ExchangeOnlineReplies.isUpstreamWide(try reply(text)), text)
        }
        for text in ["550 5.7.64 TenantAttribution; Relay Access Denied", "450 4.2.0 Mailbox busy", "452 4.5.3 Too many recipients",
                     "550 5.7.230 blocked"] {
            XCTAssertFalse(ExchangeOnlineReplies.isUpstreamWide(try reply(text)), text)
        }
    }

    /// The queue's last reason and the audit line carry the hint; the DSN's diagnostic is the upstream's own words.
    func testTheDeliveryPlanRecordsTheHintAndTheDSNKeepsTheRawReply() throws {
        let now = Date()
        let envelope = SpoolEnvelope(sender: "a@example.edu", recipients: ["x@example.org", "y@example.org"], receivedAt: now,
                                     clientAddress: "192.0.2.1", listener: "device")
        var plan = DeliveryPlan(id: "q1", envelope: envelope, state: .initial(for: envelope), now: now)
        let refused = try reply("550 5.7.64 TenantAttribution; Relay Access Denied")
        let throttled = try reply("451 4.7.500 Access denied, please try again later")
        plan.record(.attempted(["x@example.org": .reply(refused), "y@example.org": .reply(throttled)], pauseEnds: now.addingTimeInterval(60)),
                    for: .init(upstream: "m365", recipients: envelope.recipients), remoteMTA: "example-edu.mail.protection.outlook.com")
        let state = plan.finish(backoff: { _ in 60 })
        let x = try XCTUnwrap(state.recipients.first { $0.address == "x@example.org" })
        XCTAssertEqual(x.state, .failed)
        XCTAssertTrue(x.lastReply?.contains("-- TenantAttribution: no connector of the tenant accepts this sender") ?? false, "\(x)")
        let y = try XCTUnwrap(state.recipients.first { $0.address == "y@example.org" })
        XCTAssertTrue(y.lastReply?.contains("throttling this sending IP address") ?? false, "\(y)")
        XCTAssertEqual(plan.outcomes.map(\.reply), [ExchangeOnlineReplies.annotated(refused), ExchangeOnlineReplies.annotated(throttled)])
        XCTAssertEqual(plan.failed.map(\.diagnostic), [refused.description])
    }
}
