import NIOCore
import PosternSMTP
import XCTest

/// Inputs the fuzzer (Sources/PosternFuzz) found, kept as regressions.
final class FuzzFindingTests: XCTestCase {
    /// A general address literal took any bytes after its tag, bare CR and control characters included.
    func testGeneralAddressLiteralRefusesSpacesAndControlCharacters() throws {
        for bad in ["<a@[x:\u{1} y]>", "<a@[x:\r]>", "<a@[tag:a b]>", "<a@[tag:\u{0}]>", "<a@[tag:\u{7F}]>"] {
            XCTAssertThrowsError(try AddressParser.parsePath(Substring(bad)), bad.debugDescription)
        }
        let good = try AddressParser.parsePath("<a@[x400:c=gb;a=x]>")
        XCTAssertEqual(good.domain, .literal("x400:c=gb;a=x"))
    }

    /// A line that crossed the line limit and the size limit in one read was refused for the line, the same
    /// bytes arriving one at a time for the size: the reply depended on TCP segmentation.
    func testDataRejectionReasonDoesNotDependOnChunking() {
        let stream = Array(repeating: UInt8(ascii: "x"), count: 1100) + Array("\r\n.\r\n".utf8)
        func outcome(chunk: Int) -> DataFramer.Outcome? {
            var framer = DataFramer(maxMessageSize: 64)
            var result: DataFramer.Outcome?
            var offset = 0
            while offset < stream.count, result == nil {
                var buffer = ByteBuffer(bytes: stream[offset..<min(stream.count, offset + chunk)])
                offset += chunk
                result = framer.feed(&buffer)
            }
            return result
        }
        XCTAssertEqual(outcome(chunk: stream.count), .rejected(.tooBig))
        XCTAssertEqual(outcome(chunk: 1), .rejected(.tooBig))
        XCTAssertEqual(outcome(chunk: 7), .rejected(.tooBig))
    }
}
