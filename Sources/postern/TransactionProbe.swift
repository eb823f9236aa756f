import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PosternCore
import PosternGateway
import PosternListener
import PosternSMTP
import PosternSession

/// One transaction played through the gateway's own `SMTPSession` with the gateway's own `SessionRules`,
/// without a socket: what `postern explain` reports. Each command's reply is the session's; each rule is the
/// one the audit log would record for it; AUTH's answer is the gateway authenticator's mapping of what the
/// directory says about the login. Nothing is delivered: where the gateway would queue, the probe stops.
struct TransactionProbe {
    struct Step {
        var command: String
        var reply: SMTPReply
        /// The rule that decided, as the audit log's `decision` event names it (policy stages only).
        var rule: String?
    }

    enum Outcome {
        /// Every command was accepted; `queued` when the message went as far as the delivery step.
        case accepted(queued: Bool)
        case refused(Step)
        /// Stopped before a refusal because input was missing (no --from, no --rcpt).
        case incomplete(String)
    }

    var configuration: SessionConfiguration
    var facts: ConnectionFacts
    var rules: any SessionRules
    /// The session starts TLS as the listener does: STARTTLS on submission, at once on submissions.
    var tls: Bool
    var login: String?
    /// What AUTH gets from the authenticator for `login`.
    var authenticate: (String) async -> AuthOutcome
    var sender: String?
    var recipients: [String]
    var message: [UInt8]?
    /// Where the audit events of the rules land; the probe reads the `decision` events' rules from it.
    var decisions: DecisionCapture

    func run() async -> (steps: [Step], outcome: Outcome) {
        var session = SMTPSession(configuration: configuration, facts: facts, rules: rules)
        var steps: [Step] = []

        /// One command line to the session, as the handler hands it over.
        func send(_ line: String) -> SessionAction {
            session.receive(LineFramer.Line.line(line))
        }
        func record(_ command: String, _ reply: SMTPReply) -> Step {
            let step = Step(command: command, reply: reply, rule: decisions.takeLastRule())
            steps.append(step)
            return step
        }
        func reply(of action: SessionAction) -> SMTPReply? {
            switch action {
            case .reply(let r), .close(let r), .startTLS(let r), .startData(let r, _): return r
            case .authenticate, .deliver: return nil
            }
        }

        if tls && configuration.kind == .submissions { session.tlsEstablished(TLSInfo(version: "TLS (implicit)")) }
        let ehlo = "EHLO explain.invalid"
        guard let hello = reply(of: send(ehlo)), hello.isPositive else {
            return (steps, .incomplete("the session refused EHLO"))
        }
        if tls && configuration.kind == .submission {
            let action = send("STARTTLS")
            guard case .startTLS(let ready) = action else {
                let step = record("STARTTLS", reply(of: action) ?? SMTPReply(454, "4.7.0", "TLS not available"))
                return (steps, .refused(step))
            }
            _ = record("STARTTLS", ready)
            session.tlsEstablished(TLSInfo(version: "TLS (STARTTLS)"))
            _ = send(ehlo)
        }

        if let login {
            let encoded = Data("\0\(login)\0(postern explain)".utf8).base64EncodedString()
            let shown = "AUTH PLAIN (login \(login))"
            let action = send("AUTH PLAIN \(encoded)")
            let answer: SMTPReply
            if case .authenticate = action {
                answer = reply(of: session.authCompleted(await authenticate(login))) ?? SMTPReply(454, "4.7.0", "no answer")
            } else {
                answer = reply(of: action) ?? SMTPReply(454, "4.7.0", "no answer")
            }
            let step = record(shown, answer)
            guard answer.isPositive else { return (steps, .refused(step)) }
        }

        guard let sender else { return (steps, .incomplete("no --from given")) }
        let mail = record("MAIL FROM:\(Self.bracketed(sender))", reply(of: send("MAIL FROM:\(Self.bracketed(sender))")) ?? .noAnswer)
        guard mail.reply.isPositive else { return (steps, .refused(mail)) }
        guard !recipients.isEmpty else { return (steps, .incomplete("no --rcpt given")) }

        var lastRefusal: Step?
        var accepted = 0
        for recipient in recipients {
            let line = "RCPT TO:\(Self.bracketed(recipient))"
            let step = record(line, reply(of: send(line)) ?? .noAnswer)
            if step.reply.isPositive { accepted += 1 } else { lastRefusal = step }
        }
        guard accepted > 0 else { return (steps, lastRefusal.map(Outcome.refused) ?? .incomplete("no recipient")) }
        guard let message else { return (steps, .accepted(queued: false)) }

        let data = send("DATA")
        guard case .startData(let go, let limits) = data else {
            let step = record("DATA", reply(of: data) ?? .noAnswer)
            return (steps, .refused(step))
        }
        _ = record("DATA", go)
        var framer = DataFramer(maxMessageSize: limits.maxMessageSize, normalizeBareLF: limits.normalizeBareLF)
        var wire = ByteBuffer()
        DotStuffing.encode(ByteBuffer(bytes: message), into: &wire)  // as a client sends it: CRLF lines, the final dot
        guard let framed = framer.feed(&wire) else { return (steps, .incomplete("the message did not end")) }
        let end = session.dataCompleted(framed)
        let shown = "(message, \(message.count) octets) ."
        if case .deliver = end {
            _ = record(shown, SMTPReply(250, "2.0.0", "Ok: the gateway would queue it now (explain queues nothing)"))
            return (steps, .accepted(queued: true))
        }
        let step = record(shown, reply(of: end) ?? .noAnswer)
        return (steps, step.reply.isPositive ? .accepted(queued: false) : .refused(step))
    }

    static func bracketed(_ s: String) -> String { s.hasPrefix("<") ? s : "<\(s)>" }
}

extension SMTPReply {
    fileprivate static let noAnswer = SMTPReply(451, "4.3.0", "The session gave no reply")
}

/// Collects the rules of the audit log's `decision` events, so each step shows what decided it.
final class DecisionCapture: Sendable {
    private let rules = NIOLockedValueBox<[String]>([])

    /// An audit log whose events land here.
    func auditLog() -> AuditLog {
        AuditLog(logger: Logger(label: "postern.audit") { _ in Handler(capture: self) })
    }

    func takeLastRule() -> String? {
        rules.withLockedValue { list in
            defer { list.removeAll() }
            return list.last
        }
    }

    fileprivate func add(_ rule: String) { rules.withLockedValue { $0.append(rule) } }

    private struct Handler: LogHandler {
        let capture: DecisionCapture
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .info

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            guard event.message.description == "decision", let rule = event.metadata?["rule"] else { return }
            capture.add(rule.description)
        }
    }
}
