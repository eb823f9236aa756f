/// "Did you mean ...?" for a misspelt key or word: the closest allowed word by edit distance.
public enum Suggestions {
    /// The candidate nearest to `word` (Levenshtein, without case), when it is near enough to be a typo of it:
    /// at most two edits, or a third of the word's length for longer words. Ties go to the alphabetically first.
    public static func closest(_ word: String, in candidates: some Sequence<String>) -> String? {
        let w = Array(word.lowercased())
        var best: (word: String, distance: Int)?
        for candidate in candidates.sorted() {
            let d = distance(w, Array(candidate.lowercased()))
            if d < best?.distance ?? .max { best = (candidate, d) }
        }
        guard let best, best.distance <= max(2, word.count / 3) else { return nil }
        return best.word
    }

    /// Edits (insert, delete, replace) that turn `a` into `b`, one row of the table at a time.
    static func distance(_ a: [Character], _ b: [Character]) -> Int {
        guard !a.isEmpty else { return b.count }
        guard !b.isEmpty else { return a.count }
        var row = Array(0...b.count)
        for i in 1...a.count {
            var previous = row[0]
            row[0] = i
            for j in 1...b.count {
                let current = row[j]
                row[j] = min(row[j] + 1, row[j - 1] + 1, previous + (a[i - 1] == b[j - 1] ? 0 : 1))
                previous = current
            }
        }
        return row[b.count]
    }
}
