import ArgumentParser
import Foundation
import NIOCore
import PosternCore
import PosternGateway
import PosternSpool
#if canImport(Glibc)
import Glibc
#endif

/// `postern queue`: inspect and steer the spool, whether or not the gateway runs, as Postfix's postqueue
/// and postsuper do. Works on the files directly, under the same per-entry lock the relay takes, and
/// writes an audit event for every change.
struct QueueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue",
        abstract: "List, show, flush, hold, release or delete queued messages.",
        discussion: """
            The spool is the one of the gateway configuration (--config, default $POSTERN_CONFIG or \
            /etc/postern/postern.yaml); --spool DIR names one directly for reading. Changes (flush, hold, \
            release, delete) are written to the configuration's audit log, so they need --config.

            Exit status: 0 done; 1 nothing done (no such message, not applicable, or --all without --yes); \
            2 the spool or the configuration could not be read or changed; 64 a usage error.
            """,
        subcommands: [List.self, Show.self, Flush.self, Hold.self, Release.self, Delete.self])

    // MARK: Finding the spool

    struct SpoolOptions: ParsableArguments {
        @Option(name: .long, help: "The gateway configuration file (YAML); its delivery.spool and audit log are used.")
        var config: String?

        @Option(name: .long, help: "The spool directory, instead of the configuration's (reading only).")
        var spool: String?

        /// The configuration named, or the default one.
        var configPath: String {
            config ?? ProcessInfo.processInfo.environment["POSTERN_CONFIG"].flatMap { $0.isEmpty ? nil : $0 } ?? "/etc/postern/postern.yaml"
        }

        /// The spool to work on, and the audit log for changes (nil: `--spool` without a configuration).
        func open(forChanges: Bool) throws -> (directory: SpoolDirectory, audit: AuditLog?) {
            if let spool, !forChanges {
                return (try Self.existing(spool), nil)
            }
            let configuration: GatewayConfiguration
            do {
                configuration = try GatewayConfiguration.load(path: configPath)
            } catch {
                let hint = config == nil && spool == nil ? " (give --config FILE, or --spool DIR to read a spool)" : ""
                throw QueueFailure.unusable("cannot use the configuration \(configPath)\(hint):\n\(error)")
            }
            guard case .relay(let path, _) = configuration.delivery else {
                throw QueueFailure.unusable("\(configPath) delivers to an outbox, which has no queue")
            }
            if let spool, URL(fileURLWithPath: spool).standardized.path != URL(fileURLWithPath: path).standardized.path {
                throw QueueFailure.unusable("--spool \(spool) is not the spool of \(configPath) (\(path)); give one of the two")
            }
            let directory = try Self.existing(path)
            do {
                // A gateway that logs its audit lines to its standard output (a journal) cannot be appended
                // to from here: the event goes to this command's standard error instead.
                return (directory, try AuditLog.make(output: configuration.auditOutput ?? "stderr"))
            } catch {
                throw QueueFailure.unusable("cannot open the audit log \(configuration.auditOutput ?? "(standard output)"): \(error)")
            }
        }

        private static func existing(_ path: String) throws -> SpoolDirectory {
            let directory = SpoolDirectory(root: URL(fileURLWithPath: path))
            guard FileManager.default.fileExists(atPath: directory.queuePath) else {
                throw QueueFailure.unusable("no spool at \(path) (expected \(directory.queuePath))")
            }
            return directory
        }
    }

    /// Why a queue command did nothing; each has its exit status (see the discussion above).
    enum QueueFailure: Error, CustomStringConvertible {
        /// Nothing done: no such message, not applicable, or a confirmation missing.
        case notDone(String)
        /// The spool or the configuration could not be read or changed.
        case unusable(String)

        var description: String {
            switch self {
            case .notDone(let text), .unusable(let text): return text
            }
        }

        var exitCode: ExitCode {
            switch self {
            case .notDone: return ExitCode(1)
            case .unusable: return ExitCode(2)
            }
        }
    }

    /// Runs a subcommand's body; a `QueueFailure` is printed on stderr (without the usage text) and exits
    /// with its status.
    static func running(_ body: () throws -> Void) throws {
        do {
            try body()
        } catch let failure as QueueFailure {
            FileHandle.standardError.write(Data("postern queue: \(failure)\n".utf8))
            throw failure.exitCode
        } catch let error as SpoolError {
            FileHandle.standardError.write(Data("postern queue: \(error.plain)\n".utf8))
            throw ExitCode(2)
        }
    }

    // MARK: Entries

    /// Where a queued or held message is.
    static func locate(_ directory: SpoolDirectory, id: String) throws -> SpoolDirectory.Area {
        guard QueueID.isValid(id) else { throw QueueFailure.notDone("\(id) is not a queue id") }
        guard let area = SpoolDirectory.Area.allCases.first(where: { directory.contains(id: id, in: $0) }) else {
            throw QueueFailure.notDone("no queued or held message \(id)")
        }
        return area
    }

    /// Takes an entry's lock, waiting up to ten seconds for a delivery in progress.
    static func lock(_ directory: SpoolDirectory, id: String, in area: SpoolDirectory.Area) throws -> SpoolDirectory.EntryLock {
        for _ in 0..<100 {
            if let lock = directory.lock(id: id, in: area) { return lock }
            guard directory.contains(id: id, in: area) else { throw QueueFailure.notDone("\(id) is no longer queued (delivered meanwhile)") }
            usleep(100_000)
        }
        throw QueueFailure.notDone("\(id) is being delivered right now; try again")
    }

    /// Changes one message under its lock: found where it is (in `wanted`, when given, or `otherwise` is
    /// the failure), changed by `body`, audited, and a running relay woken to see it.
    static func change(_ directory: SpoolDirectory, audit: AuditLog?, action: String, id: String, wanted: SpoolDirectory.Area? = nil,
                       otherwise: String = "", _ body: (SpoolEntry, SpoolDirectory.Area) throws -> Void) throws {
        let area = try locate(directory, id: id)
        if let wanted, area != wanted { throw QueueFailure.notDone(otherwise) }
        let lock = try lock(directory, id: id, in: area)
        defer { lock.release() }
        let entry: SpoolEntry
        do { entry = try directory.readEntry(id: id, in: area).entry } catch {
            throw QueueFailure.unusable("\(id) cannot be read (\(error)); the relay moves unreadable entries to corrupt/")
        }
        try body(entry, area)
        audit?.queueChange(action: action, queueID: id, sender: entry.envelope.sender,
                           recipients: entry.state.pendingRecipients, actor: actor)
        directory.touch(.wake)
    }

    /// Who ran the command, for the audit log.
    static var actor: String {
        let uid = getuid()
        if let entry = getpwuid(uid), let name = entry.pointee.pw_name { return String(cString: name) }
        return "uid \(uid)"
    }

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

    static func printJSON<T: Encodable>(_ value: T) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        guard let text = String(data: try encoder.encode(value), encoding: .utf8) else { return }
        print(text)
    }

    // MARK: Subcommands

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
                var unreadable: [String] = []
                for area in SpoolDirectory.Area.allCases {
                    for id in directory.listIDs(in: area) {
                        if let (entry, _) = try? directory.readEntry(id: id, in: area) {
                            listings.append(Listing(entry, area: area, now: now))
                        } else {
                            unreadable.append(id)
                        }
                    }
                }
                if json { return try QueueCommand.printJSON(listings) }
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
                for id in unreadable { print("\(id)  (unreadable; the relay moves it to corrupt/)") }
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
                let area = try QueueCommand.locate(directory, id: id)
                let read: (entry: SpoolEntry, message: ByteBuffer)
                do { read = try directory.readEntry(id: id, in: area) } catch {
                    throw QueueFailure.unusable("\(id) cannot be read (\(error)); the relay moves unreadable entries to corrupt/")
                }
                let entry = read.entry
                let headers = ByteBufferText(headers: String(decoding: read.message.readableBytesView, as: UTF8.self)).headerSection
                if json {
                    struct Shown: Encodable {
                        var message: Listing
                        var headers: String
                    }
                    return try QueueCommand.printJSON(Shown(message: Listing(entry, area: area, now: Date()), headers: headers))
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

    struct Flush: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Try one queued message, or all, now, ignoring backoff (postqueue -f).",
            discussion: "Also lifts a running relay's pause of an upstream that was backing off after throttling or an outage. Held messages stay held; release them first.",
            aliases: ["retry"])
        @OptionGroup var options: SpoolOptions
        @Argument(help: "Queue ID (all queued messages when omitted)") var id: String?

        func run() async throws {
            try QueueCommand.running {
                let (directory, audit) = try options.open(forChanges: true)
                if let id, try QueueCommand.locate(directory, id: id) == .hold {
                    throw QueueFailure.notDone("\(id) is held; `postern queue release \(id)` puts it back in the queue")
                }
                var count = 0
                for queued in id.map({ [$0] }) ?? directory.listIDs() {
                    do {
                        try QueueCommand.change(directory, audit: audit, action: "flush", id: queued, wanted: .queue) { entry, _ in
                            var state = entry.state
                            state.nextAttempt = Date()
                            try directory.writeState(id: queued, state)
                            try directory.syncQueueDirectory()
                        }
                        count += 1
                    } catch QueueFailure.notDone(let why) where id == nil {
                        FileHandle.standardError.write(Data("postern queue: skipped: \(why)\n".utf8))  // delivered meanwhile
                    }
                }
                directory.touch(.flush)
                print("\(count) message(s) due now; upstream pauses lifted")
            }
        }
    }

    struct Hold: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Take a queued message out of delivery until it is released (postsuper -h).")
        @OptionGroup var options: SpoolOptions
        @Argument(help: "Queue ID") var id: String

        func run() async throws {
            try QueueCommand.running {
                let (directory, audit) = try options.open(forChanges: true)
                try QueueCommand.change(directory, audit: audit, action: "hold", id: id, wanted: .queue, otherwise: "\(id) is already held") { entry, _ in
                    var state = entry.state
                    state.heldReason = "held by the postmaster (postern queue hold)"
                    try directory.hold(id: id, state: state)
                }
                print("held \(id)")
            }
        }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put held messages back in the queue, due now (postsuper -H).")
        @OptionGroup var options: SpoolOptions
        @Argument(help: "Queue IDs") var ids: [String] = []
        @Flag(help: "Every held message.") var all = false

        func validate() throws {
            guard all != !ids.isEmpty else { throw ValidationError("give queue IDs or --all") }
        }

        func run() async throws {
            try QueueCommand.running {
                let (directory, audit) = try options.open(forChanges: true)
                for id in all ? directory.listIDs(in: .hold) : ids {
                    try QueueCommand.change(directory, audit: audit, action: "release", id: id, wanted: .hold, otherwise: "\(id) is not held") { _, _ in
                        try directory.release(id: id, now: Date())
                    }
                    print("released \(id)")
                }
            }
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Delete queued or held messages, without a DSN (postsuper -d).",
            discussion: "`--all --yes` deletes every queued and held message; without --yes, --all only says how many it would delete.")
        @OptionGroup var options: SpoolOptions
        @Argument(help: "Queue IDs") var ids: [String] = []
        @Flag(help: "Every queued and held message.") var all = false
        @Flag(help: "Confirms --all.") var yes = false

        func validate() throws {
            guard all != !ids.isEmpty else { throw ValidationError("give queue IDs or --all") }
        }

        func run() async throws {
            try QueueCommand.running {
                let (directory, audit) = try options.open(forChanges: true)
                let targets = all ? SpoolDirectory.Area.allCases.flatMap { directory.listIDs(in: $0) } : ids
                if all && !yes {
                    throw QueueFailure.notDone("--all would delete \(targets.count) message(s) without a DSN; add --yes to do it")
                }
                var deleted = 0
                for id in targets {
                    do {
                        try QueueCommand.change(directory, audit: audit, action: "delete", id: id) { _, area in
                            try directory.remove(id: id, in: area)
                            try directory.syncDirectory(directory.path(of: area))
                        }
                        deleted += 1
                        if !all { print("deleted \(id)") }
                    } catch QueueFailure.notDone(let why) where all {
                        FileHandle.standardError.write(Data("postern queue: skipped: \(why)\n".utf8))  // delivered meanwhile
                    }
                }
                if all { print("deleted \(deleted) message(s)") }
            }
        }
    }
}

extension SpoolError {
    /// What an operator reads.
    var plain: String {
        switch self {
        case .full: return "the spool's file system is full"
        case .unwritable(let why): return "the spool could not be written: \(why)"
        }
    }
}

/// The header section of a message as text.
struct ByteBufferText {
    var headers: String
    var headerSection: String {
        if let range = headers.range(of: "\r\n\r\n") { return String(headers[..<range.lowerBound]) }
        return headers
    }
}
