import NIOCore
import XCTest
@testable import PosternSMTP

final class HeaderScannerTests: XCTestCase {
    func testFindsFieldInHeaderSectionOnly() {
        let message = ByteBuffer(string: "Subject: x\r\nMESSAGE-ID:  <a@b>\r\n\r\nMessage-ID: <body@b>\r\n")
        XCTAssertEqual(HeaderScanner.messageID(in: message), "<a@b>")
        let bodyOnly = ByteBuffer(string: "Subject: x\r\n\r\nMessage-ID: <body@b>\r\n")
        XCTAssertNil(HeaderScanner.messageID(in: bodyOnly))
        XCTAssertNil(HeaderScanner.messageID(in: ByteBuffer(string: "\r\nMessage-ID: <a@b>\r\n")))
    }

    func testUnfoldsAndStopsAtNextField() {
        let message = ByteBuffer(string: "Message-ID:\r\n  <folded@b>\r\nTo: c\r\n\r\nbody\r\n")
        XCTAssertEqual(HeaderScanner.messageID(in: message), "<folded@b>")
    }

    func testHeaderSectionWithoutBodyAndCarriageReturnRuns() {
        XCTAssertEqual(HeaderScanner.messageID(in: ByteBuffer(string: "X: \r\r\r\nMessage-ID: <c@d>\r\n")), "<c@d>")
        XCTAssertEqual(HeaderScanner.messageID(in: ByteBuffer(string: "X: y\r\r\n\r\r\nMessage-ID: <e@f>")), "<e@f>")
        XCTAssertNil(HeaderScanner.messageID(in: ByteBuffer(string: "X: y\r\n\r\nMessage-ID: <e@f>")))
    }
}
