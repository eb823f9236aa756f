import Foundation
import PosternSMTP

/// The header From policy's answer for one message.
public struct HeaderFromDecision: Sendable, Hashable {
    /// Accept, or the refusal; the rule says which address decided.
    public var decision: Decision
    /// A `From:` field (ending in CRLF) to put before a message that has none: its envelope sender.
    public var addedField: String?

    public init(decision: Decision, addedField: String? = nil) {
        self.decision = decision
        self.addedField = addedField
    }
}

extension PolicyReply {
    public static func headerAddressNotAllowed(_ address: OriginatorFields.Address) -> SMTPReply {
        SMTPReply(550, "5.7.1", "\(address.field.rawValue): header address <\(address.mailbox)> is not one you may send as")
    }
    public static func headerDisplayNameNotAllowed(_ field: OriginatorFields.FieldName, _ shown: Mailbox) -> SMTPReply {
        SMTPReply(550, "5.7.1", "\(field.rawValue): header display name shows the address <\(shown)>, which is not one you may send as")
    }
    public static func headerUnreadable(_ error: OriginatorFieldsError) -> SMTPReply {
        if error.field != nil { return SMTPReply(550, "5.7.1", "\(error)") }
        return SMTPReply(550, "5.7.1", "From: header cannot be checked: \(error)")
    }
    public static let noFromHeader = SMTPReply(550, "5.7.1", "Message has no From: header")
}

extension PolicySet {
    /// The header From mode of a kind of listener (`enforce` unless policy.yaml says otherwise).
    public func headerFromMode(_ endpoint: PolicyEndpoint) -> HeaderFromMode {
        listeners[endpoint]?.headerFrom ?? .enforce
    }

    /// Decides a message's `From:` and `Sender:` fields: every address in them, and every address a display
    /// name shows, must be one this session may use as MAIL FROM. Each is judged by `decide`, the
    /// same decision MAIL FROM gets, so a user's directory addresses, a device's allowed senders and a
    /// service account's domains count here exactly as there.
    ///
    /// A message without `From:` gets one made of its envelope sender (which MAIL FROM already judged); with
    /// the null sender there is nothing to make it of, and it is refused. `input` is the session's (its
    /// sender is the envelope's); `originators` is what `OriginatorParser` read from the message.
    public func decideHeaderFrom(_ input: DecisionInput, originators: Result<OriginatorFields, OriginatorFieldsError>) -> HeaderFromDecision {
        let mode = headerFromMode(input.endpoint)
        guard mode != .off else { return HeaderFromDecision(decision: .accept("header-from: off on \(input.endpoint.rawValue)")) }
        let (refusal, accepted, added) = judgeOriginators(input, originators)
        guard let refusal else {
            if mode == .warn, let added {
                // warn leaves the message as it came; the audit line says what enforce would have added.
                let field = added.trimmingCharacters(in: .whitespacesAndNewlines)
                return HeaderFromDecision(decision: .accept("header-from (warn, not enforced): no From: header, enforce would add \(field)"))
            }
            return HeaderFromDecision(decision: .accept(accepted), addedField: added)
        }
        switch mode {
        case .enforce, .off:
            return HeaderFromDecision(decision: refusal)
        case .warn:
            // The message goes on unchanged; the audit log says what enforce would have done.
            return HeaderFromDecision(decision: .accept("header-from (warn, not enforced): \(refusal.rule)"))
        }
    }

    /// The first refusal, or the rule text of an accept and the field to add.
    private func judgeOriginators(_ input: DecisionInput, _ originators: Result<OriginatorFields, OriginatorFieldsError>)
        -> (refusal: Decision?, accepted: String, added: String?)
    {
        let fields: OriginatorFields
        switch originators {
        case .failure(let error):
            return (Decision(reply: PolicyReply.headerUnreadable(error), rule: "header-from: \(error)"), "", nil)
        case .success(let f):
            fields = f
        }
        var added: String?
        var accepted: [String] = []
        if fields.fromFields == 0 {
            guard case .mailbox(let sender) = input.sender else {
                return (Decision(reply: PolicyReply.noFromHeader, rule: "header-from: no From: header and the null sender"), "", nil)
            }
            added = "From: \(sender)\r\n"
            accepted.append("no From: header, added From: \(sender) (the envelope sender)")
        }
        for address in fields.addresses {
            var asSender = input
            asSender.sender = .mailbox(address.mailbox)
            asSender.recipient = nil
            let decision = decide(asSender)
            if decision.reply != nil {
                return (Decision(reply: PolicyReply.headerAddressNotAllowed(address),
                                 rule: "header-from: \(address.field.rawValue): \(address.mailbox) refused (\(decision.rule))"), "", nil)
            }
            accepted.append("\(address.field.rawValue): \(address.mailbox) (\(decision.rule))")
            for shown in address.displayNameAddresses {
                asSender.sender = .mailbox(shown)
                let byName = decide(asSender)
                if byName.reply != nil {
                    return (Decision(reply: PolicyReply.headerDisplayNameNotAllowed(address.field, shown),
                                     rule: "header-from: \(address.field.rawValue): display name \(shown) refused (\(byName.rule))"), "", nil)
                }
            }
        }
        return (nil, "header-from: " + accepted.joined(separator: "; "), added)
    }
}
