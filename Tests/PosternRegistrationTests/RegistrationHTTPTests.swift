import Foundation
import PosternPolicy
import PosternRegistration
import XCTest

/// The registration page over real HTTPS (curl), logging in against a real slapd.
final class RegistrationHTTPTests: XCTestCase {
    func testLoginSetsASecureHttpOnlySameSiteSessionCookieAndLogoutEndsIt() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let web = try fixture.client()
            let wrong = try await web.login("bob", "not-his-password")
            XCTAssertEqual(wrong.status, 401)
            XCTAssertTrue(wrong.body.contains("Wrong user name or password"))

            let ok = try await web.login("bob", "bob-demo-pass")
            XCTAssertEqual(ok.status, 303, ok.body)
            XCTAssertEqual(ok.headers("Location"), ["/devices"])
            let cookie = try XCTUnwrap(ok.headers("Set-Cookie").first { $0.hasPrefix("postern_session=") })
            XCTAssertTrue(cookie.contains("Secure"), cookie)
            XCTAssertTrue(cookie.contains("HttpOnly"), cookie)
            XCTAssertTrue(cookie.contains("SameSite=Strict"), cookie)
            let page = try await web.get("/devices")
            XCTAssertEqual(page.status, 200)
            XCTAssertTrue(page.body.contains("bob (contact for it)"), page.body)

            let token = try await web.sessionToken()
            let out = try await web.post("/logout", [("csrf", token)])
            XCTAssertEqual(out.status, 303)
            let after = try await web.get("/devices")
            XCTAssertEqual(after.status, 303, "the session is gone after logout")
            XCTAssertEqual(after.headers("Location"), ["/login"])
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testLoginWithoutTheFormTokenIsRefused() async throws {
        let fixture = try await RegistrationFixture()
        do {
            // A cross-site login POST has no token cookie to match.
            let fresh = try fixture.client()
            let forged = try await fresh.post("/login", [("csrf", "00"), ("login", "alice"), ("password", "alice-demo-pass")])
            XCTAssertEqual(forged.status, 403)
            XCTAssertTrue(forged.headers("Set-Cookie").allSatisfy { !$0.hasPrefix("postern_session=") || $0.hasPrefix("postern_session=;") })
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testPostsWithoutTheSessionsCSRFTokenAreRefusedAndChangeNothing() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let bob = try fixture.client()
            _ = try await bob.login("bob", "bob-demo-pass")
            let missing = try await bob.post("/register", RegistrationFixture.form())
            XCTAssertEqual(missing.status, 403)
            let wrong = try await bob.post("/register", [("csrf", String(repeating: "a", count: 64))] + RegistrationFixture.form())
            XCTAssertEqual(wrong.status, 403)
            XCTAssertTrue(try fixture.desk.requests.all().isEmpty)

            let token = try await bob.sessionToken()
            let made = try await bob.post("/register", [("csrf", token)] + RegistrationFixture.form())
            XCTAssertEqual(made.status, 303, made.body)
            let request = try XCTUnwrap(try fixture.desk.requests.all().first)

            // alice's approval with bob's token, or none, does nothing.
            let alice = try fixture.client()
            _ = try await alice.login("alice", "alice-demo-pass")
            let forged = try await alice.post("/requests/\(request.id)/approve", [("csrf", token)])
            XCTAssertEqual(forged.status, 403)
            let none = try await alice.post("/devices/demo-scanner/revoke", [])
            XCTAssertEqual(none.status, 403)
            XCTAssertEqual(try fixture.desk.requests.all().first?.status, .pending)
            XCTAssertNil(try fixture.deviceFiles()["it/it-scanner-9.yaml"])
            XCTAssertNotNil(try fixture.deviceFiles()["it/demo-scanner.yaml"])
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testBadInputGetsAnErrorNextToEachFieldNeverA500() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let bob = try fixture.client()
            _ = try await bob.login("bob", "bob-demo-pass")
            let token = try await bob.sessionToken()
            /// The refused form comes back on GET /register (post/redirect/get) with the messages.
            func attempt(_ changes: [String: String]) async throws -> HTTPResult {
                let form = RegistrationFixture.form().map { ($0.0, changes[$0.0] ?? $0.1) }
                let (redirect, page) = try await bob.postAndFollow("/register", [("csrf", token)] + form)
                XCTAssertEqual(redirect.headers("Location"), ["/register"], "\(changes)")
                return page
            }
            let cases: [([String: String], String, String)] = [
                (["address": "10.1.2.0/24"], "error-address", "no range"),
                (["address": "192.168.7.7"], "error-address", "outside the campus networks"),
                (["address": "127.0.0.1"], "error-address", "already used by device demo-scanner"),
                (["address": "not an address"], "error-address", "Give one IPv4 or IPv6 address"),
                (["address": ""], "error-address", "Give the device&#39;s IP address."),
                (["sunset": "2031-01-01"], "error-sunset", "2027-08-31 at the latest"),
                (["sunset": "2020-01-01"], "error-sunset", "cannot be in the past"),
                (["sunset": "next year"], "error-sunset", "YYYY-MM-DD"),
                (["sunset": "2027-02-30"], "error-sunset", "2027-02-30 is not a day in the calendar."),
                (["sunset": ""], "error-sunset", "Choose the last day the device may send."),
                (["sender": "example.edu"], "error-sender", "example.edu is not one mail address"),
                (["sender": ""], "error-sender", "Give the address the device sends as."),
                (["contact": "nobody"], "error-contact", "nobody is not a mail address"),
                (["contact": ""], "error-contact", "Give the mail address that gets the decision and the sunset reminders."),
                (["device": "Bad Name!"], "error-device", "lower-case letters"),
                (["device": ""], "error-device", "Give the device a name."),
                (["device": "demo-scanner"], "error-device", "already registered"),
                (["department": "chem"], "error-department", "your own department"),
                (["department": "no-such"], "error-department", "Choose a department"),
                (["justification": ""], "error-justification", "Explain why"),
            ]
            for (changes, id, text) in cases {
                let page = try await attempt(changes)
                XCTAssertEqual(page.status, 200, "\(changes)")
                guard let r = page.body.range(of: #"<span class="error" id="\#(id)">[^<]*</span>"#, options: .regularExpression) else {
                    XCTFail("\(changes): no \(id) on the page:\n\(page.body)")
                    continue
                }
                XCTAssertTrue(page.body[r].contains(text), "\(changes): \(page.body[r])")
            }
            // The form keeps what was typed (escaped), an empty date included: it is not filled in again.
            let page = try await attempt(["location": "Room <b>1</b> & \"2\"", "address": "10.1.2.3", "sunset": ""])
            XCTAssertTrue(page.body.contains("Room &lt;b&gt;1&lt;/b&gt; &amp; &quot;2&quot;"), page.body)
            XCTAssertTrue(page.body.contains(#"name="sunset" type="date" value="" "#), page.body)
            XCTAssertTrue(try fixture.desk.requests.all().isEmpty)
            // A reload of the refused form's page shows the plain form: the messages were for one showing.
            let reload = try await bob.get("/register")
            XCTAssertFalse(reload.body.contains(#"class="error""#), reload.body)
            // Unknown ids and actions without the role are refused, on the next page.
            let (odd, oddPage) = try await bob.postAndFollow("/requests/nonexistent/approve", [("csrf", token)])
            XCTAssertEqual(odd.headers("Location"), ["/devices"])
            XCTAssertTrue(oddPage.body.contains("Only gateway admins approve"), oddPage.body)
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testRolesContactSeesOwnDepartmentAdminSeesAllAndApproves() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let bob = try fixture.client()
            _ = try await bob.login("bob", "bob-demo-pass")
            let own = try await bob.get("/devices")
            XCTAssertTrue(own.body.contains("id=\"device-demo-scanner\""))
            XCTAssertFalse(own.body.contains("chem-scanner-1"), "a contact sees only their department")
            XCTAssertFalse(own.body.contains("/revoke"), "contacts get no admin buttons")
            let token = try await bob.sessionToken()
            _ = try await bob.post("/register", [("csrf", token)] + RegistrationFixture.form())
            let request = try XCTUnwrap(try fixture.desk.requests.all().first)
            let (_, selfApproval) = try await bob.postAndFollow("/requests/\(request.id)/approve", [("csrf", token)])
            XCTAssertTrue(selfApproval.body.contains("Only gateway admins approve requests."), selfApproval.body)
            XCTAssertEqual(try fixture.desk.requests.all().first?.status, .pending)
            let (_, revoke) = try await bob.postAndFollow("/devices/demo-scanner/revoke", [("csrf", token)])
            XCTAssertTrue(revoke.body.contains("Only gateway admins revoke devices."), revoke.body)
            XCTAssertNotNil(try fixture.deviceFiles()["it/demo-scanner.yaml"])
            // Nor do contacts get the confirmation pages.
            let confirm = try await bob.get("/requests/\(request.id)/approve")
            XCTAssertEqual(confirm.headers("Location"), ["/devices"])

            let alice = try fixture.client()
            _ = try await alice.login("alice", "alice-demo-pass")
            let all = try await alice.get("/devices")
            XCTAssertTrue(all.body.contains("chem-scanner-1") && all.body.contains("med-fax-gateway"))
            XCTAssertTrue(all.body.contains("id=\"approve-it-scanner-9\""))
            let adminToken = try XCTUnwrap(all.csrf)
            let (_, approved) = try await alice.postAndFollow("/requests/\(request.id)/approve", [("csrf", adminToken)])
            XCTAssertEqual(approved.status, 200, approved.body)
            XCTAssertTrue(approved.body.contains("Approved: it-scanner-9"))
            let policy = try PolicyLoader.load(directory: fixture.policyDirectory).get()
            let device = try XCTUnwrap(policy.device(forAddress: "127.0.0.9"))
            XCTAssertEqual(device.id, "it-scanner-9")
            XCTAssertEqual(device.owner, "it-helpdesk@example.edu")
            XCTAssertEqual(device.sunset, CalendarDate("2027-06-30"))
            XCTAssertEqual(device.senders.map(\.description), ["scanner9@example.edu"])
            let (_, again) = try await alice.postAndFollow("/requests/\(request.id)/approve", [("csrf", adminToken)])
            XCTAssertTrue(again.body.contains("Request it-scanner-9 was already approved."), "approving twice is refused: \(again.body)")

            // Extension within the rules, then beyond them; then revocation.
            let (tooLateRedirect, tooLate) = try await alice.postAndFollow("/devices/it-scanner-9/extend", [("csrf", adminToken), ("sunset", "2028-01-01")])
            XCTAssertEqual(tooLateRedirect.headers("Location"), ["/devices/it-scanner-9/sunset"])
            XCTAssertTrue(tooLate.body.contains("2027-08-31 at the latest"), tooLate.body)
            let (_, extended) = try await alice.postAndFollow("/devices/it-scanner-9/extend", [("csrf", adminToken), ("sunset", "2027-08-31")])
            XCTAssertTrue(extended.body.contains("The sunset of it-scanner-9 is now 2027-08-31."), extended.body)
            XCTAssertEqual(try PolicyLoader.load(directory: fixture.policyDirectory).get().device(id: "it-scanner-9")?.sunset, CalendarDate("2027-08-31"))
            let (_, revoked) = try await alice.postAndFollow("/devices/it-scanner-9/revoke", [("csrf", adminToken)])
            XCTAssertTrue(revoked.body.contains("Revoked it-scanner-9"), revoked.body)
            XCTAssertNil(try PolicyLoader.load(directory: fixture.policyDirectory).get().device(id: "it-scanner-9"))

            // Reject path: the contact finds the decision and its reason in the history.
            _ = try await bob.post("/register", [("csrf", token)] + RegistrationFixture.form(device: "it-copier-7", address: "10.77.0.7"))
            let second = try XCTUnwrap(try fixture.desk.requests.all().first { $0.deviceID == "it-copier-7" })
            let rejected = try await alice.post("/requests/\(second.id)/reject", [("csrf", adminToken), ("reason", "use scan-to-folder")])
            XCTAssertEqual(rejected.status, 303)
            let bobsView = try await bob.get("/history")
            XCTAssertTrue(bobsView.body.contains(#"<td data-label="Reason" class="reason">use scan-to-folder</td>"#), bobsView.body)

            // Everything is in the audit log with who did it.
            let events = try fixture.auditEvents()
            func actor(_ name: String) -> [String] { events.filter { $0["event"] as? String == name }.compactMap { $0["actor"] as? String } }
            XCTAssertEqual(actor("registration_requested"), ["bob", "bob"])
            XCTAssertEqual(actor("registration_approved"), ["alice"])
            XCTAssertEqual(actor("sunset_changed"), ["alice"])
            XCTAssertEqual(actor("device_revoked"), ["alice"])
            XCTAssertEqual(actor("registration_rejected"), ["alice"])
            XCTAssertTrue(events.allSatisfy { ($0["time"] as? String)?.hasSuffix("Z") == true })
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testCSVExportListsTheDepartmentsDevicesWithDaysToSunset() async throws {
        // 2027-08-10 in Berlin: the global sunset (2027-08-31) is 21 days away, inside the 30-day reminder period.
        let fixture = try await RegistrationFixture(now: { Date(timeIntervalSince1970: 1_817_899_200) })
        do {
            let bob = try fixture.client()
            _ = try await bob.login("bob", "bob-demo-pass")
            let csv = try await bob.get("/devices.csv")
            XCTAssertEqual(csv.status, 200)
            XCTAssertTrue(csv.headers("Content-Type").first?.hasPrefix("text/csv") == true)
            let lines = csv.body.components(separatedBy: "\r\n").filter { !$0.isEmpty }
            XCTAssertEqual(lines.first, "device,department,owner,location,addresses,senders,registered,sunset,effective_sunset,sunset_rule,days_left,status")
            XCTAssertEqual(lines.count, 3, csv.body)  // demo-scanner and it-copier-1 only
            let scanner = try XCTUnwrap(lines.first { $0.hasPrefix("demo-scanner,") })
            XCTAssertTrue(scanner.hasSuffix(",2027-08-31,device,21,reminder"), scanner)
            XCTAssertTrue(scanner.contains("\"Demo setup, loopback\""), scanner)

            let alice = try fixture.client()
            _ = try await alice.login("alice", "alice-demo-pass")
            let all = try await alice.get("/devices.csv")
            XCTAssertTrue(all.body.contains("chem-copier-old,chem"))
            XCTAssertTrue(all.body.contains(",expired\r\n"))
            let page = try await alice.get("/devices")
            XCTAssertTrue(page.body.contains("id=\"device-chem-copier-old\" class=\"expired\""))
            XCTAssertTrue(page.body.contains("id=\"device-demo-scanner\" class=\"due-soon\""))
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }
}
