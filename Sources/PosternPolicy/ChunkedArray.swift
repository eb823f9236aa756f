/// An array kept as chunks that are never changed once made: a copy with a few elements inserted or removed
/// shares every other chunk with the original.
///
/// Why not a standard container: a reload after one device file changed makes a new policy from the previous
/// one while sessions still use the previous one, so the device tables are copied, not changed in place. With
/// `Array` that copy, the insertion and the release of the old tables are O(n): for 100,000 devices, measured
/// with `swiftc -O` on the shared 2-core machine of BENCHMARKS.md (two runs of 8, load average 4.6 and 7.4),
/// 4–80 ms for the copy with one insertion and one removal in both tables and 2–55 ms for the release,
/// against a 50 ms budget for the whole reload (which takes under 1 ms on these chunks). The standard library has no persistent sorted collection;
/// swift-collections' persistent ones (`TreeDictionary`, `TreeSet`) are hashed (no search by address range),
/// and its B-tree `SortedSet`/`SortedDictionary` (1.6.0) sit behind the `UnstableSortedCollections` trait,
/// "not ready for use in production". So: one chunk and the list of chunks are copied, not 100,000 devices.
/// Lookups are two binary searches: over the chunks, then in one.
/// `ChunkedArrayTests` check it against `Array` over random inserts and removals.
struct ChunkedArray<Element: Sendable>: RandomAccessCollection, Sendable {
    final class Chunk: Sendable {
        let elements: [Element]
        init(_ elements: [Element]) { self.elements = elements }
    }

    /// Never an empty chunk.
    private var chunks: [Chunk] = []
    /// `ends[i]`: how many elements chunks `0...i` hold together.
    private var ends: [Int] = []
    /// `lasts[i]`: the last element of chunk `i`, side by side, so that a search finds its chunk in one array
    /// instead of following a pointer per step.
    private var lasts: [Element] = []

    /// Chunks are made this long and split when they grow to twice it.
    static var chunkLength: Int { 512 }

    init() {}

    init<S: Sequence>(_ elements: S) where S.Element == Element {
        var current: [Element] = []
        current.reserveCapacity(Self.chunkLength)
        for element in elements {
            current.append(element)
            if current.count == Self.chunkLength {
                append(chunk: current)
                current.removeAll(keepingCapacity: true)
            }
        }
        if !current.isEmpty { append(chunk: current) }
    }

    private mutating func append(chunk elements: [Element]) {
        guard let last = elements.last else { return }
        chunks.append(Chunk(elements))
        ends.append((ends.last ?? 0) + elements.count)
        lasts.append(last)
    }

    var startIndex: Int { 0 }
    var endIndex: Int { ends.last ?? 0 }

    subscript(position: Int) -> Element {
        let (chunk, offset) = locate(position)
        return chunks[chunk].elements[offset]
    }

    /// The chunk holding `position` (`0..<count`) and the offset in it.
    private func locate(_ position: Int) -> (chunk: Int, offset: Int) {
        var lo = 0
        var hi = ends.count - 1
        while lo < hi {
            let mid = (lo + hi) / 2
            if ends[mid] > position { hi = mid } else { lo = mid + 1 }
        }
        return (lo, position - (lo == 0 ? 0 : ends[lo - 1]))
    }

    /// The first position whose element is not `isBefore`; the elements must be partitioned (every element
    /// that is `isBefore` comes before every one that is not), as a sorted array is for "less than x".
    /// The elements are looked at in place (through buffer pointers), not copied: a copy of an element retains what
    /// it refers to, and this is the device lookup of every connection.
    func partitionPoint(_ isBefore: (Element) -> Bool) -> Int {
        var lo = 0
        var hi = chunks.count
        lasts.withUnsafeBufferPointer { lasts in
            while lo < hi {
                let mid = (lo + hi) / 2
                if isBefore(lasts[mid]) { lo = mid + 1 } else { hi = mid }
            }
        }
        guard lo < chunks.count else { return endIndex }
        let l = chunks[lo].elements.withUnsafeBufferPointer { elements in
            var l = 0
            var h = elements.count
            while l < h {
                let mid = (l + h) / 2
                if isBefore(elements[mid]) { l = mid + 1 } else { h = mid }
            }
            return l
        }
        return (lo == 0 ? 0 : ends[lo - 1]) + l
    }

    /// Inserts at `position` (`0...count`), copying one chunk.
    mutating func insert(_ element: Element, at position: Int) {
        guard !chunks.isEmpty else {
            append(chunk: [element])
            return
        }
        let (chunk, offset) = position == endIndex ? (chunks.count - 1, chunks[chunks.count - 1].elements.count) : locate(position)
        var elements = chunks[chunk].elements
        elements.insert(element, at: offset)
        let split = elements.count >= 2 * Self.chunkLength
        if split {
            let half = elements.count / 2
            chunks.replaceSubrange(chunk...chunk, with: [Chunk(Array(elements[..<half])), Chunk(Array(elements[half...]))])
            ends.insert((chunk == 0 ? 0 : ends[chunk - 1]) + half, at: chunk)
            lasts.replaceSubrange(chunk...chunk, with: [elements[half - 1], elements[elements.count - 1]])
        } else {
            chunks[chunk] = Chunk(elements)
            lasts[chunk] = elements[elements.count - 1]
        }
        // Every chunk from the (second half of the) one that grew ends one element later.
        for i in (split ? chunk + 1 : chunk)..<ends.count { ends[i] += 1 }
    }

    /// Removes the element at `position` (`0..<count`), copying one chunk.
    mutating func remove(at position: Int) {
        let (chunk, offset) = locate(position)
        var elements = chunks[chunk].elements
        elements.remove(at: offset)
        if let last = elements.last {
            chunks[chunk] = Chunk(elements)
            lasts[chunk] = last
        } else {
            chunks.remove(at: chunk)
            ends.remove(at: chunk)
            lasts.remove(at: chunk)
        }
        for i in chunk..<ends.count { ends[i] -= 1 }
    }

    func makeIterator() -> Iterator { Iterator(chunks: chunks) }

    /// Walks the chunks in order, without a search per element.
    struct Iterator: IteratorProtocol {
        let chunks: [Chunk]
        var chunk = 0
        var offset = 0

        init(chunks: [Chunk]) { self.chunks = chunks }

        mutating func next() -> Element? {
            while chunk < chunks.count {
                let elements = chunks[chunk].elements
                if offset < elements.count {
                    defer { offset += 1 }
                    return elements[offset]
                }
                chunk += 1
                offset = 0
            }
            return nil
        }
    }
}
