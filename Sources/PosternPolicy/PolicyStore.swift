import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PosternCore
import PosternDirectory
import PosternSMTP
import PosternSession

/// The policy in force. Reload validates the files first and swaps the whole set atomically; an invalid
/// edit is refused with a log line and the old policy stays. Sessions keep the set they started with.
public final class PolicyStore: Sendable {
    public let directory: URL
    private let current: NIOLockedValueBox<(policy: PolicySet, generation: Int)>
    /// Loads again reading only the device files whose fingerprint changed (`PolicyLoader`).
    public let reader: PolicyReader
    private let logger: Logger
    /// Message rate limits, shared by every session and kept across reloads.
    public let rateLimiter: RateLimiter
    /// The gateway-wide limit for each authenticated login (`limits.messages-per-user-per-hour`); nil for none.
    public let userRateLimit: RateLimit?
    /// Told of every reload, applied or refused (the gateway's metrics).
    private let reloadObservers = NIOLockedValueBox<[@Sendable (PolicyReloadOutcome) -> Void]>([])

    /// What a reload came to: applied, or refused with `errors` problems, for `reason` (`SIGHUP`, `files changed`).
    public struct PolicyReloadOutcome: Sendable {
        public var applied: Bool
        public var reason: String
        public var errors: Int
    }

    public init(directory: URL, logger: Logger, userMessagesPerHour: Int? = nil, rateLimiter: RateLimiter = RateLimiter()) throws(PolicyErrors) {
        self.directory = directory
        self.logger = logger
        self.rateLimiter = rateLimiter
        self.userRateLimit = userMessagesPerHour.flatMap { RateLimit("\($0)/hour") }
        reader = PolicyReader(directory: directory)
        current = NIOLockedValueBox((try reader.load().policy.get(), 1))
    }

    public var policy: PolicySet { current.withLockedValue { $0.policy } }

    /// The policy in force and how many loads this process has applied (1 after the first): the configuration
    /// generation `/health` and `/metrics` show beside the policy's fingerprint.
    public var inForce: (policy: PolicySet, generation: Int) { current.withLockedValue { ($0.policy, $0.generation) } }

    /// Loads and validates the files, looking at every device file's fingerprint (one listing per directory, one
    /// `stat` per file; SIGHUP); swaps only when valid. Returns the errors otherwise.
    @discardableResult
    public func reload(reason: String) -> PolicyErrors? {
        let load = reader.load(everything: true)
        return apply(load.policy, reason: reason, counts: load.counts)
    }

    /// Reloads when any policy file changed since the last load: policy.yaml and departments.yaml are read, and of
    /// devices.d the entries the watch saw change are looked at (everything, where there is no watch); only files
    /// whose fingerprint changed are read. Returns the errors of a refused reload.
    @discardableResult
    public func reloadIfChanged() -> PolicyErrors? {
        let load = reader.load()
        guard load.changed else { return nil }
        return apply(load.policy, reason: "files changed", counts: load.counts)
    }

    /// Calls `observer` after every reload from now on, on the reloading thread.
    public func observeReloads(_ observer: @escaping @Sendable (PolicyReloadOutcome) -> Void) {
        reloadObservers.withLockedValue { $0.append(observer) }
    }

    @discardableResult
    private func apply(_ result: Result<PolicySet, PolicyErrors>, reason: String, counts: PolicyLoadCounts) -> PolicyErrors? {
        switch result {
        case .success(let policy):
            current.withLockedValue { $0 = (policy, $0.generation + 1) }
            logger.notice("policy reloaded", metadata: ["reason": "\(reason)", "devices": "\(policy.devices.count)",
                                                        "device-files-read": "\(counts.filesParsed)"])
            notify(PolicyReloadOutcome(applied: true, reason: reason, errors: 0))
            return nil
        case .failure(let errors):
            logger.error("policy reload refused; keeping the previous policy", metadata: [
                "reason": "\(reason)", "errors": "\(errors.issues.map(\.description).joined(separator: "; "))",
            ])
            notify(PolicyReloadOutcome(applied: false, reason: reason, errors: errors.issues.count))
            return errors
        }
    }

    private func notify(_ outcome: PolicyReloadOutcome) {
        for observer in reloadObservers.withLockedValue({ $0 }) { observer(outcome) }
    }

    /// Polls the files until cancelled.
    public func watch(every interval: Duration = .seconds(2)) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            reloadIfChanged()
        }
    }

    /// Session rules bound to the policy in force now.
    public func rules(now: @escaping @Sendable () -> Date = { Date() }, audit: AuditLog) -> PolicyRules {
        PolicyRules(policy: policy, now: now, audit: audit, rateLimiter: rateLimiter, userRateLimit: userRateLimit)
    }
}

/// `SessionRules` on top of one `PolicySet`: every decision comes from Policy, with the rule that made it.
public struct PolicyRules: SessionRules {
    public let policy: PolicySet
    let now: @Sendable () -> Date
    let audit: AuditLog
    let rateLimiter: RateLimiter
    let userRateLimit: RateLimit?
    /// The client address of the connection these rules were bound to by `forConnection`, parsed once.
    private var client: ClientAddress?

    init(policy: PolicySet, now: @escaping @Sendable () -> Date, audit: AuditLog, rateLimiter: RateLimiter, userRateLimit: RateLimit?) {
        self.policy = policy
        self.now = now
        self.audit = audit
        self.rateLimiter = rateLimiter
        self.userRateLimit = userRateLimit
    }

    public func forConnection(_ facts: ConnectionFacts) -> any SessionRules {
        var bound = self
        bound.client = ClientAddress(facts.clientAddress)
        return bound
    }

    /// The parsed client address; parsed here only for facts of another connection than the bound one.
    private func client(_ facts: ConnectionFacts) -> ClientAddress {
        if let client, client.text == facts.clientAddress { return client }
        return ClientAddress(facts.clientAddress)
    }

    /// The device registered for the client, on the device endpoint only.
    private func device(_ facts: ConnectionFacts) -> RegisteredDevice? {
        guard facts.kind == .device, let ip = client(facts).ip else { return nil }
        return policy.device(forAddress: ip)
    }

    /// Policy first; a sender policy accepts then counts against its device's or login's message rate.
    public func checkSender(_ facts: ConnectionFacts, sender: ReversePath) -> Verdict {
        var decision = policy.decide(input(facts, sender: sender, recipient: nil))
        if decision.isAccepted, let refusal = rateLimitRefusal(facts) { decision = refusal }
        return verdict(decision, facts, stage: "mail", sender: sender, recipient: nil)
    }

    /// Counts one message for the device (its `max-rate`) or the authenticated login (the gateway default).
    private func rateLimitRefusal(_ facts: ConnectionFacts) -> Decision? {
        let key: String
        let limit: RateLimit
        if facts.kind == .device, let device = device(facts), let rate = device.maxRate {
            key = "device:\(device.id)"
            limit = rate
        } else if facts.kind != .device, let user = facts.user, let rate = userRateLimit {
            // The account, not the login as typed: `Alice`, ` alice` and an alias login are one person.
            key = "user:\(DistinguishedName.normalized(user.distinguishedName))"
            limit = rate
        } else {
            return nil
        }
        guard !rateLimiter.admit(key, limit: limit, at: now()) else { return nil }
        return Decision(reply: SMTPReply(450, "4.7.1", "Message rate limit of \(limit) exceeded for \(key); try again later"),
                        rule: "rate-limit \(key) \(limit)")
    }

    public func checkRecipient(_ facts: ConnectionFacts, sender: ReversePath, recipient: Mailbox) -> Verdict {
        verdict(policy.decide(input(facts, sender: sender, recipient: recipient)), facts, stage: "rcpt", sender: sender, recipient: recipient)
    }

    public func recipientKey(_ recipient: Mailbox) -> String {
        policy.recipientKey(recipient)
    }

    public func auditFacts(_ facts: ConnectionFacts, recipients: [Mailbox]) -> MessageAuditFacts {
        MessageAuditFacts(device: device(facts)?.id, externalRecipients: recipients.filter { !policy.isInternal($0) })
    }

    /// The header From policy: From: and Sender: must hold addresses the session may use as MAIL FROM.
    public func checkMessage(_ facts: ConnectionFacts, sender: ReversePath, message: ByteBuffer) -> MessageVerdict {
        // With the policy off there is nothing to parse the header section for, and nothing to audit.
        guard policy.headerFromMode(PolicyEndpoint(facts.kind)) != .off else { return .accept }
        let result = policy.decideHeaderFrom(input(facts, sender: sender, recipient: nil), originators: OriginatorParser.parse(message))
        audit.decision(facts, stage: "data", sender: sender, recipient: nil, reply: result.decision.reply,
                       rule: result.decision.rule, device: device(facts)?.id)
        if let reply = result.decision.reply { return .refuse(reply) }
        return result.addedField.map(MessageVerdict.acceptAdding) ?? .accept
    }

    public func messageSizeLimit(_ facts: ConnectionFacts) -> Int? {
        policy.messageSizeLimit(endpoint: PolicyEndpoint(facts.kind), device: device(facts))
    }

    private func input(_ facts: ConnectionFacts, sender: ReversePath, recipient: Mailbox?) -> DecisionInput {
        DecisionInput(endpoint: PolicyEndpoint(facts.kind), client: client(facts), tls: facts.tls != nil,
                      identity: facts.user.map { SubmitterIdentity(login: $0.login, addresses: $0.addresses, groups: $0.groups) },
                      sender: sender, recipient: recipient, now: now())
    }

    private func verdict(_ decision: Decision, _ facts: ConnectionFacts, stage: String, sender: ReversePath, recipient: Mailbox?) -> Verdict {
        audit.decision(facts, stage: stage, sender: sender, recipient: recipient, reply: decision.reply, rule: decision.rule, device: device(facts)?.id)
        return decision.reply.map(Verdict.refuse) ?? .accept
    }
}

extension AuditLog {
    func decision(_ facts: ConnectionFacts, stage: String, sender: ReversePath, recipient: Mailbox?, reply: SMTPReply?, rule: String, device: String?) {
        decision(session: facts.sessionID, stage: stage, sender: sender.mailbox.map { "\($0)" } ?? "", recipient: recipient.map { "\($0)" },
                 code: reply?.code, enhancedStatus: reply?.enhancedStatus, rule: rule, device: device, login: facts.user?.login)
    }
}

extension PolicyEndpoint {
    public init(_ kind: ListenerKind) {
        switch kind {
        case .submission: self = .submission
        case .submissions: self = .submissions
        case .device: self = .device
        }
    }
}
