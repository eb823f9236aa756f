import Foundation
import Logging
import XCTest
@testable import PosternGateway

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
}
