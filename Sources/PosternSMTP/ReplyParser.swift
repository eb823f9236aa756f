import NIOCore

/// Reads SMTP replies (RFC 5321 4.2) off a byte stream: multi-line replies (`250-...` up to `250 ...`),
/// and the RFC 2034 enhanced status code when the server uses them. The one reply reader of the relay,
/// `postern-load` and the tests.
///
/// What an upstream sends is input like any other: lines and replies are bounded, a line that is not a
/// reply line is an error, and the result does not depend on how the bytes are split across reads (fuzzed).
public struct SMTPReplyParser: Sendable {
    public enum ParseError: Error, Sendable, Hashable, CustomStringConvertible {
        /// Not `ddd`, `ddd text` or `ddd-text` with a code from 200 to 599, or a continuation line with
        /// another code than the reply's first line.
        case malformedLine(String)
        /// A line longer than `maxLineLength` octets.
        case lineTooLong
        /// A multi-line reply of more than `maxLines` lines.
        case tooManyLines

        public var description: String {
            switch self {
            case .malformedLine(let line): return "malformed reply: \(line.prefix(80))"
            case .lineTooLong: return "malformed reply: line too long"
            case .tooManyLines: return "malformed reply: too many lines"
            }
        }
    }

    /// Octets in one line, CRLF included. RFC 5321 4.5.3.1.5 says 512; servers write longer texts.
    public let maxLineLength: Int
    /// Lines in one reply. An EHLO reply has a couple of dozen.
    public let maxLines: Int
    private var code: Int?
    private var texts: [String] = []

    public init(maxLineLength: Int = 4096, maxLines: Int = 256) {
        self.maxLineLength = max(8, maxLineLength)
        self.maxLines = max(1, maxLines)
    }

    /// The next complete reply, consuming its lines from `buffer`; nil when more bytes are needed (the lines
    /// of an unfinished reply are consumed and kept). Lines end in LF, a CR before it is dropped.
    public mutating func next(_ buffer: inout ByteBuffer) throws(ParseError) -> SMTPReply? {
        while true {
            let view = buffer.readableBytesView
            guard let lf = view.firstIndex(of: UInt8(ascii: "\n")) else {
                if view.count >= maxLineLength { throw .lineTooLong }
                return nil
            }
            let length = lf - view.startIndex + 1
            guard length <= maxLineLength else { throw .lineTooLong }
            var line = view[view.startIndex..<lf]
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            let reply = try take(Array(line))
            buffer.moveReaderIndex(forwardBy: length)
            if let reply { return reply }
        }
    }

    /// One reply given as text: its lines separated by CRLF or LF, with or without a line end after the last.
    /// For replies written in a configuration or a test (`"450 4.7.230 throttled"`).
    public static func parse(_ text: String) throws(ParseError) -> SMTPReply {
        var parser = SMTPReplyParser()
        var buffer = ByteBuffer(string: text.utf8.last == UInt8(ascii: "\n") ? text : text + "\r\n")  // not `hasSuffix`: "\r\n" is one Character
        guard let reply = try parser.next(&buffer) else { throw .malformedLine(text) }
        guard buffer.readableBytes == 0 else { throw .malformedLine(text) }
        return reply
    }

    /// Takes one line (without its line end); returns the reply when it was the last line of one.
    private mutating func take(_ line: [UInt8]) throws(ParseError) -> SMTPReply? {
        let text = String(decoding: line, as: UTF8.self)
        // Reply-code = %x32-35 %x30-35 %x30-39 (RFC 5321 4.2); the second digit is not checked, servers
        // have used others. A code outside 200-599 would be read as a success or a failure it is not.
        guard line.count >= 3, (0x32...0x35).contains(line[0]), line[1...2].allSatisfy({ (0x30...0x39).contains($0) }),
              line.count == 3 || line[3] == UInt8(ascii: " ") || line[3] == UInt8(ascii: "-") else {
            throw .malformedLine(text)
        }
        let lineCode = Int(line[0] - 0x30) * 100 + Int(line[1] - 0x30) * 10 + Int(line[2] - 0x30)
        if let code, code != lineCode { throw .malformedLine(text) }
        guard texts.count < maxLines else { throw .tooManyLines }
        code = lineCode
        texts.append(line.count > 4 ? String(decoding: line[4...], as: UTF8.self) : "")
        if line.count > 3 && line[3] == UInt8(ascii: "-") { return nil }
        defer {
            code = nil
            texts = []
        }
        return Self.reply(code: lineCode, texts: texts)
    }

    /// A reply from its code and the texts of its lines (after `ddd ` or `ddd-`). An enhanced status code
    /// (RFC 2034, `class.subject.detail` whose class is the code's first digit) leading the first line is
    /// taken out of every line that starts with it.
    public static func reply(code: Int, texts: [String]) -> SMTPReply {
        var status: String?
        if let first = texts.first {
            let candidate = first.prefix { $0 != " " }
            let parts = candidate.split(separator: ".", omittingEmptySubsequences: false)
            if parts.count == 3, parts.allSatisfy({ !$0.isEmpty && $0.count <= 3 && $0.utf8.allSatisfy { $0 >= 0x30 && $0 <= 0x39 } }),
               parts[0] == "\(code / 100)", parts[0].count == 1 {
                status = String(candidate)
            }
        }
        let lines = texts.map { text -> String in
            guard let status, text.hasPrefix(status) else { return text }
            let rest = text.dropFirst(status.count)
            guard rest.isEmpty || rest.first == " " else { return text }
            return String(rest.drop { $0 == " " })
        }
        return SMTPReply(code: code, enhancedStatus: status, lines: lines)
    }
}
