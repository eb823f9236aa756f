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
