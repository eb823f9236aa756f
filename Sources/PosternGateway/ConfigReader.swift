import Foundation
import Yams

/// One problem in a configuration file, with where it is and how to fix it.
public struct ConfigIssue: Error, Sendable, CustomStringConvertible, Hashable {
    public var file: String
    public var line: Int
    public var message: String
    public var fix: String?

    public init(file: String, line: Int, message: String, fix: String? = nil) {
        self.file = file
        self.line = line
        self.message = message
        self.fix = fix
    }

    public var description: String {
        "\(file):\(line): \(message)" + (fix.map { " (fix: \($0))" } ?? "")
    }
}

/// All the problems found in one go, so an admin fixes them in one pass.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var issues: [ConfigIssue]
    public init(issues: [ConfigIssue]) { self.issues = issues }
    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

/// Reads a YAML mapping with line numbers, reporting unknown keys and wrong types as issues.
public struct ConfigReader {
    public let file: String
    public private(set) var issues: [ConfigIssue] = []
    /// What is worth pointing out but does not make the file unusable.
    public private(set) var warnings: [ConfigIssue] = []

    public init(file: String) {
        self.file = file
    }

    public mutating func issue(_ node: Node?, _ message: String, fix: String? = nil) {
        issues.append(ConfigIssue(file: file, line: node?.mark?.line ?? 1, message: message, fix: fix))
    }

    public mutating func warn(_ node: Node?, _ message: String, fix: String? = nil) {
        warnings.append(ConfigIssue(file: file, line: node?.mark?.line ?? 1, message: message, fix: fix))
    }

    /// The pairs of a mapping; reports keys outside `known`.
    public mutating func mapping(_ node: Node?, known: Set<String>, context: String) -> [String: Node] {
        guard let node else { return [:] }
        guard let mapping = node.mapping else {
            issue(node, "\(context) must be a mapping")
            return [:]
        }
        var result: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.string else {
                issue(key, "\(context): keys must be strings")
                continue
            }
            guard known.contains(name) else {
                let suggestion = known.min { levenshtein($0, name) < levenshtein($1, name) }
                issue(key, "\(context): unknown key '\(name)'", fix: suggestion.map { "did you mean '\($0)'? known keys: \(known.sorted().joined(separator: ", "))" })
                continue
            }
            if result[name] != nil { issue(key, "\(context): key '\(name)' given twice") }
            result[name] = value
        }
        return result
    }

    public mutating func string(_ node: Node?, _ context: String) -> String? {
        guard let node else { return nil }
        guard case .scalar(let scalar) = node else {
            issue(node, "\(context) must be a string")
            return nil
        }
        return scalar.string
    }

    /// A whole number in `range`. Every number of postern.yaml has one: the values go on into
    /// `TimeAmount.seconds`, `Duration` arithmetic and multiplications, which trap when they overflow.
    public mutating func int(_ node: Node?, _ context: String, range: ClosedRange<Int>) -> Int? {
        guard let node else { return nil }
        let fix = "write a whole number from \(range.lowerBound) to \(range.upperBound)"
        let text = node.scalar?.string.replacingOccurrences(of: "_", with: "")
        guard let text, let value = Int(text) else {
            if let text, Self.isWholeNumber(text) {
                issue(node, "\(context) must be between \(range.lowerBound) and \(range.upperBound), not \(text)", fix: fix)  // beyond Int
            } else {
                issue(node, "\(context) must be a whole number", fix: fix)
            }
            return nil
        }
        guard range.contains(value) else {
            issue(node, "\(context) must be between \(range.lowerBound) and \(range.upperBound), not \(value)", fix: fix)
            return nil
        }
        return value
    }

    private static func isWholeNumber(_ text: String) -> Bool {
        let digits = text.hasPrefix("-") || text.hasPrefix("+") ? text.dropFirst() : Substring(text)
        return !digits.isEmpty && digits.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
    }

    public mutating func bool(_ node: Node?, _ context: String) -> Bool? {
        guard let node else { return nil }
        switch node.scalar?.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            issue(node, "\(context) must be true or false")
            return nil
        }
    }

    public mutating func sequence(_ node: Node?, _ context: String) -> [Node] {
        guard let node else { return [] }
        guard let sequence = node.sequence else {
            issue(node, "\(context) must be a list")
            return []
        }
        return Array(sequence)
    }

    public mutating func strings(_ node: Node?, _ context: String) -> [String] {
        sequence(node, context).compactMap { string($0, context) }
    }
}

private func levenshtein(_ a: String, _ b: String) -> Int {
    let a = Array(a), b = Array(b)
    var previous = Array(0...b.count)
    for i in 1...max(a.count, 1) where !a.isEmpty {
        var current = [i] + Array(repeating: 0, count: b.count)
        for j in 1...max(b.count, 1) where !b.isEmpty {
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1))
        }
        previous = current
    }
    return previous[b.count]
}
