import Foundation
import XCTest

@testable import PosternDirectory

final class AuthThrottleTests: XCTestCase {
    private let start = Date(timeIntervalSince1970: 1_700_000_000)
    private let limits = AuthThrottle.Limits(
        slowDownAfter: 3, delayStep: .seconds(1), maxDelay: .seconds(3),
        lockoutAfter: 6, lockoutDuration: .seconds(600), forgetAfter: .seconds(300))
    private let lenient = AuthThrottle.Limits(
        slowDownAfter: 100, delayStep: .seconds(1), maxDelay: .seconds(3),
        lockoutAfter: 100, lockoutDuration: .seconds(600), forgetAfter: .seconds(300))

    private func at(_ seconds: Double) -> Date { start.addingTimeInterval(seconds) }

    func testFreshLoginAndClientAreAllowedWithoutDelay() {
        var throttle = AuthThrottle(perLogin: limits, perClient: limits)
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "alice", now: start), .allow(delay: .zero))
    }

    func testDelayGrowsAfterSlowDownThresholdAndIsCapped() {
        var throttle = AuthThrottle(perLogin: limits, perClient: lenient)
        var delays: [Duration] = []
        for attempt in 0..<5 {
            guard case .allow(let delay) = throttle.check(client: "192.0.2.1", login: "alice", now: at(Double(attempt))) else {
                return XCTFail("refused after \(attempt) failures")
            }
            delays.append(delay)
            throttle.record(success: false, client: "192.0.2.1", login: "alice", now: at(Double(attempt)))
        }
        XCTAssertEqual(delays, [.zero, .zero, .zero, .seconds(1), .seconds(2)])
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "alice", now: at(5)), .allow(delay: .seconds(3)))
    }

    func testLockoutRefusesUntilItExpires() {
        var throttle = AuthThrottle(perLogin: limits, perClient: lenient)
        for attempt in 0..<6 {
            throttle.record(success: false, client: "192.0.2.1", login: "alice", now: at(Double(attempt)))
        }
        // Locked at t=5 for 600 s, from any address and in any letter case.
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "alice", now: at(6)), .refuse)
        XCTAssertEqual(throttle.check(client: "198.51.100.7", login: "ALICE", now: at(604)), .refuse)
        // Another login from the same address is not affected by alice's lockout.
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "bob", now: at(10)), .allow(delay: .zero))
        // Once served, the lockout starts afresh.
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "alice", now: at(605)), .allow(delay: .zero))
    }

    func testClientGuessingManyLoginsIsLockedOut() {
        var throttle = AuthThrottle(perLogin: lenient, perClient: limits)
        for attempt in 0..<6 {
            throttle.record(success: false, client: "203.0.113.9", login: "user\(attempt)", now: at(Double(attempt)))
        }
        XCTAssertEqual(throttle.check(client: "203.0.113.9", login: "someone-new", now: at(7)), .refuse)
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "someone-new", now: at(7)), .allow(delay: .zero))
    }

    func testSuccessClearsTheLoginStreak() {
        var throttle = AuthThrottle(perLogin: limits, perClient: lenient)
        for attempt in 0..<5 {
            throttle.record(success: false, client: "192.0.2.1", login: "alice", now: at(Double(attempt)))
        }
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "alice", now: at(5)), .allow(delay: .seconds(3)))
        throttle.record(success: true, client: "192.0.2.1", login: "alice", now: at(5))
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "alice", now: at(6)), .allow(delay: .zero))
        // The streak starts from zero again: one more failure is far from a lockout.
        throttle.record(success: false, client: "192.0.2.1", login: "alice", now: at(7))
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "alice", now: at(8)), .allow(delay: .zero))
    }

    func testQuietStreakIsForgotten() {
        var throttle = AuthThrottle(perLogin: limits, perClient: lenient)
        for attempt in 0..<5 {
            throttle.record(success: false, client: "192.0.2.1", login: "alice", now: at(Double(attempt)))
        }
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "alice", now: at(303)), .allow(delay: .seconds(3)))
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "alice", now: at(305)), .allow(delay: .zero))
    }

    func testMemoryStaysBoundedUnderAFloodOfKeys() {
        var throttle = AuthThrottle(perLogin: limits, perClient: limits, maxTrackedKeys: 100)
        for attempt in 0..<5_000 {
            throttle.record(success: false, client: "10.0.\(attempt / 256).\(attempt % 256)", login: "guess\(attempt)", now: at(Double(attempt) / 100))
            XCTAssertLessThanOrEqual(throttle.trackedKeys.logins, 100)
            XCTAssertLessThanOrEqual(throttle.trackedKeys.clients, 100)
        }
        // The newest streaks survive eviction.
        for _ in 0..<5 {
            throttle.record(success: false, client: "10.0.0.1", login: "guess4999", now: at(50))
        }
        XCTAssertEqual(throttle.check(client: "192.0.2.1", login: "guess4999", now: at(51)), .refuse)
    }
}

final class LDAPFilterTests: XCTestCase {
    func testFilterMetacharactersAreEscaped() {
        XCTAssertEqual(LDAPFilter.escape("*"), "\\2a")
        XCTAssertEqual(LDAPFilter.escape("x)(uid=*"), "x\\29\\28uid=\\2a")
        XCTAssertEqual(LDAPFilter.escape("a\u{0}b"), "a\\00b")
        XCTAssertEqual(LDAPFilter.escape("back\\slash"), "back\\5cslash")
        XCTAssertEqual(LDAPFilter.escape("jürgen.müller"), "jürgen.müller")
    }

    func testTemplateIsFilledEverywhere() {
        XCTAssertEqual(
            LDAPFilter.fill("(|(uid=%s)(mail=%s))", with: "a*"),
            "(|(uid=a\\2a)(mail=a\\2a))")
    }

    func testGroupNamesMatchByDNOrFirstValue() {
        let dn = GroupName("cn=mail-submitters,ou=groups,dc=example,dc=edu")
        XCTAssertTrue(GroupName("mail-submitters").matches(dn))
        XCTAssertTrue(GroupName("CN=Mail-Submitters, ou=groups, dc=example, dc=edu").matches(dn))
        XCTAssertFalse(GroupName("staff").matches(dn))
        XCTAssertFalse(GroupName("cn=mail-submitters,ou=other,dc=example,dc=edu").matches(dn))
    }
}
