/// An RFC 5321 mailbox (`local-part@domain`), as parsed from a path.
public struct Mailbox: Sendable, Hashable, CustomStringConvertible {
    public enum Domain: Sendable, Hashable {
        /// A host name; stored as sent (case preserved), compared case-insensitively.
        case name(String)
        /// An address literal without brackets, e.g. `127.0.0.1` or `IPv6:::1`.
        case literal(String)
    }

    /// The local part as it appears on the wire: a dot-string, or a quoted string with its quotes.
    public var localPart: String
    public var domain: Domain
    /// True when the path carried an RFC 5321 source route (`<@a,@b:user@c>`), which we parse and ignore
    /// as RFC 5321 4.1.1.3 says, but which policy may treat as a relay attempt.
    public var hadSourceRoute: Bool

    public init(localPart: String, domain: Domain, hadSourceRoute: Bool = false) {
        self.localPart = localPart
        self.domain = domain
        self.hadSourceRoute = hadSourceRoute
    }

    public var isQuotedLocalPart: Bool { localPart.hasPrefix("\"") }

    /// The local part with quoting removed (`"a b"` → `a b`).
    public var unquotedLocalPart: String {
        guard isQuotedLocalPart, localPart.count >= 2 else { return localPart }
        var out = ""
        var escaped = false
        for ch in localPart.dropFirst().dropLast() {
            if escaped { out.append(ch); escaped = false } else if ch == "\\" { escaped = true } else { out.append(ch) }
        }
        return out
    }

    /// Domain in lower case, for comparisons; address literals in brackets.
    public var normalizedDomain: String {
        switch domain {
        case .name(let name): return name.lowercased()
        case .literal(let literal): return "[\(literal.lowercased())]"
        }
    }

    /// `local@domain` with the domain lower-cased: local parts are case-sensitive (RFC 5321 2.4).
    public var normalized: String { "\(localPart)@\(normalizedDomain)" }

    public var description: String {
        switch domain {
        case .name(let name): return "\(localPart)@\(name)"
        case .literal(let literal): return "\(localPart)@[\(literal)]"
        }
    }
}

/// The reverse-path of MAIL FROM: a mailbox or the null path `<>`.
public enum ReversePath: Sendable, Hashable, CustomStringConvertible {
    case null
    case mailbox(Mailbox)

    public var mailbox: Mailbox? {
        if case .mailbox(let m) = self { return m }
        return nil
    }

    public var description: String {
        switch self {
        case .null: return "<>"
        case .mailbox(let m): return "<\(m)>"
        }
    }
}

/// Why a path did not parse; each maps to one reply.
public enum AddressError: Error, Sendable, Hashable {
    case missingAngleBrackets
    case syntax
    case localPartTooLong
    case domainTooLong
    case pathTooLong
    case nonASCII

    public var reply: SMTPReply {
        switch self {
        case .missingAngleBrackets, .syntax:
            return SMTPReply(501, "5.1.3", "Bad address syntax")
        case .localPartTooLong:
            return SMTPReply(501, "5.1.3", "Local part longer than 64 octets")
        case .domainTooLong:
            return SMTPReply(501, "5.1.3", "Domain longer than 255 octets")
        case .pathTooLong:
            return SMTPReply(501, "5.1.3", "Path longer than 256 octets")
        case .nonASCII:
            return SMTPReply(553, "5.6.7", "Non-ASCII addresses are not supported (no SMTPUTF8)")
        }
    }
}

/// RFC 5321 4.1.2 path grammar, strict: `<`, optional source route, mailbox, `>`.
public enum AddressParser {
    public static let maxLocalPart = 64
    public static let maxDomain = 255
    public static let maxPath = 256

    /// Parses `<...>` (the brackets included). `allowNull` permits `<>` (MAIL FROM only).
    public static func parseReversePath(_ text: Substring) throws(AddressError) -> ReversePath {
        if text == "<>" { return .null }
        return .mailbox(try parsePath(text))
    }

    /// Parses a forward path `<[@route:]local@domain>`.
    public static func parsePath(_ text: Substring) throws(AddressError) -> Mailbox {
        let bytes = Array(text.utf8)
        guard bytes.allSatisfy({ $0 < 0x80 }) else { throw .nonASCII }
        guard bytes.count >= 2, bytes.first == UInt8(ascii: "<"), bytes.last == UInt8(ascii: ">") else {
            throw .missingAngleBrackets
        }
        guard bytes.count - 2 <= maxPath else { throw .pathTooLong }
        var index = 1
        let end = bytes.count - 1
        var hadRoute = false
        if bytes[index] == UInt8(ascii: "@") {
            // A-d-l = At-domain *( "," At-domain ) ":"
            hadRoute = true
            while true {
                guard index < end, bytes[index] == UInt8(ascii: "@") else { throw .syntax }
                index += 1
                let start = index
                while index < end, bytes[index] != UInt8(ascii: ","), bytes[index] != UInt8(ascii: ":") { index += 1 }
                guard index < end, isDomain(bytes[start..<index]) else { throw .syntax }
                if bytes[index] == UInt8(ascii: ":") { index += 1; break }
                index += 1
            }
        }
        // Local part.
        let localStart = index
        if index < end, bytes[index] == UInt8(ascii: "\"") {
            index += 1
            var closed = false
            while index < end {
                let b = bytes[index]
                if b == UInt8(ascii: "\\") {
                    // quoted-pairSMTP = %d92 %d32-126
                    guard index + 1 < end, (32...126).contains(bytes[index + 1]) else { throw .syntax }
                    index += 2
                    continue
                }
                if b == UInt8(ascii: "\"") { closed = true; index += 1; break }
                // qtextSMTP = %d32-33 / %d35-91 / %d93-126
                guard (32...126).contains(b) else { throw .syntax }
                index += 1
            }
            guard closed else { throw .syntax }
        } else {
            // Dot-string = Atom *("." Atom)
            var atomLength = 0
            while index < end, bytes[index] != UInt8(ascii: "@") {
                let b = bytes[index]
                if b == UInt8(ascii: ".") {
                    guard atomLength > 0 else { throw .syntax }
                    atomLength = 0
                } else {
                    guard isAtext(b) else { throw .syntax }
                    atomLength += 1
                }
                index += 1
            }
            guard atomLength > 0 else { throw .syntax }
        }
        let localEnd = index
        guard localEnd - localStart <= maxLocalPart else { throw .localPartTooLong }
        guard index < end, bytes[index] == UInt8(ascii: "@") else { throw .syntax }
        index += 1
        let domainBytes = bytes[index..<end]
        guard !domainBytes.isEmpty else { throw .syntax }
        guard domainBytes.count <= maxDomain else { throw .domainTooLong }
        let localPart = String(decoding: bytes[localStart..<localEnd], as: UTF8.self)
        if domainBytes.first == UInt8(ascii: "[") {
            guard domainBytes.last == UInt8(ascii: "]"), domainBytes.count > 2 else { throw .syntax }
            let inner = domainBytes.dropFirst().dropLast()
            guard isAddressLiteral(inner) else { throw .syntax }
            return Mailbox(localPart: localPart, domain: .literal(String(decoding: inner, as: UTF8.self)), hadSourceRoute: hadRoute)
        }
        guard isDomain(domainBytes) else { throw .syntax }
        return Mailbox(localPart: localPart, domain: .name(String(decoding: domainBytes, as: UTF8.self)), hadSourceRoute: hadRoute)
    }

    /// Parses a bare `local@domain` (no brackets), e.g. from a config file.
    public static func parseMailbox(_ text: String) throws(AddressError) -> Mailbox {
        try parsePath(Substring("<\(text)>"))
    }

    static func isAtext(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-/=?^_`{|}~".utf8.contains(b)
        }
    }

    static func isLetDig(_ b: UInt8) -> Bool {
        (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b)
            || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b)
    }

    /// Domain = sub-domain *("." sub-domain); sub-domain = Let-dig [Ldh-str]. No trailing dot.
    public static func isDomain<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        guard !bytes.isEmpty, bytes.count <= maxDomain else { return false }
        var labelLength = 0
        var previous: UInt8 = 0
        for b in bytes {
            if b == UInt8(ascii: ".") {
                guard labelLength > 0, previous != UInt8(ascii: "-") else { return false }
                labelLength = 0
            } else if isLetDig(b) {
                labelLength += 1
            } else if b == UInt8(ascii: "-") {
                guard labelLength > 0 else { return false }
                labelLength += 1
            } else {
                return false
            }
            guard labelLength <= 63 else { return false }
            previous = b
        }
        return labelLength > 0 && previous != UInt8(ascii: "-")
    }

    static func isAddressLiteral<C: Collection>(_ bytes: C) -> Bool where C.Element == UInt8 {
        let text = String(decoding: bytes, as: UTF8.self)
        if text.lowercased().hasPrefix("ipv6:") {
            let rest = text.dropFirst(5)
            return !rest.isEmpty && rest.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." }
        }
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else {
            // General-address-literal = Standardized-tag ":" 1*dcontent; dcontent = %d33-90 / %d94-126
            // (no space, control character, CR or LF: they would travel on into headers and the relay).
            guard let colon = text.firstIndex(of: ":") else { return false }
            let tag = text[..<colon]
            let content = text[text.index(after: colon)...]
            return !tag.isEmpty && isDomain(tag.utf8) && !content.isEmpty
                && content.utf8.allSatisfy { (33...90).contains($0) || (94...126).contains($0) }
        }
        return parts.allSatisfy { part in
            guard (1...3).contains(part.count), let v = Int(part) else { return false }
            return v <= 255
        }
    }
}
