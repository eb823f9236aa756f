import Foundation

/// `postern report`'s reckoning over the audit log: the messages accepted (`accepted` events) joined with what
/// became of each recipient (`relay`, `held` and `queue_delete` events), filtered, as detail rows (one per message
/// and recipient) and the summary a data-protection officer needs for a GDPR Art. 33 assessment.
///
/// Pure: records in, rows and counts out. It knows nothing the audit log does not say, and the log never
/// holds a subject or any content, so neither can a report.
public struct AuditReport: Sendable {
    /// What became of one recipient, as far as the log says.
    public enum Outcome: String, Sendable, Hashable, CaseIterable {
        case delivered
        /// Refused for good by the upstream; a DSN went to the sender.
        case bounced
        /// Not delivered yet: no attempt logged, deferred, or held by the postmaster.
        case queued
        /// Still undeliverable when the message expired; a DSN went to the sender.
        case expired
        /// Taken out of the queue by the postmaster (`postern queue delete`).
        case deleted
    }

    /// One message and one of its recipients: a detail row.
    public struct Row: Sendable, Hashable {
        public var time: String
        public var queueID: String
        public var session: String
        public var listener: String
        public var client: String
        public var device: String
        public var login: String
        public var sender: String
        public var messageID: String
        public var size: Int
        public var recipient: String
        public var recipientDomain: String
        /// nil when the log does not say (lines written before Postern recorded it).
        public var external: Bool?
        public var outcome: Outcome
        public var outcomeTime: String
        public var attempts: Int
        public var upstream: String
        public var lastReply: String
    }

    /// What to keep. Every condition given must hold; texts compare without regard to case. Times are the
    /// log's own (UTC, `2026-12-01T09:30:00.000Z`) and compare as text, which for that fixed form is time order.
    public struct Filter: Sendable, Hashable {
        public var since: String?
        /// Exclusive.
        public var until: String?
        public var devices: [String] = []
        public var logins: [String] = []
        public var senders: [String] = []
        public var recipients: [String] = []
        public var recipientDomains: [String] = []
        public var externalOnly = false
        public var queueIDs: [String] = []
        public var outcomes: [Outcome] = []

        public init() {}

        func keeps(message: Message) -> Bool {
            if let since, message.time < since { return false }
            if let until, message.time >= until { return false }
            if !devices.isEmpty, !Self.contains(devices, message.device) { return false }
            if !logins.isEmpty, !Self.contains(logins, message.login) { return false }
            if !senders.isEmpty, !Self.contains(senders, message.sender) { return false }
            if !queueIDs.isEmpty, !queueIDs.contains(message.queueID) { return false }
            return true
        }

        func keeps(recipient: String, domain: String, external: Bool?, outcome: Outcome) -> Bool {
            if !recipients.isEmpty, !Self.contains(recipients, recipient) { return false }
            if !recipientDomains.isEmpty, !Self.contains(recipientDomains, domain) { return false }
            if externalOnly, external != true { return false }
            if !outcomes.isEmpty, !outcomes.contains(outcome) { return false }
            return true
        }

        private static func contains(_ wanted: [String], _ value: String) -> Bool {
            wanted.contains { $0.lowercased() == value.lowercased() }
        }
    }

    struct Message: Sendable {
        var time: String
        var queueID: String
        var session: String
        var listener: String
        var client: String
        var device: String
        var login: String
        var sender: String
        var messageID: String
        var size: Int
        var recipients: [String]
        var external: Set<String>?
    }

    struct RecipientState: Sendable {
        var outcome: Outcome
        var time: String
        var attempts: Int
        var upstream: String
        var reply: String
    }

    /// Accepted messages in the order the log has them.
    private var messages: [Message] = []
    private var messageIndex: [String: Int] = [:]
    /// queue id → lower-cased recipient → what the latest event said.
    private var states: [String: [String: RecipientState]] = [:]
    /// Lines read, of events the report does not use, and lines that are not a JSON object.
    public private(set) var lines = 0
    public private(set) var unreadableLines = 0

    public init() {}

    /// Takes in one line of the log (without its newline), in the log's order.
    public mutating func add(line: UnsafeRawBufferPointer) {
        lines += 1
        switch AuditRecord.parse(line) {
        case .record(let record): add(record)
        case .otherEvent: break
        case .unreadable: unreadableLines += 1
        }
    }

    public mutating func add(_ record: AuditRecord) {
        switch record.event {
        case .accepted:
            guard !record.queueID.isEmpty, messageIndex[record.queueID] == nil else { return }
            let message = Message(time: record.time, queueID: record.queueID, session: record.session, listener: record.listener,
                                  client: record.client, device: record.device, login: record.login,
                                  sender: Self.bare(record.sender), messageID: record.messageID, size: max(0, Int(record.size) ?? 0),
                                  recipients: Self.distinct(record.recipients.map(Self.bare)),
                                  external: record.external.map { Set($0.map { Self.bare($0).lowercased() }) })
            messageIndex[record.queueID] = messages.count
            messages.append(message)
        case .relay:
            let outcome: Outcome
            switch record.outcome {
            case "delivered": outcome = .delivered
            case "failed": outcome = .bounced
            case "expired": outcome = .expired
            default: outcome = .queued
            }
            let key = Self.bare(record.recipient).lowercased()
            var state = states[record.queueID, default: [:]]
            // A final outcome stands; a deferral after one (a recipient listed twice) does not undo it.
            if let earlier = state[key], earlier.outcome != .queued, outcome == .queued { return }
            state[key] = RecipientState(outcome: outcome, time: record.time, attempts: max(0, Int(record.attempt) ?? 0),
                                        upstream: record.upstream, reply: record.reply)
            states[record.queueID] = state
        case .held:
            markPending(record, as: .queued, reply: "held: taken out of delivery")
        case .queueDelete:
            markPending(record, as: .deleted, reply: "deleted by the postmaster")
        }
    }

    /// Sets every recipient of the record that has no final outcome yet.
    private mutating func markPending(_ record: AuditRecord, as outcome: Outcome, reply: String) {
        var state = states[record.queueID, default: [:]]
        for recipient in record.recipients.map({ Self.bare($0).lowercased() }) {
            if let earlier = state[recipient], earlier.outcome != .queued { continue }
            state[recipient] = RecipientState(outcome: outcome, time: record.time, attempts: state[recipient]?.attempts ?? 0,
                                              upstream: state[recipient]?.upstream ?? "", reply: reply)
        }
        states[record.queueID] = state
    }

    /// The detail rows the filter keeps, in the log's order of messages, recipients in the envelope's order.
    public func rows(_ filter: Filter) -> [Row] {
        var rows: [Row] = []
        for message in messages where filter.keeps(message: message) {
            let state = states[message.queueID] ?? [:]
            for recipient in message.recipients {
                let key = recipient.lowercased()
                let domain = Self.domain(of: key)
                let external = message.external.map { $0.contains(key) }
                let recipientState = state[key]
                let outcome = recipientState?.outcome ?? .queued
                guard filter.keeps(recipient: recipient, domain: domain, external: external, outcome: outcome) else { continue }
                rows.append(Row(time: message.time, queueID: message.queueID, session: message.session, listener: message.listener,
                                client: message.client, device: message.device, login: message.login, sender: message.sender,
                                messageID: message.messageID, size: message.size, recipient: recipient, recipientDomain: domain,
                                external: external, outcome: outcome, outcomeTime: recipientState?.time ?? "",
                                attempts: recipientState?.attempts ?? 0, upstream: recipientState?.upstream ?? "",
                                lastReply: recipientState?.reply ?? ""))
            }
        }
        return rows
    }

    /// `<a@b>` → `a@b`, for filters as typed.
    public static func bareAddress(_ address: String) -> String { bare(address.trimmingCharacters(in: .whitespaces)) }

    /// `<a@b>` → `a@b`.
    static func bare(_ address: String) -> String {
        if address.hasPrefix("<"), address.hasSuffix(">"), address.count >= 2 { return String(address.dropFirst().dropLast()) }
        return address
    }

    static func domain(of address: String) -> String {
        guard let at = address.lastIndex(of: "@") else { return "" }
        return String(address[address.index(after: at)...])
    }

    /// Each address once (without regard to case), first spelling kept.
    static func distinct(_ addresses: [String]) -> [String] {
        var seen = Set<String>()
        return addresses.filter { seen.insert($0.lowercased()).inserted }
    }
}

extension AuditReport {
    /// A time as the log writes it (`2026-12-01T09:30:00.000Z`) from what an officer types, in UTC: `2026-12-01`,
    /// `2026-12-01T09:30`, `2026-12-01T09:30:15` or the log's own form, `Z` optional, a space for `T` allowed.
    /// nil when it is none of these or names no real time (month 13, 25 o'clock).
    public static func logTime(_ text: String) -> String? {
        var s = text.trimmingCharacters(in: .whitespaces).replacingOccurrences(of: " ", with: "T")
        if s.hasSuffix("Z") || s.hasSuffix("z") { s.removeLast() }
        let parts = s.split(separator: "T", omittingEmptySubsequences: false)
        guard parts.count <= 2 else { return nil }
        let date = parts[0].split(separator: "-", omittingEmptySubsequences: false)
        guard date.count == 3, date[0].count == 4, date[1].count == 2, date[2].count == 2,
              let year = Int(date[0]), let month = Int(date[1]), let day = Int(date[2]),
              (1...12).contains(month), (1...31).contains(day), year >= 1970 else { return nil }
        var hour = 0, minute = 0, second = 0, millisecond = 0
        if parts.count == 2 {
            let time = parts[1].split(separator: ":", omittingEmptySubsequences: false)
            guard (2...3).contains(time.count), time[0].count == 2, time[1].count == 2,
                  let h = Int(time[0]), let m = Int(time[1]), (0...23).contains(h), (0...59).contains(m) else { return nil }
            (hour, minute) = (h, m)
            if time.count == 3 {
                let fraction = time[2].split(separator: ".", omittingEmptySubsequences: false)
                guard fraction[0].count == 2, let sec = Int(fraction[0]), (0...60).contains(sec) else { return nil }
                second = sec
                if fraction.count == 2 {
                    guard fraction[1].count == 3, let ms = Int(fraction[1]), ms >= 0 else { return nil }
                    millisecond = ms
                } else if fraction.count > 2 { return nil }
            }
        }
        // A day the month does not have.
        var components = DateComponents(year: year, month: month, day: day)
        components.calendar = Calendar(identifier: .gregorian)
        components.timeZone = TimeZone(identifier: "UTC")
        guard components.isValidDate else { return nil }
        return JSONLineLogHandler.timestamp(year: year, month: month, day: day, hour: hour, minute: minute, second: second,
                                            millisecond: millisecond)
    }

    /// The end of `--until DAY` given as a bare day: the whole day counts, so the bound is the next day's start.
    public static func untilBound(_ text: String) -> String? {
        guard let start = logTime(text) else { return nil }
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        guard trimmed.count == 10 else { return start }
        var components = DateComponents()
        components.calendar = Calendar(identifier: .gregorian)
        components.timeZone = TimeZone(identifier: "UTC")
        let digits = trimmed.split(separator: "-").compactMap { Int($0) }
        guard digits.count == 3 else { return nil }
        (components.year, components.month, components.day) = (digits[0], digits[1], digits[2] + 1)
        guard let next = components.date else { return nil }
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC") ?? calendar.timeZone
        let c = calendar.dateComponents([.year, .month, .day], from: next)
        guard let y = c.year, let m = c.month, let d = c.day else { return nil }
        return JSONLineLogHandler.timestamp(year: y, month: m, day: d, hour: 0, minute: 0, second: 0, millisecond: 0)
    }
}
