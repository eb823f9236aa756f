import ArgumentParser
import Foundation
import Logging
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
        abstract: "List, show, flush, hold, release, delete or adopt queued messages.",
        discussion: """
            The spool is the one of the gateway configuration (--config, default $POSTERN_CONFIG or \
            /etc/postern/postern.yaml); --spool DIR names one directly for reading. Changes (flush, hold, \
            release, delete, adopt) are written to the configuration's audit log, so they need --config.

            Exit status: 0 done; 1 nothing done (no such message, not applicable, or --all without --yes); \
            2 the spool or the configuration could not be read or changed; 64 a usage error.
            """,
        subcommands: [List.self, Show.self, Flush.self, Hold.self, Release.self, Delete.self, QueueAdopt.self])

    // MARK: Finding the spool

    struct SpoolOptions: ParsableArguments {
        @Option(name: .long, help: "The gateway configuration file (YAML); its delivery.spool and audit log are used.")
        var config: String?

        @Option(name: .long, help: "The spool directory, instead of the configuration's (reading only).")
        var spool: String?

        /// The configuration named, or the default one.
        var configPath: String {
            ConfigPath.resolve(config)
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
            let directory = try Self.existing(path, keys: configuration.spoolKeys)
            if forChanges {
                // Messages accepted in the last seconds are in the intake log; the changes work on queue files.
                directory.settleIntake(logger: Logger(label: "postern.queue", factory: { label in StreamLogHandler.standardError(label: label) }))
            }
            do {
                // A gateway that logs its audit lines to its standard output (a journal) cannot be appended
                // to from here: the event goes to this command's standard error instead.
                return (directory, try AuditLog.make(output: configuration.auditOutput ?? "stderr"))
            } catch {
                throw QueueFailure.unusable("cannot open the audit log \(configuration.auditOutput ?? "(standard output)"): \(error)")
            }
        }

        /// `keys`: the configuration's spool keys; without them (`--spool` alone) encrypted entries cannot be read.
        private static func existing(_ path: String, keys: SpoolKeyRing? = nil) throws -> SpoolDirectory {
            let directory = SpoolDirectory(root: URL(fileURLWithPath: path), keys: keys)
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
            if directory.isInIntake(id: id) { throw QueueFailure.notDone("\(id) was just accepted and is being delivered right now; try again") }
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

    // MARK: Subcommands

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
                // The pause is lifted first: each change below wakes the relay, whose rescan would otherwise find an
                // entry due while the upstream is still paused and write the pause's end back into it (a race seen
                // as a flushed message that waited out the pause all the same).
                directory.touch(.flush)
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
