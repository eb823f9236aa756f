import Foundation
import PosternCore
import Yams

/// A login as the directory compares it.
public enum LoginName {
    /// The login the way OpenLDAP's caseIgnoreMatch (the uid attribute's equality rule, RFC 4518 string
    /// preparation in short) sees it: compatibility forms folded (NFKC: a fullwidth ＡＬＩＣＥ, a no-break
    /// or an ideographic space are ALICE and a space), case folded, leading and trailing spaces dropped and
    /// inner runs of spaces made one. `alice`, ` Alice`, `ALICE  ` and `ａｌｉｃｅ` find the same entry in
    /// slapd, so anything keyed on a login (the throttle before the search) keys on this.
    public static func normalized(_ login: String) -> String {
        let folded = login.precomposedStringWithCompatibilityMapping.lowercased().precomposedStringWithCompatibilityMapping
        var out = String.UnicodeScalarView()
        var space = false
        for scalar in folded.unicodeScalars {
            if scalar == " " {
                space = !out.isEmpty
                continue
            }
            if space {
                out.append(" ")
                space = false
            }
            out.append(scalar)
        }
        return String(out)
    }
}

/// Distinguished names compared the way admins write them.
public enum DistinguishedName {
    /// Lower case, without spaces around `,` and `=`: `CN=Staff, ou=Groups` and `cn=staff,ou=groups` are one DN.
    public static func normalized(_ dn: String) -> String {
        rdns(dn).joined(separator: ",")
    }

    /// The normalised RDNs, first (most specific) first.
    static func rdns(_ dn: String) -> [String] {
        dn.split(separator: ",", omittingEmptySubsequences: false).map { rdn in
            rdn.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
                .joined(separator: "=")
        }
    }
}

/// A group named in configuration (`required-groups`, the registration page's `admin-groups` and
/// `department-groups`): a full DN, or a bare name.
///
/// A bare name stands for the group whose first RDN has that value directly under the configured group
/// base, and for nothing without a base: matched anywhere, `postern-admins` would be satisfied by a group
/// of that name in any OU, including one users manage themselves.
public struct GroupReference: Sendable, Hashable, CustomStringConvertible {
    /// As written in the configuration.
    public let name: String
    /// The normalised DN, for a full DN.
    private let dn: String?
    /// The value, for a bare name under a base.
    private let bareValue: String?
    /// The normalised base, for a bare name.
    private let bareBase: String?

    public init(_ name: String, base: String?) {
        self.name = name
        if name.contains("=") {
            dn = DistinguishedName.normalized(name)
            bareValue = nil
            bareBase = nil
        } else {
            dn = nil
            bareBase = base.map(DistinguishedName.normalized).flatMap { $0.isEmpty ? nil : $0 }
            bareValue = bareBase == nil ? nil : name.trimmingCharacters(in: .whitespaces).lowercased()
        }
    }

    /// A bare name without a base: it matches no group (`postern check` warns about it).
    public var matchesNothing: Bool { dn == nil && bareBase == nil }

    /// Whether `groupDN` (a DN the directory gave) is the group this reference names.
    public func matches(_ groupDN: String) -> Bool {
        let rdns = DistinguishedName.rdns(groupDN)
        if let dn { return rdns.joined(separator: ",") == dn }
        guard let bareValue, let bareBase, let first = rdns.first, let equals = first.firstIndex(of: "=") else { return false }
        return first[first.index(after: equals)...] == bareValue && rdns.dropFirst().joined(separator: ",") == bareBase
    }

    public var description: String { name }
}

extension ConfigReader {
    /// A bare group name without `directory.group-base` matches no group: warn, since its members would be refused.
    public mutating func warnBareGroupNames(_ names: [String], base: String?, node: Node?, what: String) {
        for name in names where GroupReference(name, base: base).matchesNothing {
            warn(node, "\(what): bare group name '\(name)' matches no group, because directory.group-base is not set",
                 fix: "set directory.group-base (e.g. ou=groups,dc=example,dc=edu) or write the group's full DN")
        }
    }
}
