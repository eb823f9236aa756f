import Foundation
import NIOCore

/// The originator fields of a message (RFC 5322 3.6.2 `From:` and `Sender:`), read from its header section
/// for the header From policy.
///
/// What recipients see as the author is the header From, and what DMARC and Exchange judge; the envelope
/// sender is checked at MAIL. So the parse is strict: anything a mail client might read differently from us
/// (a line that is neither a field nor a continuation, an unbalanced comment or quote, text after an address,
/// a source route) is an error, and the policy refuses the message rather than guess.
public struct OriginatorFields: Sendable, Hashable {
    public enum FieldName: String, Sendable, Hashable {
        case from = "From"
        case sender = "Sender"
    }

    /// One address of a `From:` or `Sender:` field.
    public struct Address: Sendable, Hashable, CustomStringConvertible {
        public var field: FieldName
        /// The address as an RFC 5321 mailbox, so that policy judges it exactly as it judges MAIL FROM.
        /// A quoted local part whose content needs no quotes is unquoted (`"alice"@x` is `alice@x`).
        public var mailbox: Mailbox
        /// The display name, with quoted pairs resolved and RFC 2047 encoded words decoded; nil without one.
        public var displayName: String?
        /// Addresses the display name shows (`"president@example.edu" <alice@example.edu>`,
        /// `"President <president@example.edu>" <alice@example.edu>`): clients that show only names show them
        /// as the author.
        public var displayNameAddresses: [Mailbox]

        public var description: String { "\(field.rawValue): \(mailbox)" }
    }

    /// Every address of every `From:` and `Sender:` field, in the order of the fields.
    public var addresses: [Address]
    /// How many `From:` fields the header section has.
    public var fromFields: Int
    /// How many `Sender:` fields the header section has.
    public var senderFields: Int
}

/// Why the originator fields could not be read; each is a refusal under the header From policy.
public enum OriginatorFieldsError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The header section does not end within the limit: `From:` fields could lie beyond what was read.
    case headerSectionTooLong(limit: Int)
    /// A line of the header section (1-based) that is neither a field nor a continuation line.
    case malformedLine(Int)
    /// A `From:` or `Sender:` field whose value is not a list of addresses; the reason says where it broke.
    case malformedField(OriginatorFields.FieldName, String)
    /// A `From:` or `Sender:` field without any address (empty, or only an empty group).
    case noAddress(OriginatorFields.FieldName)
    /// More addresses in `From:` and `Sender:` together than anyone needs.
    case tooManyAddresses(limit: Int)
    /// An address that cannot be an SMTP mailbox (non-ASCII, over the RFC 5321 lengths, a bad domain).
    case unusableAddress(OriginatorFields.FieldName)

    /// Text for a reply: it never quotes the message, only says what is wrong where.
    public var description: String {
        switch self {
        case .headerSectionTooLong(let limit): return "header section longer than \(limit / 1024) KiB"
        case .malformedLine(let line): return "header line \(line) is neither a field nor a continuation"
        case .malformedField(let field, let reason): return "\(field.rawValue): header cannot be parsed (\(reason))"
        case .noAddress(let field): return "\(field.rawValue): header has no address"
        case .tooManyAddresses(let limit): return "more than \(limit) addresses in From: and Sender:"
        case .unusableAddress(let field): return "\(field.rawValue): header has an address that is not a valid SMTP mailbox"
        }
    }

    /// The field the problem is in, when it is in one.
    public var field: OriginatorFields.FieldName? {
        switch self {
        case .malformedField(let f, _), .noAddress(let f), .unusableAddress(let f): return f
        case .headerSectionTooLong, .malformedLine, .tooManyAddresses: return nil
        }
    }
}

/// Reads `From:` and `Sender:` out of a message (RFC 5322 with its obsolete syntax, RFC 6854 groups,
/// RFC 2047 encoded words in display names). Pure; memory and time are bounded by the limits.
public enum OriginatorParser {
    /// The longest header section read. Beyond it the message is refused: a `From:` could hide past it.
    public static let maxHeaderSection = 256 * 1024
    /// The most addresses `From:` and `Sender:` may hold together.
    public static let maxAddresses = 100

    public static func parse(_ message: ByteBuffer, maxHeaderSection: Int = maxHeaderSection) -> Result<OriginatorFields, OriginatorFieldsError> {
        message.withUnsafeReadableBytes { parse(bytes: $0, maxHeaderSection: maxHeaderSection) }
    }

    public static func parse(_ message: [UInt8], maxHeaderSection: Int = maxHeaderSection) -> Result<OriginatorFields, OriginatorFieldsError> {
        message.withUnsafeBytes { parse(bytes: $0, maxHeaderSection: maxHeaderSection) }
    }

    static func parse(bytes: UnsafeRawBufferPointer, maxHeaderSection: Int) -> Result<OriginatorFields, OriginatorFieldsError> {
        var result = OriginatorFields(addresses: [], fromFields: 0, senderFields: 0)
        // The current field: its name (when it is an originator field) and its unfolded value.
        var current: (name: OriginatorFields.FieldName?, value: [UInt8])?
        func finishField() -> OriginatorFieldsError? {
            defer { current = nil }
            guard let field = current, let name = field.name else { return nil }
            switch name {
            case .from: result.fromFields += 1
            case .sender: result.senderFields += 1
            }
            switch AddressListParser.parse(field.value, field: name) {
            case .failure(let error): return error
            case .success(let addresses):
                if addresses.isEmpty { return .noAddress(name) }
                result.addresses += addresses
                if result.addresses.count > maxAddresses { return .tooManyAddresses(limit: maxAddresses) }
                return nil
            }
        }

        let count = bytes.count
        var lineStart = 0
        var lineNumber = 0
        // The header section ends at the first empty line, or with the message.
        while lineStart < count {
            lineNumber += 1
            if bytes[lineStart] == 0x0D, lineStart + 1 < count, bytes[lineStart + 1] == 0x0A { break }  // the empty line
            guard lineStart < maxHeaderSection else { return .failure(.headerSectionTooLong(limit: maxHeaderSection)) }
            var end = lineStart
            // Never look further than the limit for a line's end: the section must end within it.
            let scanLimit = min(count, maxHeaderSection)
            while end < scanLimit, bytes[end] != 0x0D, bytes[end] != 0x0A { end += 1 }
            if end == scanLimit, scanLimit < count { return .failure(.headerSectionTooLong(limit: maxHeaderSection)) }
            let lineEnd: Int
            if end == count {
                lineEnd = count
            } else if bytes[end] == 0x0D, end + 1 < count, bytes[end + 1] == 0x0A {
                lineEnd = end + 2
            } else {
                // The DATA framer refuses bare CR and LF (or makes them CRLF); a parser that is handed one anyway
                // cannot know where a mail client would end the line.
                return .failure(.malformedLine(lineNumber))
            }
            let first = bytes[lineStart]
            if first == 0x20 || first == 0x09 {
                // A continuation line (RFC 5322 2.2.3): unfolding removes only the CRLF.
                guard current != nil else { return .failure(.malformedLine(lineNumber)) }
                if current?.name != nil { current?.value.append(contentsOf: bytes[lineStart..<end]) }
            } else {
                if let error = finishField() { return .failure(error) }
                // field-name = 1*ftext (%d33-57 / %d59-126); the obsolete syntax allows WSP before the colon.
                var i = lineStart
                while i < end, bytes[i] >= 33, bytes[i] <= 126, bytes[i] != UInt8(ascii: ":") { i += 1 }
                let nameEnd = i
                while i < end, bytes[i] == 0x20 || bytes[i] == 0x09 { i += 1 }
                guard nameEnd > lineStart, i < end, bytes[i] == UInt8(ascii: ":") else { return .failure(.malformedLine(lineNumber)) }
                let name = originatorName(UnsafeRawBufferPointer(rebasing: bytes[lineStart..<nameEnd]))
                current = (name, name == nil ? [] : Array(bytes[(i + 1)..<end]))
            }
            lineStart = lineEnd
        }
        if let error = finishField() { return .failure(error) }
        return .success(result)
    }

    /// `From` or `Sender` in any letter case; nil for every other field.
    static func originatorName(_ name: UnsafeRawBufferPointer) -> OriginatorFields.FieldName? {
        func equals(_ word: StaticString) -> Bool {
            guard name.count == word.utf8CodeUnitCount else { return false }
            let w = UnsafeRawBufferPointer(start: word.utf8Start, count: word.utf8CodeUnitCount)
            return zip(name, w).allSatisfy { $0 | 0x20 == $1 }
        }
        if equals("from") { return .from }
        if equals("sender") { return .sender }
        return nil
    }
}

/// RFC 5322 3.4 `address-list` over one unfolded field value, with the obsolete syntax's empty list elements.
enum AddressListParser {
    enum Token: Equatable {
        /// A run of atext (and of octets over 127, which RFC 6532 allows in display names).
        case atom([UInt8])
        /// A quoted string's content, quoted pairs resolved.
        case quoted([UInt8])
        /// `[...]` with folding white space removed.
        case domainLiteral([UInt8])
        /// One of `< > : ; @ , .`
        case special(UInt8)

        var isWord: Bool {
            switch self {
            case .atom, .quoted: return true
            default: return false
            }
        }
    }

    struct Failure: Error {
        var reason: String
        init(_ reason: String) { self.reason = reason }
    }

    static func parse(_ value: [UInt8], field: OriginatorFields.FieldName) -> Result<[OriginatorFields.Address], OriginatorFieldsError> {
        let tokens: [Token], spaced: [Bool]
        do {
            (tokens, spaced) = try tokenize(value)
        } catch {
            return .failure(.malformedField(field, error.reason))
        }
        var addresses: [OriginatorFields.Address] = []
        var i = 0
        var inGroup = false
        // Whether the last element ended and a separator must come next.
        var needSeparator = false
        while i < tokens.count {
            switch tokens[i] {
            case .special(UInt8(ascii: ",")):
                needSeparator = false
                i += 1
                continue
            case .special(UInt8(ascii: ";")) where inGroup:
                inGroup = false
                needSeparator = true
                i += 1
                continue
            default:
                break
            }
            if needSeparator { return .failure(.malformedField(field, "text after an address")) }
            // A phrase: words and (obsolete) dots, up to what says what it was.
            let start = i
            while i < tokens.count, tokens[i].isWord || tokens[i] == .special(UInt8(ascii: ".")) { i += 1 }
            let words = Array(tokens[start..<i])
            let display = displayName(tokens[start..<i], spaced[start..<i])
            let next = i < tokens.count ? tokens[i] : nil
            switch next {
            case .special(UInt8(ascii: "<")):
                // name-addr: [display-name] angle-addr
                if let first = words.first, !first.isWord { return .failure(.malformedField(field, "display name starts with a dot")) }
                i += 1
                if i < tokens.count, tokens[i] == .special(UInt8(ascii: "@")) {
                    // obs-route: mail clients differ on whose address a routed one is.
                    return .failure(.malformedField(field, "source route"))
                }
                let localStart = i
                while i < tokens.count, tokens[i].isWord || tokens[i] == .special(UInt8(ascii: ".")) { i += 1 }
                guard i < tokens.count, tokens[i] == .special(UInt8(ascii: "@")) else {
                    return .failure(.malformedField(field, "no addr-spec inside <>"))
                }
                let local = Array(tokens[localStart..<i])
                i += 1
                let domain: [UInt8]
                switch parseDomain(tokens, &i) {
                case .failure(let failure): return .failure(.malformedField(field, failure.reason))
                case .success(let d): domain = d
                }
                guard i < tokens.count, tokens[i] == .special(UInt8(ascii: ">")) else {
                    return .failure(.malformedField(field, "no > after the address"))
                }
                i += 1
                switch address(local: local, domain: domain, display: display, field: field) {
                case .failure(let error): return .failure(error)
                case .success(let a): addresses.append(a)
                }
                needSeparator = true
            case .special(UInt8(ascii: ":")):
                // group (RFC 6854 allows one in From: and Sender:): its members are judged like any address.
                guard !inGroup else { return .failure(.malformedField(field, "group inside a group")) }
                guard let first = words.first, first.isWord else { return .failure(.malformedField(field, "group without a name")) }
                inGroup = true
                needSeparator = false
                i += 1
            case .special(UInt8(ascii: "@")):
                // addr-spec: the words were the local part.
                guard !words.isEmpty else { return .failure(.malformedField(field, "address without a local part")) }
                i += 1
                let domain: [UInt8]
                switch parseDomain(tokens, &i) {
                case .failure(let failure): return .failure(.malformedField(field, failure.reason))
                case .success(let d): domain = d
                }
                switch address(local: words, domain: domain, display: nil, field: field) {
                case .failure(let error): return .failure(error)
                case .success(let a): addresses.append(a)
                }
                needSeparator = true
            case nil:
                return .failure(.malformedField(field, words.isEmpty ? "unexpected end" : "a name without an address"))
            default:
                return .failure(.malformedField(field, "unexpected character"))
            }
            if addresses.count > OriginatorParser.maxAddresses { return .failure(.tooManyAddresses(limit: OriginatorParser.maxAddresses)) }
        }
        if inGroup { return .failure(.malformedField(field, "group without its closing ;")) }
        return .success(addresses)
    }

    /// domain = dot-atom / domain-literal / obs-domain (atom *("." atom)).
    static func parseDomain(_ tokens: [Token], _ i: inout Int) -> Result<[UInt8], Failure> {
        guard i < tokens.count else { return .failure(Failure("address without a domain")) }
        if case .domainLiteral(let literal) = tokens[i] {
            i += 1
            return .success(literal)
        }
        var domain: [UInt8] = []
        var expectAtom = true
        while i < tokens.count {
            switch tokens[i] {
            case .atom(let atom) where expectAtom:
                domain += atom
                expectAtom = false
            case .special(UInt8(ascii: ".")) where !expectAtom:
                domain.append(UInt8(ascii: "."))
                expectAtom = true
            default:
                guard !expectAtom, !domain.isEmpty else { return .failure(Failure("bad domain")) }
                return .success(domain)
            }
            i += 1
        }
        guard !expectAtom else { return .failure(Failure("bad domain")) }
        return .success(domain)
    }

    /// The address as an RFC 5321 mailbox, through the same parser MAIL FROM goes through.
    static func address(local: [Token], domain: [UInt8], display: String?, field: OriginatorFields.FieldName)
        -> Result<OriginatorFields.Address, OriginatorFieldsError>
    {
        // local-part = word *("." word): words and dots alternate, starting and ending with a word.
        var content: [UInt8] = []
        var quoted = false
        for (n, token) in local.enumerated() {
            switch token {
            case .atom(let bytes) where n % 2 == 0: content += bytes
            case .quoted(let bytes) where n % 2 == 0:
                content += bytes
                quoted = true
            case .special(UInt8(ascii: ".")) where n % 2 == 1: content.append(UInt8(ascii: "."))
            default: return .failure(.malformedField(field, "bad local part"))
            }
        }
        guard local.count % 2 == 1 else { return .failure(.malformedField(field, "bad local part")) }
        var localPart = content
        if quoted && !isDotAtom(content) {
            // Needs its quotes in SMTP too; escape what qtextSMTP does not allow bare.
            localPart = [UInt8(ascii: "\"")]
            for b in content {
                if b == UInt8(ascii: "\"") || b == UInt8(ascii: "\\") { localPart.append(UInt8(ascii: "\\")) }
                localPart.append(b)
            }
            localPart.append(UInt8(ascii: "\""))
        }
        let path = [UInt8(ascii: "<")] + localPart + [UInt8(ascii: "@")] + domain + [UInt8(ascii: ">")]
        let mailbox: Mailbox
        do {
            mailbox = try AddressParser.parsePath(Substring(String(decoding: path, as: UTF8.self)))
        } catch {
            return .failure(.unusableAddress(field))
        }
        // Invalid UTF-8 would have become U+FFFD above, which is not ASCII: parsePath has refused it.
        return .success(OriginatorFields.Address(field: field, mailbox: mailbox, displayName: display,
                                                 displayNameAddresses: display.map(addressesInDisplayName) ?? []))
    }

    static func isDotAtom(_ bytes: [UInt8]) -> Bool {
        guard let first = bytes.first, let last = bytes.last, first != UInt8(ascii: "."), last != UInt8(ascii: ".") else { return false }
        var previousDot = false
        for b in bytes {
            if b == UInt8(ascii: ".") {
                if previousDot { return false }
                previousDot = true
            } else {
                guard AddressParser.isAtext(b) else { return false }
                previousDot = false
            }
        }
        return true
    }

    // MARK: Display names

    /// The words of a display name as a reader sees them: as written, with encoded words decoded.
    static func displayName(_ words: ArraySlice<Token>, _ spaced: ArraySlice<Bool>) -> String? {
        guard !words.isEmpty else { return nil }
        var raw: [UInt8] = []
        for (token, space) in zip(words, spaced) {
            if space && !raw.isEmpty { raw.append(0x20) }
            switch token {
            case .atom(let bytes), .quoted(let bytes), .domainLiteral(let bytes): raw += bytes
            case .special(let b): raw.append(b)
            }
        }
        return EncodedWord.decodeAll(in: raw)
    }

    /// The addresses a display name shows, read the way a reader would: compatibility forms folded (a fullwidth
    /// `＠` is an `@`), then every word with an `@` in it, quotes and brackets around it dropped, that is a mailbox.
    static func addressesInDisplayName(_ name: String) -> [Mailbox] {
        let folded = name.precomposedStringWithCompatibilityMapping
        guard folded.contains("@") else { return [] }
        let separators: Set<Character> = [" ", "\t", "\"", "'", "<", ">", "(", ")", "[", "]", ",", ";"]
        return folded.split(whereSeparator: { separators.contains($0) }).compactMap { word -> Mailbox? in
            guard word.contains("@") else { return nil }
            return try? AddressParser.parseMailbox(String(word))
        }
    }

    // MARK: Lexical tokens

    /// RFC 5322 3.2: atoms, quoted strings, domain literals and specials; comments and white space dropped.
    /// `spaced[i]` tells whether white space or a comment came before `tokens[i]`.
    static func tokenize(_ value: [UInt8]) throws(Failure) -> (tokens: [Token], spaced: [Bool]) {
        var tokens: [Token] = []
        var spaced: [Bool] = []
        var space = false
        var i = 0
        let n = value.count
        while i < n {
            let b = value[i]
            defer {
                // Each token gets whether white space or a comment came since the one before.
                if tokens.count > spaced.count {
                    spaced.append(space)
                    space = false
                }
            }
            switch b {
            case 0x20, 0x09:
                space = true
                i += 1
            case UInt8(ascii: "("):
                space = true
                // comment = "(" *([FWS] ccontent) [FWS] ")", ccontent = ctext / quoted-pair / comment
                var depth = 0
                repeat {
                    guard i < n else { throw Failure("unclosed comment") }
                    switch value[i] {
                    case UInt8(ascii: "("): depth += 1
                    case UInt8(ascii: ")"): depth -= 1
                    case UInt8(ascii: "\\"):
                        i += 1
                        guard i < n else { throw Failure("unclosed comment") }
                    case 0x00: throw Failure("NUL in a comment")
                    default: break
                    }
                    i += 1
                } while depth > 0
            case UInt8(ascii: ")"):
                throw Failure("unbalanced )")
            case UInt8(ascii: "\""):
                i += 1
                var content: [UInt8] = []
                var closed = false
                while i < n {
                    let c = value[i]
                    if c == UInt8(ascii: "\"") {
                        closed = true
                        i += 1
                        break
                    }
                    if c == UInt8(ascii: "\\") {
                        i += 1
                        guard i < n else { break }
                        content.append(value[i])
                    } else if c == 0x00 {
                        throw Failure("NUL in a quoted string")
                    } else {
                        content.append(c)
                    }
                    i += 1
                }
                guard closed else { throw Failure("unclosed quoted string") }
                tokens.append(.quoted(content))
            case UInt8(ascii: "["):
                var literal: [UInt8] = [b]
                i += 1
                var closed = false
                while i < n {
                    let c = value[i]
                    i += 1
                    if c == UInt8(ascii: "]") {
                        literal.append(c)
                        closed = true
                        break
                    }
                    if c == 0x20 || c == 0x09 { continue }
                    // dtext = %d33-90 / %d94-126
                    guard (33...90).contains(c) || (94...126).contains(c) else { throw Failure("bad domain literal") }
                    literal.append(c)
                }
                guard closed else { throw Failure("unclosed domain literal") }
                tokens.append(.domainLiteral(literal))
            case UInt8(ascii: "<"), UInt8(ascii: ">"), UInt8(ascii: ":"), UInt8(ascii: ";"),
                 UInt8(ascii: "@"), UInt8(ascii: ","), UInt8(ascii: "."):
                tokens.append(.special(b))
                i += 1
            default:
                guard AddressParser.isAtext(b) || b >= 0x80 else { throw Failure("unexpected character") }
                let start = i
                while i < n, AddressParser.isAtext(value[i]) || value[i] >= 0x80 { i += 1 }
                tokens.append(.atom(Array(value[start..<i])))
            }
        }
        return (tokens, spaced)
    }
}

/// RFC 2047 encoded words (`=?charset?B|Q?text?=`), decoded for display names only.
enum EncodedWord {
    /// The decoded text of an atom that is one encoded word; nil when it is not one.
    static func decode(_ atom: [UInt8]) -> String? {
        guard atom.count >= 8, atom.starts(with: [0x3D, 0x3F]), atom.suffix(2).elementsEqual([0x3F, 0x3D]) else { return nil }
        let inner = atom[2..<(atom.count - 2)]
        let parts = inner.split(separator: UInt8(ascii: "?"), maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty else { return nil }
        // RFC 2231: charset*language
        let charset = String(decoding: parts[0].prefix { $0 != UInt8(ascii: "*") }, as: UTF8.self).lowercased()
        let text = Array(parts[2])
        let bytes: [UInt8]
        switch parts[1].first.map({ $0 | 0x20 }) {
        case UInt8(ascii: "b") where parts[1].count == 1:
            // Clients forgive missing padding; so must a check of what they show.
            var padded = text.filter { $0 != UInt8(ascii: "=") }
            while padded.count % 4 != 0 { padded.append(UInt8(ascii: "=")) }
            guard let data = Data(base64Encoded: Data(padded), options: .ignoreUnknownCharacters) else { return nil }
            bytes = Array(data)
        case UInt8(ascii: "q") where parts[1].count == 1:
            var out: [UInt8] = []
            var i = 0
            while i < text.count {
                let c = text[i]
                if c == UInt8(ascii: "_") {
                    out.append(0x20)
                } else if c == UInt8(ascii: "="), i + 2 < text.count, let hi = hex(text[i + 1]), let lo = hex(text[i + 2]) {
                    out.append(hi << 4 | lo)
                    i += 2
                } else {
                    out.append(c)
                }
                i += 1
            }
            bytes = out
        default:
            return nil
        }
        if charset == "utf-8" || charset == "utf8" || charset == "us-ascii" {
            return String(decoding: bytes, as: UTF8.self)
        }
        // Other charsets as Latin-1: exact for ISO 8859-1, and right for the ASCII range of the rest,
        // which is where an address in a display name would be.
        return String(String.UnicodeScalarView(bytes.map { UnicodeScalar($0) }))
    }

    /// Text with every encoded word in it decoded, leniently (mail clients decode words that RFC 2047 would
    /// not allow where they stand, such as inside quotes or next to other text); white space between two
    /// encoded words is dropped (RFC 2047 6.2).
    static func decodeAll(in bytes: [UInt8]) -> String {
        var out = ""
        var pending: [UInt8] = []
        var afterEncoded = false
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "="), let (text, next) = word(in: bytes, at: i) {
                if afterEncoded && pending.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { pending.removeAll() }
                out += String(decoding: pending, as: UTF8.self) + text
                pending.removeAll()
                afterEncoded = true
                i = next
                continue
            }
            pending.append(bytes[i])
            i += 1
        }
        return out + String(decoding: pending, as: UTF8.self)
    }

    /// The encoded word starting at `start`, decoded, and the index after it.
    static func word(in bytes: [UInt8], at start: Int) -> (String, Int)? {
        guard start + 1 < bytes.count, bytes[start + 1] == UInt8(ascii: "?") else { return nil }
        // =? charset ? encoding ? text ?=, without white space; RFC 2047 keeps a word within 75 octets.
        var question = 0
        var j = start + 2
        while j + 1 < bytes.count, j - start < 256, bytes[j] > 0x20 {
            if bytes[j] == UInt8(ascii: "?") {
                question += 1
                if question >= 3, bytes[j + 1] == UInt8(ascii: "=") {
                    guard let text = decode(Array(bytes[start...(j + 1)])) else { return nil }
                    return (text, j + 2)
                }
            }
            j += 1
        }
        return nil
    }

    static func hex(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
