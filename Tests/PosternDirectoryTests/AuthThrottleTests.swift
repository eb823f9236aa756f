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

    /// One whole attempt: reserve, then settle with the outcome; returns the verdict.
    @discardableResult
    private func attempt(_ throttle: inout AuthThrottle, client: String = "192.0.2.1", account: String, _ outcome: AuthThrottle.Outcome,
                         at time: Double) -> AuthThrottle.Verdict {
        let verdict = throttle.reserve(client: client, account: account, now: at(time))
        if case .allow = verdict { throttle.settle(client: client, accounts: [account], outcome: outcome, now: at(time)) }
        return verdict
    }

    func testFreshAccountAndClientAreAllowedWithoutDelay() {
        var throttle = AuthThrottle(perAccount: limits, perClient: limits)
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "login:alice", now: start), .allow(delay: .zero))
        XCTAssertEqual(throttle.pending(account: "login:alice"), 1)
        throttle.settle(client: "192.0.2.1", accounts: ["login:alice"], outcome: .success, now: start)
        XCTAssertEqual(throttle.trackedKeys.accounts, 0, "a success leaves nothing behind")
        XCTAssertEqual(throttle.trackedKeys.clients, 0)
    }

    func testDelayGrowsAfterSlowDownThresholdAndIsCapped() {
        var throttle = AuthThrottle(perAccount: limits, perClient: lenient)
        var delays: [Duration] = []
        for n in 0..<5 {
            guard case .allow(let delay) = attempt(&throttle, account: "login:alice", .failure, at: Double(n)) else {
                return XCTFail("refused after \(n) failures")
            }
            delays.append(delay)
        }
        XCTAssertEqual(delays, [.zero, .zero, .zero, .seconds(1), .seconds(2)])
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "login:alice", now: at(5)), .allow(delay: .seconds(3)))
    }

    func testLockoutRefusesUntilItExpiresAndSaysHowLong() {
        var throttle = AuthThrottle(perAccount: limits, perClient: lenient)
        for n in 0..<6 { attempt(&throttle, account: "dn:uid=alice", .failure, at: Double(n)) }
        // Locked at t=5 for 600 s, from any address.
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "dn:uid=alice", now: at(6)), .refuse(retryAfter: .seconds(599)))
        XCTAssertEqual(throttle.reserve(client: "198.51.100.7", account: "dn:uid=alice", now: at(604)), .refuse(retryAfter: .seconds(1)))
        // Another account from the same address is not affected by alice's lockout.
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "dn:uid=bob", now: at(10)), .allow(delay: .zero))
        // Once served, the lockout starts afresh.
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "dn:uid=alice", now: at(605)), .allow(delay: .zero))
    }

    func testParallelAttemptsCountBeforeTheyFail() {
        var throttle = AuthThrottle(perAccount: limits, perClient: lenient)
        // Twenty attempts start at once: six get a slot, the rest wait, none is refused yet.
        var verdicts: [AuthThrottle.Verdict] = []
        for n in 0..<20 { verdicts.append(throttle.reserve(client: "10.0.0.\(n)", account: "login:alice", now: start)) }
        XCTAssertEqual(verdicts.filter { if case .allow = $0 { return true } else { return false } }.count, 6)
        XCTAssertEqual(verdicts.filter { $0 == .wait }.count, 14)
        XCTAssertEqual(throttle.pending(account: "login:alice"), 6)
        // The six fail: the account is locked, and the waiting ones are refused when they ask again.
        for n in 0..<6 { throttle.settle(client: "10.0.0.\(n)", accounts: ["login:alice"], outcome: .failure, now: at(1)) }
        XCTAssertEqual(throttle.reserve(client: "10.0.0.7", account: "login:alice", now: at(2)), .refuse(retryAfter: .seconds(599)))
        // Had one of them been the right password, its slot would have gone to a waiting attempt.
        var other = AuthThrottle(perAccount: limits, perClient: lenient)
        for n in 0..<6 { _ = other.reserve(client: "10.0.0.\(n)", account: "login:bob", now: start) }
        XCTAssertEqual(other.reserve(client: "10.0.0.9", account: "login:bob", now: start), .wait)
        other.settle(client: "10.0.0.0", accounts: ["login:bob"], outcome: .undecided, now: start)
        XCTAssertEqual(other.reserve(client: "10.0.0.9", account: "login:bob", now: start), .allow(delay: .zero))
    }

    func testAnAttemptSettlesEveryAccountItReserved() {
        var throttle = AuthThrottle(perAccount: limits, perClient: lenient)
        for n in 0..<6 {
            // Before the search the login, after it the DN: both count the failure.
            XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "login:alice\(n)", now: at(Double(n))), .allow(delay: .zero))
            guard case .allow = throttle.reserve(client: nil, account: "dn:uid=alice", now: at(Double(n))) else { return XCTFail("dn \(n)") }
            throttle.settle(client: "192.0.2.1", accounts: ["login:alice\(n)", "dn:uid=alice"], outcome: .failure, now: at(Double(n)))
        }
        // Six spellings, one account: the DN is locked.
        XCTAssertEqual(throttle.reserve(client: nil, account: "dn:uid=alice", now: at(7)), .refuse(retryAfter: .seconds(598)))
        XCTAssertEqual(throttle.pending(account: "dn:uid=alice"), 0)
    }

    func testClientGuessingManyAccountsIsLockedOut() {
        var throttle = AuthThrottle(perAccount: lenient, perClient: limits)
        for n in 0..<6 { attempt(&throttle, client: "203.0.113.9", account: "login:user\(n)", .failure, at: Double(n)) }
        XCTAssertEqual(throttle.reserve(client: "203.0.113.9", account: "login:someone-new", now: at(7)), .refuse(retryAfter: .seconds(598)))
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "login:someone-new", now: at(7)), .allow(delay: .zero))
    }

    func testSuccessClearsTheAccountStreakButNotTheClients() {
        var throttle = AuthThrottle(perAccount: limits, perClient: limits)
        for n in 0..<5 { attempt(&throttle, account: "login:alice", .failure, at: Double(n)) }
        XCTAssertEqual(attempt(&throttle, account: "login:alice", .success, at: 5), .allow(delay: .seconds(3)))
        XCTAssertEqual(throttle.reserve(client: "198.51.100.1", account: "login:alice", now: at(6)), .allow(delay: .zero))
        // The client's five failures stand: one more locks it.
        attempt(&throttle, account: "login:carol", .failure, at: 7)
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "login:dave", now: at(8)), .refuse(retryAfter: .seconds(599)))
    }

    func testQuietStreakIsForgotten() {
        var throttle = AuthThrottle(perAccount: limits, perClient: lenient)
        for n in 0..<5 { attempt(&throttle, account: "login:alice", .failure, at: Double(n)) }
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "login:alice", now: at(303)), .allow(delay: .seconds(3)))
        throttle.settle(client: "192.0.2.1", accounts: ["login:alice"], outcome: .undecided, now: at(303))
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "login:alice", now: at(305)), .allow(delay: .zero))
    }

    func testMemoryStaysBoundedUnderAFloodOfKeys() {
        var throttle = AuthThrottle(perAccount: limits, perClient: limits, maxTrackedKeys: 100)
        for n in 0..<5_000 {
            attempt(&throttle, client: "10.0.\(n / 256).\(n % 256)", account: "login:guess\(n)", .failure, at: Double(n) / 100)
            XCTAssertLessThanOrEqual(throttle.trackedKeys.accounts, 100)
            XCTAssertLessThanOrEqual(throttle.trackedKeys.clients, 100)
        }
        // The newest streaks survive eviction.
        for _ in 0..<5 { attempt(&throttle, client: "10.0.0.1", account: "login:guess4999", .failure, at: 50) }
        XCTAssertEqual(throttle.reserve(client: "192.0.2.1", account: "login:guess4999", now: at(51)), .refuse(retryAfter: .seconds(599)))
    }

    func testReservationsInFlightSurviveEviction() {
        var throttle = AuthThrottle(perAccount: limits, perClient: lenient, maxTrackedKeys: 10)
        for _ in 0..<6 { _ = throttle.reserve(client: nil, account: "login:alice", now: start) }
        for n in 0..<50 { attempt(&throttle, client: "192.0.2.\(n)", account: "login:other\(n)", .failure, at: Double(n)) }
        XCTAssertEqual(throttle.pending(account: "login:alice"), 6)
        XCTAssertEqual(throttle.reserve(client: nil, account: "login:alice", now: at(60)), .wait)
    }
}

final class NamesTests: XCTestCase {
    func testLoginsAreNormalisedLikeCaseIgnoreMatch() {
        for spelling in ["alice", " alice", "alice ", "Alice ", "ALICE", "  aLiCe  ", "ａｌｉｃｅ", "alice\u{00A0}", "\u{3000}alice"] {
            XCTAssertEqual(LoginName.normalized(spelling), "alice", spelling.debugDescription)
        }
        XCTAssertEqual(LoginName.normalized("Anne  Marie"), "anne marie", "inner runs of spaces are one")
        XCTAssertNotEqual(LoginName.normalized("al ice"), "alice")
        XCTAssertEqual(LoginName.normalized("   "), "")
    }

    func testGroupReferencesByDNOrBareNameUnderTheBase() {
        let base = "ou=groups,dc=example,dc=edu"
        let dn = "cn=mail-submitters,ou=groups,dc=example,dc=edu"
        XCTAssertTrue(GroupReference("mail-submitters", base: base).matches(dn))
        XCTAssertTrue(GroupReference("Mail-Submitters", base: "OU=Groups, dc=example, dc=edu").matches(dn))
        XCTAssertTrue(GroupReference("CN=Mail-Submitters, ou=groups, dc=example, dc=edu", base: nil).matches(dn))
        XCTAssertFalse(GroupReference("staff", base: base).matches(dn))
        XCTAssertFalse(GroupReference("cn=mail-submitters,ou=other,dc=example,dc=edu", base: base).matches(dn))
        // The same name elsewhere, deeper under the base or without a base matches nothing.
        XCTAssertFalse(GroupReference("mail-submitters", base: base).matches("cn=mail-submitters,ou=clubs,dc=example,dc=edu"))
        XCTAssertFalse(GroupReference("mail-submitters", base: base).matches("cn=mail-submitters,ou=x,ou=groups,dc=example,dc=edu"))
        XCTAssertTrue(GroupReference("mail-submitters", base: nil).matchesNothing)
        XCTAssertFalse(GroupReference("mail-submitters", base: nil).matches(dn))
        XCTAssertFalse(GroupReference(dn, base: nil).matchesNothing)
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
}
