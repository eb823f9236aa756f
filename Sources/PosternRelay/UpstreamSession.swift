import Foundation
import PosternSMTP

/// One message as the upstream session sends it.
struct OutboundMessage: Sendable, Hashable {
    var sender: String
    /// Distinct recipients (the relay's plan sends each once).
    var recipients: [String]
    /// The message's size before dot-stuffing, for `SIZE=`.
    var size: Int
    /// `8BITMIME` when the message was received as such.
    var bodyType: String?
}

/// What the upstream said about each recipient of one message.
struct TransactionResult: Sendable, Hashable {
    var replies: [String: SMTPReply]
    /// False when the session is in an unknown state and must not be reused.
    var connectionReusable: Bool
}

/// The SMTP dialogue with an upstream, as a state machine like `SMTPSession` on the receiving side: it
/// takes replies and returns what to send next; `UpstreamConnection` does the I/O.
///
/// Setup: the greeting, EHLO, and with STARTTLS the switch to TLS and EHLO again (RFC 3207 4.2: what was
/// learnt before TLS is forgotten); never on without TLS. Then, when the upstream wants it, AUTH (RFC 4954):
/// PLAIN, LOGIN or XOAUTH2, only over TLS; a rejected credential that was cached (an access token, which
/// may have been revoked) is replaced once and tried again, a second rejection ends the setup. Then one transaction at a time: RSET when the
/// session is reused after a failure, MAIL, a RCPT per recipient and DATA, pipelined in one write when the
/// upstream offers PIPELINING (RFC 2920) and one command at a time otherwise, the dot-stuffed message, and
/// a reply per recipient at the end.
struct UpstreamSession: Sendable {
    enum Action: Sendable, Hashable {
        /// Write `commands` (nothing for the greeting), then give the next `expecting` replies to `receive`.
        case send(String, expecting: Int)
        /// Send STARTTLS and, on its 220, start TLS; once the handshake is done and the upstream's name
        /// checked, call `tlsEstablished`.
        case startTLS
        /// Setup is done: TLS is up (check the upstream's name if the channel has not) and these are its extensions.
        case ready(extensions: Set<String>)
        /// Write the message, dot-stuffed and ended with `.`, and give its one reply to `receive`.
        case sendMessage
        /// The transaction is over: a reply for every recipient handed in that the upstream answered.
        case finished(TransactionResult)
        /// Give up on this connection.
        case fail(UpstreamConnectionError)
        /// Write this AUTH line (it holds a secret: never log it) and give the one reply to `receive`.
        case sendCredentials(String)
        /// AUTH succeeded: setup is done.
        case authenticated
        /// The upstream refused a credential that was not fresh: get a fresh one (`UpstreamCredential.fresh`) and
        /// call `authenticate(with:)` again on this session.
        case retryWithFreshCredential(rejection: SMTPReply)

        /// The case for error texts: `sendCredentials` carries a secret.
        var name: String {
            switch self {
            case .send: return "send"
            case .startTLS: return "startTLS"
            case .ready: return "ready"
            case .sendMessage: return "sendMessage"
            case .finished: return "finished"
            case .fail: return "fail"
            case .sendCredentials: return "sendCredentials"
            case .authenticated: return "authenticated"
            case .retryWithFreshCredential: return "retryWithFreshCredential"
            }
        }
    }

    /// Where AUTH stands.
    enum AuthStep: Sendable, Hashable {
        /// `AUTH PLAIN <initial response>` or `AUTH XOAUTH2 <initial response>` was written.
        case initialResponse
        /// `AUTH LOGIN` was written; the 334 asks for the user name.
        case loginStarted
        /// LOGIN's user name was written.
        case loginUsername
        /// LOGIN's password was written.
        case loginPassword
        /// XOAUTH2 got a 334 with the error (RFC 7628 3.2.2 style); the empty line that ends it was written.
        case xoauth2ErrorAcknowledged(challenge: String)
    }

    /// Where a transaction stands.
    enum Step: Sendable, Hashable {
        /// RSET (if asked), MAIL, every RCPT and DATA were written together.
        case pipelinedEnvelope
        /// RSET (if asked) and MAIL were written.
        case mail
        /// The RCPT of `recipients[index]` was written.
        case rcpt(index: Int)
        /// DATA was written after the recipients were answered.
        case data
        /// DATA got 354 though no recipient was accepted: an empty message's end was written.
        case emptyMessage
        /// The message was written.
        case message
    }

    enum State: Sendable, Hashable {
        case greeting
        case ehlo(secured: Bool)
        case startingTLS
        case ready
        case authenticating(AuthStep)
        case transaction(Step)
        case failed
    }

    private(set) var state: State = .greeting
    let hostname: String
    let tls: UpstreamConfiguration.TLSMode
    /// What the upstream offered in its EHLO reply over TLS.
    private(set) var extensions: Set<String> = []
    /// The EHLO reply's lines over TLS after the greeting line, as sent (`SIZE 36700160`, `AUTH LOGIN XOAUTH2`).
    private(set) var extensionLines: [String] = []
    /// The SASL mechanisms of the AUTH extension, upper-cased.
    var authMechanisms: Set<String> {
        Set(extensionLines.lazy.compactMap { line -> [String]? in
            let words = line.split(separator: " ").map { $0.uppercased() }
            return words.first == "AUTH" ? Array(words.dropFirst()) : nil
        }.joined())
    }
    /// The credential of the AUTH in progress (LOGIN sends it in two steps); dropped when AUTH ends.
    private var credential: UpstreamCredential?
    /// A stale credential was already replaced once on this session.
    private var retriedAuth = false
    private(set) var authenticated = false
    private var message = OutboundMessage(sender: "", recipients: [], size: 0)
    private var resetFirst = false
    private var replies: [String: SMTPReply] = [:]
    private var accepted: [String] = []

    init(hostname: String, tls: UpstreamConfiguration.TLSMode) {
        self.hostname = hostname
        self.tls = tls
    }

    var supportsPipelining: Bool { extensions.contains("PIPELINING") }

    // MARK: Setup

    /// The first step: read the greeting.
    func start() -> Action { .send("", expecting: 1) }

    /// The handshake after STARTTLS is done and the upstream's name checked.
    mutating func tlsEstablished() -> Action {
        guard case .startingTLS = state else { return failure("TLS established in state \(state)") }
        state = .ehlo(secured: true)
        return .send("EHLO \(hostname)\r\n", expecting: 1)
    }

    /// The replies asked for by the last `send` or `sendMessage`, in order.
    mutating func receive(_ answers: [SMTPReply]) -> Action {
        switch state {
        case .greeting:
            guard let greeting = single(answers) else { return failure("greeting: \(answers.count) replies") }
            guard greeting.code == 220 else { return fail(.greetingRefused(greeting)) }
            state = .ehlo(secured: tls == .implicit)
            return .send("EHLO \(hostname)\r\n", expecting: 1)
        case .ehlo(let secured):
            guard let reply = single(answers) else { return failure("EHLO: \(answers.count) replies") }
            guard reply.code == 250 else { return fail(.ehloRefused(reply)) }
            let offered = Set(reply.lines.dropFirst().compactMap { $0.split(separator: " ").first.map { $0.uppercased() } })
            if secured {
                extensions = offered
                extensionLines = Array(reply.lines.dropFirst())
                state = .ready
                return .ready(extensions: offered)
            }
            guard offered.contains("STARTTLS") else { return fail(.startTLSNotOffered) }
            state = .startingTLS
            return .startTLS
        case .transaction(let step):
            return transaction(step, answers)
        case .authenticating(let step):
            guard let reply = single(answers) else { return failure("AUTH: \(answers.count) replies") }
            return authentication(step, reply)
        case .startingTLS, .ready, .failed:
            return failure("\(answers.count) replies in state \(state)")
        }
    }

    // MARK: Authentication

    /// Starts AUTH with `credential` once setup is `ready`: only over TLS (setup never gets there without it) and
    /// only with a mechanism the upstream offers.
    mutating func authenticate(with credential: UpstreamCredential) -> Action {
        guard case .ready = state, !authenticated else { return failure("AUTH in state \(state)") }
        let mechanism = credential.mechanism.uppercased()
        guard authMechanisms.contains(mechanism) else {
            return fail(.authNotOffered(mechanism: mechanism, offered: authMechanisms.sorted()))
        }
        self.credential = credential
        switch mechanism {
        case "PLAIN":
            state = .authenticating(.initialResponse)
            return .sendCredentials("AUTH PLAIN \(Self.base64("\0\(credential.username)\0\(credential.secret)"))\r\n")
        case "LOGIN":
            state = .authenticating(.loginStarted)
            return .sendCredentials("AUTH LOGIN\r\n")
        case "XOAUTH2":
            state = .authenticating(.initialResponse)
            return .sendCredentials("AUTH XOAUTH2 \(Self.xoauth2InitialResponse(user: credential.username, token: credential.secret))\r\n")
        default:
            return fail(.authNotOffered(mechanism: mechanism, offered: authMechanisms.sorted()))
        }
    }

    /// XOAUTH2's initial response: base64 of `user=<mailbox>^Aauth=Bearer <token>^A^A` (Microsoft's and Google's
    /// documentation of the mechanism).
    static func xoauth2InitialResponse(user: String, token: String) -> String {
        base64("user=\(user)\u{1}auth=Bearer \(token)\u{1}\u{1}")
    }

    static func base64(_ text: String) -> String { Data(text.utf8).base64EncodedString() }

    private mutating func authentication(_ step: AuthStep, _ reply: SMTPReply) -> Action {
        guard let credential else { return failure("AUTH reply without a credential") }
        switch (step, reply.code) {
        case (_, 235):
            self.credential = nil
            authenticated = true
            state = .ready
            return .authenticated
        case (.loginStarted, 334):
            state = .authenticating(.loginUsername)
            return .sendCredentials(Self.base64(credential.username) + "\r\n")
        case (.loginUsername, 334):
            state = .authenticating(.loginPassword)
            return .sendCredentials(Self.base64(credential.secret) + "\r\n")
        case (.initialResponse, 334) where credential.mechanism.uppercased() == "XOAUTH2":
            // The token was refused; the 334 carries the reason as base64 JSON and waits for an empty line.
            let challenge = reply.lines.joined().trimmingCharacters(in: .whitespaces)
            let decoded = Data(base64Encoded: challenge).flatMap { String(data: $0, encoding: .utf8) } ?? challenge
            state = .authenticating(.xoauth2ErrorAcknowledged(challenge: String(decoded.prefix(300))))
            return .sendCredentials("\r\n")
        case (.xoauth2ErrorAcknowledged(let challenge), _):
            return rejected(reply, credential: credential, detail: challenge, refetch: true)
        default:
            return rejected(reply, credential: credential, detail: nil, refetch: reply.code == 535)
        }
    }

    /// The upstream refused the credential: once more with a fresh one when this one was cached and the answer says
    /// "these credentials" (535, or XOAUTH2's error), else the setup ends.
    private mutating func rejected(_ reply: SMTPReply, credential: UpstreamCredential, detail: String?, refetch: Bool) -> Action {
        self.credential = nil
        if refetch, !credential.fresh, !retriedAuth {
            retriedAuth = true
            state = .ready
            return .retryWithFreshCredential(rejection: reply)
        }
        return fail(.authRejected(mechanism: credential.mechanism.uppercased(), user: credential.username, reply: reply, detail: detail))
    }

    // MARK: Transactions

    /// Starts sending `message`; `needsReset` after a transaction on this session that did not end cleanly.
    mutating func send(_ message: OutboundMessage, needsReset: Bool) -> Action {
        guard case .ready = state else { return failure("a message in state \(state)") }
        self.message = message
        resetFirst = needsReset
        replies = [:]
        accepted = []
        var mail = "MAIL FROM:<\(message.sender)>"
        if message.bodyType?.uppercased() == "8BITMIME", extensions.contains("8BITMIME") { mail += " BODY=8BITMIME" }
        if extensions.contains("SIZE") { mail += " SIZE=\(message.size)" }
        var commands = (needsReset ? "RSET\r\n" : "") + mail + "\r\n"
        guard supportsPipelining else {
            state = .transaction(.mail)
            return .send(commands, expecting: (needsReset ? 1 : 0) + 1)
        }
        for recipient in message.recipients { commands += "RCPT TO:<\(recipient)>\r\n" }
        commands += "DATA\r\n"
        state = .transaction(.pipelinedEnvelope)
        return .send(commands, expecting: (needsReset ? 1 : 0) + message.recipients.count + 2)
    }

    private mutating func transaction(_ step: Step, _ answers: [SMTPReply]) -> Action {
        switch step {
        case .pipelinedEnvelope:
            let recipients = message.recipients
            let offset = resetFirst ? 1 : 0  // RSET's reply says nothing about this message
            guard answers.count == offset + recipients.count + 2 else { return failure("pipelined envelope: \(answers.count) replies") }
            let mailReply = answers[offset]
            for (index, recipient) in recipients.enumerated() {
                let reply = mailReply.isPositive ? answers[offset + 1 + index] : mailReply
                if reply.isPositive { accepted.append(recipient) } else { replies[recipient] = reply }
            }
            return afterData(answers[offset + recipients.count + 1])
        case .mail:
            guard let mailReply = answers.last, answers.count == (resetFirst ? 2 : 1) else { return failure("MAIL: \(answers.count) replies") }
            guard mailReply.isPositive else {
                for recipient in message.recipients { replies[recipient] = mailReply }
                return finish()
            }
            return nextRecipient(0)
        case .rcpt(let index):
            guard let reply = single(answers), index < message.recipients.count else { return failure("RCPT: \(answers.count) replies") }
            let recipient = message.recipients[index]
            if reply.isPositive { accepted.append(recipient) } else { replies[recipient] = reply }
            return nextRecipient(index + 1)
        case .data:
            guard let reply = single(answers) else { return failure("DATA: \(answers.count) replies") }
            return afterData(reply)
        case .emptyMessage:
            guard single(answers) != nil else { return failure("end of an empty message: \(answers.count) replies") }
            return finish()
        case .message:
            guard let reply = single(answers) else { return failure("end of the message: \(answers.count) replies") }
            for recipient in accepted { replies[recipient] = reply }
            return finish()
        }
    }

    private mutating func nextRecipient(_ index: Int) -> Action {
        if index < message.recipients.count {
            state = .transaction(.rcpt(index: index))
            return .send("RCPT TO:<\(message.recipients[index])>\r\n", expecting: 1)
        }
        guard !accepted.isEmpty else { return finish() }
        state = .transaction(.data)
        return .send("DATA\r\n", expecting: 1)
    }

    private mutating func afterData(_ dataReply: SMTPReply) -> Action {
        guard dataReply.code == 354 else {
            for recipient in accepted { replies[recipient] = dataReply }
            return finish()
        }
        guard !accepted.isEmpty else {
            // Pipelined: the upstream wants data though nobody was accepted. End an empty message.
            state = .transaction(.emptyMessage)
            return .send(".\r\n", expecting: 1)
        }
        state = .transaction(.message)
        return .sendMessage
    }

    private mutating func finish() -> Action {
        state = .ready
        return .finished(TransactionResult(replies: replies, connectionReusable: true))
    }

    // MARK: Failures

    private func single(_ answers: [SMTPReply]) -> SMTPReply? {
        answers.count == 1 ? answers.first : nil
    }

    private mutating func fail(_ error: UpstreamConnectionError) -> Action {
        state = .failed
        return .fail(error)
    }

    /// A call the state cannot take: a fault of the channel code, not of the upstream. The connection is
    /// given up (its messages stay queued) rather than trapping, which would end every listener.
    private mutating func failure(_ reason: String) -> Action {
        fail(.protocolState(reason))
    }
}
