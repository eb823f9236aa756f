/// One problem in a file an admin writes (postern.yaml, a policy file): where it is, what is wrong and how to
/// fix it. `postern check`, `postern serve` and a refused reload all print it the same way.
public struct ConfigIssue: Error, Sendable, Hashable, CustomStringConvertible {
    public var file: String
    /// 1-based; 0 when the problem is the file as a whole (it cannot be read, it is empty).
    public var line: Int
    public var message: String
    /// What to write instead. Every issue names one: an admin reading `postern check` should not have to guess.
    public var fix: String

    public init(file: String, line: Int, message: String, fix: String) {
        self.file = file
        self.line = line
        self.message = message
        self.fix = fix
    }

    /// `FILE:LINE: message (fix: ...)`.
    public var description: String { "\(file):\(line): \(message) (fix: \(fix))" }

    /// `FILE:LINE: error: message (fix: ...)`: what `postern check` lists apart from the warnings.
    public var errorDescription: String { "\(file):\(line): error: \(message) (fix: \(fix))" }

    /// `FILE:LINE: warning: message (fix: ...)`: something worth fixing that does not stop the gateway.
    public var warningDescription: String { "\(file):\(line): warning: \(message) (fix: \(fix))" }
}

/// Every problem found in one pass, so an admin fixes them all at once; a file with any of them is not used.
public struct ConfigErrors: Error, Sendable, CustomStringConvertible {
    public var issues: [ConfigIssue]

    public init(issues: [ConfigIssue]) { self.issues = issues }

    /// The same issues in the order an admin reads them: by file, then line (then message and fix, so that the
    /// order does not depend on the order they were found in).
    public init(sorting issues: [ConfigIssue]) {
        self.issues = issues.sorted { ($0.file, $0.line, $0.message, $0.fix) < ($1.file, $1.line, $1.message, $1.fix) }
    }

    public var description: String { issues.map(\.description).joined(separator: "\n") }
}
