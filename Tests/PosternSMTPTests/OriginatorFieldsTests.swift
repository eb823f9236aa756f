import NIOCore
import XCTest
@testable import PosternSMTP

final class OriginatorFieldsTests: XCTestCase {
    func parse(_ header: String, body: String = "\r\nbody\r\n") -> Result<OriginatorFields, OriginatorFieldsError> {
        OriginatorParser.parse(ByteBuffer(string: header + body))
    }

    /// The addresses as `Field: local@domain`, or the error.
    func addresses(_ header: String) -> [String] {
        switch parse(header) {
        case .success(let fields): return fields.addresses.map(\.description)
        case .failure(let error): return ["error: \(error)"]
        }
    }

    func assertRefused(_ header: String, _ expected: OriginatorFieldsError? = nil, file: StaticString = #filePath, line: UInt = #line) {
        switch parse(header) {
        case .success(let fields): XCTFail("accepted: \(fields.addresses)", file: file, line: line)
        case .failure(let error): if let expected { XCTAssertEqual(error, expected, file: file, line: line) }
        }
    }

    func testPlainForms() {
        XCTAssertEqual(addresses("From: alice@example.edu\r\n"), ["From: alice@example.edu"])
        XCTAssertEqual(addresses("from:alice@example.edu\r\n"), ["From: alice@example.edu"])
        XCTAssertEqual(addresses("FROM : <alice@example.edu>\r\n"), ["From: alice@example.edu"], "obsolete WSP before the colon")
        XCTAssertEqual(addresses("From: Alice Smith <alice@example.edu>\r\n"), ["From: alice@example.edu"])
        XCTAssertEqual(addresses("From: \"Smith, Alice\" <a.smith@Example.EDU>\r\n"), ["From: a.smith@Example.EDU"])
        XCTAssertEqual(addresses("From: alice@example.edu (Alice (the (real) one))\r\n"), ["From: alice@example.edu"])
        XCTAssertEqual(addresses("From: (comment) alice @ example . edu\r\n"), ["From: alice@example.edu"], "obsolete CFWS around dots")
        XCTAssertEqual(addresses("Subject: x\r\nFrom: alice@example.edu\r\nTo: bob@example.edu\r\n"), ["From: alice@example.edu"])
        XCTAssertEqual(addresses("From: \"alice\"@example.edu\r\n"), ["From: alice@example.edu"], "needless quotes are dropped")
        XCTAssertEqual(addresses("From: \"a b\"@example.edu\r\n"), ["From: \"a b\"@example.edu"])
        XCTAssertEqual(addresses("From: alice@[192.0.2.1]\r\n"), ["From: alice@[192.0.2.1]"])
    }

    func testDisplayNamesThatAreAddressesAreReported() throws {
        let fields = try parse("From: \"alice@example.edu\" <president@example.edu>\r\n").get()
        XCTAssertEqual(fields.addresses.first?.mailbox.description, "president@example.edu")
        XCTAssertEqual(fields.addresses.first?.displayNameAddresses.map(\.description), ["alice@example.edu"])
        let encoded = try parse("From: =?utf-8?b?cHJlc2lkZW50QGV4YW1wbGUuZWR1?= <alice@example.edu>\r\n").get()
        XCTAssertEqual(encoded.addresses.first?.displayName, "president@example.edu")
        XCTAssertEqual(encoded.addresses.first?.displayNameAddresses.map(\.description), ["president@example.edu"])
        let q = try parse("From: =?UTF-8?Q?president=40example=2Eedu?= <alice@example.edu>\r\n").get()
        XCTAssertEqual(q.addresses.first?.displayNameAddresses.map(\.description), ["president@example.edu"])
        // Written against RFC 2047 (a raw dot), as lenient clients still decode it.
        let lenient = try parse("From: =?utf-8?q?president=40example.edu?= <alice@example.edu>\r\n").get()
        XCTAssertEqual(lenient.addresses.first?.displayNameAddresses.map(\.description), ["president@example.edu"])
        let fullwidth = try parse("From: \"president＠example.edu\" <alice@example.edu>\r\n").get()
        XCTAssertEqual(fullwidth.addresses.first?.displayNameAddresses.map(\.description), ["president@example.edu"])
        let split = try parse("From: =?utf-8?q?president?= =?utf-8?q?=40example.edu?= <alice@example.edu>\r\n").get()
        XCTAssertEqual(split.addresses.first?.displayName, "president@example.edu", "white space between encoded words goes")
        let name = try parse("From: =?iso-8859-1?q?J=FCrgen_M=FCller?= <alice@example.edu>\r\n").get()
        XCTAssertEqual(name.addresses.first?.displayName, "Jürgen Müller")
        XCTAssertEqual(name.addresses.first?.displayNameAddresses, [])
        let inName = try parse("From: \"President <president@example.edu>\" <alice@example.edu>\r\n").get()
        XCTAssertEqual(inName.addresses.first?.displayNameAddresses.map(\.description), ["president@example.edu"])
        let among = try parse("From: \"Payroll (for hr@example.edu, via alice@example.edu)\" <alice@example.edu>\r\n").get()
        XCTAssertEqual(among.addresses.first?.displayNameAddresses.map(\.description), ["hr@example.edu", "alice@example.edu"])
    }

    func testSeveralAddressesFieldsAndGroupsAreAllReported() {
        XCTAssertEqual(addresses("From: alice@example.edu, president@example.edu\r\n"),
                       ["From: alice@example.edu", "From: president@example.edu"])
        XCTAssertEqual(addresses("From: alice@example.edu\r\nFrom: president@example.edu\r\n"),
                       ["From: alice@example.edu", "From: president@example.edu"])
        XCTAssertEqual(addresses("From: alice@example.edu\r\nSender: president@example.edu\r\n"),
                       ["From: alice@example.edu", "Sender: president@example.edu"])
        XCTAssertEqual(addresses("From: Staff: alice@example.edu, President <president@example.edu>;\r\n"),
                       ["From: alice@example.edu", "From: president@example.edu"])
        XCTAssertEqual(addresses("From: , alice@example.edu,,\r\n"), ["From: alice@example.edu"], "obsolete empty list elements")
        let fields = try? parse("From: a@example.edu\r\nfrom: b@example.edu\r\nSender: c@example.edu\r\n").get()
        XCTAssertEqual(fields?.fromFields, 2)
        XCTAssertEqual(fields?.senderFields, 1)
    }

    func testFoldedFieldsAreUnfolded() {
        XCTAssertEqual(addresses("From: Alice\r\n <alice@example.edu>\r\n"), ["From: alice@example.edu"])
        XCTAssertEqual(addresses("From: alice@example.edu,\r\n\tpresident@example.edu\r\n"),
                       ["From: alice@example.edu", "From: president@example.edu"])
        XCTAssertEqual(addresses("From:\r\n president@example.edu\r\n"), ["From: president@example.edu"])
    }

    func testNoFromIsNoAddresses() throws {
        let fields = try parse("Subject: x\r\nTo: bob@example.edu\r\n").get()
        XCTAssertEqual(fields.addresses, [])
        XCTAssertEqual(fields.fromFields, 0)
        XCTAssertEqual(try OriginatorParser.parse(ByteBuffer(string: "\r\nFrom: president@example.edu\r\n")).get().fromFields, 0,
                       "a From: in the body is not a header")
        XCTAssertEqual(try OriginatorParser.parse(ByteBuffer(string: "")).get().fromFields, 0)
        let headersOnly = try OriginatorParser.parse(ByteBuffer(string: "From: alice@example.edu")).get()
        XCTAssertEqual(headersOnly.addresses.map(\.description), ["From: alice@example.edu"], "a message of headers only")
    }

    func testWhatCannotBeParsedIsAnError() {
        assertRefused("From: president@example.edu <alice@example.edu>\r\n", .malformedField(.from, "text after an address"))
        assertRefused("From: alice@example.edu president@example.edu\r\n")
        assertRefused("From: \"alice@example.edu\"\r\n", .malformedField(.from, "a name without an address"))
        assertRefused("From: =?utf-8?q?president=40example.edu?=\r\n")
        assertRefused("From: Alice <alice@example.edu\r\n")
        assertRefused("From: Alice (unclosed <alice@example.edu>\r\n")
        assertRefused("From: \"unclosed <alice@example.edu>\r\n")
        assertRefused("From: <@relay.example:president@example.edu>\r\n", .malformedField(.from, "source route"))
        assertRefused("From: G: alice@example.edu\r\n", .malformedField(.from, "group without its closing ;"))
        assertRefused("From: undisclosed-recipients:;\r\n", .noAddress(.from))
        assertRefused("From:\r\n", .noAddress(.from))
        assertRefused("Sender: <>\r\n")
        assertRefused("From: alice@exa mple.edu\r\n")
        assertRefused("From: alice@\r\n")
        assertRefused("From: ålice@example.edu\r\n", .unusableAddress(.from))
        assertRefused("From: alice@example.edu\r\nX-Bad header\r\n", .malformedLine(2))
        assertRefused(" From: alice@example.edu\r\n", .malformedLine(1))
        assertRefused("Subject: x\r\nFrom: a@example.edu\nFrom: president@example.edu\r\n", .malformedLine(2))
        assertRefused("hello world\r\n", .malformedLine(1))
    }

    func testLimits() {
        let many = (0..<101).map { "u\($0)@example.edu" }.joined(separator: ", ")
        assertRefused("From: \(many)\r\n", .tooManyAddresses(limit: 100))
        let long = "X-Filler: " + String(repeating: "a", count: 900) + "\r\n"
        let header = String(repeating: long, count: 300) + "From: alice@example.edu\r\n"
        assertRefused(header, .headerSectionTooLong(limit: OriginatorParser.maxHeaderSection))
        // Just within the limit is read to the end.
        let within = String(repeating: long, count: 250) + "From: alice@example.edu\r\n"
        XCTAssertEqual(addresses(within), ["From: alice@example.edu"])
        // No empty line and no end within the limit: still too long.
        let endless = ByteBuffer(string: "X: " + String(repeating: "b", count: OriginatorParser.maxHeaderSection + 10))
        XCTAssertEqual(OriginatorParser.parse(endless), .failure(.headerSectionTooLong(limit: OriginatorParser.maxHeaderSection)))
        let deep = "From: " + String(repeating: "(", count: 10_000) + String(repeating: ")", count: 10_000) + " alice@example.edu\r\n"
        XCTAssertEqual(addresses(deep), ["From: alice@example.edu"], "nested comments need no stack")
    }
}
