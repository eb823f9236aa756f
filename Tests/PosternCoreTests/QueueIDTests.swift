import Foundation
import PosternCore
import Testing

struct QueueIDTests {
    @Test func idsAreUniqueFixedWidthAndSortByTime() {
        let ids = (0..<5000).map { _ in QueueID.make() }
        #expect(Set(ids).count == ids.count)
        #expect(ids.allSatisfy { $0.count == 20 && QueueID.isValid($0) })
        let earlier = QueueID.make(now: Date(timeIntervalSince1970: 1_700_000_000))
        let later = QueueID.make(now: Date(timeIntervalSince1970: 1_700_000_001))
        #expect(earlier < later)
        #expect(QueueID.make(now: Date(timeIntervalSince1970: -5)).count == 20, "a clock before 1970 is no trap")
    }

    @Test func onlyFileNameSafeIdsAreValid() {
        for id in ["0MFX3Q8K2A7F0001K3ZQ", "0MFX3Q8K2A-7F3C9D", "a_b"] { #expect(QueueID.isValid(id), "\(id)") }
        for id in ["", "../x", "a/b", "a.b", String(repeating: "a", count: 65), "é"] { #expect(!QueueID.isValid(id), "\(id)") }
    }
}
