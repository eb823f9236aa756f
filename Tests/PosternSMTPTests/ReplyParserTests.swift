import NIOCore
import PosternSMTP
import XCTest

/// `SMTPReplyParser`: replies as servers write them, and what it refuses.
final class ReplyParserTests: XCTestCase {
    func replies(_ text: String, chunk: Int = .max) throws -> [SMTPReply] {
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer()
        var result: [SMTPReply] = []
        var rest = Substring(text)
        while !rest.isEmpty {
            let piece = rest.prefix(chunk)
            rest = rest.dropFirst(piece.count)
            buffer.writeString(String(piece))
            while let reply = try parser.next(&buffer) { result.append(reply) }
        }
        return result
    }

    func testASingleLineReplyWithAnEnhancedStatusCode() throws {
        XCTAssertEqual(try replies("250 2.1.5 Ok\r\n"), [SMTPReply(250, "2.1.5", "Ok")])
        XCTAssertEqual(try replies("450 4.7.230 Too many connections, throttled\r\n").first?.description,
                       "450 4.7.230 Too many connections, throttled")
    }

    func testAMultiLineReplyIsOneReplyWithTheStatusTakenFromEveryLine() throws {
        let ehlo = try replies("250-mx.example.org Hello\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 STARTTLS\r\n")
        XCTAssertEqual(ehlo, [SMTPReply(code: 250, enhancedStatus: nil, lines: ["mx.example.org Hello", "PIPELINING", "SIZE 10240000", "STARTTLS"])])
        let refusal = try replies("550-5.7.1 Relaying denied.\r\n550-5.7.1 See the policy\r\n550 5.7.1 at example.org\r\n")
        XCTAssertEqual(refusal, [SMTPReply(code: 550, enhancedStatus: "5.7.1", lines: ["Relaying denied.", "See the policy", "at example.org"])])
    }

    func testRepliesWithoutTextOrWithBareLFAndPipelinedRepliesInOneRead() throws {
        XCTAssertEqual(try replies("354\r\n250-\n250 Ok\n221 2.0.0 Bye\r\n"), [
            SMTPReply(354, nil, ""), SMTPReply(code: 250, enhancedStatus: nil, lines: ["", "Ok"]), SMTPReply(221, "2.0.0", "Bye"),
        ])
    }

    func testAStatusWhoseClassIsNotTheCodesIsText() throws {
        XCTAssertEqual(try replies("250 5.0.0 odd\r\n"), [SMTPReply(250, nil, "5.0.0 odd")])
        XCTAssertEqual(try replies("250 2.0.0x\r\n"), [SMTPReply(250, nil, "2.0.0x")])
        XCTAssertEqual(try replies("451 4.3.0\r\n"), [SMTPReply(451, "4.3.0", "")])
    }

    func testTheSameBytesInAnySplitGiveTheSameReplies() throws {
        let text = "220 mx ESMTP\r\n250-mx\r\n250-8BITMIME\r\n250 SIZE 100\r\n354 go on\r\n250 2.0.0 Ok: queued as X\r\n"
        let whole = try replies(text)
        XCTAssertEqual(whole.count, 4)
        for chunk in 1...9 { XCTAssertEqual(try replies(text, chunk: chunk), whole, "chunks of \(chunk)") }
    }

    func testLinesThatAreNotReplyLinesAreRefused() {
        for text in ["hello\r\n", "25 ok\r\n", "2500 ok\r\n", "250+ok\r\n", "099 no\r\n", "600 no\r\n", "150 no\r\n",
                     "250-first\r\n251 second\r\n", "abc def\r\n"] {
            XCTAssertThrowsError(try replies(text), text) { error in
                guard case SMTPReplyParser.ParseError.malformedLine = error else { return XCTFail("\(text): \(error)") }
            }
        }
    }

    func testLinesAndRepliesAreBounded() {
        var parser = SMTPReplyParser(maxLineLength: 64, maxLines: 3)
        var long = ByteBuffer(string: "250 " + String(repeating: "x", count: 80))
        XCTAssertThrowsError(try parser.next(&long)) { XCTAssertEqual($0 as? SMTPReplyParser.ParseError, .lineTooLong) }
        var lines = SMTPReplyParser(maxLineLength: 64, maxLines: 3)
        var many = ByteBuffer(string: String(repeating: "250-x\r\n", count: 4))
        XCTAssertThrowsError(try lines.next(&many)) { XCTAssertEqual($0 as? SMTPReplyParser.ParseError, .tooManyLines) }
    }

    func testAReplyWrittenAsTextReadsAsItself() throws {
        for reply in [SMTPReply(250, "2.0.0", "Ok"), SMTPReply(code: 250, enhancedStatus: nil, lines: ["gw", "PIPELINING"]),
                      SMTPReply(code: 421, enhancedStatus: "4.7.0", lines: ["Too many", "errors"])] {
            XCTAssertEqual(try SMTPReplyParser.parse(reply.wireString), reply)
        }
        XCTAssertEqual(try SMTPReplyParser.parse("450 4.7.230 throttled"), SMTPReply(450, "4.7.230", "throttled"))
        XCTAssertThrowsError(try SMTPReplyParser.parse("450 one\r\n250 two\r\n"), "two replies are not one")
        XCTAssertThrowsError(try SMTPReplyParser.parse("throttled"))
    }
}
