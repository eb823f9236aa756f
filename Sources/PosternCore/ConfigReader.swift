import Foundation
import Yams

/// Reads a YAML document against its schema, collecting every problem with its line instead of stopping at the
/// first: unknown keys (with "did you mean"), keys given twice, wrong types, numbers and sizes out of range.
/// postern.yaml's sections (the gateway's, the registration page's, the directory's) are read through it.
public struct ConfigReader {
    public let file: String
    public private(set) var issues: [ConfigIssue] = []
    /// What is worth pointing out but does not make the file unusable.
    public private(set) var warnings: [ConfigIssue] = []

    public init(file: String) {
        self.file = file
    }

    /// The document's root, or nil with the issue recorded when `text` is not YAML.
    public mutating func document(_ text: String) -> Node? {
        do {
            return try Yams.compose(yaml: text)
        } catch let error as YamlError {
            issues.append(ConfigIssue(file: file, line: Self.line(of: error), message: "not valid YAML: \(error)",
                                      fix: "check the indentation and quoting on this line and the one before"))
        } catch {
            issues.append(ConfigIssue(file: file, line: 0, message: "not valid YAML: \(error)",
                                      fix: "check the indentation and quoting"))
        }
        return nil
    }

    /// The file's text and root; nil with the issue recorded when it cannot be read or is not YAML.
    public mutating func document(atPath path: String) -> Node? {
        do {
            return document(try String(contentsOfFile: path, encoding: .utf8))
        } catch {
            issues.append(ConfigIssue(file: file, line: 0, message: "cannot read: \(error.localizedDescription)",
                                      fix: "check the path and that this user may read it"))
            return nil
        }
    }

    public mutating func issue(_ node: Node?, _ message: String, fix: String) {
        issues.append(ConfigIssue(file: file, line: node?.mark?.line ?? 1, message: message, fix: fix))
    }

    public mutating func warn(_ node: Node?, _ message: String, fix: String) {
        warnings.append(ConfigIssue(file: file, line: node?.mark?.line ?? 1, message: message, fix: fix))
    }

    /// The pairs of a mapping; reports keys outside `known` (with the nearest known one) and keys given twice.
    public mutating func mapping(_ node: Node?, known: Set<String>, context: String) -> [String: Node] {
        guard let node else { return [:] }
        guard let mapping = node.mapping else {
            issue(node, "\(context) must be a mapping", fix: "write it as 'key: value' lines indented under it")
            return [:]
        }
        var result: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.string else {
                issue(key, "\(context): keys must be strings", fix: "use one of: \(known.sorted().joined(separator: ", "))")
                continue
            }
            guard known.contains(name) else {
                let suggestion = Suggestions.closest(name, in: known).map { "did you mean '\($0)'? " } ?? ""
                issue(key, "\(context): unknown key '\(name)'", fix: suggestion + "known keys: \(known.sorted().joined(separator: ", "))")
                continue
            }
            if result[name] != nil { issue(key, "\(context): key '\(name)' given twice", fix: "keep one of them") }
            result[name] = value
        }
        return result
    }

    public mutating func string(_ node: Node?, _ context: String) -> String? {
        guard let node else { return nil }
        guard case .scalar(let scalar) = node else {
            issue(node, "\(context) must be a string", fix: "write it as plain text on the same line as its key")
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

    /// A size in bytes in `range`, in the forms of `ByteSize` (`25M`, `512K`, `26214400`).
    public mutating func size(_ node: Node?, _ context: String, range: ClosedRange<Int>) -> Int? {
        guard let node else { return nil }
        let bounds = "from \(ByteSize.describe(range.lowerBound)) to \(ByteSize.describe(range.upperBound))"
        guard let text = node.scalar?.string, let bytes = ByteSize.parse(text) else {
            issue(node, "\(context) must be a size, not '\(node.scalar?.string ?? "a list or mapping")'", fix: ByteSize.forms + ", \(bounds)")
            return nil
        }
        guard range.contains(bytes) else {
            issue(node, "\(context) must be \(bounds), not \(text)", fix: "write a size \(bounds)")
            return nil
        }
        return bytes
    }

    public mutating func bool(_ node: Node?, _ context: String) -> Bool? {
        guard let node else { return nil }
        switch node.scalar?.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            issue(node, "\(context) must be true or false", fix: "write true or false")
            return nil
        }
    }

    public mutating func sequence(_ node: Node?, _ context: String) -> [Node] {
        guard let node else { return [] }
        guard let sequence = node.sequence else {
            issue(node, "\(context) must be a list", fix: "write '- item' lines or [a, b]")
            return []
        }
        return Array(sequence)
    }

    public mutating func strings(_ node: Node?, _ context: String) -> [String] {
        sequence(node, context).compactMap { string($0, context) }
    }

    /// A listen address, `HOST:PORT`: `127.0.0.1:587`, `[::1]:587`, `localhost:587`.
    public mutating func listenAddress(_ node: Node?, _ context: String, example: String) -> (host: String, port: Int)? {
        guard let text = string(node, context) else { return nil }
        guard let address = Self.hostPort(text) else {
            issue(node, "\(context) '\(text)' is not HOST:PORT", fix: "e.g. \(example)")
            return nil
        }
        return address
    }

    /// `127.0.0.1:25`, `[::1]:25`, `localhost:25`; the port from 0 to 65535.
    public static func hostPort(_ text: String) -> (host: String, port: Int)? {
        let host: Substring, portText: Substring
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else { return nil }
            host = text[text.index(after: text.startIndex)..<close]
            portText = text[text.index(close, offsetBy: 2)...]
        } else {
            guard let colon = text.lastIndex(of: ":") else { return nil }
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        }
        guard !host.isEmpty, let port = Int(portText), (0...65535).contains(port) else { return nil }
        return (String(host), port)
    }

    /// A path as written in the file, made absolute against the file's directory.
    public func resolve(_ path: String) -> String {
        path.hasPrefix("/") ? path : URL(fileURLWithPath: file).deletingLastPathComponent().appendingPathComponent(path).standardizedFileURL.path
    }

    private static func line(of error: YamlError) -> Int {
        switch error {
        case .scanner(_, _, let mark, _), .parser(_, _, let mark, _), .composer(_, _, let mark, _):
            return mark.line
        default:
            return 0
        }
    }
}
