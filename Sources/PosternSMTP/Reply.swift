import NIOCore

/// One SMTP reply: a three-digit code, an RFC 3463 enhanced status code and one or more text lines.
public struct SMTPReply: Sendable, Hashable, CustomStringConvertible {
    public var code: Int
    /// `nil` only where RFC 2034 forbids one: the greeting and the EHLO/HELO response.
    public var enhancedStatus: String?
    public var lines: [String]

    public init(_ code: Int, _ enhancedStatus: String?, _ text: String) {
        self.code = code
        self.enhancedStatus = enhancedStatus
        self.lines = [text]
    }

    /// A reply has at least one line: no lines give one empty line (a reply written without any
    /// would not be a reply on the wire).
    public init(code: Int, enhancedStatus: String?, lines: [String]) {
        self.code = code
        self.enhancedStatus = enhancedStatus
        self.lines = lines.isEmpty ? [""] : lines
    }

    public var isPositive: Bool { code < 400 }
    public var isTransient: Bool { (400..<500).contains(code) }
    public var isPermanent: Bool { code >= 500 }

    /// The text as a client sees it on one line, for logs and tests.
    public var description: String {
        let prefix = enhancedStatus.map { "\(code) \($0) " } ?? "\(code) "
        return prefix + lines.joined(separator: " / ")
    }

    /// Writes the reply in wire format: `250-first`, `250 last`, each ending in CRLF.
    public func write(into buffer: inout ByteBuffer) {
        for (index, line) in lines.enumerated() {
            buffer.writeString(String(code))
            buffer.writeInteger(index == lines.count - 1 ? UInt8(ascii: " ") : UInt8(ascii: "-"))
            if let status = enhancedStatus {
                buffer.writeString(status)
                buffer.writeInteger(UInt8(ascii: " "))
            }
            // Text must never carry a line break of its own: a reply is framed by CRLF.
            buffer.writeString(Self.sanitize(line))
            buffer.writeStaticString("\r\n")
        }
    }

    public var wireString: String {
        var buffer = ByteBuffer()
        write(into: &buffer)
        return String(buffer: buffer)
    }

    static func sanitize(_ text: String) -> String {
        guard text.utf8.contains(where: { $0 < 0x20 || $0 == 0x7F }) else { return text }
        return String(text.unicodeScalars.map { $0.value < 0x20 || $0.value == 0x7F ? " " : Character($0) })
    }
}

extension SMTPReply {
    public static let ok = SMTPReply(250, "2.0.0", "Ok")
    public static let bye = SMTPReply(221, "2.0.0", "Bye")
    public static let startData = SMTPReply(354, nil, "End data with <CR><LF>.<CR><LF>")
    public static let readyToStartTLS = SMTPReply(220, "2.0.0", "Ready to start TLS")
    public static let vrfyCannotVerify = SMTPReply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
    public static let syntaxError = SMTPReply(500, "5.5.2", "Syntax error, command unrecognized")
    public static let commandLineTooLong = SMTPReply(500, "5.5.2", "Line too long")
    public static let badSequence = SMTPReply(503, "5.5.1", "Bad sequence of commands")
    public static let mustStartTLS = SMTPReply(530, "5.7.0", "Must issue a STARTTLS command first")
    public static let serviceClosing = SMTPReply(421, "4.3.2", "Service shutting down, closing transmission channel")
    public static let idleTimeout = SMTPReply(421, "4.4.2", "Idle timeout, closing transmission channel")
    public static let tooManyConnections = SMTPReply(421, "4.7.0", "Too many connections from your address, try again later")
    /// A client that keeps sending commands without reading the replies (see `ServerConnectionStateMachine` in the gateway).
    public static let repliesNotRead = SMTPReply(421, "4.7.0", "Replies not being read, closing transmission channel")
    public static let messageTooBig = SMTPReply(552, "5.3.4", "Message size exceeds fixed limit")
    public static let tooManyRecipients = SMTPReply(452, "4.5.3", "Too many recipients")
    public static let bareLineEnding = SMTPReply(550, "5.6.0", "Message contains bare CR or LF; lines must end in CRLF")
    public static let textLineTooLong = SMTPReply(550, "5.6.0", "Message contains a line longer than 998 characters")
    public static let bareLFInCommand = SMTPReply(500, "5.5.2", "Command lines must end in CRLF")
}
