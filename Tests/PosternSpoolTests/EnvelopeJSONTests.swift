import Foundation
import XCTest
@testable import PosternSpool

/// The hand-written envelope writer (`SpoolEnvelope.json`) against `JSONEncoder.spool`: every envelope, hostile
/// strings and odd dates included, reads back to what `JSONEncoder`'s output reads back to.
final class EnvelopeJSONTests: XCTestCase {
    static let strings = ["", "alice@example.edu", "quote\"back\\slash", "slash/and\u{7f}", "tab\tnew\nline\r\u{0}\u{1f}",
                          "ünïcödé@exämple.edu", "emoji 📨 \u{2028}\u{2029}", "<>", String(repeating: "x", count: 5000)]

    func testEveryEnvelopeReadsBackAsJSONEncodersDoes() throws {
        var generator = SystemRandomNumberGenerator()
        let dates = [0, 1_700_000_000.25, -1e300, 1e300, 1_733_123_456.123456789, Double.leastNonzeroMagnitude, -0.0, 4.2e15 + 0.5]
        for round in 0..<2000 {
            func pick() -> String { Self.strings[Int.random(in: 0..<Self.strings.count, using: &generator)] }
            func maybe() -> String? { Bool.random(using: &generator) ? pick() : nil }
            let envelope = SpoolEnvelope(
                sender: pick(), recipients: (0..<Int.random(in: 0...4, using: &generator)).map { _ in pick() },
                receivedAt: Date(timeIntervalSince1970: round < dates.count ? dates[round] : Double.random(in: -1e12...1e12, using: &generator)),
                clientAddress: pick(), listener: pick(), login: maybe(), messageID: maybe(), bodyType: maybe())
            let mine = try JSONDecoder.spool.decode(SpoolEnvelope.self, from: Data(try envelope.json()))
            let theirs = try JSONDecoder.spool.decode(SpoolEnvelope.self, from: JSONEncoder.spool.encode(envelope))
            XCTAssertEqual(mine, theirs, "\(envelope)")
            XCTAssertEqual(mine.receivedAt.timeIntervalSince1970, envelope.receivedAt.timeIntervalSince1970, "date of \(envelope)")
        }
    }

    func testWithoutEscapesTheBytesAreJSONEncodersOwn() throws {
        let envelope = SpoolEnvelope(sender: "alice@example.edu", recipients: ["a@example.edu", "b@example.org"],
                                     receivedAt: Date(timeIntervalSince1970: 1_700_000_000.25), clientAddress: "192.0.2.7",
                                     listener: "submission", login: "alice", messageID: "<m1@example.edu>", bodyType: "8BITMIME")
        XCTAssertEqual(String(decoding: try envelope.json(), as: UTF8.self), String(decoding: try JSONEncoder.spool.encode(envelope), as: UTF8.self))
    }

    func testADateThatIsNoJSONNumberIsRefusedAsBefore() {
        let envelope = SpoolEnvelope(sender: "", recipients: [], receivedAt: Date(timeIntervalSince1970: .infinity), clientAddress: "", listener: "")
        XCTAssertThrowsError(try envelope.json())
    }
}
