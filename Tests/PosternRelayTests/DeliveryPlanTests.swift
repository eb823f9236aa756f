import Foundation
import PosternSMTP
import PosternSpool
import XCTest
@testable import PosternRelay

/// `DeliveryPlan` without sockets: routes, the meaning of replies, expiry, bounces and the next attempt.
final class DeliveryPlanTests: XCTestCase {
    let now = Date(timeIntervalSince1970: 1_800_000_000)

    func plan(_ recipients: [String], attempts: Int = 0, receivedAgo: TimeInterval = 60) -> DeliveryPlan {
        let envelope = SpoolEnvelope(sender: "alice@example.edu", recipients: recipients, receivedAt: now.addingTimeInterval(-receivedAgo),
                                     clientAddress: "192.0.2.1", listener: "submission")
        var state = SpoolEntryState.initial(for: envelope)
        state.attempts = attempts
        return DeliveryPlan(id: "Q1", envelope: envelope, state: state, now: now)
    }

    /// Every recipient of `route` gets `reply`.
    func everyone(_ route: DeliveryPlan.Route, _ reply: SMTPReply) -> [String: DeliveryPlan.RecipientResult] {
        Dictionary(route.recipients.map { ($0, .reply(reply)) }, uniquingKeysWith: { first, _ in first })
    }

    static func upstream(_ recipient: String) -> String { recipient.hasSuffix("@example.edu") ? "hub" : "m365" }

    func testRecipientsGoOncePerDistinctAddressToTheirUpstreamInNameOrder() {
        let plan = plan(["bob@example.org", "carol@example.edu", "bob@EXAMPLE.org", "Bob@example.org", "carol@example.edu"])
        XCTAssertEqual(plan.routes(upstream: Self.upstream), [
            .init(upstream: "hub", recipients: ["carol@example.edu"]),
            .init(upstream: "m365", recipients: ["bob@example.org", "Bob@example.org"]),
        ], "the domain's case is folded, the local part's is not (RFC 5321 2.4)")
    }

    func testRepliesAreDeliveredFailedOrDeferredAndEveryCopyIsSettled() throws {
        var plan = plan(["a@example.edu", "b@example.edu", "b@EXAMPLE.EDU", "c@example.edu"])
        let route = try XCTUnwrap(plan.routes(upstream: Self.upstream).first)
        plan.record(.attempted(["a@example.edu": .reply(SMTPReply(250, "2.0.0", "Ok")), "b@example.edu": .reply(SMTPReply(550, "5.1.1", "unknown")),
                                "c@example.edu": .reply(SMTPReply(451, "4.3.0", "later"))], pauseEnds: nil),
                    for: route, remoteMTA: "hub.example.edu")
        XCTAssertEqual(plan.outcomes.map(\.disposition), [.delivered, .failed, .deferred])
        XCTAssertEqual(plan.failed.map(\.address), ["b@example.edu"], "one DSN line for the two copies")
        XCTAssertEqual(plan.failed.first?.status, "5.1.1")
        XCTAssertEqual(plan.failed.first?.remoteMTA, "hub.example.edu")
        let state = plan.finish(backoff: { _ in 100 })
        XCTAssertEqual(state.recipients.map(\.state), [.delivered, .failed, .failed, .pending])
        XCTAssertEqual(state.recipients.map(\.attempts), [1, 1, 1, 1])
        XCTAssertEqual(state.attempts, 1)
        XCTAssertEqual(state.nextAttempt, now.addingTimeInterval(100), "deferred on its own: the message's backoff")
        XCTAssertFalse(state.isFinished)
    }

    func testAnUpstreamWidePauseDecidesTheNextAttemptUnlessARecipientNeedsItsOwnSooner() throws {
        let pause = now.addingTimeInterval(30)
        var throttled = plan(["a@example.edu"])
        let route = try XCTUnwrap(throttled.routes(upstream: Self.upstream).first)
        throttled.record(.attempted(everyone(route, SMTPReply(450, "4.7.230", "throttled")), pauseEnds: pause), for: route, remoteMTA: "hub")
        XCTAssertEqual(throttled.finish(backoff: { _ in 600 }).nextAttempt, pause, "the queue drains when the upstream recovers")

        var both = plan(["a@example.edu", "z@example.org"])
        let routes = both.routes(upstream: Self.upstream)
        both.record(.attempted(everyone(routes[0], SMTPReply(450, "4.7.230", "throttled")), pauseEnds: pause), for: routes[0], remoteMTA: "hub")
        both.record(.attempted(["z@example.org": .local("connect failed")], pauseEnds: nil), for: routes[1], remoteMTA: "m365")
        XCTAssertEqual(both.finish(backoff: { _ in 10 }).nextAttempt, now.addingTimeInterval(10), "the earlier of the two")
    }

    func testAPausedUpstreamIsNotAnAttempt() throws {
        var plan = plan(["a@example.edu"], attempts: 3)
        let route = try XCTUnwrap(plan.routes(upstream: Self.upstream).first)
        plan.record(.paused(until: now.addingTimeInterval(5)), for: route, remoteMTA: "hub")
        let state = plan.finish(backoff: { _ in 100 })
        XCTAssertEqual(state.attempts, 3, "nothing was sent")
        XCTAssertEqual(state.recipients.first?.attempts, 0)
        XCTAssertNil(state.lastAttempt)
        XCTAssertEqual(state.nextAttempt, now.addingTimeInterval(5))
        XCTAssertTrue(plan.outcomes.isEmpty)
    }

    func testAnUnconfiguredUpstreamDefersOnItsOwn() throws {
        var plan = plan(["a@example.edu"])
        let route = try XCTUnwrap(plan.routes(upstream: { _ in "gone" }).first)
        plan.noSuchUpstream(route)
        let state = plan.finish(backoff: { _ in 42 })
        XCTAssertEqual(state.recipients.first?.lastReply, "no upstream named gone is configured")
        XCTAssertEqual(state.nextAttempt, now.addingTimeInterval(42))
        XCTAssertEqual(state.attempts, 1)
    }

    func testAnExpiredMessageFailsWhatIsPendingOncePerRecipientWithItsLastError() throws {
        var plan = plan(["a@example.edu", "b@example.edu", "b@example.EDU"], receivedAgo: 7200)
        XCTAssertTrue(plan.isExpired(expiry: .seconds(3600)))
        XCTAssertFalse(plan.isExpired(expiry: .seconds(7201)))
        let route = try XCTUnwrap(plan.routes(upstream: Self.upstream).first)
        plan.record(.attempted(["a@example.edu": .reply(SMTPReply(250, "2.0.0", "Ok")), "b@example.edu": .local("connect failed")], pauseEnds: nil),
                    for: route, remoteMTA: "hub")
        plan.expire(expiry: .seconds(3600), upstream: Self.upstream)
        XCTAssertEqual(plan.failed.map(\.address), ["b@example.edu"])
        XCTAssertEqual(plan.failed.first?.status, "4.4.7")
        XCTAssertEqual(plan.failed.first?.diagnostic, "message expired after 1 hours in the queue; last error: connect failed")
        XCTAssertEqual(plan.outcomes.map(\.disposition), [.delivered, .deferred, .expired])
        XCTAssertTrue(plan.finish(backoff: { _ in 1 }).isFinished)
    }

    /// Counters from a state file can be any Int: they saturate.
    func testCountersAtIntMaxSaturate() throws {
        var plan = plan(["a@example.edu"], attempts: .max)
        XCTAssertEqual(plan.attempt, .max)
        let route = try XCTUnwrap(plan.routes(upstream: Self.upstream).first)
        var state = plan.finish(backoff: { _ in 1 })
        state.recipients[0].attempts = .max
        plan = DeliveryPlan(id: "Q1", envelope: plan.envelope, state: state, now: now)
        plan.record(.attempted(everyone(route, SMTPReply(451, "4.3.0", "later")), pauseEnds: nil), for: route, remoteMTA: "hub")
        let after = plan.finish(backoff: { _ in 1 })
        XCTAssertEqual(after.attempts, .max)
        XCTAssertEqual(after.recipients.first?.attempts, .max)
    }
}
