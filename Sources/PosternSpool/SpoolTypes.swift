import Foundation
import PosternCore

/// The envelope stored with a queued message.
public struct SpoolEnvelope: Codable, Sendable, Hashable {
    /// The reverse path without angle brackets; "" is the null path `<>`.
    public var sender: String
    public var recipients: [String]
    public var receivedAt: Date
    public var clientAddress: String
    public var listener: String
    public var login: String?
    public var messageID: String?
    /// `7BIT` / `8BITMIME` from MAIL FROM BODY=, if the client gave one.
    public var bodyType: String?

    public init(sender: String, recipients: [String], receivedAt: Date, clientAddress: String, listener: String,
                login: String? = nil, messageID: String? = nil, bodyType: String? = nil) {
        self.sender = sender
        self.recipients = recipients
        self.receivedAt = receivedAt
        self.clientAddress = clientAddress
        self.listener = listener
        self.login = login
        self.messageID = messageID
        self.bodyType = bodyType
    }
}

/// Why a message could not be stored; each maps to one SMTP reply.
public enum SpoolError: Error, Sendable, Hashable {
    /// No space left (ENOSPC, EDQUOT): `452 4.3.1`.
    case full
    /// Any other write failure: `451 4.3.0`.
    case unwritable(String)
}

/// Where one recipient of a queued message stands.
public struct RecipientStatus: Codable, Sendable, Hashable {
    public enum State: String, Codable, Sendable {
        case pending
        case delivered
        /// Permanently failed or expired; a DSN has been queued (unless the sender was `<>`).
        case failed
    }
    public var address: String
    public var state: State
    public var attempts: Int
    /// The last reply from the upstream (or a local reason), as text.
    public var lastReply: String?
    public var upstream: String?

    public init(address: String, state: State = .pending, attempts: Int = 0, lastReply: String? = nil, upstream: String? = nil) {
        self.address = address
        self.state = state
        self.attempts = attempts
        self.lastReply = lastReply
        self.upstream = upstream
    }
}

/// The mutable delivery state of a queued message, kept beside it in `<id>.state`.
public struct SpoolEntryState: Codable, Sendable, Hashable {
    /// Delivery attempts made for this message (each attempt may cover several recipients).
    public var attempts: Int
    public var nextAttempt: Date
    public var lastAttempt: Date?
    public var recipients: [RecipientStatus]
    /// How many times the process died while this entry was being delivered (see `DeliveryLedger`);
    /// nil once an attempt ends normally.
    public var interruptedDeliveries: Int?
    /// Why the entry was taken out of delivery, while it is in `hold/`.
    public var heldReason: String?

    public init(attempts: Int = 0, nextAttempt: Date, lastAttempt: Date? = nil, recipients: [RecipientStatus],
                interruptedDeliveries: Int? = nil, heldReason: String? = nil) {
        self.attempts = attempts
        self.nextAttempt = nextAttempt
        self.lastAttempt = lastAttempt
        self.recipients = recipients
        self.interruptedDeliveries = interruptedDeliveries
        self.heldReason = heldReason
    }

    public static func initial(for envelope: SpoolEnvelope) -> SpoolEntryState {
        SpoolEntryState(nextAttempt: envelope.receivedAt, recipients: envelope.recipients.map { RecipientStatus(address: $0) })
    }

    public var pendingRecipients: [String] { recipients.filter { $0.state == .pending }.map(\.address) }
    public var isFinished: Bool { !recipients.contains { $0.state == .pending } }
}

/// A queued message as read back from disk: id, envelope and state (the body is read separately).
public struct SpoolEntry: Sendable, Hashable {
    public var id: String
    public var envelope: SpoolEnvelope
    public var state: SpoolEntryState
    public var messageSize: Int
}

/// The spool files' JSON: dates as seconds since 1970, keys sorted.
extension JSONEncoder {
    static var spool: JSONEncoder {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .secondsSince1970
        encoder.outputFormatting = [.sortedKeys]
        return encoder
    }
}

extension JSONDecoder {
    static var spool: JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .secondsSince1970
        return decoder
    }
}

extension SpoolEnvelope {
    /// The envelope as the queue file stores it: what `JSONEncoder.spool` writes (keys sorted, nil fields left out,
    /// the date in seconds since 1970), read back by `JSONDecoder.spool` to the same value. Written by hand:
    /// a `JSONEncoder` per message was about 2 % of the gateway's CPU on the device path in profiles.
    func json() throws -> [UInt8] {
        let seconds = receivedAt.timeIntervalSince1970
        // Not a JSON number: `JSONEncoder` refuses it, with its own error.
        guard seconds.isFinite else { return Array(try JSONEncoder.spool.encode(self)) }
        var out: [UInt8] = []
        out.reserveCapacity(256 + recipients.reduce(0) { $0 + $1.utf8.count + 3 })
        func key(_ name: String, first: Bool = false) {
            if !first { out.append(UInt8(ascii: ",")) }
            JSONLineLogHandler.appendJSON(string: name, to: &out)
            out.append(UInt8(ascii: ":"))
        }
        func string(_ value: String) { JSONLineLogHandler.appendJSON(string: value, to: &out) }
        out.append(UInt8(ascii: "{"))
        var first = true
        if let bodyType {
            key("bodyType", first: first)
            string(bodyType)
            first = false
        }
        key("clientAddress", first: first)
        string(clientAddress)
        key("listener")
        string(listener)
        if let login { key("login"); string(login) }
        if let messageID { key("messageID"); string(messageID) }
        key("receivedAt")
        out.append(contentsOf: "\(seconds)".utf8)
        key("recipients")
        out.append(UInt8(ascii: "["))
        for (n, recipient) in recipients.enumerated() {
            if n > 0 { out.append(UInt8(ascii: ",")) }
            string(recipient)
        }
        out.append(UInt8(ascii: "]"))
        key("sender")
        string(sender)
        out.append(UInt8(ascii: "}"))
        return out
    }
}
