import Foundation
import XCTest
@testable import PosternSMTP

/// Dates from a queue file's envelope reach `MessageDate` (a DSN's Arrival-Date): one that no time_t
/// holds used to trap in the conversion (issue #13).
final class OutOfRangeDateTests: XCTestCase {
    func testDatesNoTimeTHoldsAreClampedToTheYears1970To9999() {
        XCTAssertEqual(MessageDate.rfc5322(Date(timeIntervalSince1970: -1e300)), "Thu, 01 Jan 1970 00:00:00 +0000")
        XCTAssertEqual(MessageDate.rfc5322(Date(timeIntervalSince1970: -1)), "Thu, 01 Jan 1970 00:00:00 +0000")
        XCTAssertEqual(MessageDate.rfc5322(Date(timeIntervalSince1970: 1e300)), "Fri, 31 Dec 9999 23:59:59 +0000")
        XCTAssertEqual(MessageDate.rfc5322(Date(timeIntervalSince1970: .infinity)), "Fri, 31 Dec 9999 23:59:59 +0000")
        XCTAssertEqual(MessageDate.rfc5322(Date(timeIntervalSince1970: -.infinity)), "Thu, 01 Jan 1970 00:00:00 +0000")
        XCTAssertEqual(MessageDate.rfc5322(Date(timeIntervalSince1970: .nan)), "Thu, 01 Jan 1970 00:00:00 +0000")
        XCTAssertEqual(MessageDate.rfc5322(Date.distantFuture), "Mon, 01 Jan 4001 00:00:00 +0000")
    }
}
