import Foundation
import Logging
import NIOCore
import PosternCore
import PosternListener
import PosternSMTP
import PosternSession

/// The page's notification mail: to the admins when a request arrives, to the request's contact when it is
/// approved or rejected. It goes through the gateway's own delivery path (`DeliveryTarget`: the durable spool
/// and the relay, or the outbox), as the sunset reminders do, with the null sender so that nothing bounces back
/// to the gateway. A mail that cannot be queued does not undo the action; the page says so.
public struct RegistrationNotifier: Sendable {
    /// What became of one notification.
    public enum Sent: Sendable, Equatable {
        case queued(id: String, to: [String])
        case notQueued(String)
    }

    let target: any DeliveryTarget
    /// The gateway's host name: the From address's domain and the Message-ID's right side.
    let hostname: String
    let configuration: RegistrationConfiguration
    let audit: AuditLog
    let logger: Logger
    let now: @Sendable () -> Date

    public init(target: any DeliveryTarget, hostname: String, configuration: RegistrationConfiguration, audit: AuditLog, logger: Logger,
                now: @escaping @Sendable () -> Date = { Date() }) {
        self.target = target
        self.hostname = hostname.isEmpty ? "localhost" : hostname
        self.configuration = configuration
        self.audit = audit
        self.logger = logger
        self.now = now
    }

    var pageURL: String { configuration.publicURL ?? "https://\(hostname):\(configuration.port)/" }

    /// To the admins (`notify-admins`, else `contact`): a new request waits for them.
    public func requestArrived(_ r: RegistrationRequest, departmentName: String) async -> Sent {
        var body = ["\(r.requestedBy) asks to register a legacy device for \(departmentName) (\(r.department)):", ""]
        body += Self.details(r)
        body += ["", "Approve or reject it on the registration page:", "\(pageURL)requests/\(r.id)/approve", "\(pageURL)requests/\(r.id)/reject"]
        return await send(kind: "request", request: r, to: configuration.adminRecipients,
                          subject: "Device registration request: \(r.deviceID) (\(departmentName))", body: body)
    }

    /// To the request's contact: approved (from when and until when the gateway accepts the device) or
    /// rejected, with the reason.
    public func requestDecided(_ r: RegistrationRequest) async -> Sent {
        var body: [String]
        let subject: String
        switch r.status {
        case .approved:
            subject = "Device \(r.deviceID): registration approved"
            body = ["\(r.decidedBy ?? "A gateway admin") approved the registration of device \(r.deviceID).",
                    "The mail gateway accepts its mail from \(r.address) with the sender \(r.sender), to internal",
                    "recipients only, until \(r.sunset) (the last day). You will be reminded before that date.", ""]
        case .rejected:
            subject = "Device \(r.deviceID): registration rejected"
            body = ["\(r.decidedBy ?? "A gateway admin") rejected the request to register device \(r.deviceID).", "", "Reason:"]
            body += Self.wrap(r.reason ?? "", indent: "  ")
            body += [""]
        case .pending:
            return .notQueued("the request is still pending")
        }
        body += ["The request:", ""] + Self.details(r)
        body += ["", "All decided requests: \(pageURL)history"]
        return await send(kind: r.status.rawValue, request: r, to: [r.contact], subject: subject, body: body)
    }

    static func details(_ r: RegistrationRequest) -> [String] {
        var lines: [String] = []
        for (label, value) in [("Device", r.deviceID), ("Model", r.model), ("Location", r.location), ("IP address", r.address),
                               ("Sends as", r.sender), ("Contact", r.contact), ("Last day", r.sunset), ("Requested by", r.requestedBy)] {
            lines += wrap(value, indent: "  " + label.padding(toLength: 14, withPad: " ", startingAt: 0), continuation: String(repeating: " ", count: 16))
        }
        lines.append("  Justification:")
        lines += wrap(r.justification, indent: "    ")
        return lines
    }

    func send(kind: String, request r: RegistrationRequest, to addresses: [String], subject: String, body: [String]) async -> Sent {
        let recipients = addresses.compactMap { try? AddressParser.parseMailbox($0) }
        var fields: Logger.Metadata = ["kind": "\(kind)", "request": "\(r.id)", "device": "\(r.deviceID)",
                                       "recipients": "\(recipients.map(\.description).joined(separator: ","))"]
        guard !recipients.isEmpty else {
            fields["outcome"] = "not_queued"
            audit.logger.info("registration_mail", metadata: fields)
            return .notQueued("no valid recipient address")
        }
        let id = target.makeQueueID()
        let text = Self.message(from: "\(configuration.universityName) device registration", hostname: hostname, to: recipients.map(\.description),
                                replyTo: configuration.contact, subject: subject, body: body, date: now(), queueID: id)
        let facts = ConnectionFacts(listenerName: "registration-page", kind: .device, clientAddress: "127.0.0.1", sessionID: "registration")
        let envelope = Envelope(sender: .null, recipients: recipients, bodyType: text.utf8.allSatisfy { $0 < 0x80 } ? nil : "8BITMIME", facts: facts)
        fields["queue_id"] = "\(id)"
        switch await target.accept(queueID: id, envelope: envelope, message: ByteBuffer(string: text)) {
        case .queued:
            fields["outcome"] = "queued"
            audit.logger.info("registration_mail", metadata: fields)
            return .queued(id: id, to: recipients.map(\.description))
        case .temporaryFailure(let reply):
            fields["outcome"] = "not_queued"
            fields["reply"] = "\(reply)"
            audit.logger.info("registration_mail", metadata: fields)
            logger.warning("registration mail not queued", metadata: fields)
            return .notQueued("\(reply)")
        }
    }

    // MARK: The message

    /// A plain-text UTF-8 message with CRLF line ends, every line within 998 octets (RFC 5322 2.1.1).
    static func message(from name: String, hostname: String, to: [String], replyTo: String, subject: String, body: [String],
                        date: Date, queueID: String) -> String {
        let headers = [
            "From: \(phrase(name)) <postmaster@\(hostname)>",
            "To: " + to.map { "<\($0)>" }.joined(separator: ",\r\n "),
            "Reply-To: <\(replyTo)>",
            "Subject: \(headerText(subject))",
            "Date: \(MessageDate.rfc5322(date))",
            "Message-ID: <registration-\(queueID)@\(hostname)>",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "Content-Transfer-Encoding: 8bit",
        ]
        // The body's lines are short but for what was typed into them, which `wrap` already broke; this is the bound.
        return (headers + [""] + body.flatMap { $0.utf8.count > 900 ? wrap($0, indent: "") : [$0] } + [""]).joined(separator: "\r\n")
    }

    /// Header text without controls: ASCII as it is, anything else as RFC 2047 encoded words (each within 75
    /// characters, folded onto lines of their own).
    static func headerText(_ text: String) -> String {
        let clean = String(String.UnicodeScalarView(text.unicodeScalars.prefix(300).map {
            $0.value < 0x20 || (0x7F...0x9F).contains($0.value) || $0 == "\u{2028}" || $0 == "\u{2029}" ? " " : $0
        }))
        if clean.utf8.allSatisfy({ $0 < 0x80 }) { return clean }
        // 45 octets are 60 base64 characters: `=?utf-8?B?` + 60 + `?=` is 72.
        var words: [String] = [], chunk: [UInt8] = []
        for character in clean {
            let bytes = Array(character.utf8)
            if chunk.count + bytes.count > 45, !chunk.isEmpty {
                words.append("=?utf-8?B?\(Data(chunk).base64EncodedString())?=")
                chunk = []
            }
            chunk += bytes
        }
        if !chunk.isEmpty { words.append("=?utf-8?B?\(Data(chunk).base64EncodedString())?=") }
        return words.joined(separator: "\r\n ")
    }

    /// A display name: a quoted string when it is ASCII, else encoded words.
    static func phrase(_ name: String) -> String {
        let text = headerText(name)
        guard !text.hasPrefix("=?") else { return text }
        return "\"" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
    }

    /// Text as lines of at most `width` characters (76 by default), broken at spaces where it can; line breaks in
    /// the text are kept. The first line starts with `indent`, the others with `continuation` (default: `indent`).
    static func wrap(_ text: String, indent: String, continuation: String? = nil, width: Int = 76) -> [String] {
        let next = continuation ?? indent
        var lines: [String] = []
        for paragraph in text.replacingOccurrences(of: "\r\n", with: "\n").split(separator: "\n", omittingEmptySubsequences: false)
            .map({ $0.replacingOccurrences(of: "\r", with: " ") }) {
            var line = lines.isEmpty ? indent : next
            var lineHasWord = false
            for word in paragraph.split(separator: " ", omittingEmptySubsequences: true) {
                var word = Substring(word)
                if lineHasWord, line.count + 1 + word.count > width {
                    lines.append(line)
                    line = next
                    lineHasWord = false
                }
                // A word longer than a line is cut.
                while line.count + (lineHasWord ? 1 : 0) + word.count > width, width - line.count - (lineHasWord ? 1 : 0) > 0 {
                    let room = width - line.count - (lineHasWord ? 1 : 0)
                    line += (lineHasWord ? " " : "") + word.prefix(room)
                    word = word.dropFirst(room)
                    lines.append(line)
                    line = next
                    lineHasWord = false
                }
                line += (lineHasWord ? " " : "") + word
                lineHasWord = true
            }
            lines.append(line)
        }
        return lines
    }
}
