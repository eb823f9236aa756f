@testable import PosternPolicy
import PosternTestSupport
import Testing

/// The device tables' storage against a plain array: the same elements in the same order after random inserts and
/// removes, and a copy keeps its elements when the original changes.
@Suite struct ChunkedArrayTests {
    @Test func randomInsertsAndRemovesMatchAnArray() {
        var random = SplitMix64(seed: 0xC4_0C4)
        var chunked = ChunkedArray<Int>((0..<1500).map { $0 * 2 })
        var plain = (0..<1500).map { $0 * 2 }
        var copies: [(ChunkedArray<Int>, [Int])] = []
        for step in 0..<6000 {
            if plain.isEmpty || random.next() % 3 != 0 {
                let position = Int(random.next() % UInt64(plain.count + 1))
                chunked.insert(step, at: position)
                plain.insert(step, at: position)
            } else {
                let position = Int(random.next() % UInt64(plain.count))
                chunked.remove(at: position)
                plain.remove(at: position)
            }
            if step % 500 == 0 { copies.append((chunked, plain)) }
        }
        #expect(Array(chunked) == plain)
        #expect(chunked.count == plain.count)
        for i in stride(from: 0, to: plain.count, by: 37) { #expect(chunked[i] == plain[i]) }
        for (copy, expected) in copies { #expect(Array(copy) == expected) }
    }

    @Test func partitionPointFindsTheFirstElementNotBefore() {
        let sorted = (0..<3000).map { $0 * 3 }
        let chunked = ChunkedArray(sorted)
        for x in [-1, 0, 1, 2, 3, 1535, 1536, 8997, 8998, 9000, 20_000] {
            #expect(chunked.partitionPoint { $0 < x } == (sorted.firstIndex { $0 >= x } ?? sorted.count), "\(x)")
        }
        #expect(ChunkedArray<Int>().partitionPoint { $0 < 5 } == 0)
        var one = ChunkedArray<Int>()
        one.insert(4, at: 0)
        one.remove(at: 0)
        #expect(one.isEmpty && Array(one) == [])
    }

    /// Kept sorted through random inserts and removes (chunks that split, shrink and disappear), a search finds what
    /// a search of the plain array finds, for every value.
    @Test func partitionPointAfterRandomEditsMatchesAnArray() {
        var random = SplitMix64(seed: 0x5EA_2C4)
        var plain = (0..<2000).map { $0 * 4 }
        var chunked = ChunkedArray(plain)
        var misses: [String] = []
        for step in 0..<8000 {
            if plain.isEmpty || random.next() % 2 == 0 {
                let value = Int(random.next() % 10_000)
                let position = plain.firstIndex { $0 >= value } ?? plain.count
                chunked.insert(value, at: position)
                plain.insert(value, at: position)
            } else {
                // Mostly runs of removals from one place, so that whole chunks empty.
                let position = Int(random.next() % UInt64(plain.count))
                for _ in 0..<(step % 7 == 0 ? 300 : 1) where position < plain.count {
                    chunked.remove(at: position)
                    plain.remove(at: position)
                }
            }
            if step % 400 == 0 || plain.count < 50 {
                for x in stride(from: -1, through: 10_001, by: step % 400 == 0 ? 7 : 997) {
                    let found = chunked.partitionPoint { $0 < x }
                    let expected = plain.firstIndex { $0 >= x } ?? plain.count
                    if found != expected { misses.append("step \(step), \(x): \(found), expected \(expected)") }
                }
            }
        }
        #expect(misses.isEmpty, "\(misses.prefix(5))")
        #expect(Array(chunked) == plain)
    }
}
