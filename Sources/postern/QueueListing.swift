import ArgumentParser
import Foundation
import NIOCore
import PosternGateway
import PosternSpool

/// `postern queue list` and `show`, and how they present an entry (text columns, or `--json` with snake_case
/// keys as in the audit log). The commands that change the queue are in QueueCommand.swift.
extension QueueCommand {
    static func format(_ date: Date) -> String {
        ISO8601DateFormatter().string(from: date)
    }

    static func age(_ seconds: Int) -> String {
        if seconds < 3600 { return "\(seconds / 60)m" }
        if seconds < 86_400 { return "\(seconds / 3600)h\((seconds % 3600) / 60)m" }
        return "\(seconds / 86_400)d\((seconds % 86_400) / 3600)h"
    }

    static func size(_ bytes: Int) -> String {
        bytes < 10 * 1024 ? "\(bytes)" : bytes < 10 << 20 ? "\(bytes >> 10)K" : "\(bytes >> 20)M"
    }

    /// One message as `--json` shows it (snake_case keys, as in the audit log).
    struct Listing: Encodable {
        var id: String
        var status: String
        var size: Int
        var received_at: String
        var age_seconds: Int
        var sender: String
        var recipients: [RecipientListing]
        var attempts: Int
        var next_attempt: String?
        var last_reason: String?
        var held_reason: String?
        var interrupted_deliveries: Int?
        var client: String
        var listener: String
        var login: String?
        var message_id: String?

        struct RecipientListing: Encodable {
            var address: String
            var state: String
            var attempts: Int
            var last_reply: String?
            var upstream: String?
        }

        init(_ entry: SpoolEntry, area: SpoolDirectory.Area, now: Date) {
            let state = entry.state
            id = entry.id
            status = area == .hold ? "held" : "queued"
            size = entry.messageSize
            received_at = QueueCommand.format(entry.envelope.receivedAt)
            // The arrival date comes from the queue file: any Double. Clamped before it becomes an Int.
            age_seconds = Int(max(0, min(now.timeIntervalSince(entry.envelope.receivedAt), 1e12)).rounded(.towardZero))
            sender = entry.envelope.sender
            recipients = state.recipients.map {
                RecipientListing(address: $0.address, state: $0.state.rawValue, attempts: $0.attempts, last_reply: $0.lastReply, upstream: $0.upstream)
            }
            attempts = state.attempts
            next_attempt = area == .hold ? nil : QueueCommand.format(state.nextAttempt)
            last_reason = state.recipients.filter { $0.state == .pending }.compactMap(\.lastReply).last
            held_reason = state.heldReason
            interrupted_deliveries = state.interruptedDeliveries
            client = entry.envelope.clientAddress
            listener = entry.envelope.listener
            login = entry.envelope.login
            message_id = entry.envelope.messageID
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "List queued and held messages: id, size, age, sender, pending recipients, attempts, next try and last reason.")
        @OptionGroup var options: SpoolOptions
        @Flag(help: "One JSON array instead of the table.") var json = false

        func run() async throws {
            try QueueCommand.running {
                let (directory, _) = try options.open(forChanges: false)
                let now = Date()
                var listings: [Listing] = []
                var unreadable: [(id: String, why: String)] = []
                for area in SpoolDirectory.Area.allCases {
                    for id in directory.listIDs(in: area) {
                        do throws(SpoolDirectory.ReadError) {
                            listings.append(Listing(try directory.readEntry(id: id, in: area).entry, area: area, now: now))
                        } catch .locked(let why) {
                            unreadable.append((id, "encrypted, and cannot be opened here: \(why)"))
                        } catch {
                            unreadable.append((id, "unreadable; the relay moves it to corrupt/"))
                        }
                    }
                }
                // Accepted in the last seconds: still in the intake log (a running gateway moves them into queue/).
                for (id, read) in directory.intakeEntries() {
                    switch read {
                    case .success(let read): listings.append(Listing(read.entry, area: .queue, now: now))
                    case .failure(.locked(let why)): unreadable.append((id, "encrypted, and cannot be opened here: \(why)"))
                    case .failure: unreadable.append((id, "unreadable; the relay moves it to corrupt/"))
                    }
                }
                if json { return try printJSON(listings) }
                print("ID                    STATUS  SIZE   AGE     ATTEMPTS  NEXT TRY              SENDER")
                for listing in listings {
                    let next = listing.next_attempt ?? "held"
                    print("\(listing.id.padding(toLength: 20, withPad: " ", startingAt: 0))  \(listing.status.padding(toLength: 6, withPad: " ", startingAt: 0))  "
                          + "\(QueueCommand.size(listing.size).padding(toLength: 5, withPad: " ", startingAt: 0))  "
                          + "\(QueueCommand.age(listing.age_seconds).padding(toLength: 6, withPad: " ", startingAt: 0))  "
                          + "\(String(listing.attempts).padding(toLength: 8, withPad: " ", startingAt: 0))  \(next.padding(toLength: 20, withPad: " ", startingAt: 0))  "
                          + "\(listing.sender.isEmpty ? "<>" : listing.sender)")
                    if let reason = listing.held_reason ?? listing.last_reason { print("    (\(reason))") }
                    for recipient in listing.recipients where recipient.state == "pending" { print("    -> \(recipient.address)") }
                }
                for (id, why) in unreadable { print("\(id)  (\(why))") }
                let queued = listings.filter { $0.status == "queued" }
                let held = listings.count - queued.count
                let bytes = listings.reduce(0) { $0 + $1.size }
                print("-- \(queued.count) message(s) queued, \(held) held, \(QueueCommand.size(bytes)) bytes in all")
            }
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one message's envelope, state and headers (never the body).")
        @OptionGroup var options: SpoolOptions
        @Flag(help: "JSON instead of text (with the header section as one string).") var json = false
        @Argument(help: "Queue ID") var id: String

        func run() async throws {
            try QueueCommand.running {
                let (directory, _) = try options.open(forChanges: false)
                let area: SpoolDirectory.Area
                let found: Result<(entry: SpoolEntry, message: ByteBuffer), SpoolDirectory.ReadError>
                if let accepted = directory.intakeEntries().first(where: { $0.id == id }) {
                    // Accepted in the last seconds: still in the intake log.
                    (area, found) = (.queue, accepted.read)
                } else {
                    area = try QueueCommand.locate(directory, id: id)
                    found = Result { () throws(SpoolDirectory.ReadError) in try directory.readEntry(id: id, in: area) }
                }
                let read: (entry: SpoolEntry, message: ByteBuffer)
                do throws(SpoolDirectory.ReadError) { read = try found.get() } catch .locked(let why) {
                    throw QueueFailure.unusable("\(id) is encrypted and cannot be opened here: \(why) (give --config of the gateway, as a user who may read its key file)")
                } catch {
                    throw QueueFailure.unusable("\(id) cannot be read (\(error)); the relay moves unreadable entries to corrupt/")
                }
                let entry = read.entry
                let headers = ByteBufferText(headers: String(decoding: read.message.readableBytesView, as: UTF8.self)).headerSection
                if json {
                    struct Shown: Encodable {
                        var message: Listing
                        var headers: String
                    }
                    return try printJSON(Shown(message: Listing(entry, area: area, now: Date()), headers: headers))
                }
                let envelope = entry.envelope
                print("Queue-ID: \(id)")
                print("Received: \(format(envelope.receivedAt)) from \(envelope.clientAddress) on \(envelope.listener)\(envelope.login.map { " as \($0)" } ?? "")")
                print("Sender: <\(envelope.sender)>")
                print("Size: \(entry.messageSize) octets")
                print("Attempts: \(entry.state.attempts)\(entry.state.lastAttempt.map { ", last at \(format($0))" } ?? "")")
                if let reason = entry.state.heldReason {
                    print("Held: \(reason); `postern queue release \(id)` delivers it again, `postern queue delete \(id)` drops it")
                } else {
                    print("Next attempt: \(format(entry.state.nextAttempt))")
                }
                if let interrupted = entry.state.interruptedDeliveries {
                    print("Interrupted deliveries: \(interrupted) (the gateway stopped while delivering it)")
                }
                for recipient in entry.state.recipients {
                    print("Recipient: <\(recipient.address)> \(recipient.state.rawValue), \(recipient.attempts) attempt(s)"
                          + "\(recipient.upstream.map { " via \($0)" } ?? "")\(recipient.lastReply.map { ": \($0)" } ?? "")")
                }
                print("")
                print(headers)
            }
        }

        private func format(_ date: Date) -> String { QueueCommand.format(date) }
    }
}
