import Foundation

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
