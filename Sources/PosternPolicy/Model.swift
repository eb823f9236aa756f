import Foundation
import PosternSMTP

/// The kinds of listener policy knows about.
public enum PolicyEndpoint: String, Sendable, Hashable, CaseIterable {
    case submission, submissions, device

    /// The index in `allCases`.
    var position: Int {
        switch self {
        case .submission: return 0
        case .submissions: return 1
        case .device: return 2
        }
    }
}

/// Who authenticated on a TLS endpoint, as the directory described them.
public struct SubmitterIdentity: Sendable, Hashable {
    public var login: String
    public var addresses: [String]
    public var groups: [String]

    public init(login: String, addresses: [String], groups: [String] = []) {
        self.login = login
        self.addresses = addresses
        self.groups = groups
    }
}

/// A domain rule: `example.edu` matches that domain only, `*.example.edu` any subdomain of it.
public struct DomainPattern: Sendable, Hashable, CustomStringConvertible {
    /// Lower case, without the `*.` and without a trailing dot.
    public var domain: String
    public var includesSubdomains: Bool

    /// An exact pattern for a domain already checked and normalised (a parsed mailbox's).
    init(exactly domain: String) {
        self.domain = domain
        includesSubdomains = false
    }

    public init?(_ text: String) {
        var t = text.lowercased()
        var wildcard = false
        if t.hasPrefix("*.") {
            wildcard = true
            t.removeFirst(2)
        }
        if t.hasSuffix(".") { t.removeLast() }
        guard AddressParser.isDomain(t.utf8) else { return nil }
        domain = t
        includesSubdomains = wildcard
    }

    /// `domain` must already be normalised (lower case, no trailing dot).
    public func matches(_ domain: String) -> Bool {
        includesSubdomains ? domain.hasSuffix("." + self.domain) : domain == self.domain
    }

    /// Whether every domain `other` matches, this one matches too.
    public func covers(_ other: DomainPattern) -> Bool {
        guard other.includesSubdomains else { return matches(other.domain) }
        // `*.d` is covered only by a wildcard over d or over a parent of d.
        return includesSubdomains && (other.domain == domain || other.domain.hasSuffix("." + domain))
    }

    public var description: String { includesSubdomains ? "*.\(domain)" : domain }
}

/// An allowed envelope sender of a device: one address (domain case-insensitive, local part exact) or a domain rule.
public enum SenderPattern: Sendable, Hashable, CustomStringConvertible {
    case address(localPart: String, domain: String)
    case domain(DomainPattern)

    public init?(_ text: String) {
        // The byte test first: only text with an '@' byte can hold an '@' character.
        if text.utf8.contains(UInt8(ascii: "@")), text.contains(Character("@")), !text.hasPrefix("@") {
            guard let mailbox = try? AddressParser.parseMailbox(text), case .name = mailbox.domain,
                  !mailbox.isQuotedLocalPart
            else { return nil }
            self = .address(localPart: mailbox.localPart, domain: mailbox.normalizedDomain)
        } else {
            guard let pattern = DomainPattern(text.hasPrefix("@") ? String(text.dropFirst()) : text) else { return nil }
            self = .domain(pattern)
        }
    }

    func matches(localPart: String, domain: String) -> Bool {
        switch self {
        case .address(let l, let d): return l == localPart && d == domain
        case .domain(let pattern): return pattern.matches(domain)
        }
    }

    public var description: String {
        switch self {
        case .address(let l, let d): return "\(l)@\(d)"
        case .domain(let pattern): return pattern.description
        }
    }

    /// The domains this pattern lets a device send from, as one domain pattern.
    public var domainPattern: DomainPattern {
        switch self {
        case .address(_, let d): return DomainPattern(exactly: d)
        case .domain(let pattern): return pattern
        }
    }
}

/// A per-device message rate limit: at most `count` messages per `seconds`.
public struct RateLimit: Sendable, Hashable, CustomStringConvertible {
    public var count: Int
    public var seconds: Int
    let unit: String

    /// Parses `120/hour` (units: second, minute, hour, day).
    public init?(_ text: String) {
        let parts = text.filter { $0 != " " }.split(separator: "/")
        guard parts.count == 2, let n = Int(parts[0]), n > 0 else { return nil }
        let units = ["second": 1, "minute": 60, "hour": 3600, "day": 86_400]
        guard let s = units[String(parts[1]).lowercased()] else { return nil }
        count = n
        seconds = s
        unit = String(parts[1]).lowercased()
    }

    public var description: String { "\(count)/\(unit)" }
}

/// A department that registers devices; it may set a sunset date for all its devices.
public struct Department: Sendable, Hashable {
    public var id: String
    public var name: String
    public var contact: String?
    public var sunset: CalendarDate?
    /// The department's own mail domains: its devices' senders must lie in them (in the internal domains
    /// when it lists none).
    public var domains: [DomainPattern] = []

    public init(id: String, name: String, contact: String? = nil, sunset: CalendarDate? = nil, domains: [DomainPattern] = []) {
        self.id = id
        self.name = name
        self.contact = contact
        self.sunset = sunset
        self.domains = domains
    }
}

/// A legacy device allowed to submit on the plaintext `device` endpoint.
public struct RegisteredDevice: Sendable, Hashable {
    public var id: String
    public var department: String
    /// Who is reminded before the sunset date.
    public var owner: String
    public var location: String
    public var addresses: [AddressRange]
    public var senders: [SenderPattern]
    public var registered: CalendarDate
    /// The device's own last valid day; department and global dates may end it earlier.
    public var sunset: CalendarDate
    public var maxMessageSize: Int?
    public var maxRate: RateLimit?
    /// Line of the entry in its device file, for messages.
    public var line: Int
    /// Set when the device was revoked: it keeps its file (and its addresses) and is refused naming the revocation.
    public var revocation: Revocation? = nil
    /// `recipients:`, narrowing the internal recipients it may send to; empty: any internal recipient.
    public var recipients: [RecipientPattern] = []

    /// The device's file under a policy directory: `devices.d/<department>/<id>.yaml`.
    public func file(in policyDirectory: String) -> String {
        URL(fileURLWithPath: policyDirectory).appendingPathComponent(PolicyLoader.devicesDirectory)
            .appendingPathComponent(department).appendingPathComponent("\(id).yaml").path
    }
}

/// When, by whom and why a device was revoked (`revoked`, `revoked-by`, `revoke-reason` in its file).
public struct Revocation: Sendable, Hashable {
    public var date: CalendarDate
    /// Who revoked it: a login of the registration page, or who ran `postern devices revoke`.
    public var by: String
    public var reason: String

    public init(date: CalendarDate, by: String, reason: String) {
        self.date = date
        self.by = by
        self.reason = reason
    }
}

/// An account (typically a service, not a person) that may send as any address in some domains.
public struct ServiceAccount: Sendable, Hashable {
    public var login: String
    public var domains: [DomainPattern]
    public var allowNullSender: Bool
}

/// What the header From policy does on one kind of listener (`listeners.<kind>.header-from` in policy.yaml).
public enum HeaderFromMode: String, Sendable, Hashable, CaseIterable {
    /// Refuse a message whose From: or Sender: holds an address the session may not use as MAIL FROM.
    case enforce
    /// Accept it, and audit what `enforce` would have refused.
    case warn
    /// No check.
    case off
}

/// What policy says about one kind of listener.
public struct ListenerRule: Sendable, Hashable {
    public var endpoint: PolicyEndpoint
    public var enabled: Bool
    public var maxMessageSize: Int?
    public var headerFrom: HeaderFromMode = .enforce
}

/// The date a device stops being accepted and which rule set it.
public struct EffectiveSunset: Sendable, Hashable, CustomStringConvertible {
    public enum Source: Sendable, Hashable {
        case global
        case department(String)
        case device(String)
    }

    /// The last valid day.
    public var date: CalendarDate
    public var source: Source

    /// e.g. `sunset: department chem 2026-06-30`.
    public var description: String {
        switch source {
        case .global: return "sunset: global \(date)"
        case .department(let id): return "sunset: department \(id) \(date)"
        case .device(let id): return "sunset: device \(id) \(date)"
        }
    }
}

/// A reminder the owner of a device should get now: the closest threshold (e.g. 30, 7 or 1 days) reached.
public struct SunsetReminder: Sendable, Hashable {
    public var deviceID: String
    public var owner: String
    /// The reminder period that applies, in days before the sunset date.
    public var thresholdDays: Int
    /// Days left from today until the last valid day (0 on the last valid day).
    public var daysRemaining: Int
    public var sunset: EffectiveSunset
}
