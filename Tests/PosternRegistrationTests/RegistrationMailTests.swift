import Foundation
@testable import PosternRegistration
import XCTest

/// The notification message itself: CRLF lines within RFC 5322's limit whatever was typed into the form,
/// headers that nothing typed can add to, non-ASCII text as encoded words.
final class RegistrationMailTests: XCTestCase {
    func testLongTextIsWrappedAtSpacesAndCutWhereAWordIsLongerThanALine() {
        let lines = RegistrationNotifier.wrap("short words " + String(repeating: "w", count: 200) + " tail\nsecond\r\nthird", indent: "    ")
        XCTAssertTrue(lines.allSatisfy { $0.count <= 76 }, "\(lines)")
        XCTAssertTrue(lines.allSatisfy { $0.hasPrefix("    ") }, "\(lines)")
        XCTAssertEqual(lines.joined().filter { $0 == "w" }.count, 200 + 1, "nothing is lost (and the w of 'words')")
        XCTAssertEqual(Array(lines.suffix(2)), ["    second", "    third"])
        XCTAssertEqual(RegistrationNotifier.wrap("a b", indent: "  Label:  ", continuation: "          ", width: 12), ["  Label:  a", "          b"])
    }

    func testTheMessageHasCRLFLinesWithinTheLimitAndHeadersNothingTypedCanExtend() {
        let justification = String(repeating: "ü", count: 2000) + "\n.\nlast line"
        let text = RegistrationNotifier.message(
            from: "Universität \"Beispiel\"", hostname: "gw.test", to: ["a@example.edu", "b@example.edu"], replyTo: "help@example.edu",
            subject: "Dev x\r\nBcc: v@example.com (Département)", body: ["Justification:"] + RegistrationNotifier.wrap(justification, indent: "  "),
            date: Date(timeIntervalSince1970: 0), queueID: "Q1")
        let bytes = Array(text.utf8)
        for (i, b) in bytes.enumerated() where b == 0x0A { XCTAssertEqual(bytes[i - 1], 0x0D, "bare LF at \(i)") }
        for (i, b) in bytes.enumerated() where b == 0x0D { XCTAssertEqual(bytes[i + 1], 0x0A, "bare CR at \(i)") }
        let lines = text.components(separatedBy: "\r\n")
        XCTAssertTrue(lines.allSatisfy { $0.utf8.count <= 998 }, "a line longer than 998 octets")
        let header = lines.prefix { !$0.isEmpty }
        XCTAssertFalse(header.contains { $0.hasPrefix("Bcc:") }, "\(header)")
        XCTAssertTrue(header.contains("Subject: =?utf-8?B?RGV2IHggIEJjYzogdkBleGFtcGxlLmNvbSAoRMOpcGFydGVtZW50KQ==?="), "\(header)")
        XCTAssertTrue(header.contains("From: =?utf-8?B?VW5pdmVyc2l0w6R0ICJCZWlzcGllbCI=?= <postmaster@gw.test>"), "\(header)")
        XCTAssertTrue(header.contains("To: <a@example.edu>,") && header.contains(" <b@example.edu>"), "\(header)")
        XCTAssertTrue(header.contains("Message-ID: <registration-Q1@gw.test>"), "\(header)")
        XCTAssertTrue(header.contains("Auto-Submitted: auto-generated"), "\(header)")
        XCTAssertTrue(text.hasSuffix("  last line\r\n"), text)
    }

    func testAsciiDisplayNamesAreQuotedAndLongSubjectsFoldIntoEncodedWords() {
        XCTAssertEqual(RegistrationNotifier.phrase(#"Example "U" \ Co"#), #""Example \"U\" \\ Co""#)
        let subject = RegistrationNotifier.headerText(String(repeating: "Ä", count: 60))
        let words = subject.components(separatedBy: "\r\n ")
        XCTAssertEqual(words.count, 3, subject)
        XCTAssertTrue(words.allSatisfy { $0.hasPrefix("=?utf-8?B?") && $0.hasSuffix("?=") && $0.count <= 75 }, subject)
        let decoded = words.map { Data(base64Encoded: String($0.dropFirst(10).dropLast(2))).flatMap { String(data: $0, encoding: .utf8) } ?? "?" }.joined()
        XCTAssertEqual(decoded, String(repeating: "Ä", count: 60))
    }
}
