// Why this exists: libyaml alone needs about 0.4 s (on the benchmark machine) to pull the events of a
// 100,000-device devices.yaml (19 MB), twice the reload budget of 200 ms, before any policy work. Files
// written by `postern devices` (and the shipped examples) use a small part of YAML: block mappings and
// sequences, one-line plain or double-quoted scalars, one-line flow lists, comments. This reader accepts
// exactly that and builds the same tree YAMLTree.compose builds through libyaml (values and lines);
// anything else (quotes that need escapes, multi-line scalars, anchors, tags, tabs, CR, non-ASCII,
// errors of every kind) makes it give up, and the caller composes the text with libyaml instead.
// BlockLayoutReaderTests compares the two on the shipped files, generated files and mutated ones.

import Foundation

/// Composes text in the restricted block layout, or returns nil for text outside it (then libyaml decides).
enum BlockLayoutReader {
    static func compose(_ text: UnsafeBufferPointer<UInt8>) -> YAMLNode? {
        // Printable ASCII and LF only: libyaml's other line breaks (CR, NEL, U+2028/9) and its checks on
        // non-printable characters then never come into play.
        guard isPrintableASCII(text) else { return nil }
        var reader = Reader(text)
        return reader.document()
    }

    /// Printable ASCII and LF only. Without branches, so that the compiler can take many bytes a step.
    static func isPrintableASCII(_ text: UnsafeBufferPointer<UInt8>) -> Bool {
        var bad: UInt8 = 0
        for b in text { bad |= (b &- 0x20 >= 0x5F ? 1 : 0) & (b != UInt8(ascii: "\n") ? 1 : 0) }
        return bad == 0
    }

    /// devices.yaml cut into its entries, when it is in the layout `postern devices` writes: comment and blank
    /// lines, then `devices:` alone at column 0, then a block sequence of entries at one indentation and
    /// nothing but comments and blank lines after it. Each range runs from the first byte of an entry's
    /// `- ` line to the end of its last line with content (its trailing comments not included); `firstLines`
    /// are the 1-based lines the entries start on. Nil for anything else (the caller reads the whole file).
    /// An entry's tree (`composeEntry`, lines counted from the entry) is then the item `compose` would give
    /// for it, with its lines moved by `firstLine - 1`; `composeEntry` gives up on every entry `compose` would.
    static func splitDevices(_ text: UnsafeBufferPointer<UInt8>) -> (ranges: [Range<Int>], firstLines: [Int])? {
        guard isPrintableASCII(text), let base = text.baseAddress else { return nil }
        let reader = Reader(text)
        guard let top = reader.current, top.indent == 0, reader.isDevicesKey(top) else { return nil }
        // The lines after `devices:` as `Reader.advance` sees them, a newline search at a time (19 MB of them
        // for 100,000 devices).
        var offset = reader.nextOffset
        var lineNumber = top.number
        var indent = -1  // of the entries' `- `
        var ranges: [Range<Int>] = []
        var firstLines: [Int] = []
        var start = 0  // of the entry being read
        var end = 0  // of its last line with content
        while offset < text.count {
            lineNumber += 1
            let lineStart = offset
            let lineEnd = memchr(base + lineStart, Int32(UInt8(ascii: "\n")), text.count - lineStart)
                .map { UnsafePointer<UInt8>($0.assumingMemoryBound(to: UInt8.self)) - base } ?? text.count
            offset = lineEnd + 1
            var content = lineStart
            while content < lineEnd, text[content] == UInt8(ascii: " ") { content += 1 }
            if content == lineEnd || text[content] == UInt8(ascii: "#") { continue }
            let isEntry = text[content] == UInt8(ascii: "-") && (content + 1 == lineEnd || text[content + 1] == UInt8(ascii: " "))
            if indent < 0 {
                guard isEntry else { return nil }
                indent = content - lineStart
            } else if content - lineStart == indent, isEntry {
                ranges.append(start..<end)
            } else if content - lineStart <= indent {
                return nil  // another top-level key, or an indentation the whole-file reader would refuse
            } else {
                end = lineEnd
                continue
            }
            start = lineStart
            end = lineEnd
            firstLines.append(lineNumber)
        }
        guard indent >= 0 else { return nil }
        ranges.append(start..<end)
        return (ranges, firstLines)
    }

    /// One entry of `splitDevices` (the text of its range), as `compose` would read that item of the list,
    /// with its first line as line 1; nil when `compose` would give up on it, or when it is not a mapping.
    static func composeEntry(_ text: UnsafeBufferPointer<UInt8>) -> YAMLNode? {
        var reader = Reader(text)
        return reader.entry()
    }

    /// One line with its indentation and its content, trailing spaces removed.
    private struct Line {
        var number: Int
        var indent: Int
        /// Offsets into the text: first content byte and one past the last.
        var start: Int
        var end: Int
    }

    private struct Reader {
        let text: UnsafeBufferPointer<UInt8>
        /// Where the next unread line starts.
        private var offset = 0
        var nextOffset: Int { offset }
        private var lineNumber = 0
        /// The next line with content (blank and comment-only lines are skipped); nil at the end.
        private(set) var current: Line?

        init(_ text: UnsafeBufferPointer<UInt8>) {
            self.text = text
            advance()
        }

        mutating func advance() {
            current = nil
            while offset < text.count {
                lineNumber += 1
                let start = offset
                var end = start
                while end < text.count, text[end] != UInt8(ascii: "\n") { end += 1 }
                offset = end + 1
                var content = start
                while content < end, text[content] == UInt8(ascii: " ") { content += 1 }
                if content == end || text[content] == UInt8(ascii: "#") { continue }
                var last = end
                while last > content, text[last - 1] == UInt8(ascii: " ") { last -= 1 }
                current = Line(number: lineNumber, indent: content - start, start: content, end: last)
                return
            }
        }

        // MARK: Structure

        /// The top-level mapping at column 0, up to the end of the text.
        mutating func document() -> YAMLNode? {
            guard let first = current, first.indent == 0 else { return nil }
            var pairs: [(key: YAMLNode, value: YAMLNode)] = []
            while let line = current {
                guard line.indent == 0, let (key, rest) = keyAt(line.start, end: line.end),
                      let pair = pair(key, rest: rest, line: line, parentIndent: 0, itemsMayBeMappings: true)
                else { return nil }
                pairs.append(pair)
            }
            return .mapping(pairs, line: first.number)
        }

        /// `key:` on `line` and its value: inline after the colon, or a block sequence on the lines below.
        mutating func pair(_ key: Range<Int>, rest: Int, line: Line, parentIndent: Int, itemsMayBeMappings: Bool) -> (key: YAMLNode, value: YAMLNode)? {
            let keyNode = YAMLNode.scalar(string(key), line: line.number)
            if rest < line.end {
                guard let value = inlineValue(rest, end: line.end, line: line.number) else { return nil }
                advance()
                return (keyNode, value)
            }
            advance()
            guard let value = blockSequence(parentIndent: parentIndent, itemsMayBeMappings: itemsMayBeMappings) else { return nil }
            return (keyNode, value)
        }

        /// Where the content of a `- ` item line starts; nil when there is none or it is a comment.
        func itemContent(_ line: Line) -> Int? {
            var content = line.start + 1
            while content < line.end, text[content] == UInt8(ascii: " ") { content += 1 }
            guard content < line.end, text[content] != UInt8(ascii: "#") else { return nil }
            return content
        }

        /// `devices:` with nothing after it but a comment.
        func isDevicesKey(_ line: Line) -> Bool {
            guard let (key, rest) = keyAt(line.start, end: line.end), rest == line.end else { return false }
            return text[key].elementsEqual("devices".utf8)
        }

        /// The entry of `splitDevices` this text holds: what `blockSequence` reads for a mapping item, and
        /// nothing after it.
        mutating func entry() -> YAMLNode? {
            guard let line = current, isEntry(line), let content = itemContent(line),
                  let (key, rest) = keyAt(content, end: line.end),
                  let item = itemMapping(column: line.indent + content - line.start, firstKey: key, rest: rest),
                  current == nil
            else { return nil }
            return item
        }

        /// A block sequence under a `key:` whose mapping sits at `parentIndent`: `- ` lines at one indentation
        /// of at least `parentIndent`. Items are one-line scalars, or (when allowed) mappings starting on the `- ` line.
        mutating func blockSequence(parentIndent: Int, itemsMayBeMappings: Bool) -> YAMLNode? {
            guard let first = current, first.indent >= parentIndent, isEntry(first) else { return nil }
            let indent = first.indent
            var items: [YAMLNode] = []
            while let line = current, line.indent == indent, isEntry(line) {
                guard let content = itemContent(line) else { return nil }
                if let (key, rest) = keyAt(content, end: line.end) {
                    guard itemsMayBeMappings,
                          let item = itemMapping(column: line.indent + content - line.start, firstKey: key, rest: rest)
                    else { return nil }
                    items.append(item)
                } else {
                    guard let value = inlineValue(content, end: line.end, line: line.number, allowFlow: false) else { return nil }
                    items.append(value)
                    advance()
                }
            }
            // What follows must belong to an enclosing block: less indented, or the next key of the
            // mapping that holds an indentless sequence.
            if let next = current {
                guard next.indent < indent || (next.indent == indent && indent == parentIndent) else { return nil }
            }
            return .sequence(items, line: first.number)
        }

        /// A mapping that starts on a `- ` line at `column`; its other keys are on the following lines at that column.
        mutating func itemMapping(column: Int, firstKey: Range<Int>, rest: Int) -> YAMLNode? {
            guard let first = current else { return nil }
            var pairs: [(key: YAMLNode, value: YAMLNode)] = []
            pairs.reserveCapacity(8)  // a device entry has 7 to 11 keys: one allocation instead of four
            var key = firstKey
            var rest = rest
            var line = first
            while true {
                guard let pair = pair(key, rest: rest, line: line, parentIndent: column, itemsMayBeMappings: false) else { return nil }
                pairs.append(pair)
                guard let next = current, next.indent >= column else { break }
                guard next.indent == column, let (k, r) = keyAt(next.start, end: next.end) else { return nil }
                (key, rest, line) = (k, r, next)
            }
            return .mapping(pairs, line: first.number)
        }

        func isEntry(_ line: Line) -> Bool {
            text[line.start] == UInt8(ascii: "-") && (line.start + 1 == line.end || text[line.start + 1] == UInt8(ascii: " "))
        }

        /// `key:` at `start`: a plain word, a colon, then the end of the line or a space. Returns the key's
        /// range and where the value starts (`end` when there is none, comments included).
        private func keyAt(_ start: Int, end: Int) -> (Range<Int>, Int)? {
            guard start < end, isWordStart(text[start]) else { return nil }
            var i = start + 1
            while i < end, isWord(text[i]) { i += 1 }
            // libyaml looks no further than 1,024 characters for the colon of a key; stay well inside that.
            guard i < end, text[i] == UInt8(ascii: ":"), i - start <= 128 else { return nil }
            let key = start..<i
            i += 1
            if i == end { return (key, end) }
            guard text[i] == UInt8(ascii: " ") else { return nil }
            while i < end, text[i] == UInt8(ascii: " ") { i += 1 }
            if i < end, text[i] == UInt8(ascii: "#") { return (key, end) }
            return (key, i)
        }

        // MARK: Scalars

        /// A value that ends on its line: plain, double-quoted, or (where allowed) a flow list.
        private func inlineValue(_ start: Int, end: Int, line: Int, allowFlow: Bool = true) -> YAMLNode? {
            switch text[start] {
            case UInt8(ascii: "["):
                return allowFlow ? flowSequence(start, end: end, line: line) : nil
            case UInt8(ascii: "\""):
                guard let (value, after) = doubleQuoted(start, end: end) else { return nil }
                var i = after
                guard i == end || text[i] == UInt8(ascii: " ") else { return nil }
                while i < end, text[i] == UInt8(ascii: " ") { i += 1 }
                guard i == end || text[i] == UInt8(ascii: "#") else { return nil }
                return .scalar(value, line: line)
            default:
                guard let scalar = plainBlockScalar(start, end: end) else { return nil }
                return .scalar(string(scalar), line: line)
            }
        }

        /// A one-line plain scalar in block context, up to the end of the line or a ` #` comment.
        private func plainBlockScalar(_ start: Int, end: Int) -> Range<Int>? {
            guard isPlainStart(text[start]) else { return nil }
            var i = start
            var last = start  // one past the last non-space byte
            while i < end {
                let b = text[i]
                switch b {
                case UInt8(ascii: "#"):
                    guard text[i - 1] == UInt8(ascii: " ") else { return nil }
                    return start..<last
                case UInt8(ascii: ":"):
                    // `: ` would start a mapping value, a final `:` too.
                    guard i + 1 < end, text[i + 1] != UInt8(ascii: " ") else { return nil }
                case UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: "{"), UInt8(ascii: "}"), UInt8(ascii: "\\"):
                    return nil
                default:
                    break  // quotes after the first byte are content
                }
                if b != UInt8(ascii: " ") { last = i + 1 }
                i += 1
            }
            return start..<last
        }

        /// `[a, "b"]` on one line: plain or double-quoted items, no empty items.
        private func flowSequence(_ start: Int, end: Int, line: Int) -> YAMLNode? {
            var items: [YAMLNode] = []
            var i = start + 1
            func skipSpaces() { while i < end, text[i] == UInt8(ascii: " ") { i += 1 } }
            skipSpaces()
            if i < end, text[i] == UInt8(ascii: "]") {
                i += 1
            } else {
                while true {
                    skipSpaces()
                    guard i < end else { return nil }
                    if text[i] == UInt8(ascii: "\"") {
                        guard let (value, after) = doubleQuoted(i, end: end) else { return nil }
                        items.append(.scalar(value, line: line))
                        i = after
                        skipSpaces()
                        guard i < end, text[i] == UInt8(ascii: ",") || text[i] == UInt8(ascii: "]") else { return nil }
                        let separator = text[i]
                        i += 1
                        if separator == UInt8(ascii: "]") { break }
                        continue
                    }
                    guard isPlainStart(text[i]) else { return nil }
                    let itemStart = i
                    var last = i
                    while i < end, text[i] != UInt8(ascii: ","), text[i] != UInt8(ascii: "]") {
                        switch text[i] {
                        case UInt8(ascii: "#"), UInt8(ascii: "["), UInt8(ascii: "{"), UInt8(ascii: "}"), UInt8(ascii: "\\"):
                            return nil
                        case UInt8(ascii: ":"):
                            // Inside a flow list a colon ends a plain scalar before a space or a flow indicator.
                            guard i + 1 < end else { return nil }
                            switch text[i + 1] {
                            case UInt8(ascii: " "), UInt8(ascii: ","), UInt8(ascii: "?"), UInt8(ascii: "["),
                                 UInt8(ascii: "]"), UInt8(ascii: "{"), UInt8(ascii: "}"):
                                return nil
                            default: break
                            }
                        default: break
                        }
                        if text[i] != UInt8(ascii: " ") { last = i + 1 }
                        i += 1
                    }
                    guard i < end else { return nil }  // the list goes on past the line
                    items.append(.scalar(string(itemStart..<last), line: line))
                    let separator = text[i]
                    i += 1
                    if separator == UInt8(ascii: "]") { break }
                }
            }
            skipSpaces()
            guard i == end || text[i] == UInt8(ascii: "#") && text[i - 1] == UInt8(ascii: " ") else { return nil }
            return .sequence(items, line: line)
        }

        /// `"..."` on one line; the only escapes taken are `\"` and `\\`. Returns the value and where it ends.
        private func doubleQuoted(_ start: Int, end: Int) -> (String, Int)? {
            var bytes: [UInt8] = []
            var i = start + 1
            while true {
                guard i < end else { return nil }
                let b = text[i]
                if b == UInt8(ascii: "\"") { break }
                if b == UInt8(ascii: "\\") {
                    guard i + 1 < end, text[i + 1] == UInt8(ascii: "\"") || text[i + 1] == UInt8(ascii: "\\") else { return nil }
                    bytes.append(text[i + 1])
                    i += 2
                    continue
                }
                bytes.append(b)
                i += 1
            }
            return (String(decoding: bytes, as: UTF8.self), i + 1)
        }

        private func string(_ range: Range<Int>) -> String {
            String(decoding: UnsafeBufferPointer(rebasing: text[range]), as: UTF8.self)
        }

        private func isWordStart(_ b: UInt8) -> Bool {
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b)
        }

        private func isWord(_ b: UInt8) -> Bool {
            isWordStart(b) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_") || b == UInt8(ascii: ".")
        }

        /// Bytes a plain scalar may start with here: not a YAML indicator (`-?:,[]{}#&*!|>'"%@` and backquote).
        private func isPlainStart(_ b: UInt8) -> Bool {
            switch b {
            case UInt8(ascii: "-"), UInt8(ascii: "?"), UInt8(ascii: ":"), UInt8(ascii: ","), UInt8(ascii: "["),
                 UInt8(ascii: "]"), UInt8(ascii: "{"), UInt8(ascii: "}"), UInt8(ascii: "#"), UInt8(ascii: "&"),
                 UInt8(ascii: "*"), UInt8(ascii: "!"), UInt8(ascii: "|"), UInt8(ascii: ">"), UInt8(ascii: "'"),
                 UInt8(ascii: "\""), UInt8(ascii: "%"), UInt8(ascii: "@"), UInt8(ascii: "`"), UInt8(ascii: " "):
                return false
            default:
                return true
            }
        }
    }
}
