import NIOCore
import XCTest
@testable import PosternSMTP

final class LineFramerTests: XCTestCase {
    func testSplitsPipelinedLines() {
        var framer = LineFramer()
        var buffer = ByteBuffer(string: "EHLO a\r\nMAIL FROM:<>\r\nRCPT")
        XCTAssertEqual(framer.next(&buffer), .line("EHLO a"))
        XCTAssertEqual(framer.next(&buffer), .line("MAIL FROM:<>"))
        XCTAssertNil(framer.next(&buffer))
        buffer.writeString(" TO:<a@b.c>\r\n")
        XCTAssertEqual(framer.next(&buffer), .line("RCPT TO:<a@b.c>"))
    }

    func testCommandOfExactly512OctetsIsAcceptedAnd513Refused() {
        var framer = LineFramer(maxLength: 512)
        var buffer = ByteBuffer(string: String(repeating: "A", count: 510) + "\r\n")
        XCTAssertEqual(framer.next(&buffer), .line(String(repeating: "A", count: 510)))
        buffer.writeString(String(repeating: "A", count: 511) + "\r\nNOOP\r\n")
        XCTAssertEqual(framer.next(&buffer), .tooLong)
        XCTAssertEqual(framer.next(&buffer), .line("NOOP"))
    }

    func testTenMegabyteLineWithoutCRLFStaysBounded() {
        var framer = LineFramer(maxLength: 512)
        var buffer = ByteBuffer()
        let chunk = String(repeating: "x", count: 64 * 1024)
        for _ in 0..<160 {  // 10 MiB in 64 KiB reads
            buffer.writeString(chunk)
            XCTAssertNil(framer.next(&buffer))
            XCTAssertLessThanOrEqual(buffer.readableBytes, 512)
        }
        buffer.writeString("tail\r\nQUIT\r\n")
        XCTAssertEqual(framer.next(&buffer), .tooLong)
        XCTAssertEqual(framer.next(&buffer), .line("QUIT"))
    }

    func testBareLFIsReported() {
        var framer = LineFramer()
        var buffer = ByteBuffer(string: "NOOP\nQUIT\r\n")
        XCTAssertEqual(framer.next(&buffer), .bareLF)
        XCTAssertEqual(framer.next(&buffer), .line("QUIT"))
    }
}

final class DataFramerTests: XCTestCase {
    func feed(_ text: String, normalize: Bool = false, max: Int = 1 << 20, chunk: Int = .max) -> (DataFramer.Outcome?, String) {
        var framer = DataFramer(maxMessageSize: max, normalizeBareLF: normalize)
        var rest = ByteBuffer()
        let bytes = Array(text.utf8)
        var index = 0
        while index < bytes.count {
            let end = min(bytes.count, index + chunk)
            var piece = ByteBuffer(bytes: bytes[index..<end])
            index = end
            if let outcome = framer.feed(&piece) {
                rest.writeBuffer(&piece)
                rest.writeBytes(bytes[index...])
                return (outcome, String(buffer: rest))
            }
        }
        return (nil, "")
    }

    func testEndsAtCRLFDotCRLFAndUnstuffs() {
        let (outcome, rest) = feed("Subject: x\r\n\r\n..leading dot\r\nbody\r\n.\r\nQUIT\r\n")
        XCTAssertEqual(outcome, .message(ByteBuffer(string: "Subject: x\r\n\r\n.leading dot\r\nbody\r\n")))
        XCTAssertEqual(rest, "QUIT\r\n")
    }

    func testEmptyMessageAndByteByByteFeeding() {
        XCTAssertEqual(feed(".\r\n").0, .message(ByteBuffer()))
        let (outcome, rest) = feed("a\r\n.b\r\n.\r\nNOOP\r\n", chunk: 1)
        XCTAssertEqual(outcome, .message(ByteBuffer(string: "a\r\nb\r\n")))
        XCTAssertEqual(rest, "NOOP\r\n")
    }

    /// Each smuggling ending followed by a pipelined second message: never an end of data.
    static let smugglingEndings = ["\n.\n", "\r.\r", "\r.\n", "\n.\r", "\n.\r\n", "\r\n.\n", "\r.\r\n", "\r\n.\r"]
    static let secondMessage = "MAIL FROM:<evil@ext.com>\r\nRCPT TO:<victim@example.edu>\r\nDATA\r\nSmuggled\r\n.\r\n"

    func testSmugglingEndingsAreNotEndOfDataAndTaintTheMessage() {
        for ending in Self.smugglingEndings {
            let text = "Subject: one\r\n\r\nbody" + ending + Self.secondMessage + "QUIT\r\n"
            let (outcome, rest) = feed(text)
            // The only end is the real CRLF.CRLF after "Smuggled": the second message is body, not commands.
            XCTAssertEqual(rest, "QUIT\r\n", "ending \(ending.debugDescription)")
            XCTAssertEqual(outcome, .rejected(.bareLineEnding), "ending \(ending.debugDescription)")
        }
    }

    func testNormalizingDeviceStillNeverEndsAtSmugglingVariants() {
        // Endings with a bare CR are refused even when bare LF is normalised; the others give one message.
        let bareCR: Set<String> = ["\r.\r", "\r.\n", "\n.\r", "\r.\r\n", "\r\n.\r"]
        for ending in Self.smugglingEndings {
            let text = "Subject: one\r\n\r\nbody" + ending + Self.secondMessage + "QUIT\r\n"
            let (outcome, rest) = feed(text, normalize: true)
            XCTAssertEqual(rest, "QUIT\r\n", "ending \(ending.debugDescription)")
            if bareCR.contains(ending) {
                XCTAssertEqual(outcome, .rejected(.bareLineEnding), "ending \(ending.debugDescription)")
            } else {
                guard case .message(let body) = outcome else { return XCTFail("\(ending.debugDescription): \(String(describing: outcome))") }
                let stored = String(buffer: body)
                XCTAssertTrue(stored.contains("MAIL FROM:<evil@ext.com>\r\n"), "smuggled text stays inside the one message")
                XCTAssertFalse(stored.replacingOccurrences(of: "\r\n", with: "").contains("\n"), "every line ends in CRLF")
            }
        }
    }

    func testBareLFIsNormalisedOnDevice() {
        XCTAssertEqual(feed("a\nb\r\n.\r\n", normalize: true).0, .message(ByteBuffer(string: "a\r\nb\r\n")))
        XCTAssertEqual(feed("a\nb\r\n.\r\n", normalize: false).0, .rejected(.bareLineEnding))
    }

    func testSizeLimitRefusesWithoutStoring() {
        let body = String(repeating: "0123456789\r\n", count: 200)
        XCTAssertEqual(feed(body + ".\r\n", max: 1000).0, .rejected(.tooBig))
        XCTAssertEqual(feed(body + ".\r\n", max: 2400).0, .message(ByteBuffer(string: body)))
    }

    func testLineLimitIs998OctetsPlusCRLF() {
        let ok = String(repeating: "a", count: 998)
        XCTAssertEqual(feed(ok + "\r\n.\r\n").0, .message(ByteBuffer(string: ok + "\r\n")))
        XCTAssertEqual(feed(ok + "a\r\n.\r\n").0, .rejected(.lineTooLong))
    }
}
