import NIOCore
import XCTest
@testable import PosternSMTP

final class AddressAndCommandTests: XCTestCase {
    func parse(_ line: String) throws -> SMTPCommand { try CommandParser.parse(Substring(line)) }

    func reply(_ line: String) -> SMTPReply? {
        do { _ = try CommandParser.parse(Substring(line)); return nil } catch { return error.reply }
    }

    func testVerbsAreCaseInsensitive() throws {
        XCTAssertEqual(try parse("ehlo client.example"), .ehlo("client.example"))
        XCTAssertEqual(try parse("HeLo client"), .helo("client"))
        XCTAssertEqual(try parse("data"), .data)
        XCTAssertEqual(try parse("QUIT"), .quit)
        XCTAssertEqual(try parse("StartTLS"), .startTLS)
        XCTAssertEqual(try parse("NOOP anything"), .noop)
        XCTAssertEqual(try parse("VRFY alice"), .vrfy("alice"))
        XCTAssertEqual(try parse("HELP"), .help(nil))
        XCTAssertEqual(try parse("AUTH plain dGVzdA=="), .auth(mechanism: "PLAIN", initialResponse: "dGVzdA=="))
        XCTAssertEqual(try parse("BDAT 100 LAST"), .notImplemented("BDAT"))
    }

    func testMailFromWithParameters() throws {
        let command = try parse("MAIL FROM:<alice@example.edu> SIZE=1000 BODY=8BITMIME")
        guard case .mail(let path, let params) = command else { return XCTFail("\(command)") }
        XCTAssertEqual(path.mailbox?.localPart, "alice")
        XCTAssertEqual(path.mailbox?.normalizedDomain, "example.edu")
        XCTAssertEqual(params, [MailParameter(keyword: "SIZE", value: "1000"), MailParameter(keyword: "BODY", value: "8BITMIME")])
    }

    func testNullReversePathAndSpaceAfterColon() throws {
        XCTAssertEqual(try parse("MAIL FROM:<>"), .mail(.null, []))
        guard case .mail(.mailbox(let m), _) = try parse("MAIL FROM: <a@b.example>") else { return XCTFail() }
        XCTAssertEqual(m.description, "a@b.example")
    }

    func testRcptPostmasterWithoutDomainIsAccepted() throws {
        guard case .rcpt(let m, _) = try parse("RCPT TO:<Postmaster>") else { return XCTFail() }
        XCTAssertEqual(m.localPart, "postmaster")
    }

    func testSyntaxErrorsGiveReplies() {
        XCTAssertEqual(reply("FOO bar")?.code, 500)
        XCTAssertEqual(reply("MAIL alice@example.edu")?.code, 501)
        XCTAssertEqual(reply("MAIL FROM:alice@example.edu")?.code, 501)
        XCTAssertEqual(reply("RCPT TO:<ext.com!u>")?.enhancedStatus, "5.1.3")
        XCTAssertEqual(reply("RCPT TO:<\"u@ext.com\">")?.enhancedStatus, "5.1.3")
        XCTAssertEqual(reply("RCPT TO:<u@example.edu.>")?.enhancedStatus, "5.1.3")
        XCTAssertEqual(reply("MAIL FROM:<a@b.example> FOO=bar"), nil)  // parameters are judged by the session
        XCTAssertEqual(reply("EHLO"), SMTPReply(501, "5.5.4", "Syntax: EHLO hostname"))
        XCTAssertEqual(reply("RCPT TO:<jörg@example.edu>")?.code, 553)
    }

    func testLocalPartAndDomainLengthLimits() throws {
        let local64 = String(repeating: "a", count: 64)
        XCTAssertNoThrow(try AddressParser.parseMailbox("\(local64)@example.edu"))
        XCTAssertThrowsError(try AddressParser.parseMailbox("\(local64)a@example.edu")) { error in
            XCTAssertEqual(error as? AddressError, .localPartTooLong)
        }
        // 4 labels of 63 plus dots = 255 octets; one more label character makes 256.
        let label = String(repeating: "d", count: 63)
        let domain255 = [label, label, label, String(repeating: "d", count: 63)].joined(separator: ".")
        XCTAssertEqual(domain255.utf8.count, 255)
        XCTAssertTrue(AddressParser.isDomain(domain255.utf8))
        // RFC 5321 4.5.3.1.3: a whole path is at most 256 octets, so a 255-octet domain never fits with a local part.
        XCTAssertThrowsError(try AddressParser.parsePath(Substring("<a@\(domain255)>"))) { error in
            XCTAssertEqual(error as? AddressError, .pathTooLong)
        }
        XCTAssertFalse(AddressParser.isDomain((domain255 + "d").utf8))
        let domain256 = domain255 + ".x"
        XCTAssertThrowsError(try AddressParser.parsePath(Substring("<a@\(domain256)>")))
        XCTAssertEqual(reply("RCPT TO:<a@\(domain256)>")?.code, 501)
    }

    func testSourceRouteIsParsedAndFlagged() throws {
        let m = try AddressParser.parsePath("<@example.edu,@relay.example:u@ext.com>")
        XCTAssertTrue(m.hadSourceRoute)
        XCTAssertEqual(m.normalizedDomain, "ext.com")
    }

    func testQuotedLocalPartKeepsQuotes() throws {
        let m = try AddressParser.parsePath("<\"u@ext.com\"@example.edu>")
        XCTAssertTrue(m.isQuotedLocalPart)
        XCTAssertEqual(m.unquotedLocalPart, "u@ext.com")
        XCTAssertEqual(m.normalizedDomain, "example.edu")
    }

    func testAddressLiteralsAndPercentHack() throws {
        XCTAssertEqual(try AddressParser.parsePath("<u@[127.0.0.1]>").domain, .literal("127.0.0.1"))
        XCTAssertEqual(try AddressParser.parsePath("<u@[IPv6:::1]>").normalizedDomain, "[ipv6:::1]")
        XCTAssertThrowsError(try AddressParser.parsePath("<u@[300.0.0.1]>"))
        let percent = try AddressParser.parsePath("<u%ext.com@example.edu>")
        XCTAssertEqual(percent.localPart, "u%ext.com")
        XCTAssertEqual(try AddressParser.parsePath("<u@EXAMPLE.EDU>").normalizedDomain, "example.edu")
    }

    func testReplyWireFormat() {
        XCTAssertEqual(SMTPReply(250, "2.0.0", "Ok").wireString, "250 2.0.0 Ok\r\n")
        XCTAssertEqual(SMTPReply(code: 250, enhancedStatus: nil, lines: ["a", "b"]).wireString, "250-a\r\n250 b\r\n")
        XCTAssertEqual(SMTPReply(550, "5.7.1", "x\r\nInjected").wireString, "550 5.7.1 x  Injected\r\n")
    }

    func testDotStuffingEncodesEveryLineEnding() {
        var out = ByteBuffer()
        DotStuffing.encode(ByteBuffer(string: ".a\r\nb\n.\rc"), into: &out)
        XCTAssertEqual(String(buffer: out), "..a\r\nb\r\n..\r\nc\r\n.\r\n")
    }
}
