/// The summary of a report's rows (the questions of a GDPR Art. 33 assessment: how many messages, to how many
/// recipients and domains, inside or outside, how large, what became of them, when, and who sent them) and the
/// detail rows as CSV or JSON lines.
public struct AuditReportSummary: Sendable, Hashable {
    public struct Sender: Sendable, Hashable {
        /// `device NAME`, `login NAME` or `client ADDRESS` (neither: a listener without either).
        public var name: String
        public var messages: Int
        public var recipients: Int
    }

    public var messages = 0
    /// Message-recipient pairs.
    public var recipients = 0
    public var distinctRecipients = 0
    public var distinctDomains = 0
    public var internalRecipients = 0
    public var externalRecipients = 0
    /// Recipients of messages logged before Postern recorded which were external.
    public var unknownRecipients = 0
    public var messagesWithExternal = 0
    public var totalSize = 0
    public var largestSize = 0
    public var largestQueueID = ""
    public var outcomes: [AuditReport.Outcome: Int] = [:]
    public var first = ""
    public var last = ""
    public var senders: [Sender] = []
    /// The recipient domains with their recipient counts, most first.
    public var domains: [(domain: String, recipients: Int)] = []

    public static func == (a: AuditReportSummary, b: AuditReportSummary) -> Bool {
        a.messages == b.messages && a.recipients == b.recipients && a.distinctRecipients == b.distinctRecipients
            && a.distinctDomains == b.distinctDomains && a.internalRecipients == b.internalRecipients
            && a.externalRecipients == b.externalRecipients && a.totalSize == b.totalSize && a.largestSize == b.largestSize
            && a.outcomes == b.outcomes && a.first == b.first && a.last == b.last && a.senders == b.senders
    }

    public func hash(into hasher: inout Hasher) { hasher.combine(messages); hasher.combine(recipients) }

    public init(rows: [AuditReport.Row]) {
        var lastQueueID: String?
        var messageHasExternal = false
        var addresses = Set<String>()
        var domainCounts: [String: Int] = [:]
        var bySender: [String: (messages: Int, recipients: Int, order: Int)] = [:]
        for row in rows {
            let senderName = !row.device.isEmpty ? "device \(row.device)" : !row.login.isEmpty ? "login \(row.login)" : "client \(row.client)"
            let newMessage = row.queueID != lastQueueID
            if newMessage {
                if messageHasExternal { messagesWithExternal += 1 }
                messageHasExternal = false
                lastQueueID = row.queueID
                messages += 1
                totalSize = totalSize.addingSaturating(row.size)
                if row.size > largestSize { largestSize = row.size; largestQueueID = row.queueID }
                if first.isEmpty || row.time < first { first = row.time }
                if row.time > last { last = row.time }
            }
            var entry = bySender[senderName] ?? (0, 0, bySender.count)
            if newMessage { entry.messages += 1 }
            entry.recipients += 1
            bySender[senderName] = entry
            recipients += 1
            addresses.insert(row.recipient.lowercased())
            domainCounts[row.recipientDomain, default: 0] += 1
            switch row.external {
            case true?: externalRecipients += 1; messageHasExternal = true
            case false?: internalRecipients += 1
            case nil: unknownRecipients += 1
            }
            outcomes[row.outcome, default: 0] += 1
        }
        if messageHasExternal { messagesWithExternal += 1 }
        distinctRecipients = addresses.count
        distinctDomains = domainCounts.count
        senders = bySender.sorted { ($0.value.messages, -$0.value.order) > ($1.value.messages, -$1.value.order) }
            .map { Sender(name: $0.key, messages: $0.value.messages, recipients: $0.value.recipients) }
        domains = domainCounts.sorted { ($0.value, $1.key) > ($1.value, $0.key) }.map { ($0.key, $0.value) }
    }

    /// The summary as a data-protection officer reads it.
    public func text(maxListed: Int = 20) -> String {
        var out = ""
        func line(_ label: String, _ value: String) { out += label.padding(toLength: 24, withPad: " ", startingAt: 0) + value + "\n" }
        line("Messages:", "\(messages)")
        line("Recipients:", "\(recipients) (\(distinctRecipients) distinct addresses in \(distinctDomains) domains)")
        var split = "\(internalRecipients) internal, \(externalRecipients) external"
        if unknownRecipients > 0 { split += ", \(unknownRecipients) not recorded" }
        line("Internal / external:", split + " (\(messagesWithExternal) messages with an external recipient)")
        line("Size:", "\(totalSize) bytes in all (\(Self.approximate(totalSize))), largest \(largestSize) bytes (\(Self.approximate(largestSize)))"
             + (largestQueueID.isEmpty ? "" : " in \(largestQueueID)"))
        let outcomeText = AuditReport.Outcome.allCases.filter { $0 != .deleted || outcomes[$0] != nil }
            .map { "\($0 == .queued ? "still queued" : $0.rawValue) \(outcomes[$0] ?? 0)" }.joined(separator: ", ")
        line("Outcomes (recipients):", outcomeText)
        line("First:", first.isEmpty ? "-" : first)
        line("Last:", last.isEmpty ? "-" : last)
        out += "Sent by:\n"
        for sender in senders.prefix(maxListed) {
            out += "  \(sender.name.padding(toLength: 30, withPad: " ", startingAt: 0)) \(sender.messages) messages, \(sender.recipients) recipients\n"
        }
        if senders.count > maxListed { out += "  ... and \(senders.count - maxListed) more\n" }
        out += "Recipient domains:\n"
        for (domain, count) in domains.prefix(maxListed) {
            out += "  \(domain.padding(toLength: 30, withPad: " ", startingAt: 0)) \(count) recipients\n"
        }
        if domains.count > maxListed { out += "  ... and \(domains.count - maxListed) more\n" }
        return out
    }
}

extension AuditReportSummary {
    /// `24.3 MB` (decimal units, one decimal), for reading at a glance beside the exact byte count.
    static func approximate(_ bytes: Int) -> String {
        let units = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"]
        var value = Double(bytes)
        var unit = 0
        while value >= 1000, unit < units.count - 1 {
            value /= 1000
            unit += 1
        }
        if unit == 0 { return "\(bytes) bytes" }
        return "\((value * 10).rounded() / 10) \(units[unit])"
    }
}

extension Int {
    func addingSaturating(_ other: Int) -> Int {
        let (sum, overflow) = addingReportingOverflow(other)
        return overflow ? .max : sum
    }
}

/// The detail rows' two forms, with the same snake_case names: CSV (RFC 4180, a header line) and JSON lines.
public enum AuditReportDetail {
    public static let columns = ["time", "queue_id", "session", "listener", "client", "device", "login", "sender", "message_id", "size",
                                 "recipient", "recipient_domain", "external", "outcome", "outcome_time", "attempts", "upstream",
                                 "last_reply"]

    static func values(_ row: AuditReport.Row) -> [String] {
        [row.time, row.queueID, row.session, row.listener, row.client, row.device, row.login, row.sender, row.messageID, "\(row.size)",
         row.recipient, row.recipientDomain, row.external.map { $0 ? "true" : "false" } ?? "", row.outcome.rawValue, row.outcomeTime,
         "\(row.attempts)", row.upstream, row.lastReply]
    }

    public static let csvHeader = columns.joined(separator: ",") + "\r\n"

    /// One CSV record (CRLF-terminated): fields with a comma, quote or line break quoted, quotes doubled. A field
    /// that starts with `=`, `+`, `-` or `@` gets a leading `'` so that a spreadsheet does not run it as a formula
    /// (addresses and replies come from clients and upstreams).
    public static func csv(_ row: AuditReport.Row) -> String {
        values(row).map { value in
            var field = value
            if let first = field.utf8.first, [UInt8(ascii: "="), UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: "@")].contains(first) {
                field = "'" + field
            }
            guard field.utf8.contains(where: { $0 == UInt8(ascii: ",") || $0 == UInt8(ascii: "\"") || $0 == 0x0A || $0 == 0x0D }) else {
                return field
            }
            return "\"" + field.replacingOccurrences(of: "\"", with: "\"\"") + "\""
        }.joined(separator: ",") + "\r\n"
    }

    /// One JSON object on one line; `size` and `attempts` are numbers, `external` a boolean or null.
    public static func jsonLine(_ row: AuditReport.Row) -> String {
        var bytes: [UInt8] = [UInt8(ascii: "{")]
        for (n, (key, value)) in zip(columns, values(row)).enumerated() {
            if n > 0 { bytes.append(UInt8(ascii: ",")) }
            JSONLineLogHandler.appendJSON(string: key, to: &bytes)
            bytes.append(UInt8(ascii: ":"))
            switch key {
            case "size", "attempts": bytes.append(contentsOf: Array(value.utf8))
            case "external": bytes.append(contentsOf: Array((value.isEmpty ? "null" : value).utf8))
            default: JSONLineLogHandler.appendJSON(string: value, to: &bytes)
            }
        }
        bytes.append(contentsOf: [UInt8(ascii: "}"), 0x0A])
        return String(decoding: bytes, as: UTF8.self)
    }
}
