import Foundation
import PosternDirectory
import PosternGateway
import PosternRegistration
import PosternTestSupport
import XCTest

/// The registration page's login: the gateway's throttle (429 with Retry-After), audit events and metrics for
/// failures, one answer for a wrong password and for a right one without a role, roles by DN.
final class RegistrationLoginTests: XCTestCase {
    static let alice = "uid=alice,ou=people,dc=example,dc=edu"
    static let tight = AuthThrottle.Limits(slowDownAfter: 100, delayStep: .milliseconds(10), maxDelay: .milliseconds(10),
                                           lockoutAfter: 3, lockoutDuration: .seconds(600), forgetAfter: .seconds(600))

    /// The page as a client sees it, with what changes on every response whatever the password masked: the form's
    /// token, the date, and the order of a cookie's attributes (Hummingbird keeps them in a dictionary).
    static func comparable(_ page: HTTPResult) -> String {
        let body = page.body.replacingOccurrences(of: #"value="[0-9a-f]{64}""#, with: #"value="TOKEN""#, options: .regularExpression)
        let headers = page.headerLines.dropFirst().filter { !$0.lowercased().hasPrefix("date:") }.map { line -> String in
            let masked = line.replacingOccurrences(of: #"postern_login=[0-9a-f]{64}"#, with: "postern_login=TOKEN", options: .regularExpression)
            guard masked.lowercased().hasPrefix("set-cookie:") else { return masked }
            let parts = masked.components(separatedBy: "; ")
            return ([parts[0]] + parts.dropFirst().sorted()).joined(separator: "; ")
        }
        return "\(page.status)\n\(headers.joined(separator: "\n"))\n\n\(body)"
    }

    func testRightPasswordWithoutARoleGetsTheSamePageAsAWrongPassword() async throws {
        let fixture = try await RegistrationFixture()
        do {
            // webapp has no role on the page; mallory does not exist.
            let right = try await fixture.client().login("webapp", "webapp-demo-pass")
            let wrong = try await fixture.client().login("webapp", "not-the-password")
            XCTAssertEqual(right.status, 401)
            XCTAssertTrue(right.body.contains("Wrong user name or password."), right.body)
            XCTAssertEqual(Self.comparable(right), Self.comparable(wrong))
            XCTAssertFalse(right.body.contains("not a department contact"))
            // The reason is in the audit log only.
            let failures = try fixture.auditEvents().filter { $0["event"] as? String == "registration_login_failed" }
            XCTAssertEqual(failures.compactMap { $0["result"] as? String }, ["not_authorized", "invalid_credentials"])
            XCTAssertEqual(failures.first?["dn"] as? String, "uid=webapp,ou=people,dc=example,dc=edu")
            XCTAssertEqual(failures.first?["client"] as? String, "127.0.0.1")
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()

        // The distinct answer is an option, off by default.
        let revealing = try await RegistrationFixture(revealNotAuthorized: true)
        do {
            let right = try await revealing.client().login("webapp", "webapp-demo-pass")
            XCTAssertEqual(right.status, 403)
            XCTAssertTrue(right.body.contains("not a department contact or gateway admin"), right.body)
        } catch {
            await revealing.stop()
            throw error
        }
        await revealing.stop()
    }

    func testFailedLoginsAreThrottledWith429AndRetryAfterAuditedAndCounted() async throws {
        let fixture = try await RegistrationFixture(throttle: Self.tight)
        do {
            let before = fixture.slapd.bindCount(dn: Self.alice)
            var statuses: [Int] = []
            for n in 0..<30 {
                statuses.append(try await fixture.client().login(n % 2 == 0 ? "alice" : " Alice", "guess-\(n)").status)
            }
            XCTAssertEqual(Array(statuses.prefix(3)), [401, 401, 401])
            XCTAssertEqual(Set(statuses.dropFirst(3)), [429], "\(statuses)")
            XCTAssertEqual(fixture.slapd.bindCount(dn: Self.alice) - before, 3, "30 wrong passwords, 3 binds")
            // The right password while locked: 429 too, and when to come back.
            let right = try await fixture.client().login("alice", "alice-demo-pass")
            XCTAssertEqual(right.status, 429)
            let retryAfter = try XCTUnwrap(Int(right.headers("Retry-After").first ?? ""), "\(right.headerLines)")
            XCTAssertTrue((590...600).contains(retryAfter), "\(retryAfter)")
            XCTAssertTrue(right.body.contains("Too many failed log-ins"), right.body)
            XCTAssertFalse(right.headers("Set-Cookie").contains { $0.hasPrefix("postern_session=") && !$0.hasPrefix("postern_session=;") })

            let failures = try fixture.auditEvents().filter { $0["event"] as? String == "registration_login_failed" }
            XCTAssertEqual(failures.count, 31)
            XCTAssertEqual(failures.filter { $0["result"] as? String == "invalid_credentials" }.count, 3)
            XCTAssertEqual(failures.filter { $0["result"] as? String == "throttled" }.count, 28)
            let exposition = String(decoding: fixture.metrics.exposition(), as: UTF8.self)
            XCTAssertTrue(exposition.contains(#"postern_registration_logins_total{result="throttled"} 28"#), exposition)
            XCTAssertTrue(exposition.contains(#"postern_registration_logins_total{result="invalid_credentials"} 3"#), exposition)

            // Another account from the same address is not locked by alice's lockout...
            let bob = try await fixture.client().login("bob", "bob-demo-pass")
            XCTAssertEqual(bob.status, 303, bob.body)
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testAnAddressGuessingManyAccountsIsLockedOut() async throws {
        let fixture = try await RegistrationFixture(throttle: Self.tight)  // 9 failures per address
        do {
            for n in 0..<9 {
                let page = try await fixture.client().login("guess\(n)", "x")
                XCTAssertEqual(page.status, 401)
            }
            let locked = try await fixture.client().login("bob", "bob-demo-pass")
            XCTAssertEqual(locked.status, 429, "the address is locked whichever account it tries")
            XCTAssertNotNil(locked.headers("Retry-After").first)
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    /// bob is a member of `cn=postern-admins,ou=clubs` (a group he made himself): it does not make him an admin.
    func testAGroupOfTheSameNameOutsideTheGroupBaseGivesNoRole() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let bob = try fixture.client()
            let login = try await bob.login("bob", "bob-demo-pass")
            XCTAssertEqual(login.status, 303)
            let page = try await bob.get("/devices")
            XCTAssertTrue(page.body.contains("bob (contact for it)"), page.body)
            XCTAssertFalse(page.body.contains("chem-scanner-1"), "not an admin")
            let events = try fixture.auditEvents().filter { $0["event"] as? String == "registration_login" }
            XCTAssertEqual(events.first?["role"] as? String, "department")
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }
}
