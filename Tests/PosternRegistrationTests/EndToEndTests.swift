import Foundation
import PosternPolicy
import PosternTestSupport
import XCTest

/// The real `postern serve` with a `registration:` section: a request approved on the page reaches the
/// running gateway's device listener without a restart. And the same flow in a real headless browser.
final class EndToEndTests: XCTestCase {
    static let smtpProbe = """
        import smtplib, sys
        port, source = int(sys.argv[1]), sys.argv[2]
        try:
            s = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10)
            s.sendmail("scanner9@example.edu", ["bob@example.edu"], "Subject: registered\\r\\n\\r\\nhello\\r\\n")
            s.quit()
            print("ACCEPTED")
        except (smtplib.SMTPException, OSError) as e:
            print("REFUSED", e)
        """

    func smtp(port: Int, from source: String) async throws -> String {
        try await runProgram(["/usr/bin/python3", "-c", Self.smtpProbe, "\(port)", source]).output
    }

    func testApprovedRequestIsAcceptedByTheRunningGatewayWithoutARestart() async throws {
        let slapd = try TestSlapd()
        let directory = try Repo.temporaryDirectory("postern-web-e2e")
        defer { try? FileManager.default.removeItem(at: directory) }
        let policies = directory.appendingPathComponent("policies")
        try FileManager.default.createDirectory(at: policies, withIntermediateDirectories: true)
        try Repo.copyPolicies(to: policies)
        let certs = slapd.certificateDirectory
        let smtpPort = freeLoopbackPort(), webPort = freeLoopbackPort()
        let yaml = """
            hostname: gw.test
            policies: policies
            tls: { certificate: \(certs)/server.pem, key: \(certs)/server.key }
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:\(smtpPort)" }
            delivery: { outbox: outbox }
            audit: { output: audit.jsonl }
            directory:
              uris: [\(slapd.ldapsURI)]
              ca-file: \(slapd.caFile)
              bind-dn: \(slapd.bindDN)
              bind-password-env: POSTERN_LDAP_PASSWORD
              search-base: ou=people,dc=example,dc=edu
              group-attribute: memberOf
              group-base: ou=groups,dc=example,dc=edu
              required-groups: [mail-submitters]
            registration:
              listen: 127.0.0.1:\(webPort)
              admin-groups: [postern-admins]
              department-groups: { it: [dept-it] }
              campus-ranges: [127.0.0.0/8, 10.0.0.0/8]
              state: state
            """
        let config = directory.appendingPathComponent("postern.yaml")
        try yaml.write(to: config, atomically: true, encoding: .utf8)
        setenv("POSTERN_LDAP_PASSWORD", slapd.bindPassword, 1)
        let log = directory.appendingPathComponent("serve.log").path
        let pid = try spawnProcess([Repo.posternBinary.path, "serve", "--config", config.path], output: log)
        defer {
            kill(pid, SIGTERM)
            _ = waitForExit(pid)
        }
        func serveLog() -> String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

        let web = try WebClient(base: "https://127.0.0.1:\(webPort)", caFile: slapd.caFile)
        var loginPage: HTTPResult?
        for _ in 0..<150 where loginPage == nil {
            loginPage = try? await web.get("/login")
            if loginPage == nil { try await Task.sleep(for: .milliseconds(200)) }
        }
        XCTAssertEqual(loginPage?.status, 200, serveLog())
        guard loginPage != nil else { return }

        let before = try await smtp(port: smtpPort, from: "127.0.0.9")
        XCTAssertTrue(before.contains("REFUSED") && before.contains("not a registered device"), before)

        _ = try await web.login("bob", "bob-demo-pass")
        let token = try await web.sessionToken()
        let made = try await web.post("/register", [("csrf", token)] + RegistrationFixture.form())
        XCTAssertEqual(made.status, 200, made.body)
        let pending = try await web.get("/devices")
        XCTAssertTrue(pending.body.contains("it-scanner-9") && pending.body.contains("pending"))

        let admin = try WebClient(base: web.base, caFile: slapd.caFile)
        _ = try await admin.login("alice", "alice-demo-pass")
        let page = try await admin.get("/devices")
        guard let r = page.body.range(of: #"/requests/[0-9a-f]+/approve"#, options: .regularExpression) else {
            return XCTFail("no approve button: \(page.body)")
        }
        let approved = try await admin.post(String(page.body[r]), [("csrf", try XCTUnwrap(page.csrf))])
        XCTAssertEqual(approved.status, 200, approved.body)
        XCTAssertNotNil(try PolicyLoader.load(directory: policies).get().device(forAddress: "127.0.0.9"))

        // The gateway polls its policy files every 2 s.
        var after = ""
        for _ in 0..<40 {
            after = try await smtp(port: smtpPort, from: "127.0.0.9")
            if after.contains("ACCEPTED") { break }
            try await Task.sleep(for: .milliseconds(250))
        }
        XCTAssertTrue(after.contains("ACCEPTED"), after + "\n" + serveLog())
        // (The outbox also gets the gateway's own sunset reminders; count only the device's message.)
        let outbox = directory.appendingPathComponent("outbox")
        let messages = ((try? FileManager.default.contentsOfDirectory(atPath: outbox.path)) ?? []).filter { $0.hasSuffix(".eml") }
            .compactMap { try? String(contentsOf: outbox.appendingPathComponent($0), encoding: .utf8) }
        XCTAssertEqual(messages.filter { $0.contains("Subject: registered") }.count, 1, messages.joined(separator: "\n----\n"))
        let audit = (try? String(contentsOf: directory.appendingPathComponent("audit.jsonl"), encoding: .utf8)) ?? ""
        XCTAssertTrue(audit.contains("\"event\":\"registration_approved\""), audit)
        XCTAssertTrue(audit.contains("\"actor\":\"alice\""), audit)
    }

    static let browserFlow = """
        import sys
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
        from selenium.webdriver.common.by import By
        from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
        from selenium.webdriver.support.ui import WebDriverWait

        base, screenshot = sys.argv[1], sys.argv[2]
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for flag in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--ignore-certificate-errors", "--window-size=1400,1100"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        driver.set_page_load_timeout(30)
        # A click starts a navigation and returns; on a loaded machine the next page can take a moment.
        # Lookups wait for their element, and text checks wait for the text (the old page may still show).
        driver.implicitly_wait(20)
        def wait_text(element_id, needle):
            def found(d):
                return any(needle in e.text for e in d.find_elements(By.ID, element_id))
            try:
                WebDriverWait(driver, 20, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)).until(found)
            except Exception:
                raise AssertionError("%r never showed %r: %s" % (element_id, needle, driver.page_source))
        try:
            def login(user, password):
                driver.get(base + "/login")
                driver.find_element(By.ID, "login").send_keys(user)
                driver.find_element(By.ID, "password").send_keys(password)
                driver.find_element(By.ID, "submit-login").click()
                wait_text("whoami", user)

            login("bob", "bob-demo-pass")
            driver.find_element(By.LINK_TEXT, "Register a device").click()
            fields = {"device": "it-scanner-9", "model": "Acme ScanMaster 3000", "location": "Computing Centre, room 0.14",
                      "address": "127.0.0.9", "sender": "scanner9@example.edu", "contact": "it-helpdesk@example.edu",
                      "justification": "No TLS in the firmware; replacement ordered."}
            for name, value in fields.items():
                driver.find_element(By.ID, name).send_keys(value)
            sunset = driver.find_element(By.ID, "sunset")
            sunset.clear()
            sunset.send_keys("2027-06-30")
            driver.find_element(By.ID, "submit-request").click()
            wait_text("notice", "pending")
            driver.find_element(By.ID, "logout").click()

            login("alice", "alice-demo-pass")
            driver.find_element(By.ID, "approve-it-scanner-9").click()
            wait_text("notice", "Approved: it-scanner-9")
            driver.find_element(By.ID, "device-it-scanner-9")
            wait_text("request-it-scanner-9", "approved")
            # The whole page: the notice, the approved request and the device in IT Services' list.
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1400, min(height + 120, 4000))
            driver.save_screenshot(screenshot)
            print("BROWSER FLOW OK")
        finally:
            driver.quit()
        """

    func testBrowserContactRegistersAdminApprovesScreenshotKept() async throws {
        // The browser, its driver and selenium come from scripts/install-deps.sh; a missing one fails this test.
        for path in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            XCTAssertTrue(FileManager.default.isExecutableFile(atPath: path), "\(path) is missing: run scripts/install-deps.sh")
        }
        let fixture = try await RegistrationFixture()
        let artifacts = Repo.root.appendingPathComponent(".artifacts")
        try FileManager.default.createDirectory(at: artifacts, withIntermediateDirectories: true)
        let screenshot = artifacts.appendingPathComponent("registration-approved.png")
        try? FileManager.default.removeItem(at: screenshot)
        let result = try await runProgram(["/usr/bin/python3", "-c", Self.browserFlow, fixture.base, screenshot.path])
        let devices = try fixture.deviceFiles()["it/it-scanner-9.yaml"] ?? ""
        await fixture.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("BROWSER FLOW OK"), result.output)
        XCTAssertTrue(devices.contains("id: it-scanner-9"), "the approved device's file: \(devices)")
        let png = try Data(contentsOf: screenshot)
        XCTAssertGreaterThan(png.count, 10_000)
        XCTAssertEqual(Array(png.prefix(4)), [0x89, 0x50, 0x4E, 0x47])
    }
}
