import Foundation
import XCTest

/// The page in headless Chromium (Tests/Browser/registration_flow.py): a contact's request refused on the server
/// and then sent, an admin's approval and rejection through their confirmation pages, revoke's confirmation,
/// the history and its search; at 1280 and 390 px wide no page scrolls sideways and the status and action
/// controls are in view. The screenshots stay in var/artifacts/registration/ to be looked at.
final class BrowserTests: XCTestCase {
    static let screenshots = ["register", "register-refused", "requests", "reject", "history"]

    func testContactAndAdminInChromiumAtDesktopAndPhoneWidths() async throws {
        // The browser, its driver and selenium come from scripts/install-deps.sh; a missing one fails this test.
        for path in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
            XCTAssertTrue(FileManager.default.isExecutableFile(atPath: path), "\(path) is missing: run scripts/install-deps.sh")
        }
        let artifacts = Repo.root.appendingPathComponent("var/artifacts/registration")
        try FileManager.default.createDirectory(at: artifacts, withIntermediateDirectories: true)
        for name in Self.screenshots {
            for width in [1280, 390] { try? FileManager.default.removeItem(at: artifacts.appendingPathComponent("\(name)-\(width).png")) }
        }
        let fixture = try await RegistrationFixture()
        let script = Repo.root.appendingPathComponent("Tests/Browser/registration_flow.py").path
        let result = try await runProgram(["/usr/bin/python3", script, fixture.base, artifacts.path])
        let devices = try fixture.deviceFiles().values.joined(separator: "\n")
        let requests = try fixture.desk.requests.all()
        let mails = fixture.mails()
        await fixture.stop()
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertTrue(result.output.contains("BROWSER FLOW OK"), result.output)

        XCTAssertTrue(devices.contains("id: it-scanner-9"), devices)
        XCTAssertFalse(devices.contains("it-copier-7"), devices)
        XCTAssertEqual(requests.count, 2, "a reload never submitted anything twice: \(requests)")
        let rejected = try XCTUnwrap(requests.first { $0.deviceID == "it-copier-7" })
        XCTAssertEqual(rejected.status, .rejected)
        XCTAssertEqual(rejected.reason, "Use scan to folder <b>instead</b>; see ticket #42.")
        XCTAssertEqual(mails.filter { $0.contains("Subject: Device registration request: ") }.count, 2, mails.joined(separator: "\n----\n"))
        XCTAssertEqual(mails.filter { $0.contains("Subject: Device it-scanner-9: registration approved") }.count, 1)
        XCTAssertEqual(mails.filter { $0.contains("Subject: Device it-copier-7: registration rejected") }.count, 1)

        for name in Self.screenshots {
            for width in [1280, 390] {
                let file = artifacts.appendingPathComponent("\(name)-\(width).png")
                let png = try Data(contentsOf: file)
                XCTAssertEqual(Array(png.prefix(8)), [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A], file.path)
                // IHDR: width and height, big-endian, at bytes 16 and 20.
                func number(at offset: Int) -> Int { png.dropFirst(offset).prefix(4).reduce(0) { $0 << 8 | Int($1) } }
                XCTAssertEqual(number(at: 16), width, "\(file.lastPathComponent) is not \(width) px wide")
                XCTAssertGreaterThan(number(at: 20), 300, file.lastPathComponent)
            }
        }
    }
}
