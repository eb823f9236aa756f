import Foundation
import PosternPolicy
import PosternRegistration
import XCTest

/// The page as a secretary and an admin meet it, over real HTTPS (curl) against a real slapd: the form's help,
/// post/redirect/get, confirmation pages, a reason required to reject, the notification mail, the history.
final class RegistrationPageTests: XCTestCase {
    func count(_ needle: String, in text: String) -> Int { text.components(separatedBy: needle).count - 1 }

    func testTheFormExplainsEachFieldMarksItRequiredAndUsesDateAndEmailInputs() async throws {
        // 2026-12-02 in Berlin.
        let fixture = try await RegistrationFixture(now: { Date(timeIntervalSince1970: 1_796_212_800) })
        do {
            let bob = try fixture.client()
            _ = try await bob.login("bob", "bob-demo-pass")
            let form = try await bob.get("/register")
            XCTAssertEqual(form.status, 200)
            let body = form.body
            for field in ["department", "device", "model", "location", "address", "sender", "recipients", "contact", "sunset", "justification"] {
                XCTAssertTrue(body.contains(#"<span class="help" id="help-\#(field)">"#), "no help for \(field)")
                XCTAssertTrue(body.contains(#"aria-describedby="help-\#(field)""#), field)
                XCTAssertTrue(body.contains(#"<label for="\#(field)">"#), field)
            }
            XCTAssertEqual(count(#"<abbr class="req" title="required">*</abbr></label>"#, in: body), 9, body)
            XCTAssertEqual(body.matches(of: #/\srequired[\s>]/#).count, 9, body)
            XCTAssertTrue(body.contains(#"name="sunset" type="date" value="2027-08-31" min="2026-12-02" max="2027-08-31" required"#), body)
            XCTAssertTrue(body.contains(#"name="sender" type="email""#), body)
            XCTAssertTrue(body.contains(#"name="contact" type="email""#), body)
            // No jargon without an explanation, the department's own example, the campus ranges before any error.
            XCTAssertTrue(body.contains("The device's IP address"), body)
            XCTAssertTrue(body.contains(#"placeholder="it-scanner-1""#), body)
            XCTAssertTrue(body.contains("inside the campus networks: 127.0.0.0/8, 10.0.0.0/8."), body)
            XCTAssertTrue(body.contains("It must be in\n      example.edu, *.example.edu."), body)
            XCTAssertTrue(body.contains("The rules allow 2027-08-31 at the latest."), body)
            XCTAssertTrue(body.contains(#"<input id="recipients" name="recipients" value="" placeholder="owner *@example.edu""#), "optional, not required: \(body)")
            // The configured university, help and contact (escaped).
            XCTAssertTrue(body.contains("<title>Register a device · University of Example &amp; Co device registration</title>"), body)
            XCTAssertTrue(body.contains(#"<a href="https://it.example.edu/devices-help" id="site-help">Help</a>"#), body)
            XCTAssertTrue(body.contains(#"<a href="mailto:postern-help@example.edu" id="site-contact">postern-help@example.edu</a>"#), body)
            // The built-in help page needs no login.
            let help = try await fixture.client().get("/help")
            XCTAssertEqual(help.status, 200)
            XCTAssertTrue(help.body.contains("campus networks (127.0.0.0/8, 10.0.0.0/8)"), help.body)
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testConfirmationPagesSayWhatWillHappenAndChangeNothing() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let (_, request) = try await fixture.contactWithRequest()
            let (alice, _) = try await fixture.admin()
            let list = try await alice.get("/devices")
            // The list links to the confirmation pages; it has no form that approves, rejects or revokes.
            XCTAssertTrue(list.body.contains(#"<a class="button primary" id="approve-it-scanner-9" href="/requests/\#(request.id)/approve">"#), list.body)
            XCTAssertTrue(list.body.contains(#"id="revoke-demo-scanner" href="/devices/demo-scanner/revoke""#), list.body)
            XCTAssertFalse(list.body.contains(#"method="post" action="/requests/"#), list.body)
            XCTAssertFalse(list.body.contains(#"method="post" action="/devices/"#), list.body)

            let approve = try await alice.get("/requests/\(request.id)/approve")
            XCTAssertEqual(approve.status, 200)
            XCTAssertTrue(approve.body.contains("the gateway accepts mail from <strong>127.0.0.9</strong>"), approve.body)
            XCTAssertTrue(approve.body.contains(#"<form method="post" action="/requests/\#(request.id)/approve">"#), approve.body)
            XCTAssertTrue(approve.body.contains(#"id="confirm-approve""#), approve.body)
            let reject = try await alice.get("/requests/\(request.id)/reject")
            XCTAssertTrue(reject.body.contains(#"<textarea id="reason" name="reason" rows="3" maxlength="500" required"#), reject.body)
            let revoke = try await alice.get("/devices/demo-scanner/revoke")
            XCTAssertTrue(revoke.body.contains("the gateway stops accepting mail from <strong>127.0.0.1</strong>"), revoke.body)
            XCTAssertTrue(revoke.body.contains(#"id="confirm-revoke""#), revoke.body)
            let sunset = try await alice.get("/devices/demo-scanner/sunset")
            XCTAssertTrue(sunset.body.contains(#"name="sunset" type="date" value="2027-08-31""#), sunset.body)
            XCTAssertEqual(try fixture.desk.requests.all().first?.status, .pending)
            XCTAssertNotNil(try fixture.deviceFiles()["it/demo-scanner.yaml"])
            // A page for what is gone sends back to the list with the reason.
            let gone = try await alice.get("/requests/0000/approve")
            XCTAssertEqual(gone.status, 303)
            let after = try await alice.get("/devices")
            XCTAssertTrue(after.body.contains("There is no such request."), after.body)
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testRejectingNeedsAReasonOnTheServerAndTheContactIsMailedIt() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let (_, request) = try await fixture.contactWithRequest()
            // The admins are told at once.
            let arrived = try XCTUnwrap(fixture.mails().first, "no mail to the admins")
            XCTAssertTrue(arrived.contains("To: <postern-admins@example.edu>,\r\n <postmaster@example.edu>\r\n"), arrived)
            XCTAssertTrue(arrived.contains("Subject: Device registration request: it-scanner-9 (IT Services)\r\n"), arrived)
            XCTAssertTrue(arrived.contains("https://devices.example.edu/requests/\(request.id)/reject\r\n"), arrived)

            let (alice, token) = try await fixture.admin()
            for (reason, message) in [("", "Give a reason; the contact gets it by mail."), ("   \r\n ", "Give a reason; the contact gets it by mail."),
                                      ("no\u{202E}way", "bidirectional control U+202E is not allowed"),
                                      (String(repeating: "x", count: 501), "At most 500 characters.")] {
                let (redirect, page) = try await alice.postAndFollow("/requests/\(request.id)/reject", [("csrf", token), ("reason", reason)])
                XCTAssertEqual(redirect.headers("Location"), ["/requests/\(request.id)/reject"], reason.debugDescription)
                XCTAssertTrue(page.body.contains(#"<span class="error" id="error-reason">"#) && page.body.contains(message),
                              "\(reason.debugDescription): \(page.body)")
                XCTAssertEqual(try fixture.desk.requests.all().first?.status, .pending, reason.debugDescription)
            }
            // What was typed comes back in the field.
            let (_, again) = try await alice.postAndFollow("/requests/\(request.id)/reject", [("csrf", token), ("reason", "no\u{202E}way")])
            XCTAssertTrue(again.body.contains("required aria-describedby=\"help-reason\">no\u{202E}way</textarea>"), again.body)
            XCTAssertEqual(fixture.mails().count, 1, "no decision mail yet")

            let (done, list) = try await alice.postAndFollow("/requests/\(request.id)/reject", [("csrf", token), ("reason", "Use scan to folder.")])
            XCTAssertEqual(done.headers("Location"), ["/devices"])
            XCTAssertTrue(list.body.contains("Rejected the request for it-scanner-9. A mail tells it-helpdesk@example.edu."), list.body)
            let stored = try XCTUnwrap(try fixture.desk.requests.all().first)
            XCTAssertEqual(stored.status, .rejected)
            XCTAssertEqual(stored.reason, "Use scan to folder.")
            XCTAssertEqual(stored.decidedBy, "alice")
            let decision = try XCTUnwrap(fixture.mails().last)
            XCTAssertTrue(decision.contains("To: <it-helpdesk@example.edu>\r\n"), decision)
            XCTAssertTrue(decision.contains("Subject: Device it-scanner-9: registration rejected\r\n"), decision)
            XCTAssertTrue(decision.contains("alice rejected the request to register device it-scanner-9.\r\n\r\nReason:\r\n  Use scan to folder.\r\n"), decision)
            XCTAssertTrue(decision.contains("Reply-To: <postern-help@example.edu>\r\n"), decision)
            // A reload of the list after the POST shows the plain list: nothing is sent again.
            let reload = try await alice.get("/devices")
            XCTAssertFalse(reload.body.contains("id=\"notice\""), reload.body)
            XCTAssertEqual(fixture.mails().count, 2)
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testDecidedRequestsMoveToASearchableEscapedHistory() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let bob = try fixture.client()
            _ = try await bob.login("bob", "bob-demo-pass")
            let token = try await bob.sessionToken()
            for (n, device) in ["it-scan-a", "it-scan-b", "it-scan-c", "it-scan-d"].enumerated() {
                var form = RegistrationFixture.form(device: device, address: "10.55.0.\(n + 1)")
                if n == 1 { form = form.map { $0.0 == "contact" ? ("contact", "lab-b@example.edu") : $0 } }
                _ = try await bob.postAndFollow("/register", [("csrf", token)] + form)
            }
            let ids = Dictionary(try fixture.desk.requests.all().map { ($0.deviceID, $0.id) }, uniquingKeysWith: { a, _ in a })
            let (alice, adminToken) = try await fixture.admin()
            _ = try await alice.postAndFollow("/requests/\(try XCTUnwrap(ids["it-scan-a"]))/approve", [("csrf", adminToken)])
            _ = try await alice.postAndFollow("/requests/\(try XCTUnwrap(ids["it-scan-b"]))/reject", [("csrf", adminToken), ("reason", "<script>alert(1)</script> & more")])
            _ = try await alice.postAndFollow("/requests/\(try XCTUnwrap(ids["it-scan-c"]))/reject", [("csrf", adminToken), ("reason", "duplicate")])

            // The list keeps only the pending one.
            let list = try await bob.get("/devices")
            XCTAssertTrue(list.body.contains(#"id="request-it-scan-d""#), list.body)
            XCTAssertFalse(list.body.contains(#"id="request-it-scan-a""#) || list.body.contains(#"id="request-it-scan-b""#), list.body)
            XCTAssertTrue(list.body.contains("3 decided requests are in the history."), list.body)

            func rows(_ query: String) async throws -> (page: HTTPResult, devices: [String]) {
                let page = try await bob.get("/history" + query)
                XCTAssertEqual(page.status, 200, query)
                let devices = page.body.matches(of: #/<tr id="history-([a-z0-9-]+)">/#).map { String($0.output.1) }
                return (page, devices)
            }
            let all = try await rows("")
            XCTAssertEqual(Set(all.devices), ["it-scan-a", "it-scan-b", "it-scan-c"])
            XCTAssertTrue(all.page.body.contains(#"<td data-label="Reason" class="reason">&lt;script&gt;alert(1)&lt;/script&gt; &amp; more</td>"#), all.page.body)
            XCTAssertFalse(all.page.body.contains("<script>"), all.page.body)
            for (query, expected) in [("?device=SCAN-B", ["it-scan-b"]), ("?contact=lab-b", ["it-scan-b"]),
                                      ("?status=rejected", ["it-scan-b", "it-scan-c"]), ("?status=approved&department=it&contact=helpdesk", ["it-scan-a"])] {
                let found = try await rows(query)
                XCTAssertEqual(Set(found.devices), Set(expected), query)
                XCTAssertEqual(found.devices.count, expected.count, query)
            }
            let none = try await rows("?department=chem")
            XCTAssertEqual(none.devices, [])
            XCTAssertTrue(none.page.body.contains("No decided request matches."), none.page.body)
            // What was searched for comes back in the form, escaped.
            let odd = try await rows("?device=%22%3E%3Cscript%3Ex")
            XCTAssertTrue(odd.page.body.contains(#"name="device" value="&quot;&gt;&lt;script&gt;x""#), odd.page.body)
            XCTAssertFalse(odd.page.body.contains("\"><script>"), odd.page.body)
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }

    func testAMailThatCannotBeQueuedDoesNotUndoTheDecisionAndThePageSaysSo() async throws {
        let fixture = try await RegistrationFixture()
        do {
            let (_, request) = try await fixture.contactWithRequest()
            // The outbox is gone: the delivery target answers 451 4.3.0, as a full or broken spool would.
            try FileManager.default.removeItem(at: fixture.outbox.directory)
            let (alice, token) = try await fixture.admin()
            let (_, page) = try await alice.postAndFollow("/requests/\(request.id)/approve", [("csrf", token)])
            XCTAssertTrue(page.body.contains("Approved: it-scanner-9"), page.body)
            XCTAssertTrue(page.body.contains("The notification mail to it-helpdesk@example.edu could not be queued (451 4.3.0"), page.body)
            XCTAssertEqual(try fixture.desk.requests.all().first?.status, .approved)
            XCTAssertNotNil(try PolicyLoader.load(directory: fixture.policyDirectory).get().device(id: "it-scanner-9"))
            let mail = try fixture.auditEvents().filter { $0["event"] as? String == "registration_mail" }
            XCTAssertEqual(mail.compactMap { $0["outcome"] as? String }, ["queued", "not_queued"])
        } catch {
            await fixture.stop()
            throw error
        }
        await fixture.stop()
    }
}

extension RegistrationFixture {
    /// bob, IT Services' contact, logged in and with the request for it-scanner-9 sent (and answered with a
    /// 303 to the list), and the request as stored.
    func contactWithRequest() async throws -> (bob: WebClient, request: RegistrationRequest) {
        let bob = try client()
        _ = try await bob.login("bob", "bob-demo-pass")
        let (sent, _) = try await bob.postAndFollow("/register", [("csrf", try await bob.sessionToken())] + Self.form())
        XCTAssertEqual(sent.headers("Location"), ["/devices"])
        return (bob, try XCTUnwrap(try desk.requests.all().first))
    }

    /// alice, a gateway admin, logged in, and her session's CSRF token.
    func admin() async throws -> (alice: WebClient, token: String) {
        let alice = try client()
        _ = try await alice.login("alice", "alice-demo-pass")
        let list = try await alice.get("/devices")
        return (alice, try XCTUnwrap(list.csrf))
    }
}
