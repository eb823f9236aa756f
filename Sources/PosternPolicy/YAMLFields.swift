import PosternCore
import PosternSMTP
import Yams

// Policy files are read through Yams's public API only: `Yams.compose` with the `basic` resolver (every
// scalar is text, no implicit types, no `<<` merge keys), lines from the nodes' marks. libyaml (inside Yams)
// stops at 1,000 levels of nesting, so no file reaches deep recursion.

/// A YAML syntax problem at the line Yams reports.
struct YAMLSyntaxError: Error, Sendable {
    var line: Int
    var problem: String
}

enum PolicyYAML {
    /// The single document's root, or nil for an empty stream.
    static func compose(_ text: String) throws(YAMLSyntaxError) -> Node? {
        do {
            return try Yams.compose(yaml: text, .basic, .default, .utf8)
        } catch let error as YamlError {
            throw YAMLSyntaxError(error, text: text)
        } catch {
            throw YAMLSyntaxError(line: 0, problem: "\(error)")
        }
    }

    /// The line of the first `&` that could start an anchor, nil when there is none.
    ///
    /// Yams checks each mapping's keys for duplicates by hashing them, and a key that aliases nested
    /// anchors is hashed once per path through them: a 350-byte file took 0.3 s, each further level ten
    /// times longer. Policy files have no use for anchors, so none is allowed. An anchor starts a node, so its
    /// `&` never follows a letter or digit ("R&D" passes) and is followed by its name ("A & B" passes).
    static func anchorLine(_ text: String) -> Int? {
        var text = text
        return text.withUTF8 { bytes -> Int? in
            var line = 1
            var previous: UInt8 = UInt8(ascii: "\n")
            for (i, b) in bytes.enumerated() {
                defer { previous = b }
                if b == UInt8(ascii: "\n") { line += 1; continue }
                guard b == UInt8(ascii: "&"), !isASCIIAlphanumeric(previous), i + 1 < bytes.count else { continue }
                switch bytes[i + 1] {
                case UInt8(ascii: " "), UInt8(ascii: "\t"), UInt8(ascii: "\r"), UInt8(ascii: "\n"),
                     UInt8(ascii: ","), UInt8(ascii: "["), UInt8(ascii: "]"), UInt8(ascii: "{"), UInt8(ascii: "}"):
                    continue
                default:
                    return line
                }
            }
            return nil
        }
    }

    private static func isASCIIAlphanumeric(_ b: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b)
    }
}

extension YAMLSyntaxError {
    /// Yams's own description quotes the file; the policy's messages give the line and libyaml's words only.
    init(_ error: YamlError, text: String) {
        func words(_ context: YamlError.Context?, _ problem: String) -> String {
            guard let context else { return problem }
            return "\(problem) (\(context.text) at line \(context.mark.line))"
        }
        switch error {
        case .scanner(let context, let problem, let mark, _), .parser(let context, let problem, let mark, _),
             .composer(let context, let problem, let mark, _):
            self.init(line: mark.line, problem: words(context, problem))
        case .reader(let problem, let offset, _, _):
            // The offset counts characters; the line is only for the message.
            let line = offset.map { text.prefix($0).reduce(1) { $1 == "\n" ? $0 + 1 : $0 } } ?? 0
            self.init(line: line, problem: problem)
        case .duplicatedKeysInMapping(let duplicates, let context):
            self.init(line: context.mark.line, problem: "key '\(duplicates.sorted().joined(separator: "', '"))' appears twice in one mapping")
        default:
            self.init(line: 0, problem: "\(error)")
        }
    }
}

/// Reads one file's YAML tree against its schema, collecting every issue rather than stopping at the first.
struct SchemaReader {
    let file: String
    var issues: [PolicyIssue] = []

    init(file: String) { self.file = file }

    static func line(_ node: Node?) -> Int { node?.mark?.line ?? 0 }

    mutating func issue(_ node: Node?, _ message: String, fix: String) {
        issues.append(PolicyIssue(file: file, line: Self.line(node), message: message, fix: fix))
    }

    mutating func issue(line: Int, _ message: String, fix: String) {
        issues.append(PolicyIssue(file: file, line: line, message: message, fix: fix))
    }

    /// The file's root node, or nil with the issue recorded (anchors, syntax, an empty file).
    mutating func document(_ text: String) -> Node? {
        if let line = PolicyYAML.anchorLine(text) {
            issue(line: line, "'&' before a word reads as a YAML anchor, and policy files do not use anchors or aliases",
                  fix: "write each value out; in text write 'and', or put a space after '&'")
            return nil
        }
        do {
            guard let root = try PolicyYAML.compose(text) else {
                issue(nil, "file is empty", fix: "see the shipped policies/ for the expected layout")
                return nil
            }
            return root
        } catch {
            issue(line: error.line, "YAML syntax error: \(error.problem)",
                  fix: "check indentation and quoting on this line and the one before; quote values starting with * or &")
            return nil
        }
    }

    /// A mapping's values for the `allowed` keys, by key or by position in `allowed`.
    struct Fields {
        let keys: [String]
        var values: [Node?]
        /// The line of each key, by position in `allowed` (0 for a key not given).
        var keyLines: [Int]

        subscript(key: String) -> Node? { keys.firstIndex(of: key).flatMap { values[$0] } }
        subscript(position: Int) -> Node? { values[position] }
    }

    mutating func mapping(_ node: Node, what: String, allowed: [String], required: [String], unknownFix: String? = nil) -> Fields? {
        guard case .mapping(let m) = node else {
            issue(node, "\(what) must be a mapping of keys to values", fix: "write it as 'key: value' lines")
            return nil
        }
        var out = Fields(keys: allowed, values: Array(repeating: nil, count: allowed.count), keyLines: Array(repeating: 0, count: allowed.count))
        for (k, v) in m {
            guard case .scalar(let scalar) = k else {
                issue(k, "keys in \(what) must be plain words", fix: "use one of: \(allowed.sorted().joined(separator: ", "))")
                continue
            }
            let key = scalar.string
            guard let position = allowed.firstIndex(of: key) else {
                let suggestion = Suggestions.closest(key, in: allowed).map { "did you mean '\($0)'? " } ?? ""
                issue(k, "unknown key '\(key)' in \(what)", fix: suggestion + (unknownFix ?? "allowed keys are: \(allowed.sorted().joined(separator: ", "))"))
                continue
            }
            if out.values[position] != nil {
                issue(k, "key '\(key)' appears twice in \(what)", fix: "keep one of them")
                continue
            }
            out.values[position] = v
            out.keyLines[position] = Self.line(k)
        }
        for key in required where out[key] == nil {
            issue(node, "\(what) is missing '\(key)'", fix: "add '\(key): ...'")
        }
        return out
    }

    mutating func list(_ node: Node, what: String) -> [Node]? {
        switch node {
        case .sequence(let items): return Array(items)
        case .scalar(let s) where !s.string.isEmpty: return [node]
        case .scalar: return []
        default:
            issue(node, "\(what) must be a list", fix: "write '- item' lines or [a, b]")
            return nil
        }
    }

    mutating func string(_ node: Node, what: String) -> String? {
        guard case .scalar(let scalar) = node else {
            issue(node, "\(what) must be a single value", fix: "write it as plain text on the same line")
            return nil
        }
        guard !scalar.string.isEmpty else {
            issue(node, "\(what) is empty", fix: "give it a value")
            return nil
        }
        return scalar.string
    }

    mutating func date(_ node: Node, what: String) -> CalendarDate? {
        guard let text = string(node, what: what) else { return nil }
        guard let d = CalendarDate(text) else {
            issue(node, "'\(text)' is not a valid date for \(what)", fix: "write the date as YYYY-MM-DD, e.g. 2026-06-30")
            return nil
        }
        return d
    }

    mutating func int(_ node: Node, what: String) -> Int? {
        guard let text = string(node, what: what) else { return nil }
        guard let v = Int(text) else {
            issue(node, "'\(text)' is not a whole number for \(what)", fix: "write digits only")
            return nil
        }
        return v
    }

    mutating func bool(_ node: Node, what: String) -> Bool? {
        guard let text = string(node, what: what) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            issue(node, "'\(text)' is not true or false for \(what)", fix: "write true or false")
            return nil
        }
    }

    /// Bytes, optionally with a binary suffix: `10485760`, `10M`, `512K`, `1G`.
    mutating func size(_ node: Node, what: String) -> Int? {
        guard let text = string(node, what: what) else { return nil }
        if let v = Self.parseSize(text), v > 0 { return v }
        issue(node, "'\(text)' is not a size for \(what)", fix: "write bytes, or a number with K, M or G, e.g. 10M")
        return nil
    }

    /// The sizes postern.yaml takes too (`ByteSize`).
    static func parseSize(_ text: String) -> Int? { ByteSize.parse(text) }

    /// A department or device id: lower-case letters, digits, '-', '_' and '.', starting with a letter or digit
    /// (it names a directory or a file in devices.d, where a leading '.' would hide it), at most 100 characters.
    static func isIdentifier(_ s: String) -> Bool {
        var s = s
        return s.withUTF8 { bytes in
            guard let first = bytes.first, bytes.count <= maxIdentifierLength, isLowerAlphanumeric(first) else { return false }
            return bytes.allSatisfy { b in isLowerAlphanumeric(b) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_") || b == UInt8(ascii: ".") }
        }
    }

    static let maxIdentifierLength = 100

    private static func isLowerAlphanumeric(_ b: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b)
    }

    static func isMailbox(_ s: String) -> Bool {
        guard let m = try? AddressParser.parseMailbox(s), case .name = m.domain else { return false }
        return true
    }
}
