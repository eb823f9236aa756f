import Foundation

/// Where a secret such as the service account's password comes from.
public enum SecretSource: Sendable, Hashable {
    /// The whole content of a file, without a trailing line break.
    case file(String)
    /// The value of an environment variable.
    case environment(String)

    public func resolve() throws -> String {
        switch self {
        case .file(let path):
            let data: Data
            do {
                data = try Data(contentsOf: URL(fileURLWithPath: path))
            } catch {
                throw DirectoryConfigurationError.secretUnavailable("cannot read secret file \(path): \(error.localizedDescription)")
            }
            guard var text = String(data: data, encoding: .utf8) else {
                throw DirectoryConfigurationError.secretUnavailable("secret file \(path) is not UTF-8")
            }
            // Editors and `echo` leave a line break at the end; a password never ends with one.
            while text.hasSuffix("\n") || text.hasSuffix("\r") { text.removeLast() }
            guard !text.isEmpty else {
                throw DirectoryConfigurationError.secretUnavailable("secret file \(path) is empty")
            }
            return text
        case .environment(let name):
            guard let value = ProcessInfo.processInfo.environment[name], !value.isEmpty else {
                throw DirectoryConfigurationError.secretUnavailable("environment variable \(name) is not set or empty")
            }
            return value
        }
    }
}

/// How a user's groups are found once their entry is known.
public enum GroupLookup: Sendable, Hashable {
    /// Groups are not looked up; `requiredGroups` must then be empty.
    case none
    /// The user's entry lists its groups' DNs in this attribute (the memberof overlay's `memberOf`).
    case attribute(String)
    /// Groups are entries under `base` matching `filter`, where `%s` stands for the user's DN
    /// (escaped per RFC 4515), e.g. `(&(objectClass=groupOfNames)(member=%s))`.
    case search(base: String, filter: String)
}

/// Everything Postern needs to know to check SMTP AUTH credentials against the directory.
public struct DirectoryConfiguration: Sendable, Hashable {
    /// Servers in order of preference: `ldaps://host[:port]` or `ldap://host[:port]` (StartTLS is
    /// then required). Later ones are tried when earlier ones cannot be reached.
    public var uris: [String]
    /// PEM file of the CA(s) that sign the directory servers' certificates; nil: the system's.
    public var caFile: String?
    /// The service account Postern searches as.
    public var bindDN: String
    public var bindPassword: SecretSource
    /// Where users are searched (subtree).
    public var searchBase: String
    /// Filter finding one user; `%s` stands for the login, escaped per RFC 4515.
    public var userFilter: String
    /// Attributes holding the user's mail addresses, e.g. `mail`, `mailAlternateAddress`.
    public var addressAttributes: [String]
    public var groupLookup: GroupLookup
    /// When not empty, only members of at least one of these groups may submit. A full DN
    /// (`cn=mail-submitters,ou=groups,dc=example,dc=edu`) matches that group (compared without case or
    /// spaces around separators); a bare name (`mail-submitters`) the group of that first RDN value directly
    /// under `groupBase`, and nothing without one (`GroupReference`).
    public var requiredGroups: [String]
    /// Where bare group names are (`ou=groups,dc=example,dc=edu`); nil: only full DNs match.
    public var groupBase: String?
    /// TCP connect (and TLS set-up) limit per server.
    public var connectTimeout: Duration
    /// Limit for one LDAP operation (bind, search, StartTLS).
    public var operationTimeout: Duration
    /// Most service connections kept open (and the same again for credential checks).
    public var maxConnections: Int

    public init(
        uris: [String],
        caFile: String? = nil,
        bindDN: String,
        bindPassword: SecretSource,
        searchBase: String,
        userFilter: String = "(&(objectClass=inetOrgPerson)(uid=%s))",
        addressAttributes: [String] = ["mail", "mailAlternateAddress"],
        groupLookup: GroupLookup = .attribute("memberOf"),
        requiredGroups: [String] = [],
        groupBase: String? = nil,
        connectTimeout: Duration = .seconds(3),
        operationTimeout: Duration = .seconds(5),
        maxConnections: Int = 4
    ) {
        self.uris = uris
        self.caFile = caFile
        self.bindDN = bindDN
        self.bindPassword = bindPassword
        self.searchBase = searchBase
        self.userFilter = userFilter
        self.addressAttributes = addressAttributes
        self.groupLookup = groupLookup
        self.requiredGroups = requiredGroups
        self.groupBase = groupBase
        self.connectTimeout = connectTimeout
        self.operationTimeout = operationTimeout
        self.maxConnections = maxConnections
    }

    /// Checks what can be checked without contacting the directory.
    public func validate() throws {
        guard !uris.isEmpty else { throw DirectoryConfigurationError.invalid("no directory URI given") }
        for uri in uris {
            guard LDAPServerURI(uri) != nil else {
                throw DirectoryConfigurationError.invalid("directory URI \(uri) must start with ldaps:// or ldap:// (with StartTLS) and name one host")
            }
        }
        guard !bindDN.isEmpty else { throw DirectoryConfigurationError.invalid("the service bind DN is empty") }
        guard userFilter.contains("%s") else {
            throw DirectoryConfigurationError.invalid("user filter \(userFilter) has no %s for the login")
        }
        guard userFilter.hasPrefix("("), userFilter.hasSuffix(")") else {
            throw DirectoryConfigurationError.invalid("user filter \(userFilter) must be enclosed in parentheses")
        }
        if case .search(_, let filter) = groupLookup, !filter.contains("%s") {
            throw DirectoryConfigurationError.invalid("group filter \(filter) has no %s for the user's DN")
        }
        if case .none = groupLookup, !requiredGroups.isEmpty {
            throw DirectoryConfigurationError.invalid("required groups are set but no group lookup is configured")
        }
        guard maxConnections >= 1 else { throw DirectoryConfigurationError.invalid("maxConnections must be at least 1") }
        guard connectTimeout > .zero, operationTimeout > .zero else {
            throw DirectoryConfigurationError.invalid("timeouts must be positive")
        }
        if let caFile, !FileManager.default.isReadableFile(atPath: caFile) {
            throw DirectoryConfigurationError.invalid("CA file \(caFile) is not readable")
        }
    }
}

/// Why a directory configuration cannot be used.
public enum DirectoryConfigurationError: Error, Hashable, CustomStringConvertible {
    case invalid(String)
    case secretUnavailable(String)

    public var description: String {
        switch self {
        case .invalid(let why): return "directory configuration: \(why)"
        case .secretUnavailable(let why): return "directory configuration: \(why)"
        }
    }
}

/// One server URI, split into what decides how we connect.
struct LDAPServerURI: Sendable, Hashable {
    var uri: String
    /// ldap:// — StartTLS must succeed before anything else is sent.
    var needsStartTLS: Bool

    init?(_ uri: String) {
        let lower = uri.lowercased()
        let rest: Substring
        if lower.hasPrefix("ldaps://") {
            needsStartTLS = false
            rest = uri.dropFirst("ldaps://".count)
        } else if lower.hasPrefix("ldap://") {
            needsStartTLS = true
            rest = uri.dropFirst("ldap://".count)
        } else {
            return nil
        }
        // One host only (libldap would take a space-separated list; we do failover ourselves),
        // and a host is required: an empty one would mean libldap's configured default.
        let hostPort = rest.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).first ?? ""
        guard !hostPort.isEmpty, !uri.contains(" "), !uri.contains(",") else { return nil }
        self.uri = uri
    }
}
