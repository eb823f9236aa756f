import Foundation
import PosternSMTP

/// A client's address as the connection reported it, parsed once (per connection, not per decision).
public struct ClientAddress: Sendable, Hashable, CustomStringConvertible {
    /// Textual IPv4/IPv6, e.g. `127.0.0.1` or `::1`; refusals quote it as given.
    public let text: String
    /// `nil` when the text is not an address (no device is registered for it then).
    public let ip: IPAddress?

    public init(_ text: String) {
        self.text = text
        ip = IPAddress(text)
    }

    public var description: String { text }
}

/// The facts one decision rests on. `sender == nil` judges the connection, `recipient == nil` judges MAIL.
public struct DecisionInput: Sendable {
    public var endpoint: PolicyEndpoint
    public var client: ClientAddress
    public var tls: Bool
    public var identity: SubmitterIdentity?
    public var sender: ReversePath?
    public var recipient: Mailbox?
    public var now: Date

    public init(endpoint: PolicyEndpoint, client: ClientAddress, tls: Bool, identity: SubmitterIdentity? = nil,
                sender: ReversePath? = nil, recipient: Mailbox? = nil, now: Date) {
        self.endpoint = endpoint
        self.client = client
        self.tls = tls
        self.identity = identity
        self.sender = sender
        self.recipient = recipient
        self.now = now
    }

    /// Parses `clientAddress`; where one client makes many decisions, parse it once with `ClientAddress`.
    public init(endpoint: PolicyEndpoint, clientAddress: String, tls: Bool, identity: SubmitterIdentity? = nil,
                sender: ReversePath? = nil, recipient: Mailbox? = nil, now: Date) {
        self.init(endpoint: endpoint, client: ClientAddress(clientAddress), tls: tls, identity: identity,
                  sender: sender, recipient: recipient, now: now)
    }

    /// Textual IPv4/IPv6, e.g. `127.0.0.1` or `::1`.
    public var clientAddress: String {
        get { client.text }
        set { client = ClientAddress(newValue) }
    }
}

/// Accept, or one reply; and always the rule that decided.
public struct Decision: Sendable, Hashable, CustomStringConvertible {
    /// `nil` means accept.
    public var reply: SMTPReply?
    /// The facts the rule text is made of; the text is written only when someone reads `rule`.
    private var reason: DecisionReason

    public init(reply: SMTPReply?, rule: String) {
        self.reply = reply
        reason = .text(rule)
    }

    init(reply: SMTPReply?, reason: DecisionReason) {
        self.reply = reply
        self.reason = reason
    }

    public static func accept(_ rule: String) -> Decision { Decision(reply: nil, rule: rule) }

    static func accept(_ reason: DecisionReason) -> Decision { Decision(reply: nil, reason: reason) }

    /// Which rule decided, e.g. `device demo-scanner: allowed sender scanner@example.edu`.
    public var rule: String {
        get { reason.text }
        set { reason = .text(newValue) }
    }

    public var isAccepted: Bool { reply == nil }

    public var description: String { "\(reply.map(\.description) ?? "accept") [\(rule)]" }

    /// Decisions are equal when they give the same reply for the same rule text.
    public static func == (lhs: Decision, rhs: Decision) -> Bool { lhs.reply == rhs.reply && lhs.rule == rhs.rule }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(reply)
        hasher.combine(rule)
    }
}

/// Why a decision was made, before it is written as text: accepts are the common case and are mostly
/// only counted, so their text (dates, patterns) is not built on the decision path.
enum DecisionReason: Sendable {
    case text(String)
    case deviceRegistered(device: String, sunset: EffectiveSunset)
    case deviceSender(device: String, sender: SenderPattern)
    case internalDomain(domain: String, pattern: DomainPattern)
    case deviceRecipient(device: String, recipient: RecipientPattern, owner: String)
    case tlsConnection(PolicyEndpoint)
    case anyRecipient(PolicyEndpoint)
    case nullSenderAllowed(account: String)
    case senderOwned(address: String, login: String)
    case serviceAccountDomain(account: String, pattern: DomainPattern)

    var text: String {
        switch self {
        case .text(let text): return text
        case .deviceRegistered(let device, let sunset): return "device \(device): registered until \(sunset.date) (\(sunset))"
        case .deviceSender(let device, let sender): return "device \(device): allowed sender \(sender)"
        case .internalDomain(let domain, let pattern): return "internal-domains: \(domain) matches \(pattern)"
        case .deviceRecipient(let device, let recipient, let owner):
            return "device \(device): recipients: \(recipient == .owner ? "owner (\(owner))" : recipient.description)"
        case .tlsConnection(let endpoint): return "\(endpoint.rawValue): TLS connection"
        case .anyRecipient(let endpoint): return "\(endpoint.rawValue): authenticated users may send to any recipient"
        case .nullSenderAllowed(let account): return "service-account \(account): null sender allowed"
        case .senderOwned(let address, let login): return "sender: \(address) owned by user \(login)"
        case .serviceAccountDomain(let account, let pattern): return "service-account \(account): domain \(pattern)"
        }
    }
}

/// Replies policy gives; each refusal has exactly one.
public enum PolicyReply {
    public static func notRegistered(_ address: String) -> SMTPReply {
        SMTPReply(554, "5.7.1", "\(address) is not a registered device")
    }
    public static func expired(device: String, on date: CalendarDate) -> SMTPReply {
        SMTPReply(554, "5.7.1", "Device \(device) registration expired on \(date); use TLS submission on port 587")
    }

    /// Who revoked it and why is in the rule (the audit log), not in the reply: the reason is free text in any script.
    public static func revoked(device: String, on date: CalendarDate) -> SMTPReply {
        SMTPReply(554, "5.7.1", "Device \(device) registration revoked on \(date); use TLS submission on port 587")
    }
    public static func senderNotAllowed(_ sender: ReversePath, device: String) -> SMTPReply {
        SMTPReply(553, "5.7.1", "Sender \(sender) is not allowed for device \(device)")
    }
    /// A recipient outside the device's own `recipients:` rule.
    public static func recipientNotAllowed(_ recipient: Mailbox, device: RegisteredDevice) -> SMTPReply {
        SMTPReply(550, "5.7.1", "<\(recipient)>: device \(device.id) may send only to \(PolicySet.recipientsText(device)) (its recipients rule)")
    }

    public static func externalRecipient(_ recipient: Mailbox) -> SMTPReply {
        SMTPReply(550, "5.7.1", "<\(recipient)>: this endpoint accepts internal recipients only")
    }
    public static let senderNotOwned = SMTPReply(553, "5.7.1", "Sender address not owned by user")
    public static let nullSenderRefused = SMTPReply(553, "5.7.1", "Null sender <> is not allowed for users")
    public static let authenticationRequired = SMTPReply(530, "5.7.0", "Authentication required")
    public static func endpointDisabled(_ endpoint: PolicyEndpoint) -> SMTPReply {
        SMTPReply(554, "5.7.1", "The \(endpoint.rawValue) endpoint is disabled by policy")
    }
}

/// A loaded, validated policy. Immutable: reload builds a new one.
public struct PolicySet: Sendable {
    public let timeZone: TimeZone
    public let internalDomains: [DomainPattern]
    public let globalSunset: CalendarDate?
    /// Days before the sunset date at which owners are reminded, largest first.
    public let reminderDays: [Int]
    public let listeners: [PolicyEndpoint: ListenerRule]
    public let serviceAccounts: [ServiceAccount]
    public let departments: [String: Department]
    /// Sorted by id.
    public let devices: DeviceList
    private let catalog: DeviceCatalog
    /// `isEndpointEnabled` by `PolicyEndpoint.allCases` order.
    private let enabled: [Bool]
    /// The digest of policy.yaml's and departments.yaml's texts, for `fingerprint`.
    let topFilesDigest: ContentDigest?
    let fingerprintCache = PolicyFingerprintCache()

    /// `catalog` holds the devices, with no two of one id and no two overlapping address ranges.
    init(timeZone: TimeZone, internalDomains: [DomainPattern], globalSunset: CalendarDate?, reminderDays: [Int],
         listeners: [PolicyEndpoint: ListenerRule], serviceAccounts: [ServiceAccount], departments: [String: Department],
         catalog: DeviceCatalog, topFilesDigest: ContentDigest? = nil) {
        self.topFilesDigest = topFilesDigest
        self.timeZone = timeZone
        self.internalDomains = internalDomains
        self.globalSunset = globalSunset
        self.reminderDays = reminderDays.sorted(by: >)
        self.listeners = listeners
        self.serviceAccounts = serviceAccounts
        self.departments = departments
        self.catalog = catalog
        devices = DeviceList(entries: catalog.byID)
        enabled = PolicyEndpoint.allCases.map { listeners[$0]?.enabled ?? true }
    }

    // MARK: Lookups

    /// The device registered for a client address (IPv4-mapped IPv6 counts as IPv4).
    public func device(forAddress address: String) -> RegisteredDevice? {
        IPAddress(address).flatMap { device(forAddress: $0) }
    }

    /// The device registered for a client address (IPv4-mapped IPv6 counts as IPv4).
    public func device(forAddress address: IPAddress) -> RegisteredDevice? {
        catalog.entry(for: address)?.device
    }

    public func device(id: String) -> RegisteredDevice? { catalog.entry(id: id)?.device }

    public func isEndpointEnabled(_ endpoint: PolicyEndpoint) -> Bool { enabled[endpoint.position] }

    /// The smaller of the listener's and the device's size limit; `nil` when neither sets one.
    public func messageSizeLimit(endpoint: PolicyEndpoint, device: RegisteredDevice?) -> Int? {
        [listeners[endpoint]?.maxMessageSize, device?.maxMessageSize].compactMap { $0 }.min()
    }

    /// The earliest of the global, department and device dates.
    public func effectiveSunset(for device: RegisteredDevice) -> EffectiveSunset {
        Self.effectiveSunset(id: device.id, sunset: device.sunset, department: device.department,
                             departmentSunset: departments[device.department]?.sunset, global: globalSunset)
    }

    private static func effectiveSunset(id: String, sunset: CalendarDate, department: String, departmentSunset: CalendarDate?,
                                        global: CalendarDate?) -> EffectiveSunset {
        var best = EffectiveSunset(date: sunset, source: .device(id))
        if let d = departmentSunset, d < best.date {
            best = EffectiveSunset(date: d, source: .department(department))
        }
        if let g = global, g < best.date {
            best = EffectiveSunset(date: g, source: .global)
        }
        return best
    }

    /// The calendar date `now` falls on in the policy's time zone.
    public func today(_ now: Date) -> CalendarDate { CalendarDate(now, in: timeZone) }

    /// The reminder due now, if the device is within a reminder period, not yet expired and not revoked.
    public func reminderDue(for device: RegisteredDevice, now: Date) -> SunsetReminder? {
        guard device.revocation == nil else { return nil }
        let sunset = effectiveSunset(for: device)
        let left = today(now).days(until: sunset.date)
        // The smallest period that has begun: 30 days before, then 7, then 1 (the last day counts as 0 left).
        guard left >= 0, let threshold = reminderDays.last(where: { left <= $0 }) else { return nil }
        return SunsetReminder(deviceID: device.id, owner: device.owner, thresholdDays: threshold,
                              daysRemaining: left, sunset: sunset)
    }

    // MARK: Decisions

    /// Decides one stage of one transaction. Pure: the same input and policy give the same decision.
    public func decide(_ input: DecisionInput) -> Decision {
        guard isEndpointEnabled(input.endpoint) else {
            return Decision(reply: PolicyReply.endpointDisabled(input.endpoint), rule: "listeners: \(input.endpoint.rawValue) disabled")
        }
        switch input.endpoint {
        case .device: return decideDevice(input)
        case .submission, .submissions: return decideSubmission(input)
        }
    }

    private func decideDevice(_ input: DecisionInput) -> Decision {
        // The device is read where the catalog holds it (`entry.device`), not copied: this runs for every command.
        guard let ip = input.client.ip, let entry = catalog.entry(for: ip) else {
            return Decision(reply: PolicyReply.notRegistered(input.clientAddress),
                            rule: "devices: no device registered for \(input.clientAddress)")
        }
        if let revocation = entry.device.revocation {
            return Decision(reply: PolicyReply.revoked(device: entry.device.id, on: revocation.date),
                            rule: "device \(entry.device.id): revoked on \(revocation.date) by \(revocation.by): \(revocation.reason)")
        }
        let sunset = Self.effectiveSunset(id: entry.device.id, sunset: entry.device.sunset, department: entry.device.department,
                                          departmentSunset: departments[entry.device.department]?.sunset, global: globalSunset)
        if today(input.now) > sunset.date {
            return Decision(reply: PolicyReply.expired(device: entry.device.id, on: sunset.date), rule: sunset.description)
        }
        guard let sender = input.sender else {
            return .accept(.deviceRegistered(device: entry.device.id, sunset: sunset))
        }
        guard case .mailbox(let mailbox) = sender, let domain = Self.plainDomain(mailbox),
              let matched = entry.device.senders.first(where: { $0.matches(localPart: mailbox.localPart, domain: domain) })
        else {
            return Decision(reply: PolicyReply.senderNotAllowed(sender, device: entry.device.id),
                            rule: "device \(entry.device.id): sender not in allowed senders")
        }
        guard let recipient = input.recipient else {
            return .accept(.deviceSender(device: entry.device.id, sender: matched))
        }
        guard let domain = Self.plainDomain(recipient) else {
            return Decision(reply: PolicyReply.externalRecipient(recipient),
                            rule: "internal-domains: \(Self.hackDescription(recipient))")
        }
        guard let pattern = internalDomains.first(where: { $0.matches(domain) }) else {
            return Decision(reply: PolicyReply.externalRecipient(recipient),
                            rule: "internal-domains: \(domain) is not internal")
        }
        guard !entry.device.recipients.isEmpty else { return .accept(.internalDomain(domain: domain, pattern: pattern)) }
        let localPart = recipient.unquotedLocalPart
        guard let allowed = entry.device.recipients.first(where: { $0.matches(localPart: localPart, domain: domain, owner: entry.device.owner) })
        else {
            return Decision(reply: PolicyReply.recipientNotAllowed(recipient, device: entry.device),
                            rule: "device \(entry.device.id): recipients \(Self.recipientsText(entry.device)) do not include \(localPart)@\(domain)")
        }
        return .accept(.deviceRecipient(device: entry.device.id, recipient: allowed, owner: entry.device.owner))
    }

    private func decideSubmission(_ input: DecisionInput) -> Decision {
        guard input.tls else {
            return Decision(reply: .mustStartTLS, rule: "\(input.endpoint.rawValue): TLS required")
        }
        guard let sender = input.sender else {
            return .accept(.tlsConnection(input.endpoint))
        }
        guard let identity = input.identity else {
            return Decision(reply: PolicyReply.authenticationRequired, rule: "\(input.endpoint.rawValue): authentication required")
        }
        // The gateway's logins come as the directory matched them (lower case, trimmed): compare without case.
        let account = serviceAccounts.first { $0.login == identity.login }
            ?? serviceAccounts.first { $0.login.lowercased() == identity.login.lowercased() }
        let senderDecision: Decision
        switch sender {
        case .null:
            if let account, account.allowNullSender {
                senderDecision = .accept(.nullSenderAllowed(account: account.login))
            } else {
                return Decision(reply: PolicyReply.nullSenderRefused, rule: "sender: null sender refused for user \(identity.login)")
            }
        case .mailbox(let mailbox):
            if let owned = Self.ownedAddress(mailbox, identity: identity) {
                senderDecision = .accept(.senderOwned(address: owned, login: identity.login))
            } else if let account, let domain = Self.plainDomain(mailbox),
                      let pattern = account.domains.first(where: { $0.matches(domain) }) {
                senderDecision = .accept(.serviceAccountDomain(account: account.login, pattern: pattern))
            } else {
                return Decision(reply: PolicyReply.senderNotOwned, rule: "sender: not an address of user \(identity.login)")
            }
        }
        guard input.recipient != nil else { return senderDecision }
        return .accept(.anyRecipient(input.endpoint))
    }

    /// Equal for recipients that are one mailbox (the session's duplicate filter). The domain's case never
    /// counts. The local part's case is folded for internal domains: their directory matches `mail` without
    /// regard to case, so `Bob@Example.edu` and `bob@example.edu` are one mailbox at every university. For
    /// other domains it is kept, since their hosts may tell the two apart (RFC 5321 2.4): two copies to
    /// an outside host are better than one lost. A quoted local part counts unquoted (`"bob"` is `bob`).
    public func recipientKey(_ mailbox: Mailbox) -> String {
        let domain = Self.normalise(domain: mailbox.normalizedDomain)
        let local = mailbox.unquotedLocalPart
        if case .name = mailbox.domain, internalDomains.contains(where: { $0.matches(domain) }) {
            return "\(local.lowercased())@\(domain)"
        }
        return "\(local)@\(domain)"
    }

    /// A device's `recipients:` as a refusal names them, `owner` with the address it stands for.
    public static func recipientsText(_ device: RegisteredDevice) -> String {
        device.recipients.map { $0 == .owner ? "\(device.owner) (owner)" : $0.description }.joined(separator: ", ")
    }

    /// Whether `mailbox` is plainly in an internal domain (the device endpoint's test; for the audit log's `external`).
    public func isInternal(_ mailbox: Mailbox) -> Bool {
        guard let domain = Self.plainDomain(mailbox) else { return false }
        return internalDomains.contains { $0.matches(domain) }
    }

    /// The identity's address equal to `mailbox`: domain case-insensitive, local part exact.
    static func ownedAddress(_ mailbox: Mailbox, identity: SubmitterIdentity) -> String? {
        guard !mailbox.hadSourceRoute, case .name = mailbox.domain else { return nil }
        let domain = normalise(domain: mailbox.normalizedDomain)
        for address in identity.addresses {
            guard let at = address.lastIndex(of: "@") else { continue }
            let local = address[..<at]
            let d = normalise(domain: String(address[address.index(after: at)...]).lowercased())
            if local == mailbox.localPart, d == domain { return address }
        }
        return nil
    }

    /// The normalised domain of a mailbox that is plainly `local@domain`, or `nil` for relay-hack forms:
    /// source routes, address literals, `%` or `!` in the local part, or `@` inside a quoted local part.
    static func plainDomain(_ mailbox: Mailbox) -> String? {
        guard !mailbox.hadSourceRoute, case .name(let name) = mailbox.domain else { return nil }
        let local = mailbox.unquotedLocalPart
        guard !containsCharacter(local, "%"), !containsCharacter(local, "!"), !containsCharacter(local, "@") else { return nil }
        return normalise(domain: name.lowercased())
    }

    /// `text.contains(Character(ascii))` without walking Characters in the usual case that the byte is absent
    /// (an ASCII character can only be in the text where its byte is).
    private static func containsCharacter(_ text: String, _ ascii: Unicode.Scalar) -> Bool {
        text.utf8.contains(UInt8(ascii: ascii)) && text.contains(Character(ascii))
    }

    static func normalise(domain: String) -> String {
        domain.utf8.last == UInt8(ascii: ".") && domain.hasSuffix(".") ? String(domain.dropLast()) : domain
    }

    static func hackDescription(_ mailbox: Mailbox) -> String {
        if mailbox.hadSourceRoute { return "source route refused" }
        if case .literal = mailbox.domain { return "address literal \(mailbox.normalizedDomain) is not internal" }
        let local = mailbox.unquotedLocalPart
        if local.contains(Character("%")) { return "'%' in local part refused (relay hack)" }
        if local.contains(Character("!")) { return "'!' in local part refused (relay hack)" }
        return "'@' in quoted local part refused (relay hack)"
    }
}
