import Foundation
import XCTest
@testable import PosternSMTP

final class MessageDateTests: XCTestCase {
    /// The hand-written formatter against Foundation's, over whole-second dates spread across
    /// 1970–2100 (leap days, month and year ends, every weekday).
    func testMatchesDateFormatter() {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = TimeZone(identifier: "UTC")
        formatter.dateFormat = "EEE, dd MMM yyyy HH:mm:ss Z"
        var generator = SystemRandomNumberGenerator()
        var dates: [Date] = [
            Date(timeIntervalSince1970: 0),
            Date(timeIntervalSince1970: 951_782_400),      // 2000-02-29 00:00:00
            Date(timeIntervalSince1970: 1_798_761_599),     // 2026-12-31 23:59:59
            Date(timeIntervalSince1970: 1_798_761_600),     // 2027-01-01 00:00:00
        ]
        for _ in 0..<5000 { dates.append(Date(timeIntervalSince1970: Double(UInt64.random(in: 0..<4_102_444_800, using: &generator)))) }
        for date in dates {
            XCTAssertEqual(MessageDate.rfc5322(date), formatter.string(from: date), "\(date.timeIntervalSince1970)")
        }
        XCTAssertEqual(MessageDate.rfc5322(Date(timeIntervalSince1970: 1_795_536_834)), "Tue, 24 Nov 2026 16:13:54 +0000")
    }

    /// Fractions of a second are cut off, never rounded into the next second (or year).
    func testTruncatesFractionalSeconds() {
        XCTAssertEqual(MessageDate.rfc5322(Date(timeIntervalSince1970: 1_798_761_599.9996)), "Thu, 31 Dec 2026 23:59:59 +0000")
        XCTAssertEqual(MessageDate.rfc5322(Date(timeIntervalSince1970: 1_795_536_834.5)), "Tue, 24 Nov 2026 16:13:54 +0000")
    }
}
