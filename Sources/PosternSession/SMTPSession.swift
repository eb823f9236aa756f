import Foundation
import NIOCore
import PosternSMTP

/// The RFC 5321 dialogue of one connection as a state machine.
///
/// It knows nothing of sockets: the channel handler feeds it lines and results of asynchronous
/// work (authentication, delivery) and carries out the `SessionAction` it returns.
///
/// (About 480 lines, over the project's 400: every transition of the state is in this one file, where its
/// `private` state can be seen whole; AUTH's exchange is the only part that could go, and it changes state
/// at every step.)
public struct SMTPSession: Sendable {
    enum AuthStep: Sendable, Hashable {
        case plain
        case loginUsername
        case loginPassword(username: String)
    }

    enum State: Sendable {
        /// Connected, greeting sent, no EHLO/HELO yet.
        case connected
        /// EHLO/HELO done, no transaction.
        case ready
        /// MAIL accepted; collecting recipients.
        case transaction(Transaction)
        /// 354 sent; the handler is reading DATA. `headerVerdict`: policy's answer on the header section when
        /// the handler asked before the end (a message streamed to disk, `headerSectionReceived`).
        case data(Transaction, headerVerdict: MessageVerdict?)
        /// Waiting for the client's next AUTH line.
        case authExchange(AuthStep)
        /// Waiting for the directory.
        case authenticating
        /// Waiting for the delivery target.
        case delivering
        /// 220 to STARTTLS sent; waiting for the handshake.
        case tlsStarting
        case closed
    }

    struct Transaction: Sendable {
        var sender: ReversePath
        var bodyType: String?
        var recipients: [Mailbox] = []
        /// `SessionRules.recipientKey` of each recipient, for the duplicate filter.
        var recipientKeys: Set<String> = []
    }

    public let configuration: SessionConfiguration
    public private(set) var facts: ConnectionFacts
    private var state: State = .connected
    private var esmtp = false
    private var errors = 0
    private let rules: any SessionRules
    /// Why the session closed itself for a command or result its state cannot take (a fault of the
    /// caller, not of the client); nil otherwise. The handler logs it.
    public private(set) var internalError: String?

    public init(configuration: SessionConfiguration, facts: ConnectionFacts, rules: any SessionRules) {
        self.configuration = configuration
        self.facts = facts
        self.rules = rules.forConnection(facts)
    }

    /// The line limit the handler should apply to the next line.
    public var maxLineLength: Int {
        if case .authExchange = state { return 12288 }  // RFC 4954 4
        return 512
    }

    public var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    /// True while a DATA transfer is under way (graceful shutdown lets these finish).
    public var isInData: Bool {
        switch state {
        case .data, .delivering: return true
        default: return false
        }
    }

    public var tlsActive: Bool { facts.tls != nil }

    /// The envelope of the message being received (in DATA), for its Received header.
    public var dataEnvelope: Envelope? {
        guard case .data(let transaction, _) = state else { return nil }
        return Envelope(sender: transaction.sender, recipients: transaction.recipients, bodyType: transaction.bodyType, facts: facts)
    }

    public func greeting() -> SMTPReply {
        // RFC 2034: no enhanced status code on the greeting; RFC 5321 4.2: the domain comes first.
        SMTPReply(220, nil, "\(configuration.hostname) ESMTP Postern")
    }

    // MARK: Input

    public mutating func receive(_ line: LineFramer.Line) -> SessionAction {
        switch line {
        case .tooLong:
            if case .authExchange = state { state = .ready; return error(SMTPReply(500, "5.5.6", "Authentication exchange line too long")) }
            return error(.commandLineTooLong)
        case .bareLF:
            if case .authExchange = state { state = .ready }
            return error(.bareLFInCommand)
        case .line(let text):
            if case .authExchange(let step) = state {
                return authLine(text, step: step)
            }
            let command: SMTPCommand
            do {
                command = try CommandParser.parse(Substring(text))
            } catch {
                return self.error(error.reply)
            }
            return receive(command)
        }
    }

    public mutating func receive(_ command: SMTPCommand) -> SessionAction {
        switch state {
        case .closed, .authenticating, .delivering, .tlsStarting, .data, .authExchange:
            return internalFailure("command \(Self.caseName(command)) in state \(Self.caseName(state))")
        case .connected, .ready, .transaction:
            break
        }
        switch command {
        case .ehlo(let name):
            return hello(name, extended: true)
        case .helo(let name):
            return hello(name, extended: false)
        case .noop:
            return .reply(.ok)
        case .rset:
            if case .transaction = state { state = .ready }
            return .reply(.ok)
        case .quit:
            state = .closed
            return .close(.bye)
        case .vrfy:
            return .reply(.vrfyCannotVerify)
        case .expn:
            return error(SMTPReply(502, "5.5.1", "EXPN not available"))
        case .help:
            return .reply(SMTPReply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH"))
        case .notImplemented(let verb):
            return error(SMTPReply(502, "5.5.1", "\(verb) not implemented"))
        case .startTLS:
            return startTLS()
        case .auth(let mechanism, let initialResponse):
            return auth(mechanism: mechanism, initialResponse: initialResponse)
        case .mail(let sender, let parameters):
            return mail(sender, parameters)
        case .rcpt(let recipient, let parameters):
            return rcpt(recipient, parameters)
        case .data:
            return data()
        }
    }

    // MARK: Results of asynchronous work

    /// The TLS handshake finished; the session starts over (RFC 3207 4.2).
    public mutating func tlsEstablished(_ info: TLSInfo) {
        facts.tls = info
        facts.heloName = nil
        facts.user = nil
        esmtp = false
        state = .connected
    }

    /// The handler has no certificate to start TLS with (none loaded): 454, and the session goes on in
    /// plaintext, where a TLS endpoint still refuses MAIL and AUTH.
    public mutating func tlsUnavailable() -> SessionAction {
        guard case .tlsStarting = state else { return internalFailure("TLS unavailable in state \(Self.caseName(state))") }
        state = .ready
        return .reply(SMTPReply(454, "4.7.0", "TLS not available due to temporary reason"))
    }

    public mutating func authCompleted(_ outcome: AuthOutcome) -> SessionAction {
        // A session closed meanwhile (idle timeout, shutdown) can still get its directory's answer.
        guard case .authenticating = state else { return internalFailure("authentication result in state \(Self.caseName(state))") }
        state = .ready
        switch outcome {
        case .success(let user):
            facts.user = user
            return .reply(SMTPReply(235, "2.7.0", "Authentication successful"))
        case .invalidCredentials:
            return error(SMTPReply(535, "5.7.8", "Authentication credentials invalid"))
        case .refused(let reply):
            return error(reply)
        case .temporaryFailure:
            return .reply(SMTPReply(454, "4.7.0", "Temporary authentication failure"))
        case .throttled(let reply):
            state = .closed
            return .close(reply)
        }
    }

    /// The start of a message the handler streams to disk, before its end (issue #20): `message` holds at least
    /// the header section (or `HeaderScanner.headerSectionLimit` octets). Policy decides on the header section
    /// now. The handler writes the fields of `.acceptAdding` before the message, drops the message on
    /// `.refuse` (whose reply comes at the end of DATA), and `dataCompleted` then neither asks nor adds again.
    public mutating func headerSectionReceived(_ message: ByteBuffer) -> MessageVerdict {
        guard case .data(let transaction, .none) = state else {
            internalError = "header section in state \(Self.caseName(state))"
            return .refuse(SMTPReply(451, "4.3.0", "Temporary local problem, try again later"))
        }
        let verdict = rules.checkMessage(facts, sender: transaction.sender, message: HeaderScanner.headerSection(of: message))
        state = .data(transaction, headerVerdict: verdict)
        return verdict
    }

    /// DATA ended (`<CRLF>.<CRLF>` seen) with this outcome from the framer. For a streamed message (see
    /// `headerSectionReceived`) `.message` holds what the handler has not written yet.
    public mutating func dataCompleted(_ outcome: DataFramer.Outcome) -> SessionAction {
        guard case .data(let transaction, let headerVerdict) = state else { return internalFailure("end of DATA in state \(Self.caseName(state))") }
        switch outcome {
        case .rejected(let rejection):
            state = .ready
            return error(rejection.reply)
        case .message(let body) where headerVerdict != nil:
            if case .refuse(let reply)? = headerVerdict {
                state = .ready
                return error(reply)
            }
            state = .delivering
            return .deliver(Envelope(sender: transaction.sender, recipients: transaction.recipients, bodyType: transaction.bodyType, facts: facts), body)
        case .message(let body):
            var message = body
            // The header section alone: what policy reads is in it, and a large body is not walked.
            switch rules.checkMessage(facts, sender: transaction.sender, message: HeaderScanner.headerSection(of: body)) {
            case .refuse(let reply):
                state = .ready
                return error(reply)
            case .accept:
                break
            case .acceptAdding(let fields):
                // Rare (a message without From:): one copy of the message is the price of a thin handler.
                message = ByteBuffer(string: fields)
                message.writeImmutableBuffer(body)
            }
            state = .delivering
            let envelope = Envelope(sender: transaction.sender, recipients: transaction.recipients,
                                    bodyType: transaction.bodyType, facts: facts,
                                    auditFacts: rules.auditFacts(facts, recipients: transaction.recipients))
            return .deliver(envelope, message)
        }
    }

    public mutating func deliveryCompleted(_ outcome: DeliveryOutcome) -> SessionAction {
        guard case .delivering = state else { return internalFailure("delivery result in state \(Self.caseName(state))") }
        state = .ready
        switch outcome {
        case .queued(let id):
            return .reply(SMTPReply(250, "2.0.0", "Ok: queued as \(id)"))
        case .temporaryFailure(let reply):
            return .reply(reply)
        }
    }

    /// The connection is going away (shutdown, timeout); the reply to send before closing.
    public mutating func close(with reply: SMTPReply) -> SessionAction {
        state = .closed
        return .close(reply)
    }

    // MARK: Commands

    private mutating func hello(_ name: String, extended: Bool) -> SessionAction {
        facts.heloName = name
        esmtp = extended
        state = .ready  // EHLO/HELO resets any transaction (RFC 5321 4.1.4)
        guard extended else {
            return .reply(SMTPReply(250, nil, configuration.hostname))
        }
        var lines = [configuration.hostname]
        lines.append("PIPELINING")
        lines.append("SIZE \(effectiveSizeLimit)")
        lines.append("8BITMIME")
        lines.append("ENHANCEDSTATUSCODES")
        if configuration.kind == .submission && !tlsActive {
            lines.append("STARTTLS")
        }
        if configuration.kind.offersAuth && tlsActive && configuration.authAvailable && facts.user == nil {
            lines.append("AUTH PLAIN LOGIN")
        }
        return .reply(SMTPReply(code: 250, enhancedStatus: nil, lines: lines))
    }

    private var effectiveSizeLimit: Int {
        min(configuration.maxMessageSize, rules.messageSizeLimit(facts) ?? .max)
    }

    private mutating func startTLS() -> SessionAction {
        guard configuration.kind == .submission else {
            return error(SMTPReply(502, "5.5.1", "STARTTLS not available on this endpoint"))
        }
        guard !tlsActive else { return error(SMTPReply(503, "5.5.1", "TLS already active")) }
        guard facts.heloName != nil else { return error(SMTPReply(503, "5.5.1", "Send EHLO first")) }
        state = .tlsStarting
        return .startTLS(.readyToStartTLS)
    }

    private mutating func auth(mechanism: String, initialResponse: String?) -> SessionAction {
        guard configuration.kind.offersAuth else {
            return error(SMTPReply(502, "5.5.1", "Authentication not available on this endpoint"))
        }
        guard tlsActive else {
            return error(SMTPReply(538, "5.7.11", "Encryption required for requested authentication mechanism"))
        }
        guard configuration.authAvailable else {
            return error(SMTPReply(502, "5.5.1", "Authentication not configured"))
        }
        guard esmtp, case .ready = state else { return error(.badSequence) }
        guard facts.user == nil else { return error(SMTPReply(503, "5.5.1", "Already authenticated")) }
        switch mechanism {
        case "PLAIN":
            guard let initialResponse else {
                state = .authExchange(.plain)
                return .reply(SMTPReply(334, nil, ""))
            }
            return authLine(initialResponse, step: .plain)
        case "LOGIN":
            guard let initialResponse else {
                state = .authExchange(.loginUsername)
                return .reply(SMTPReply(334, nil, "VXNlcm5hbWU6"))  // "Username:"
            }
            return authLine(initialResponse, step: .loginUsername)
        default:
            return error(SMTPReply(504, "5.5.4", "Unrecognized authentication type"))
        }
    }

    private mutating func authLine(_ text: String, step: AuthStep) -> SessionAction {
        if text == "*" {
            state = .ready
            return error(SMTPReply(501, "5.0.0", "Authentication aborted"))
        }
        guard let data = Data(base64Encoded: text) else {
            state = .ready
            return error(SMTPReply(501, "5.5.2", "Cannot decode response"))
        }
        let decoded = [UInt8](data)
        switch step {
        case .plain:
            // RFC 4616: [authzid] NUL authcid NUL passwd
            let parts = decoded.split(separator: 0, maxSplits: 2, omittingEmptySubsequences: false)
            guard parts.count == 3,
                  let authz = String(validating: parts[0], as: UTF8.self),
                  let login = String(validating: parts[1], as: UTF8.self),
                  let password = String(validating: parts[2], as: UTF8.self) else {
                state = .ready
                return error(SMTPReply(501, "5.5.2", "Malformed PLAIN response"))
            }
            return authenticate(Credentials(mechanism: "PLAIN", authorizationID: authz.isEmpty ? nil : authz, login: login, password: password))
        case .loginUsername:
            guard let login = String(validating: decoded, as: UTF8.self) else {
                state = .ready
                return error(SMTPReply(501, "5.5.2", "Malformed LOGIN response"))
            }
            state = .authExchange(.loginPassword(username: login))
            return .reply(SMTPReply(334, nil, "UGFzc3dvcmQ6"))  // "Password:"
        case .loginPassword(let login):
            guard let password = String(validating: decoded, as: UTF8.self) else {
                state = .ready
                return error(SMTPReply(501, "5.5.2", "Malformed LOGIN response"))
            }
            return authenticate(Credentials(mechanism: "LOGIN", login: login, password: password))
        }
    }

    private mutating func authenticate(_ credentials: Credentials) -> SessionAction {
        if let authz = credentials.authorizationID, authz != credentials.login {
            // Acting as another user is not supported; refuse rather than silently ignore.
            state = .ready
            return error(SMTPReply(535, "5.7.8", "Authentication credentials invalid"))
        }
        state = .authenticating
        return .authenticate(credentials)
    }

    private mutating func mail(_ sender: ReversePath, _ parameters: [MailParameter]) -> SessionAction {
        guard facts.heloName != nil else { return error(SMTPReply(503, "5.5.1", "Send EHLO or HELO first")) }
        if configuration.kind.requiresTLS && !tlsActive { return error(.mustStartTLS) }
        guard case .ready = state else { return error(SMTPReply(503, "5.5.1", "Nested MAIL command")) }
        if configuration.requiresAuthentication && facts.user == nil {
            return error(SMTPReply(530, "5.7.0", "Authentication required"))
        }
        var bodyType: String?
        for parameter in parameters {
            switch parameter.keyword {
            case "SIZE" where esmtp:
                guard let value = parameter.value, let size = Int(value), size >= 0 else {
                    return error(SMTPReply(501, "5.5.4", "Bad SIZE parameter"))
                }
                if size > effectiveSizeLimit { return error(.messageTooBig) }
            case "BODY" where esmtp:
                guard let value = parameter.value?.uppercased(), value == "7BIT" || value == "8BITMIME" else {
                    return error(SMTPReply(501, "5.5.4", "BODY must be 7BIT or 8BITMIME"))
                }
                bodyType = value
            case "AUTH" where esmtp && facts.user != nil:
                break  // RFC 4954 5: accepted; we record the authenticated user ourselves
            default:
                return error(CommandError.badParameter(parameter.keyword).reply)
            }
        }
        switch rules.checkSender(facts, sender: sender) {
        case .refuse(let reply):
            return error(reply)
        case .accept:
            state = .transaction(Transaction(sender: sender, bodyType: bodyType))
            return .reply(SMTPReply(250, "2.1.0", "Ok"))
        }
    }

    private mutating func rcpt(_ recipient: Mailbox, _ parameters: [MailParameter]) -> SessionAction {
        guard case .transaction(var transaction) = state else {
            return error(SMTPReply(503, "5.5.1", "Need MAIL before RCPT"))
        }
        if let parameter = parameters.first {
            return error(CommandError.badParameter(parameter.keyword).reply)
        }
        // The same mailbox twice (in To and Cc, or in another case): accepted once. Policy already
        // accepted this mailbox, and a repeat does not count against the recipient limit.
        let key = rules.recipientKey(recipient)
        if transaction.recipientKeys.contains(key) {
            return .reply(SMTPReply(250, "2.1.5", "Ok"))
        }
        guard transaction.recipients.count < configuration.maxRecipients else {
            return .reply(.tooManyRecipients)
        }
        switch rules.checkRecipient(facts, sender: transaction.sender, recipient: recipient) {
        case .refuse(let reply):
            return error(reply)
        case .accept:
            transaction.recipients.append(recipient)
            transaction.recipientKeys.insert(key)
            state = .transaction(transaction)
            return .reply(SMTPReply(250, "2.1.5", "Ok"))
        }
    }

    private mutating func data() -> SessionAction {
        guard case .transaction(let transaction) = state else {
            return error(SMTPReply(503, "5.5.1", "Need MAIL and RCPT before DATA"))
        }
        guard !transaction.recipients.isEmpty else {
            return error(SMTPReply(554, "5.5.1", "No valid recipients"))
        }
        state = .data(transaction, headerVerdict: nil)
        return .startData(.startData, DataLimits(maxMessageSize: effectiveSizeLimit, normalizeBareLF: configuration.normalizeBareLF))
    }

    /// A command or result in a state that cannot take it. STYLE.md: a transition any input can reach
    /// gets a reply, never a trap (a trap ends every listener), so the connection is closed with 421;
    /// `internalError` says why.
    private mutating func internalFailure(_ reason: String) -> SessionAction {
        internalError = reason
        state = .closed
        return .close(SMTPReply(421, "4.3.0", "Internal error, closing transmission channel"))
    }

    /// The case without its payload (`auth`, `authExchange`): a reason must not carry credentials.
    private static func caseName(_ value: Any) -> String {
        String(String(describing: value).prefix { $0 != "(" })
    }

    /// Counts an error reply; past the limit the session ends with 421.
    private mutating func error(_ reply: SMTPReply) -> SessionAction {
        errors += 1
        if errors >= configuration.maxErrors {
            state = .closed
            return .close(SMTPReply(421, "4.7.0", "Too many errors, closing transmission channel"))
        }
        return .reply(reply)
    }
}
