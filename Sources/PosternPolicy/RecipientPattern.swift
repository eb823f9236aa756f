import Foundation
import PosternSMTP

/// A device's `recipients:` entry, which narrows where it may send within the internal domains (the multifunction
/// printers' "send to self" done at the gateway): `owner` (the device's owner address), one address
/// (`j.doe@chem.example.edu`), or a domain (`*@chem.example.edu`, `@chem.example.edu` or `chem.example.edu`, and
/// `*.chem.example.edu` for its subdomains). Addresses compare without regard to case: internal directories match
/// `mail` so (see `PolicySet.recipientKey`).
public enum RecipientPattern: Sendable, Hashable, CustomStringConvertible {
    case owner
    case address(localPart: String, domain: String)
    case domain(DomainPattern)

    public init?(_ text: String) {
        let text = text.trimmingCharacters(in: .whitespaces)
        if text.lowercased() == "owner" {
            self = .owner
            return
        }
        var rest = text
        if rest.hasPrefix("*@") { rest.removeFirst(2) } else if rest.hasPrefix("@") { rest.removeFirst() }
        if rest.utf8.contains(UInt8(ascii: "@")) {
            guard rest == text, let mailbox = try? AddressParser.parseMailbox(rest), case .name = mailbox.domain, !mailbox.isQuotedLocalPart
            else { return nil }
            self = .address(localPart: mailbox.localPart.lowercased(), domain: mailbox.normalizedDomain)
        } else {
            guard let pattern = DomainPattern(rest) else { return nil }
            self = .domain(pattern)
        }
    }

    /// Whether the recipient (its unquoted local part and its normalised domain) is one this entry allows for a
    /// device owned by `owner`.
    func matches(localPart: String, domain: String, owner: String) -> Bool {
        switch self {
        case .owner:
            guard let at = owner.lastIndex(of: "@") else { return false }
            return owner[..<at].lowercased() == localPart.lowercased() && owner[owner.index(after: at)...].lowercased() == domain
        case .address(let l, let d):
            return l == localPart.lowercased() && d == domain
        case .domain(let pattern):
            return pattern.matches(domain)
        }
    }

    public var description: String {
        switch self {
        case .owner: return "owner"
        case .address(let l, let d): return "\(l)@\(d)"
        case .domain(let pattern): return "*@\(pattern)"
        }
    }

    /// The domains the entry lets a device send to, for the check that they are internal; nil for `owner`, whose
    /// address is checked as the owner.
    var domainPattern: DomainPattern? {
        switch self {
        case .owner: return nil
        case .address(_, let d): return DomainPattern(exactly: d)
        case .domain(let pattern): return pattern
        }
    }
}
