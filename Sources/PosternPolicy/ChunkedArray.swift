/// An array kept as chunks that are never changed once made: a copy with a few elements inserted or removed
/// shares every other chunk with the original.
///
/// A reload after one device file changed patches the previous policy's device tables this way: it copies
/// one chunk and the list of chunks, not 100,000 devices (a copy and a release of that many cost about as
/// much as the whole reload may take). Lookups are two binary searches: over the chunks, then in one.
struct ChunkedArray<Element: Sendable>: RandomAccessCollection, Sendable {
    final class Chunk: Sendable {
        let elements: [Element]
        init(_ elements: [Element]) { self.elements = elements }
    }

    /// Never an empty chunk.
    private var chunks: [Chunk] = []
    /// `ends[i]`: how many elements chunks `0...i` hold together.
    private var ends: [Int] = []

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
        chunks.append(Chunk(elements))
        ends.append((ends.last ?? 0) + elements.count)
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
    func partitionPoint(_ isBefore: (Element) -> Bool) -> Int {
        var lo = 0
        var hi = chunks.count
        while lo < hi {
            let mid = (lo + hi) / 2
            // A chunk is never empty, so it has a last element.
            if let last = chunks[mid].elements.last, isBefore(last) { lo = mid + 1 } else { hi = mid }
        }
        guard lo < chunks.count else { return endIndex }
        let elements = chunks[lo].elements
        var l = 0
        var h = elements.count
        while l < h {
            let mid = (l + h) / 2
            if isBefore(elements[mid]) { l = mid + 1 } else { h = mid }
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
        } else {
            chunks[chunk] = Chunk(elements)
        }
        // Every chunk from the (second half of the) one that grew ends one element later.
        for i in (split ? chunk + 1 : chunk)..<ends.count { ends[i] += 1 }
    }

    /// Removes the element at `position` (`0..<count`), copying one chunk.
    mutating func remove(at position: Int) {
        let (chunk, offset) = locate(position)
        var elements = chunks[chunk].elements
        elements.remove(at: offset)
        if elements.isEmpty {
            chunks.remove(at: chunk)
            ends.remove(at: chunk)
        } else {
            chunks[chunk] = Chunk(elements)
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
