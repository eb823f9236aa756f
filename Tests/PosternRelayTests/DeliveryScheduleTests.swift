import Foundation
import XCTest
@testable import PosternRelay

final class DeliveryScheduleTests: XCTestCase {
    let t0 = Date(timeIntervalSince1970: 1_800_000_000)

    func testTakesEarliestDueFirstThenByID() {
        var schedule = DeliverySchedule()
        schedule.schedule("c", at: t0)
        schedule.schedule("b", at: t0)
        schedule.schedule("a", at: t0.addingTimeInterval(10))
        schedule.schedule("fresh", at: .distantPast)
        XCTAssertEqual(schedule.takeDue(now: t0, limit: 10), ["fresh", "b", "c"])
        XCTAssertEqual(schedule.inFlight, ["fresh", "b", "c"])
        XCTAssertEqual(schedule.nextDue(), t0.addingTimeInterval(10))
        XCTAssertEqual(schedule.takeDue(now: t0.addingTimeInterval(9), limit: 10), [])
        XCTAssertEqual(schedule.takeDue(now: t0.addingTimeInterval(10), limit: 10), ["a"])
        XCTAssertNil(schedule.nextDue())
    }

    func testLimitAndInFlightAreRespected() {
        var schedule = DeliverySchedule()
        for i in 0..<10 { schedule.schedule("m\(i)", at: t0) }
        XCTAssertEqual(schedule.takeDue(now: t0, limit: 3), ["m0", "m1", "m2"])
        // A running delivery is not rescheduled by a scan; its own outcome reschedules it.
        schedule.schedule("m0", at: .distantPast)
        XCTAssertEqual(schedule.takeDue(now: t0, limit: 3), ["m3", "m4", "m5"])
        schedule.finish("m0", next: t0.addingTimeInterval(60))
        schedule.finish("m1", next: nil)
        XCTAssertFalse(schedule.isKnown("m1"))
        XCTAssertTrue(schedule.isKnown("m0"))
        XCTAssertEqual(schedule.takeDue(now: t0.addingTimeInterval(59), limit: 100), ["m6", "m7", "m8", "m9"])
        XCTAssertEqual(schedule.takeDue(now: t0.addingTimeInterval(60), limit: 100), ["m0"])
    }

    func testRescheduleAndDropLeaveNoStaleDeliveries() {
        var schedule = DeliverySchedule()
        schedule.schedule("a", at: t0.addingTimeInterval(100))
        schedule.schedule("a", at: t0)               // retry now (postern queue retry)
        schedule.schedule("b", at: t0)
        schedule.drop("b")                           // deleted from the queue
        XCTAssertEqual(schedule.takeDue(now: t0.addingTimeInterval(1000), limit: 10), ["a"])
        XCTAssertEqual(schedule.queuedCount, 0)
        XCTAssertNil(schedule.nextDue())
    }

    /// Many reschedules (each periodic scan of a deep, deferred queue) must not grow the heap without
    /// bound, and the order must survive the compaction.
    func testStaleEntriesAreCompacted() {
        var schedule = DeliverySchedule()
        for round in 0..<50 {
            for i in 0..<100 { schedule.schedule("m\(i)", at: t0.addingTimeInterval(Double(round * 100 + (99 - i)))) }
        }
        XCTAssertEqual(schedule.queuedCount, 100)
        XCTAssertLessThanOrEqual(schedule.heapCount, 1024 + 100)
        let taken = schedule.takeDue(now: .distantFuture, limit: 1000)
        XCTAssertEqual(taken, (0..<100).reversed().map { "m\($0)" })
    }
}
