import PosternSMTP

/// What Exchange Online's replies mean, for the postmaster reading the queue's last reason, the relay log
/// and the audit log: a reply Microsoft documents gets a one-line hint after it, so a refusal says what to
/// change instead of sending the admin to a search engine (issue #17). Which replies pause the whole
/// upstream rather than one message is decided here too (`isUpstreamWide`).
///
/// Sources: "Updated Requirements for SMTP Relay through Exchange Online" (Exchange team blog, 2023-06-19),
/// "Email non-delivery reports and SMTP errors in Exchange Online" (Microsoft Learn), the transport-based
/// enforcement for out-of-date Exchange servers (Exchange team blog, 2023), the SMTP AUTH basic
/// authentication retirement (Exchange team blog, 2026-01-27). docs/production.md has the table.
public enum ExchangeOnlineReplies {
    /// One documented reply: the enhanced status codes it covers and the hint.
    struct Entry: Sendable {
        var matches: @Sendable (String) -> Bool
        var hint: String
    }

    static let entries: [Entry] = [
        Entry(matches: { $0 == "4.7.230" || $0 == "5.7.230" },
              hint: "Exchange Online throttles (4.7.230) or blocks (5.7.230) a sender it takes for an out-of-date on-premises "
                  + "Exchange server; see the 'out-of-date servers' report in the Exchange admin center"),
        Entry(matches: isIPThrottle,
              hint: "Exchange Online is throttling this sending IP address; Postern pauses the whole upstream and retries, "
                  + "and a certificate-based connector for the tenant avoids the limits for unknown senders"),
        Entry(matches: { $0 == "5.7.64" },
              hint: "TenantAttribution: no connector of the tenant accepts this sender; the relay client certificate's name "
                  + "must be an accepted domain and the connector's TlsSenderCertificateName (postern check shows it)"),
        Entry(matches: { $0 == "5.7.68" },
              hint: "TenantInboundAttribution: the connector that matched is not the one for this tenant or its certificate "
                  + "name does not match; check the inbound connector's TlsSenderCertificateName"),
        Entry(matches: { $0 == "5.7.233" || $0 == "5.7.232" },
              hint: "the tenant exceeded its daily limit of external recipients (TERRL); mail to external recipients "
                  + "is refused until the 24-hour count falls"),
        Entry(matches: { $0 == "4.7.66" },
              hint: "Exchange Online refused the TLS version; Postern offers TLS 1.2 and 1.3 only, so look for a TLS "
                  + "proxy between Postern and Microsoft"),
        Entry(matches: { $0 == "5.7.30" },
              hint: "basic authentication is off for SMTP AUTH in this tenant; use auth mechanism xoauth2 "
                  + "(docs/production.md, Microsoft 365)"),
        Entry(matches: { $0 == "5.7.3" },
              hint: "Exchange Online refused the credentials: for xoauth2 check the app registration's SMTP.SendAsApp "
                  + "permission and the mailbox's service principal (docs/production.md, Microsoft 365)"),
        Entry(matches: { $0 == "5.7.139" },
              hint: "SMTP AUTH is off for the tenant or the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled "
                  + "$false), or security defaults block it"),
    ]

    /// `451 4.7.500`–`4.7.699`: Exchange Online's throttling of a sending IP address.
    static func isIPThrottle(_ status: String) -> Bool {
        guard status.hasPrefix("4.7."), let detail = Int(status.dropFirst(4)) else { return false }
        return (500...699).contains(detail)
    }

    /// The hint for `reply`, when it is one Microsoft documents.
    public static func hint(for reply: SMTPReply) -> String? {
        guard let status = reply.enhancedStatus else { return nil }
        return entries.first { $0.matches(status) }?.hint
    }

    /// The reply as the queue, the relay log and the audit show it: its text, then the hint after ` -- `.
    public static func annotated(_ reply: SMTPReply) -> String {
        guard let hint = hint(for: reply) else { return reply.description }
        return "\(reply.description) -- \(hint)"
    }

    /// A reply that says the upstream, not this message, is the problem: `421`, and any `4.7.x` (throttling,
    /// `450 4.7.230`; Exchange Online's IP throttling `451 4.7.500`–`4.7.699`, which names the whole sending
    /// address). The relay pauses the upstream for it, one backoff step per event (`UpstreamPool`).
    public static func isUpstreamWide(_ reply: SMTPReply) -> Bool {
        if reply.code == 421 { return true }
        guard reply.isTransient, let status = reply.enhancedStatus else { return false }
        return status.hasPrefix("4.7.")  // 4.7.230, 4.7.500-699 (isIPThrottle) and the other security/policy pauses
    }
}
