import PosternCore

/// A problem in a policy file is the same kind of thing as one in postern.yaml: one issue type (file, line,
/// message, fix) for every file an admin writes, printed the same way by `postern check`, `postern serve` and a
/// refused reload.
public typealias PolicyIssue = ConfigIssue

/// Every problem found while loading; a policy with any of them is not used.
public typealias PolicyErrors = ConfigErrors
