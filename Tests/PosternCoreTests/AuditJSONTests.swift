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

    /// The gateway and `postern queue` append to one audit log at once: every line of both stays whole.
    func testTwoWritersOfOneFileKeepEveryLine() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("postern-audit-\(UUID().uuidString).jsonl")
        defer { try? FileManager.default.removeItem(at: file) }
        try Data("{\"event\":\"before\"}\n".utf8).write(to: file)
        let gateway = try AuditLog.make(output: file.path)
        let tool = try AuditLog.make(output: file.path)
        for i in 0..<200 {
            gateway.relay(queueID: "Q\(i)", recipient: "r\(i)@example.edu", upstream: "hub", reply: "250 ok", attempt: 1, outcome: "delivered")
            tool.queueChange(action: "flush", queueID: "Q\(i)", sender: "s@example.edu", recipients: ["r\(i)@example.edu"], actor: "root")
        }
        let lines = try String(contentsOf: file, encoding: .utf8).split(separator: "\n")
        XCTAssertEqual(lines.count, 401)
        let events = try lines.map { try XCTUnwrap(JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any])["event"] as? String }
        XCTAssertEqual(events.first, "before")
        XCTAssertEqual(events.filter { $0 == "relay" }.count, 200)
        XCTAssertEqual(events.filter { $0 == "queue_flush" }.count, 200)
    }
}
