/// An ESMTP parameter on MAIL or RCPT, e.g. `SIZE=1000` or `BODY=8BITMIME`.
public struct MailParameter: Sendable, Hashable {
    public var keyword: String  // upper-cased
    public var value: String?
}

/// One parsed SMTP command (RFC 5321 4.1.1, RFC 3207, RFC 4954).
public enum SMTPCommand: Sendable, Hashable {
    case ehlo(String)
    case helo(String)
    case mail(ReversePath, [MailParameter])
    case rcpt(Mailbox, [MailParameter])
    case data
    case rset
    case noop
    case quit
    case vrfy(String)
    case expn(String)
    case help(String?)
    case startTLS
    case auth(mechanism: String, initialResponse: String?)
    /// A command we know but do not offer (BDAT, TURN, ...).
    case notImplemented(String)
}

/// Why a command line did not parse; each maps to one reply.
public enum CommandError: Error, Sendable, Hashable {
    case unrecognized
    case syntax(String)
    case badParameter(String)
    case address(AddressError)

    public var reply: SMTPReply {
        switch self {
        case .unrecognized: return .syntaxError
        case .syntax(let what): return SMTPReply(501, "5.5.4", "Syntax: \(what)")
        case .badParameter(let keyword): return SMTPReply(555, "5.5.4", "Unsupported parameter \(keyword)")
        case .address(let error): return error.reply
        }
    }
}

public enum CommandParser {
    /// Parses one command line without its CRLF. Verbs are case-insensitive.
    public static func parse(_ line: Substring) throws(CommandError) -> SMTPCommand {
        let verbEnd = line.firstIndex(of: " ") ?? line.endIndex
        let verb = line[..<verbEnd].uppercased()
        let rest = verbEnd < line.endIndex ? line[line.index(after: verbEnd)...] : ""
        switch verb {
        case "EHLO", "HELO":
            let domain = rest.trimmingSpaces()
            guard !domain.isEmpty, !domain.contains(" ") else { throw .syntax("\(verb) hostname") }
            return verb == "EHLO" ? .ehlo(String(domain)) : .helo(String(domain))
        case "MAIL":
            let (path, params) = try splitPath(rest, prefix: "FROM:", usage: "MAIL FROM:<address>")
            let reverse: ReversePath
            do { reverse = try AddressParser.parseReversePath(path) } catch { throw .address(error) }
            return .mail(reverse, try parseParameters(params))
        case "RCPT":
            let (path, params) = try splitPath(rest, prefix: "TO:", usage: "RCPT TO:<address>")
            let mailbox: Mailbox
            if path.caseInsensitiveEquals("<postmaster>") {
                // RFC 5321 4.1.1.3: "Postmaster" without a domain must be accepted.
                mailbox = Mailbox(localPart: "postmaster", domain: .name(""))
            } else {
                do { mailbox = try AddressParser.parsePath(path) } catch { throw .address(error) }
            }
            return .rcpt(mailbox, try parseParameters(params))
        case "DATA":
            guard rest.trimmingSpaces().isEmpty else { throw .syntax("DATA takes no argument") }
            return .data
        case "RSET":
            guard rest.trimmingSpaces().isEmpty else { throw .syntax("RSET takes no argument") }
            return .rset
        case "NOOP": return .noop
        case "QUIT":
            guard rest.trimmingSpaces().isEmpty else { throw .syntax("QUIT takes no argument") }
            return .quit
        case "VRFY": return .vrfy(String(rest))
        case "EXPN": return .expn(String(rest))
        case "HELP":
            let topic = rest.trimmingSpaces()
            return .help(topic.isEmpty ? nil : String(topic))
        case "STARTTLS":
            guard rest.trimmingSpaces().isEmpty else { throw .syntax("STARTTLS takes no argument") }
            return .startTLS
        case "AUTH":
            let parts = rest.split(separator: " ", omittingEmptySubsequences: true)
            guard (1...2).contains(parts.count) else { throw .syntax("AUTH mechanism [initial-response]") }
            return .auth(mechanism: parts[0].uppercased(), initialResponse: parts.count == 2 ? String(parts[1]) : nil)
        case "BDAT", "TURN", "ETRN", "ATRN", "SEND", "SOML", "SAML":
            return .notImplemented(verb)
        default:
            throw .unrecognized
        }
    }

    /// Splits `FROM:<path> PARAMS` allowing one optional space after the colon, as many clients send.
    static func splitPath(_ rest: Substring, prefix: String, usage: String) throws(CommandError) -> (Substring, Substring) {
        guard rest.count >= prefix.count, rest.prefix(prefix.count).uppercased() == prefix else { throw .syntax(usage) }
        var tail = rest.dropFirst(prefix.count)
        if tail.first == " " { tail = tail.dropFirst() }
        guard tail.first == "<" else { throw .address(.missingAngleBrackets) }
        guard let close = tail.firstIndex(of: ">") else { throw .address(.missingAngleBrackets) }
        // A quoted local part may contain '>'; find the real close outside quotes.
        var inQuotes = false
        var escaped = false
        var realClose: Substring.Index?
        var i = tail.startIndex
        while i < tail.endIndex {
            let ch = tail[i]
            if escaped { escaped = false } else if ch == "\\" && inQuotes { escaped = true } else if ch == "\"" { inQuotes.toggle() } else if ch == ">" && !inQuotes { realClose = i; break }
            i = tail.index(after: i)
        }
        let end = realClose ?? close
        let path = tail[...end]
        let params = tail[tail.index(after: end)...]
        guard params.isEmpty || params.first == " " else { throw .syntax(usage) }
        return (path, params)
    }

    static func parseParameters(_ text: Substring) throws(CommandError) -> [MailParameter] {
        var result: [MailParameter] = []
        for token in text.split(separator: " ", omittingEmptySubsequences: true) {
            let pieces = token.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let keyword = pieces[0].uppercased()
            guard !keyword.isEmpty, keyword.utf8.allSatisfy({ AddressParser.isLetDig($0) || $0 == UInt8(ascii: "-") }) else {
                throw .syntax("bad parameter \(token)")
            }
            result.append(MailParameter(keyword: keyword, value: pieces.count == 2 ? String(pieces[1]) : nil))
        }
        return result
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var s = self
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return s
    }

    func caseInsensitiveEquals(_ other: String) -> Bool {
        self.count == other.count && self.lowercased() == other.lowercased()
    }
}
