import PosternCore
import PosternSMTP
import PosternSession

/// The session's events in the audit log's terms (`AuditLog` writes the format).
extension AuditLog {
    func connection(_ facts: ConnectionFacts, peer: String?) {
        connection(session: facts.sessionID, listener: facts.listenerName, kind: facts.kind.rawValue, client: facts.clientAddress,
                   clientPort: facts.clientPort, proxyPeer: peer)
    }

    func tls(_ facts: ConnectionFacts, _ info: TLSInfo) {
        tls(session: facts.sessionID, version: info.version, cipher: info.cipher, clientCertificateSubject: info.peerCertificateSubject)
    }

    func auth(_ facts: ConnectionFacts, login: String, mechanism: String, outcome: AuthOutcome) {
        var dn: String?
        if case .success(let user) = outcome { dn = user.distinguishedName }
        auth(session: facts.sessionID, login: login, mechanism: mechanism, result: outcome.auditName, dn: dn)
    }

    func accepted(_ envelope: Envelope, queueID: String, messageID: String?, size: Int) {
        accepted(session: envelope.facts.sessionID, queueID: queueID, sender: envelope.sender.mailbox.map { "\($0)" } ?? "",
                 recipients: envelope.recipients.map { "\($0)" }, size: size, listener: envelope.facts.listenerName,
                 client: envelope.facts.clientAddress, messageID: messageID, login: envelope.facts.user?.login,
                 device: envelope.auditFacts.device, external: envelope.auditFacts.externalRecipients.map { $0.map { "\($0)" } })
    }

    func refusedMessage(_ facts: ConnectionFacts, reply: SMTPReply) {
        messageRefused(session: facts.sessionID, code: reply.code, enhancedStatus: reply.enhancedStatus)
    }
}

extension AuthOutcome {
    /// The outcome's name in the audit log and in the `postern_auth_attempts_total` metric.
    public var auditName: String {
        switch self {
        case .success: return "success"
        case .invalidCredentials: return "invalid_credentials"
        case .refused: return "not_authorized"
        case .temporaryFailure: return "directory_unavailable"
        case .throttled: return "throttled"
        }
    }
}
