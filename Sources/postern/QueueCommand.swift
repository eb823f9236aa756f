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
        abstract: "List, show, retry or delete queued messages.",
        subcommands: [List.self, Show.self, Retry.self, Delete.self])

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

    /// Takes an entry's lock, waiting up to a few seconds for a delivery in progress.
    static func lock(_ directory: SpoolDirectory, id: String) throws -> SpoolDirectory.EntryLock {
        guard SpoolDirectory.isValidID(id), directory.listIDs().contains(id) else { throw ValidationError("no queued message \(id)") }
        for _ in 0..<100 {
            if let lock = directory.lock(id: id) { return lock }
            guard directory.listIDs().contains(id) else { throw ValidationError("\(id) is no longer queued (delivered meanwhile)") }
            usleep(100_000)
        }
        throw ValidationError("\(id) is being delivered right now; try again")
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List queued messages.")
        @OptionGroup var options: SpoolOption

        func run() async throws {
            try options.validateExists()
            let directory = options.directory
            let ids = directory.listIDs()
            let now = Date()
            print("ID                    AGE        ATTEMPTS  NEXT ATTEMPT          SENDER -> PENDING RECIPIENTS")
            for id in ids {
                guard let (entry, _) = try? directory.readEntry(id: id) else {
                    print("\(id)  (unreadable; the relay will move it aside)")
                    continue
                }
                let age = Int(now.timeIntervalSince(entry.envelope.receivedAt))
                let ageText = age < 3600 ? "\(age / 60)m" : "\(age / 3600)h\((age % 3600) / 60)m"
                let sender = entry.envelope.sender.isEmpty ? "<>" : entry.envelope.sender
                print("\(id.padding(toLength: 20, withPad: " ", startingAt: 0))  \(ageText.padding(toLength: 9, withPad: " ", startingAt: 0))  "
                      + "\(String(entry.state.attempts).padding(toLength: 8, withPad: " ", startingAt: 0))  \(format(entry.state.nextAttempt))  "
                      + "\(sender) -> \(entry.state.pendingRecipients.joined(separator: ", "))")
            }
            print("\(ids.count) message(s) queued")
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show one message's envelope, state and headers (never the body).")
        @OptionGroup var options: SpoolOption
        @Argument(help: "Queue ID") var id: String

        func run() async throws {
            try options.validateExists()
            let directory = options.directory
            guard SpoolDirectory.isValidID(id) else { throw ValidationError("not a queue id: \(id)") }
            guard directory.listIDs().contains(id) else { throw ValidationError("no queued message \(id)") }
            let read: (entry: SpoolEntry, message: ByteBuffer)
            do { read = try directory.readEntry(id: id) } catch {
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
            print("Next attempt: \(format(entry.state.nextAttempt))")
            for recipient in entry.state.recipients {
                print("Recipient: <\(recipient.address)> \(recipient.state.rawValue), \(recipient.attempts) attempt(s)"
                      + "\(recipient.upstream.map { " via \($0)" } ?? "")\(recipient.lastReply.map { ": \($0)" } ?? "")")
            }
            print("")
            print(message.headerSection)
        }
    }

    struct Retry: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Retry one message, or all, now.")
        @OptionGroup var options: SpoolOption
        @Argument(help: "Queue ID (all messages when omitted)") var id: String?

        func run() async throws {
            try options.validateExists()
            let directory = options.directory
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
            directory.touchWake()
            print("\(count) message(s) scheduled for immediate retry")
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete one message from the queue, without a DSN.")
        @OptionGroup var options: SpoolOption
        @Argument(help: "Queue ID") var id: String

        func run() async throws {
            try options.validateExists()
            let directory = options.directory
            let lock = try QueueCommand.lock(directory, id: id)
            defer { lock.release() }
            try directory.remove(id: id)
            try directory.syncQueueDirectory()
            directory.touchWake()
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
