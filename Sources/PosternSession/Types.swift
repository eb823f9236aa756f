import NIOCore
import PosternSMTP

/// The three kinds of endpoint Postern listens on.
public enum ListenerKind: String, Sendable, Hashable, CaseIterable, Codable {
    /// Port 587 style: STARTTLS offered and required before MAIL and AUTH.
    case submission
    /// Port 465 style: implicit TLS (RFC 8314).
    case submissions
    /// Plaintext, for registered legacy devices only.
    case device

    public var requiresTLS: Bool { self != .device }
    public var offersAuth: Bool { self != .device }
}

/// What the session knows about one listener's settings.
public struct SessionConfiguration: Sendable {
    public var hostname: String
    public var listenerName: String
    public var kind: ListenerKind
    public var maxMessageSize: Int
    public var maxRecipients: Int
    /// Device listeners only: store bare LF as CRLF instead of refusing the message.
    public var normalizeBareLF: Bool
    /// Whether a directory is configured to check AUTH against.
    public var authAvailable: Bool
    /// Errors (bad commands, refusals) before the session is closed with 421.
    public var maxErrors: Int
    /// MAIL needs an authenticated user: on the gateway's TLS endpoints (`kind.offersAuth`). A receiving
    /// server that relays for nobody (`postern sink`) takes mail over TLS without it.
    public var requiresAuthentication: Bool

    public init(hostname: String, listenerName: String, kind: ListenerKind, maxMessageSize: Int = 25 * 1024 * 1024,
                maxRecipients: Int = 100, normalizeBareLF: Bool = false, authAvailable: Bool = false, maxErrors: Int = 20,
                requiresAuthentication: Bool? = nil) {
        self.hostname = hostname
        self.listenerName = listenerName
        self.kind = kind
        self.maxMessageSize = maxMessageSize
        self.maxRecipients = maxRecipients
        self.normalizeBareLF = normalizeBareLF && kind == .device
        self.authAvailable = authAvailable
        self.maxErrors = maxErrors
        self.requiresAuthentication = requiresAuthentication ?? kind.offersAuth
    }
}

/// TLS parameters of an established session, for the Received header and the audit log.
public struct TLSInfo: Sendable, Hashable {
    public var version: String
    public var cipher: String?
    public var peerCertificateSubject: String?

    public init(version: String, cipher: String? = nil, peerCertificateSubject: String? = nil) {
        self.version = version
        self.cipher = cipher
        self.peerCertificateSubject = peerCertificateSubject
    }
}

/// Who authenticated, as the directory described them.
public struct AuthenticatedUser: Sendable, Hashable {
    public var login: String
    public var distinguishedName: String
    /// The user's mail addresses (`mail`, `mailAlternateAddress`).
    public var addresses: [String]
    public var groups: [String]

    public init(login: String, distinguishedName: String, addresses: [String], groups: [String]) {
        self.login = login
        self.distinguishedName = distinguishedName
        self.addresses = addresses
        self.groups = groups
    }
}

/// Facts about the connection that policy decisions rest on.
public struct ConnectionFacts: Sendable {
    public var listenerName: String
    public var kind: ListenerKind
    /// The client address policy sees (after PROXY protocol, where used).
    public var clientAddress: String
    public var clientPort: Int
    public var tls: TLSInfo?
    public var heloName: String?
    public var user: AuthenticatedUser?
    public var sessionID: String

    public init(listenerName: String, kind: ListenerKind, clientAddress: String, clientPort: Int = 0, sessionID: String) {
        self.listenerName = listenerName
        self.kind = kind
        self.clientAddress = clientAddress
        self.clientPort = clientPort
        self.sessionID = sessionID
    }
}

/// A policy answer: go on, or this one reply.
public enum Verdict: Sendable, Hashable {
    case accept
    case refuse(SMTPReply)
}

/// A policy answer about a whole message, at the end of DATA.
public enum MessageVerdict: Sendable, Hashable {
    case accept
    /// Accept, with these header fields (each ending in CRLF) put before the message's own.
    case acceptAdding(String)
    case refuse(SMTPReply)
}

/// The rules a session asks before accepting a sender, a recipient or a message. Implemented by the gateway on top of Policy.
public protocol SessionRules: Sendable {
    func checkSender(_ facts: ConnectionFacts, sender: ReversePath) -> Verdict
    func checkRecipient(_ facts: ConnectionFacts, sender: ReversePath, recipient: Mailbox) -> Verdict
    /// The message as received (CRLF line ends, dot-stuffing removed), before anything is stored.
    func checkMessage(_ facts: ConnectionFacts, sender: ReversePath, message: ByteBuffer) -> MessageVerdict
    /// A tighter size limit for this connection (e.g. a device's own), if any.
    func messageSizeLimit(_ facts: ConnectionFacts) -> Int?
    /// Equal for recipients that are one mailbox: the session's duplicate filter answers `250` to a
    /// repeated one and does not add it (Postfix's duplicate filter does the same).
    func recipientKey(_ recipient: Mailbox) -> String
    /// The rules for one connection, asked once as its session starts: work that depends only on the
    /// connection (such as parsing the client address) is done here rather than for every command.
    func forConnection(_ facts: ConnectionFacts) -> any SessionRules
    /// The audit log's facts about a message about to be stored.
    func auditFacts(_ facts: ConnectionFacts, recipients: [Mailbox]) -> MessageAuditFacts
}

extension SessionRules {
    public func forConnection(_ facts: ConnectionFacts) -> any SessionRules { self }

    /// Without a policy: no device, internal domains unknown.
    public func auditFacts(_ facts: ConnectionFacts, recipients: [Mailbox]) -> MessageAuditFacts { MessageAuditFacts() }

    /// Without a policy to say more: the domain's case folded, the local part exact (RFC 5321 2.4).
    public func recipientKey(_ recipient: Mailbox) -> String {
        "\(recipient.unquotedLocalPart)@\(recipient.normalizedDomain)"
    }
}

/// Credentials from AUTH PLAIN or AUTH LOGIN.
public struct Credentials: Sendable, Hashable {
    public var mechanism: String
    /// The authorization identity from AUTH PLAIN, if the client sent one different from the login.
    public var authorizationID: String?
    public var login: String
    public var password: String

    public init(mechanism: String, authorizationID: String? = nil, login: String, password: String) {
        self.mechanism = mechanism
        self.authorizationID = authorizationID
        self.login = login
        self.password = password
    }
}

/// The answer to an authentication the session asked for.
public enum AuthOutcome: Sendable, Hashable {
    case success(AuthenticatedUser)
    /// Wrong password or unknown user: 535 5.7.8, indistinguishable.
    case invalidCredentials
    /// Valid credentials, but not allowed to submit (e.g. not in a required group). The reply is the
    /// authenticator's: by default the same as for invalid credentials, so the password is not confirmed.
    case refused(SMTPReply)
    /// Directory unreachable or timed out: 454 4.7.0.
    case temporaryFailure
    /// Too many failures recently; the session is closed.
    case throttled(SMTPReply)
}

/// The envelope of an accepted message.
public struct Envelope: Sendable, Hashable {
    public var sender: ReversePath
    public var recipients: [Mailbox]
    public var bodyType: String?
    public var facts: ConnectionFacts
    /// What policy adds for the audit log (the device, which recipients are external), set as DATA ends.
    public var auditFacts: MessageAuditFacts

    public init(sender: ReversePath, recipients: [Mailbox], bodyType: String? = nil, facts: ConnectionFacts,
                auditFacts: MessageAuditFacts = MessageAuditFacts()) {
        self.sender = sender
        self.recipients = recipients
        self.bodyType = bodyType
        self.facts = facts
        self.auditFacts = auditFacts
    }
}

/// What the audit log records of an accepted message beyond its envelope, so that `postern report` needs
/// nothing but the log: the registered device that sent it and the recipients outside the internal domains.
public struct MessageAuditFacts: Sendable, Hashable {
    public var device: String?
    /// nil when the rules do not know the internal domains.
    public var externalRecipients: [Mailbox]?

    public init(device: String? = nil, externalRecipients: [Mailbox]? = nil) {
        self.device = device
        self.externalRecipients = externalRecipients
    }
}

extension ConnectionFacts: Hashable {
    public static func == (a: ConnectionFacts, b: ConnectionFacts) -> Bool { a.sessionID == b.sessionID }
    public func hash(into hasher: inout Hasher) { hasher.combine(sessionID) }
}

/// The answer of the delivery target to a message handed over.
public enum DeliveryOutcome: Sendable, Hashable {
    case queued(id: String)
    /// Spool full or unwritable (452 4.3.1 / 451 4.3.0); the session goes on.
    case temporaryFailure(SMTPReply)
}

/// What the channel handler must do after feeding the session.
public enum SessionAction: Sendable, Hashable {
    case reply(SMTPReply)
    /// Send the reply, then close the connection.
    case close(SMTPReply)
    /// Send the 220, drop whatever plaintext the client already sent, start the TLS handshake.
    case startTLS(SMTPReply)
    /// Send the 354 and read DATA with these limits until `<CRLF>.<CRLF>`.
    case startData(SMTPReply, DataLimits)
    /// Check the credentials (off the event loop), then call `authCompleted`.
    case authenticate(Credentials)
    /// Hand the message to the delivery target, then call `deliveryCompleted`.
    case deliver(Envelope, ByteBuffer)
}

public struct DataLimits: Sendable, Hashable {
    public var maxMessageSize: Int
    public var normalizeBareLF: Bool
}
