import PosternSMTP
import PosternSession

/// Rules used while no policy is loaded: nothing is accepted on `device`. Temporary.
public struct UnconfiguredPolicyRules: SessionRules {
    public init() {}
    public func checkSender(_ facts: ConnectionFacts, sender: ReversePath) -> Verdict {
        facts.kind == .device ? .refuse(SMTPReply(451, "4.3.5", "No policy loaded")) : .accept
    }
    public func checkRecipient(_ facts: ConnectionFacts, sender: ReversePath, recipient: Mailbox) -> Verdict { .accept }
    public func messageSizeLimit(_ facts: ConnectionFacts) -> Int? { nil }
}
