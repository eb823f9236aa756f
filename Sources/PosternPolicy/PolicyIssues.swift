/// One problem in a policy file, with the place and the fix.
public struct PolicyIssue: Error, Sendable, Hashable, CustomStringConvertible {
    public var file: String
    /// 1-based; 0 when the problem is the file (or directory) as a whole.
    public var line: Int
    public var message: String
    public var fix: String

    public init(file: String, line: Int, message: String, fix: String) {
        self.file = file
        self.line = line
        self.message = message
        self.fix = fix
    }

    /// `FILE:LINE: message (fix: ...)`.
    public var description: String { "\(file):\(line): \(message) (fix: \(fix))" }
}

/// Every problem found while loading; a policy with any of them is not used.
public struct PolicyErrors: Error, Sendable, CustomStringConvertible {
    public var issues: [PolicyIssue]

    public init(issues: [PolicyIssue]) { self.issues = issues }

    /// The same issues in the order a load reports them: by file, then line (then message and fix, so that the
    /// order does not depend on the order they were found in).
    init(sorting issues: [PolicyIssue]) {
        self.issues = issues.sorted { ($0.file, $0.line, $0.message, $0.fix) < ($1.file, $1.line, $1.message, $1.fix) }
    }

    public var description: String { issues.map(\.description).joined(separator: "\n") }
}
