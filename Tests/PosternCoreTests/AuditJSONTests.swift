import Foundation
import Logging
import XCTest
@testable import PosternCore

/// The audit log's hand-written JSON: valid for any string, keys sorted, parsed back unchanged.
final class AuditJSONTests: XCTestCase {
    func testEscapesEverythingJSONRequiresAndRoundTrips() throws {
        let hostile = "quote\" backslash\\ slash/ nl\n cr\r tab\t nul\u{0} bell\u{7} esc\u{1B} del\u{7F} é 😀 <a@b>"
        let object: Logger.Metadata = [
            "zeta": .string(hostile), "alpha": .stringConvertible(42), "list": .array(["<x@y>", .string(hostile)]),
            "nested": .dictionary(["b": "2", "a": "1"]),
        ]
        var bytes: [UInt8] = []
        JSONLineLogHandler.appendJSON(object, to: &bytes)
        let text = String(decoding: bytes, as: UTF8.self)
        XCTAssertFalse(text.contains("\n"), "one line")
        XCTAssertTrue(text.hasPrefix(#"{"alpha":"42","list":"#), text)
        let parsed = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any])
        XCTAssertEqual(parsed["zeta"] as? String, hostile)
        XCTAssertEqual(parsed["alpha"] as? String, "42")
        XCTAssertEqual(parsed["list"] as? [String], ["<x@y>", hostile])
        XCTAssertEqual(parsed["nested"] as? [String: String], ["a": "1", "b": "2"])
    }

    /// The hand-written timestamp against `String(format:)`, the formatting it replaced.
    func testTimestampDigitsMatchFormat() {
        let cases = [(2026, 11, 24, 16, 13, 54, 123), (1970, 1, 1, 0, 0, 0, 0), (2099, 12, 31, 23, 59, 59, 999), (2000, 2, 29, 9, 5, 7, 40)]
        for c in cases {
            XCTAssertEqual(JSONLineLogHandler.timestamp(year: c.0, month: c.1, day: c.2, hour: c.3, minute: c.4, second: c.5, millisecond: c.6),
                           String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", c.0, c.1, c.2, c.3, c.4, c.5, c.6))
        }
        let now = JSONLineLogHandler.timestamp()
        XCTAssertNotNil(now.range(of: #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$"#, options: .regularExpression), now)
    }
}
