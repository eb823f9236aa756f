import ArgumentParser
import Foundation
import Logging
import PosternCore
import PosternSpool

/// `postern queue adopt DIR`: takes over the spool of a node that is gone for good (its disk mounted here, or its
/// spool copied here), so that this node delivers what the other had accepted.
///
/// Each entry is checked (its queue file's header and checksum, its state), then written into this node's spool
/// in the order the spool's own moves use (state first, then the message, each durable), and only then removed
/// from DIR (message first, then state). A crash or a second run in between finds the entry already here and only
/// removes it from DIR, so adopting twice delivers nothing twice. Queued entries are due at once; held ones stay
/// held. Entries that fail the check stay in DIR and are named.
///
/// The dead node's record of deliveries in progress (`delivering`) is not carried over: a message it was sending at
/// the moment it died may reach the upstream twice, as after any crash (at least once, never lost).
struct QueueAdopt: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "adopt",
        abstract: "Move the messages of another node's spool (a node lost for good) into this one's, due now.",
        discussion: """
            DIR is the other node's spool directory (the one holding queue/ and hold/). Its gateway must not run: \
            an entry it is delivering is skipped. This node's gateway may run; it is woken to deliver at once. \
            Every adopted message is written to this configuration's audit log (queue_adopt).
            """)

    @OptionGroup var options: QueueCommand.SpoolOptions
    @Argument(help: "The lost node's spool directory") var directory: String

    func run() async throws {
        try QueueCommand.running {
            let (local, audit) = try options.open(forChanges: true)
            let lost = SpoolDirectory(root: URL(fileURLWithPath: directory))
            guard FileManager.default.fileExists(atPath: lost.queuePath) else {
                throw QueueCommand.QueueFailure.unusable("no spool at \(directory) (expected \(lost.queuePath))")
            }
            guard URL(fileURLWithPath: lost.root.path).standardized.resolvingSymlinksInPath().path
                != URL(fileURLWithPath: local.root.path).standardized.resolvingSymlinksInPath().path else {
                throw QueueCommand.QueueFailure.unusable("\(directory) is this node's own spool")
            }
            // What the lost node had just accepted is still in its intake log: queue files first.
            lost.settleIntake(logger: Logger(label: "postern.queue", factory: { label in StreamLogHandler.standardError(label: label) }))
            var adopted = 0
            var problems: [String] = []
            for area in SpoolDirectory.Area.allCases {
                for id in lost.listIDs(in: area) {
                    do {
                        if try adopt(id, area: area, from: lost, into: local, audit: audit) { adopted += 1 }
                    } catch {
                        problems.append("\(id): \(error)")
                    }
                }
            }
            local.touch(.wake)
            print("\(adopted) message(s) adopted from \(directory) into \(local.root.path)")
            for problem in problems { FileHandle.standardError.write(Data("postern queue: not adopted: \(problem)\n".utf8)) }
            if !problems.isEmpty {
                throw QueueCommand.QueueFailure.notDone("\(problems.count) message(s) left in \(directory)")
            }
        }
    }

    struct EntryBusy: Error, CustomStringConvertible {
        var description: String { "being delivered: is the other node's gateway still running?" }
    }

    /// Moves one entry; returns false when it was here already (a run interrupted after the copy), and only removes it.
    private func adopt(_ id: String, area: SpoolDirectory.Area, from lost: SpoolDirectory, into local: SpoolDirectory,
                       audit: AuditLog?) throws -> Bool {
        guard QueueID.isValid(id) else { throw QueueCommand.QueueFailure.notDone("not a queue id") }
        guard let lock = lost.lock(id: id, in: area) else { throw EntryBusy() }
        defer { lock.release() }
        let entry = try lost.readEntry(id: id, in: area).entry
        let source = "\(lost.path(of: area))/\(id).msg"
        guard let bytes = FileManager.default.contents(atPath: source) else {
            throw QueueCommand.QueueFailure.unusable("cannot read \(source)")
        }
        let copy = SpoolDirectory.Area.allCases.lazy.map { "\(local.path(of: $0))/\(id).msg" }.first { FileManager.default.fileExists(atPath: $0) }
        // Queue ids are unique per node, not across nodes: one here with other contents is another message.
        if let copy, FileManager.default.contents(atPath: copy) != bytes {
            throw QueueCommand.QueueFailure.notDone("a different message with this id is in \(copy); move it aside by hand")
        }
        let here = copy != nil
        if !here {
            var state = entry.state
            if area == .queue { state.nextAttempt = Date() }
            try local.writeState(id: id, state, in: area)
            try local.syncDirectory(local.path(of: area))
            do {
                try DurableFile.write(to: "\(local.path(of: area))/\(id).msg", temporary: "\(local.tmpPath)/\(id).msg.adopt") { output throws(DurableWriteError) in
                    try output.write(bytes)
                }
            } catch {
                throw QueueCommand.QueueFailure.unusable("writing \(id) into \(local.root.path): \(error)")
            }
            audit?.queueChange(action: "adopt", queueID: id, sender: entry.envelope.sender, recipients: entry.state.pendingRecipients,
                               actor: QueueCommand.actor)
        }
        try lost.remove(id: id, in: area)
        try lost.syncDirectory(lost.path(of: area))
        return !here
    }
}
