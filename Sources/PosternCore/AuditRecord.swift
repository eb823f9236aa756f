/// One audit line as `postern report` needs it: the events that say what happened to a message
/// (`accepted`, `relay`, `held`, `queue_delete`) with the fields the report reads. Lines of other events
/// are passed over without being parsed, which is most of what makes a million lines take a second.
///
/// The parser reads the JSON that `JSONLineLogHandler` writes (an object of strings and arrays of strings) and
/// any other JSON object without trapping: numbers, booleans, nulls and nested values are skipped; a line that
/// is not a JSON object (cut off by a crash, edited by hand) is counted as unreadable, never guessed at.
public struct AuditRecord: Sendable, Hashable {
    public enum Event: String, Sendable, Hashable {
        case accepted, relay, held
        case queueDelete = "queue_delete"
    }

    public var event: Event
    public var time = ""
    public var queueID = ""
    public var session = ""
    public var listener = ""
    public var client = ""
    public var device = ""
    public var login = ""
    public var sender = ""
    public var messageID = ""
    public var size = ""
    public var recipients: [String] = []
    /// nil when the line has no `external` field (written before Postern recorded it).
    public var external: [String]?
    // relay
    public var recipient = ""
    public var outcome = ""
    public var reply = ""
    public var attempt = ""
    public var upstream = ""

    public init(event: Event) { self.event = event }

    /// What a line holds: a record, another event, or no JSON object.
    public enum Parsed: Sendable, Hashable {
        case record(AuditRecord)
        case otherEvent
        case unreadable
    }

    private static let eventKey = Array(#""event":""#.utf8)

    /// Parses one line (without its newline).
    public static func parse(_ line: UnsafeRawBufferPointer) -> Parsed {
        guard let event = quickEvent(line) else {
            // Not our writer's form of an event we read: a line of another event, or unreadable.
            var scanner = JSONObjectScanner(line)
            return scanner.validate() ? .otherEvent : .unreadable
        }
        var record = AuditRecord(event: event)
        var scanner = JSONObjectScanner(line)
        let ok = scanner.scanObject { key, scanner in
            switch key {
            case "time": record.time = scanner.stringValue() ?? ""
            case "queue_id": record.queueID = scanner.stringValue() ?? ""
            case "session": record.session = scanner.stringValue() ?? ""
            case "listener": record.listener = scanner.stringValue() ?? ""
            case "client": record.client = scanner.stringValue() ?? ""
            case "device": record.device = scanner.stringValue() ?? ""
            case "login": record.login = scanner.stringValue() ?? ""
            case "sender": record.sender = scanner.stringValue() ?? ""
            case "message_id": record.messageID = scanner.stringValue() ?? ""
            case "size": record.size = scanner.stringValue() ?? ""
            case "recipients": record.recipients = scanner.stringArrayValue() ?? []
            case "external": record.external = scanner.stringArrayValue()
            case "recipient": record.recipient = scanner.stringValue() ?? ""
            case "outcome": record.outcome = scanner.stringValue() ?? ""
            case "reply": record.reply = scanner.stringValue() ?? ""
            case "attempt": record.attempt = scanner.stringValue() ?? ""
            case "upstream": record.upstream = scanner.stringValue() ?? ""
            default: return scanner.skipValue()
            }
            return !scanner.failed
        }
        return ok ? .record(record) : .unreadable
    }

    /// The event name when the line has `"event":"NAME"` for one of the events read, found without parsing the
    /// line. `"event":"` cannot occur inside a JSON string, where every quote is escaped.
    private static func quickEvent(_ line: UnsafeRawBufferPointer) -> Event? {
        let key = eventKey
        let count = line.count
        guard count > key.count else { return nil }
        var i = 0
        outer: while i + key.count < count {
            for j in 0..<key.count where line[i + j] != key[j] {
                i += 1
                continue outer
            }
            let start = i + key.count
            var end = start
            while end < count, line[end] != UInt8(ascii: "\"") { end += 1 }
            switch end - start {
            case 8 where equal(line, start, "accepted"): return .accepted
            case 5 where equal(line, start, "relay"): return .relay
            case 4 where equal(line, start, "held"): return .held
            case 12 where equal(line, start, "queue_delete"): return .queueDelete
            default: return nil
            }
        }
        return nil
    }

    private static func equal(_ line: UnsafeRawBufferPointer, _ start: Int, _ text: StaticString) -> Bool {
        let length = text.utf8CodeUnitCount
        guard start + length <= line.count else { return false }
        return text.withUTF8Buffer { bytes in
            for k in 0..<length where line[start + k] != bytes[k] { return false }
            return true
        }
    }
}

/// A forgiving reader of one JSON object on one line: strings (with every RFC 8259 escape), arrays of
/// strings, and anything else skipped. `failed` is set instead of trapping on malformed input.
struct JSONObjectScanner {
    let bytes: UnsafeRawBufferPointer
    var index = 0
    var failed = false

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    private mutating func skipSpace() {
        while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x09 || bytes[index] == 0x0D || bytes[index] == 0x0A {
            index += 1
        }
    }

    private mutating func expect(_ byte: UInt8) -> Bool {
        skipSpace()
        guard index < bytes.count, bytes[index] == byte else { failed = true; return false }
        index += 1
        return true
    }

    private func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

    /// Calls `field` with each key; it reads (or skips) the value and says whether to go on.
    mutating func scanObject(_ field: (String, inout JSONObjectScanner) -> Bool) -> Bool {
        guard expect(UInt8(ascii: "{")) else { return false }
        skipSpace()
        if peek() == UInt8(ascii: "}") { index += 1; return trailingIsEmpty() }
        while true {
            skipSpace()
            guard let key = string(), expect(UInt8(ascii: ":")) else { return false }
            skipSpace()
            guard field(key, &self), !failed else { return false }
            skipSpace()
            guard let next = peek() else { return false }
            index += 1
            if next == UInt8(ascii: "}") { return trailingIsEmpty() }
            guard next == UInt8(ascii: ",") else { return false }
        }
    }

    /// The whole line is one JSON object.
    mutating func validate() -> Bool {
        scanObject { _, scanner in scanner.skipValue() }
    }

    private mutating func trailingIsEmpty() -> Bool {
        skipSpace()
        return index == bytes.count
    }

    /// A string value, or nil (and `failed`) when the value is not a well-formed string.
    mutating func string() -> String? {
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { failed = true; return nil }
        index += 1
        let start = index
        // The usual case: no escapes, one copy of the bytes.
        while index < bytes.count, bytes[index] != UInt8(ascii: "\""), bytes[index] != UInt8(ascii: "\\") { index += 1 }
        guard index < bytes.count else { failed = true; return nil }
        if bytes[index] == UInt8(ascii: "\"") {
            index += 1
            return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<(index - 1)]), as: UTF8.self)
        }
        var out = Array(bytes[start..<index])
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: out, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { failed = true; return nil }
                let escaped = bytes[index]
                index += 1
                switch escaped {
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "u"):
                    guard let scalar = unicodeEscape() else { failed = true; return nil }
                    out.append(contentsOf: Array(String(Character(scalar)).utf8))
                default: out.append(escaped)  // " \ /
                }
            default:
                out.append(byte)
            }
        }
        failed = true
        return nil
    }

    /// `\uXXXX`, with a surrogate pair when one follows; a lone surrogate becomes U+FFFD.
    private mutating func unicodeEscape() -> Unicode.Scalar? {
        guard let high = hex4() else { return nil }
        if (0xD800...0xDBFF).contains(high), index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u") {
            index += 2
            guard let low = hex4() else { return nil }
            if (0xDC00...0xDFFF).contains(low) {
                return Unicode.Scalar(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
            }
            return Unicode.Scalar(0xFFFD)
        }
        return Unicode.Scalar(high) ?? Unicode.Scalar(0xFFFD)
    }

    private mutating func hex4() -> UInt32? {
        guard index + 4 <= bytes.count else { return nil }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            index += 1
            let digit: UInt32
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = UInt32(byte - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = UInt32(byte - UInt8(ascii: "a") + 10)
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = UInt32(byte - UInt8(ascii: "A") + 10)
            default: return nil
            }
            value = value << 4 | digit
        }
        return value
    }

    /// A string value; any other value is skipped (nil), a malformed one sets `failed`.
    mutating func stringValue() -> String? {
        if peek() == UInt8(ascii: "\"") { return string() }
        _ = skipValue()
        return nil
    }

    /// An array of strings; any other value is skipped (nil), a malformed one sets `failed`.
    mutating func stringArrayValue() -> [String]? {
        let start = index
        if peek() == UInt8(ascii: "[") {
            if let values = stringArray() { return values }
            // Not all strings: skipped whole (which finds out whether it is well-formed at all).
            failed = false
            index = start
        }
        _ = skipValue()
        return nil
    }

    /// An array of strings; nil (and `failed`) for anything else.
    mutating func stringArray() -> [String]? {
        guard expect(UInt8(ascii: "[")) else { return nil }
        var values: [String] = []
        skipSpace()
        if peek() == UInt8(ascii: "]") { index += 1; return values }
        while true {
            skipSpace()
            guard let value = string() else { return nil }
            values.append(value)
            skipSpace()
            guard let next = peek() else { failed = true; return nil }
            index += 1
            if next == UInt8(ascii: "]") { return values }
            guard next == UInt8(ascii: ",") else { failed = true; return nil }
        }
    }

    /// Skips any JSON value (nesting bounded by the line's length, iteratively: no recursion to overflow).
    mutating func skipValue() -> Bool {
        skipSpace()
        var depth = 0
        repeat {
            skipSpace()
            guard let byte = peek() else { failed = true; return false }
            switch byte {
            case UInt8(ascii: "\""):
                guard string() != nil else { return false }
            case UInt8(ascii: "{"), UInt8(ascii: "["):
                depth += 1
                index += 1
                continue
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                guard depth > 0 else { failed = true; return false }
                depth -= 1
                index += 1
            case UInt8(ascii: ","), UInt8(ascii: ":"):
                guard depth > 0 else { failed = true; return false }
                index += 1
                continue
            default:
                // A number, true, false or null: up to the next delimiter.
                let start = index
                while index < bytes.count, ![UInt8(ascii: ","), UInt8(ascii: "}"), UInt8(ascii: "]"), 0x20].contains(bytes[index]) { index += 1 }
                guard index > start else { failed = true; return false }
            }
        } while depth > 0
        return true
    }
}
