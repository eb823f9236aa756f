import ArgumentParser
import Foundation
import NIOCore
import PosternSpool
#if canImport(Glibc)
import Glibc
#endif

/// `postern queue`: inspect and steer the spool, whether or not the gateway runs. Works on the
/// files directly, under the same per-entry lock the relay takes.
struct QueueCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "queue",
        abstract: "List, show, retry, hold, release or delete queued messages.",
        subcommands: [List.self, Show.self, Retry.self, Hold.self, Release.self, Delete.self])

    struct SpoolOption: ParsableArguments {
        @Option(name: .long, help: "The spool directory.")
        var spool: String = "var/spool"

        var directory: SpoolDirectory { SpoolDirectory(root: URL(fileURLWithPath: spool)) }

        func validateExists() throws {
            guard FileManager.default.fileExists(atPath: directory.queuePath) else {
                throw ValidationError("no spool at \(spool) (expected \(directory.queuePath))")
            }
        }
    }

    static func format(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        return formatter.string(from: date)
    }

    /// Where a queued or held message is; a validation error naming the id when it is neither.
    static func locate(_ directory: SpoolDirectory, id: String) throws -> SpoolDirectory.Area {
        guard SpoolDirectory.isValidID(id) else { throw ValidationError("not a queue id: \(id)") }
        guard let area = SpoolDirectory.Area.allCases.first(where: { directory.contains(id: id, in: $0) }) else {
            throw ValidationError("no queued or held message \(id)")
        }
        return area
    }

    /// Takes an entry's lock, waiting up to a few seconds for a delivery in progress.
    static func lock(_ directory: SpoolDirectory, id: String, in area: SpoolDirectory.Area = .queue) throws -> SpoolDirectory.EntryLock {
        guard SpoolDirectory.isValidID(id), directory.contains(id: id, in: area) else { throw ValidationError("no queued message \(id)") }
        for _ in 0..<100 {
            if let lock = directory.lock(id: id, in: area) { return lock }
            guard directory.contains(id: id, in: area) else { throw ValidationError("\(id) is no longer queued (delivered meanwhile)") }
            usleep(100_000)
        }
        throw ValidationError("\(id) is being delivered right now; try again")
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List queued and held messages.")
        @OptionGroup var options: SpoolOption

        func run() async throws {
            try options.validateExists()
            let directory = options.directory
            let now = Date()
            print("ID                    STATUS  AGE        ATTEMPTS  NEXT ATTEMPT          SENDER -> PENDING RECIPIENTS")
            var counts: [SpoolDirectory.Area: Int] = [:]
            for area in SpoolDirectory.Area.allCases {
                let ids = directory.listIDs(in: area)
                counts[area] = ids.count
                let status = (area == .hold ? "HELD" : "queued").padding(toLength: 6, withPad: " ", startingAt: 0)
                for id in ids {
                    guard let (entry, _) = try? directory.readEntry(id: id, in: area) else {
                        print("\(id)  \(status)  (unreadable\(area == .queue ? "; the relay will move it aside" : ""))")
                        continue
                    }
                    // The arrival date is the queue file's word: Int(_:) would trap on an age no Int holds.
                    let seconds = now.timeIntervalSince(entry.envelope.receivedAt)
                    let age = seconds > 0 ? (seconds < 0x1p63 ? Int(seconds) : .max) : 0
                    let ageText = age < 3600 ? "\(age / 60)m" : "\(age / 3600)h\((age % 3600) / 60)m"
                    let sender = entry.envelope.sender.isEmpty ? "<>" : entry.envelope.sender
                    let next = area == .hold ? "held" : format(entry.state.nextAttempt)
                    print("\(id.padding(toLength: 20, withPad: " ", startingAt: 0))  \(status)  \(ageText.padding(toLength: 9, withPad: " ", startingAt: 0))  "
                          + "\(String(entry.state.attempts).padding(toLength: 8, withPad: " ", startingAt: 0))  \(next.padding(toLength: 20, withPad: " ", startingAt: 0))  "
                          + "\(sender) -> \(entry.state.pendingRecipients.joined(separator: ", "))")
                    if let reason = entry.state.heldReason { print("    \(reason)") }
                }
            }
            print("\(counts[.queue] ?? 0) message(s) queued, \(counts[.hold] ?? 0) held")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one message's envelope, state and headers (never the body).")
        @OptionGroup var options: SpoolOption
        @Argument(help: "Queue ID") var id: String

        func run() async throws {
            try options.validateExists()
            let directory = options.directory
            let area = try QueueCommand.locate(directory, id: id)
            let read: (entry: SpoolEntry, message: ByteBuffer)
            do { read = try directory.readEntry(id: id, in: area) } catch {
                throw ValidationError("\(id) cannot be read: \(error)")
            }
            let entry = read.entry
            let message = ByteBufferText(headers: String(decoding: read.message.readableBytesView, as: UTF8.self))
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
            print(message.headerSection)
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Retry one queued message, or all, now (a flush).",
            discussion: "Also lifts a running relay's pause of an upstream that was backing off after throttling or an outage. Held messages stay held; release them first.",
            aliases: ["flush"])
        @OptionGroup var options: SpoolOption
        @Argument(help: "Queue ID (all queued messages when omitted)") var id: String?

        func run() async throws {
            try options.validateExists()
            let directory = options.directory
            if let id, try QueueCommand.locate(directory, id: id) == .hold {
                throw ValidationError("\(id) is held; `postern queue release \(id)` puts it back in the queue")
            }
            let ids = id.map { [$0] } ?? directory.listIDs()
            var count = 0
            for id in ids {
                let lock: SpoolDirectory.EntryLock
                do { lock = try QueueCommand.lock(directory, id: id) } catch where self.id == nil { continue }
                defer { lock.release() }
                let (entry, _) = try directory.readEntry(id: id)
                var state = entry.state
                state.nextAttempt = Date()
                try directory.writeState(id: id, state)
                try directory.syncQueueDirectory()
                count += 1
            }
            directory.touch(.flush)
            print("\(count) message(s) scheduled for immediate retry; upstream pauses lifted")
        }
    }

    /// Changes one message under its lock: found where it is (queued or held; `wanted`, when given, or
    /// `otherwise` is the error), then a running relay is woken to see the change.
    static func change(_ options: SpoolOption, id: String, wanted: SpoolDirectory.Area? = nil, otherwise: String = "",
                       _ body: (SpoolDirectory, SpoolDirectory.Area) throws -> Void) throws {
        try options.validateExists()
        let directory = options.directory
        let area = try locate(directory, id: id)
        if let wanted, area != wanted { throw ValidationError(otherwise) }
        let lock = try lock(directory, id: id, in: area)
        defer { lock.release() }
        try body(directory, area)
        directory.touch(.wake)
    }

    struct Hold: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Take a queued message out of delivery until it is released.")
        @OptionGroup var options: SpoolOption
        @Argument(help: "Queue ID") var id: String

        func run() async throws {
            try QueueCommand.change(options, id: id, wanted: .queue, otherwise: "\(id) is already held") { directory, _ in
                var state = try directory.readEntry(id: id).entry.state
                state.heldReason = "held by the postmaster (postern queue hold)"
                try directory.hold(id: id, state: state)
            }
            print("held \(id)")
        }
    }

    struct Release: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put a held message back in the queue, due now.")
        @OptionGroup var options: SpoolOption
        @Argument(help: "Queue ID") var id: String

        func run() async throws {
            try QueueCommand.change(options, id: id, wanted: .hold, otherwise: "\(id) is not held") { directory, _ in
                try directory.release(id: id, now: Date())
            }
            print("released \(id)")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete one queued or held message, without a DSN.")
        @OptionGroup var options: SpoolOption
        @Argument(help: "Queue ID") var id: String

        func run() async throws {
            try QueueCommand.change(options, id: id) { directory, area in
                try directory.remove(id: id, in: area)
                try directory.syncDirectory(directory.path(of: area))
            }
            print("deleted \(id)")
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
