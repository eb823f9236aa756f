import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PosternCore

/// The durable queue between the receiving side and the relay.
///
/// `enqueue` returns only when the message is on disk for good. A message held in memory goes into the intake
/// log (`SpoolIntake`): concurrent enqueues share one write and one fdatasync (group commit). A streamed one
/// (`startMessage`) is its own queue file, and concurrent ones share the directory fsync. The blocking I/O runs on
/// a thread pool, never an event loop.
public final class Spool: Sendable {
    public let directory: SpoolDirectory
    let logger: Logger
    let pool: NIOThreadPool
    let syncer: DirectorySyncer
    /// Queued ids and their arrival times, for metrics.
    let index = NIOLockedValueBox<[String: Date]>([:])
    /// Files in `free/` that the next messages overwrite instead of creating new ones.
    let free: NIOLockedValueBox<[String]>
    /// At most this many files are kept in `free/`.
    static let freeLimit = 1024
    /// Deaths during an entry's delivery after which it is held instead of delivered again.
    public static let interruptionsBeforeHold = 2
    private let ledger: DeliveryLedger
    let intake: SpoolIntake
    /// The entries recovery took out of delivery at this start (the gateway audits them).
    public let heldAtStart: [HeldEntry]

    /// Opens (creating if needed) the spool at `directory` and recovers it.
    /// `ioThreads`: threads for the blocking file work. A message's write, fsync and the shared
    /// directory fsync hold one thread, so this bounds how many messages are stored at once.
    /// `keys`: spool encryption (`SpoolSealing`): new message files are sealed, sealed ones opened.
    public init(directory: URL, logger: Logger, ioThreads: Int = 16, keys: SpoolKeyRing? = nil) throws {
        self.directory = SpoolDirectory(root: directory, keys: keys)
        self.logger = logger
        self.syncer = DirectorySyncer(directory: self.directory)
        try self.directory.createDirectories()
        ledger = try DeliveryLedger(path: self.directory.root.appendingPathComponent(DeliveryLedger.fileName).path)
        // As the owner (the ledger's lock): what the intake log holds becomes queue files first, so that the
        // interrupted deliveries are counted, and everything recovered, in one layout.
        SpoolIntake.recover(self.directory, logger: logger)
        let free = NIOLockedValueBox<[String]>([])
        self.free = free
        intake = SpoolIntake(directory: self.directory, logger: logger, takeFree: { free.withLockedValue { $0.popLast() } })
        heldAtStart = SpoolRecovery.countInterruptions(self.directory, ids: ledger.interrupted, logger: logger)
        let recovered = SpoolRecovery.recover(self.directory, logger: logger)
        index.withLockedValue { index in
            for entry in recovered { index[entry.id] = entry.envelope.receivedAt }
        }
        var names = self.directory.freeNames().filter(QueueID.isValid)
        while names.count > Self.freeLimit { unlink("\(self.directory.freePath)/\(names.removeLast())") }
        free.withLockedValue { $0 = names }
        // Started last: a spool that fails to open leaves no threads behind. `shutdown` stops them.
        pool = NIOThreadPool(numberOfThreads: ioThreads)
        pool.start()
    }

    /// Moves what is left in the intake log into `queue/` (a stopped gateway leaves the classic layout), then
    /// stops the I/O threads.
    public func shutdown() async {
        let intake = self.intake
        try? await pool.runIfActive { intake.maintain(everything: true) }
        try? await pool.shutdownGracefully()
        ledger.close()
    }

    /// Marks `id` as being delivered until `endDelivery`: if the process dies in between, the next
    /// start counts it against the entry (see `DeliveryLedger`). Call with the entry locked.
    public func beginDelivery(id: String) -> DeliveryMark { ledger.mark(id) }

    public func endDelivery(_ mark: DeliveryMark) { ledger.clear(mark) }

    /// Entries held out of delivery now.
    public var heldCount: Int { directory.listIDs(in: .hold).count }

    /// Stores the message and its envelope durably. Returns only after its intake batch's fdatasync (or, for one
    /// over `SpoolIntake.recordLimit`, its queue file's fdatasync, rename and directory fsync).
    public func enqueue(id: String, envelope: SpoolEnvelope, message: ByteBuffer) async throws(SpoolError) {
        do {
            try await pool.runIfActive(enqueueJob(id: id, envelope: envelope, message: message))
        } catch let error as SpoolError { throw error } catch { throw .unwritable("\(error)") }
    }

    /// `enqueue` as a future on `eventLoop`, for callers on an event loop: no concurrency-pool hop. A message for the
    /// intake log is prepared here and joins the next batch without taking an I/O thread of its own; the batch's
    /// writer (one I/O thread) completes the future once the batch is durable.
    public func enqueue(id: String, envelope: SpoolEnvelope, message: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        guard message.readableBytes <= SpoolIntake.recordLimit else {
            return pool.runIfActive(eventLoop: eventLoop, enqueueJob(id: id, envelope: envelope, message: message))
        }
        let image: [UInt8]
        do { image = try MessageFileWriter.image(envelope: envelope, message: message, keys: directory.keys) } catch {
            return eventLoop.makeFailedFuture(error)
        }
        let promise = eventLoop.makePromise(of: Void.self)
        let index = self.index, intake = self.intake
        let mustFlush = intake.submit(id: id, envelope: envelope, messageSize: message.readableBytes, image: image) { error in
            if let error { return promise.fail(error) }
            index.withLockedValue { $0[id] = envelope.receivedAt }
            promise.succeed(())
        }
        if mustFlush {
            pool.submit { state in
                guard case .active = state else { return intake.failPending(.unwritable("the spool has stopped")) }
                intake.flush()
            }
        }
        return promise.futureResult
    }

    private func enqueueJob(id: String, envelope: SpoolEnvelope, message: ByteBuffer) -> @Sendable () throws -> Void {
        let directory = self.directory
        let syncer = self.syncer
        let logger = self.logger
        let intake = self.intake
        guard message.readableBytes > SpoolIntake.recordLimit else {
            return { [index] in
                try intake.append(id: id, envelope: envelope, messageSize: message.readableBytes, image: MessageFileWriter.image(envelope: envelope, message: message, keys: directory.keys))
                index.withLockedValue { $0[id] = envelope.receivedAt }
            }
        }
        let reuse = free.withLockedValue { $0.popLast() }
        return { [index] in
            do {
                try directory.writeMessage(id: id, envelope: envelope, message: message, reuse: reuse)
            } catch {
                logger.error("spool write failed", metadata: ["queue_id": "\(id)", "error": "\(error)"])
                throw error
            }
            try Self.sync(syncer, logger: logger)
            index.withLockedValue { $0[id] = envelope.receivedAt }
        }
    }

    /// Replaces an entry's delivery state durably. A message still in the intake log becomes a queue file first
    /// (the caller holds its lock).
    public func writeState(id: String, _ state: SpoolEntryState) async throws(SpoolError) {
        let directory = self.directory
        let syncer = self.syncer
        let logger = self.logger
        let intake = self.intake
        do {
            try await pool.runIfActive {
                if intake.contains(id) { try intake.materialize([id], claimed: true) }
                try directory.writeState(id: id, state)
                try Self.sync(syncer, logger: logger)
            }
        } catch let error as SpoolError { throw error } catch { throw .unwritable("\(error)") }
    }

    /// Removes a finished entry, keeping its file for reuse while `free/` has room.
    public func remove(id: String) async throws(SpoolError) {
        do {
            try await pool.runIfActive { try self.removeNow(id: id) }
        } catch let error as SpoolError { throw error } catch { throw .unwritable("\(error)") }
    }

    /// `remove` on the calling thread: a rename and an unlink, no fsync. For the relay, which
    /// removes a message right after delivering it and need not hop to an I/O thread for that.
    public func removeNow(id: String) throws(SpoolError) {
        if intake.finish(id) {
            index.withLockedValue { _ = $0.removeValue(forKey: id) }
            return
        }
        if free.withLockedValue({ $0.count < Self.freeLimit }) {
            keptFile(id, try directory.recycle(id: id))
        } else {
            try directory.remove(id: id)
        }
        index.withLockedValue { _ = $0.removeValue(forKey: id) }
    }

    /// A recycled file joins `free/`'s list, unless the list filled up meanwhile.
    /// (No directory fsync for removals: if a crash loses the rename or unlink, the message is
    /// delivered again, the same as a crash between the upstream's 250 and the removal. Postfix does
    /// not sync removals either.)
    private func keptFile(_ id: String, _ kept: Bool) {
        guard kept else { return }
        let full = free.withLockedValue { names -> Bool in
            guard names.count < Self.freeLimit else { return true }
            names.append(id)
            return false
        }
        if full { unlink("\(directory.freePath)/\(id)") }
    }

    /// Reads an entry with its message. A corrupt entry is moved aside and reported as nil.
    public func read(id: String) async -> (entry: SpoolEntry, message: ByteBuffer)? {
        let directory = self.directory
        return await readingEntry(id: id) { intake throws(SpoolDirectory.ReadError) in
            if let read = try intake.readEntry(id) { return read }
            return try directory.readEntry(id: id)
        }
    }

    /// Reads entry `id` with `body` on the I/O threads: nil when it is gone or cannot be opened, and then forgotten;
    /// a corrupt one is moved aside first, its record from the intake log or its files from `queue/`.
    func readingEntry<T: Sendable>(id: String, _ body: @escaping @Sendable (SpoolIntake) throws(SpoolDirectory.ReadError) -> T) async -> T? {
        let directory = self.directory
        let logger = self.logger
        let intake = self.intake
        let result = try? await pool.runIfActive { () -> T? in
            do throws(SpoolDirectory.ReadError) {
                return try body(intake)
            } catch {
                guard case .corrupt(let reason) = error else { return nil }
                if intake.contains(id) { intake.quarantine(id, reason: reason) } else {
                    SpoolRecovery.quarantine(directory, id: id, reason: reason, logger: logger)
                }
                return nil
            }
        }
        if result == nil { forget(id: id) }
        return result
    }

    /// The entry of a message already in memory (just spooled): reads only its state from disk,
    /// since `postern queue` may have changed it. Call with the entry locked.
    public func entry(id: String, envelope: SpoolEnvelope, message: ByteBuffer) -> SpoolEntry? {
        // In the intake log it has no state file: `postern queue` changes only queue files.
        if intake.contains(id) {
            return SpoolEntry(id: id, envelope: envelope, state: .initial(for: envelope), messageSize: message.readableBytes)
        }
        do {
            let state = try SpoolRecovery.stateOrReset(directory, id: id, envelope: envelope, logger: logger)
            return SpoolEntry(id: id, envelope: envelope, state: state, messageSize: message.readableBytes)
        } catch {
            return nil
        }
    }

    /// All queued entries (envelope and state, not the bodies), refreshing the metrics index.
    /// Picks up changes made by the CLI or another process.
    public func scan() async -> [SpoolEntry] {
        await scan(skipping: { _ in false }).entries
    }

    /// The ids queued now, and the entries (envelope and state) of those `skip` does not exclude.
    /// Reads each entry's header and envelope, not its body: the body's checksum is verified when
    /// the message is read for delivery. Refreshes the metrics index.
    public func scan(skipping skip: @escaping @Sendable (String) -> Bool) async -> (present: Set<String>, entries: [SpoolEntry]) {
        let directory = self.directory
        let logger = self.logger
        let intake = self.intake
        let result = (try? await pool.runIfActive { () -> (Set<String>, [SpoolEntry]) in
            var present = Set<String>()
            var entries: [SpoolEntry] = []
            // The log first: a record moved into `queue/` meanwhile is then in the listing too (and read once).
            for (id, envelope, size) in intake.snapshot() {
                present.insert(id)
                if skip(id) { continue }
                entries.append(SpoolEntry(id: id, envelope: envelope, state: .initial(for: envelope), messageSize: size))
            }
            for id in directory.listIDs() {
                if present.contains(id) { continue }
                present.insert(id)
                if skip(id) { continue }
                do throws(SpoolDirectory.ReadError) {
                    let (envelope, size) = try directory.readEnvelope(id: id)
                    let state = try SpoolRecovery.stateOrReset(directory, id: id, envelope: envelope, logger: logger)
                    entries.append(SpoolEntry(id: id, envelope: envelope, state: state, messageSize: size))
                } catch {
                    present.remove(id)
                    if case .corrupt(let reason) = error { SpoolRecovery.quarantine(directory, id: id, reason: reason, logger: logger) }
                }
            }
            return (present, entries)
        }) ?? ([], [])
        index.withLockedValue { index in
            for id in Array(index.keys) where !result.0.contains(id) { index.removeValue(forKey: id) }
            for entry in result.1 { index[entry.id] = entry.envelope.receivedAt }
        }
        return (result.0, result.1)
    }

    /// Locks an entry for delivery: a queue file's flock, or the claim on its intake record. Nil when it is gone
    /// or someone else holds it.
    public func lock(id: String) -> SpoolDirectory.EntryLock? {
        let intake = self.intake
        switch intake.claim(id) {
        case .claimed: return SpoolDirectory.EntryLock(onRelease: { intake.release(id) })
        case .busy: return nil
        case .absent: return directory.lock(id: id)
        }
    }

    /// Whether `id` is queued (in the intake log or as a queue file).
    public func contains(id: String) -> Bool { intake.contains(id) || directory.contains(id: id) }

    /// The intake log's upkeep (`SpoolIntake.maintain`): the relay calls it every second; with `everything`
    /// (the `settle` signal of `postern queue`), every message in the log not being delivered becomes a queue file.
    public func maintainIntake(everything: Bool = false) async {
        let intake = self.intake
        try? await pool.runIfActive { intake.maintain(everything: everything) }
    }

    /// Messages in the intake log now.
    public var intakeCount: Int { intake.count }

    /// Messages in the intake log now, and the batches and messages written to it since the start.
    public var intakeStatistics: (messages: Int, batches: Int, written: Int) {
        let written = intake.written
        return (intake.count, written.batches, written.records)
    }

    func forget(id: String) { index.withLockedValue { _ = $0.removeValue(forKey: id) } }

    /// Messages in the queue.
    public var depth: Int { index.withLockedValue { $0.count } }

    /// Age of the oldest queued message, zero when the queue is empty.
    public func oldestAge(now: Date = Date()) -> TimeInterval {
        guard let oldest = index.withLockedValue({ $0.values.min() }) else { return 0 }
        return max(0, now.timeIntervalSince(oldest))
    }

    static func sync(_ syncer: DirectorySyncer, logger: Logger) throws(SpoolError) {
        do { try syncer.sync() } catch {
            logger.error("spool directory fsync failed", metadata: ["error": "\(error)"])
            throw error
        }
    }
}

/// Group commit for the queue directory: every caller waits for an fsync that started after its
/// rename; callers arriving while one runs share the next. Blocking, for the spool's I/O threads:
/// the write, its fsync, the rename and the shared directory fsync are one job on one thread,
/// without hops through the concurrency pool between them.
final class DirectorySyncer: @unchecked Sendable {
    /// The callers that one fsync covers. Guarded by `condition`.
    private final class Batch {
        var done = false
        var error: SpoolError?
    }

    private let directory: SpoolDirectory
    private let condition = NSCondition()
    private var pending = Batch()
    private var syncing = false

    init(directory: SpoolDirectory) {
        self.directory = directory
    }

    /// Returns once an fsync of the queue directory that started after this call has succeeded.
    func sync() throws(SpoolError) {
        condition.lock()
        let mine = pending
        while !mine.done {
            if syncing {
                condition.wait()
                continue
            }
            // Lead: this fsync covers everyone who joined the pending batch so far.
            syncing = true
            let batch = pending
            pending = Batch()
            condition.unlock()
            var failure: SpoolError?
            do { try directory.syncQueueDirectory() } catch { failure = error }
            condition.lock()
            batch.error = failure
            batch.done = true
            syncing = false
            condition.broadcast()
        }
        let error = mine.error
        condition.unlock()
        if let error { throw error }
    }
}

/// An entry taken out of delivery, for the audit log.
public struct HeldEntry: Sendable, Hashable {
    public var id: String
    public var sender: String
    public var recipients: [String]
    public var reason: String
}

/// Startup recovery: what a crash can leave behind, and what to do with it.
enum SpoolRecovery {
    /// Counts one interrupted delivery for each entry the process died delivering; holds those that
    /// reached `Spool.interruptionsBeforeHold`. Returns the held ones.
    static func countInterruptions(_ directory: SpoolDirectory, ids: [String], logger: Logger) -> [HeldEntry] {
        var held: [HeldEntry] = []
        for id in ids where directory.contains(id: id) {
            do {
                let (envelope, _) = try directory.readEnvelope(id: id)
                var state = try stateOrReset(directory, id: id, envelope: envelope, logger: logger)
                // The count comes from the state file, so it may be any Int: one more must not overflow.
                let previous = state.interruptedDeliveries ?? 0
                let count = previous == .max ? previous : previous + 1
                state.interruptedDeliveries = count
                guard count >= Spool.interruptionsBeforeHold else {
                    try directory.writeState(id: id, state)
                    try directory.syncQueueDirectory()
                    logger.warning("spool recovery: the gateway stopped while delivering this message; it will be tried again",
                                   metadata: ["queue_id": "\(id)", "interrupted": "\(count)"])
                    continue
                }
                let reason = "held after \(count) interrupted deliveries: the gateway stopped while delivering it each time"
                state.heldReason = reason
                try directory.hold(id: id, state: state)
                held.append(HeldEntry(id: id, sender: envelope.sender, recipients: envelope.recipients, reason: reason))
                logger.critical("""
                    spool recovery: message held; the gateway stopped while delivering it \(count) times. \
                    See `postern queue show \(id)`, then `postern queue release \(id)` or `postern queue delete \(id)`
                    """,
                                metadata: ["queue_id": "\(id)", "interrupted": "\(count)"])
            } catch {
                // Unreadable: the full recovery below moves it aside.
                logger.error("spool recovery: cannot count an interrupted delivery", metadata: ["queue_id": "\(id)", "error": "\(error)"])
            }
        }
        return held
    }

    /// Removes half-written temp files (a message still arriving when the process died, see
    /// `MessageFileWriter`) and orphaned state files, moves corrupt files aside, and
    /// returns the entries that are queued.
    static func recover(_ directory: SpoolDirectory, logger: Logger) -> [SpoolEntry] {
        let fm = FileManager.default
        // Temp files never became part of the queue: the client did not hear 250 for them.
        for name in (try? fm.contentsOfDirectory(atPath: directory.tmpPath)) ?? [] {
            unlink("\(directory.tmpPath)/\(name)")
            logger.notice("spool recovery: removed half-written file", metadata: ["file": "tmp/\(name)"])
        }
        let names = Set((try? fm.contentsOfDirectory(atPath: directory.queuePath)) ?? [])
        for name in names.sorted() {
            if name.hasSuffix(".msg") || name.hasSuffix(".state") {
                let id = String(name[..<name.lastIndex(of: ".")!])  // `!`: the name ends in .msg or .state
                if name.hasSuffix(".state") && !names.contains("\(id).msg") {
                    // The message was removed (delivered) and the crash came before its state went.
                    unlink("\(directory.queuePath)/\(name)")
                    logger.notice("spool recovery: removed state of a finished message", metadata: ["file": "queue/\(name)"])
                }
                continue
            }
            let moved = directory.quarantine(name: name)
            logger.error("spool recovery: unknown file moved aside", metadata: ["file": "queue/\(name)", "moved_to": "\(moved)"])
        }
        var entries: [SpoolEntry] = []
        for id in directory.listIDs() {
            do {
                // In chunks: a queue of large messages is checked without loading any of them whole.
                let file = try directory.openMessage(id: id)
                defer { file.close() }
                try file.verify()
                let state = try stateOrReset(directory, id: id, envelope: file.envelope, logger: logger)
                entries.append(SpoolEntry(id: id, envelope: file.envelope, state: state, messageSize: file.messageLength))
            } catch {
                switch error {
                case .corrupt(let reason): quarantine(directory, id: id, reason: reason, logger: logger)
                case .locked(let reason):
                    // Left in place and not delivered: the key file lacks its key (or encryption is off).
                    logger.critical("spool: encrypted queue file cannot be opened; left in place, not delivered",
                                    metadata: ["queue_id": "\(id)", "reason": "\(reason)"])
                case .missing: continue
                }
            }
        }
        if !entries.isEmpty {
            logger.info("spool recovered", metadata: ["queued": "\(entries.count)"])
        }
        return entries
    }

    /// A corrupt state file is moved aside and delivery starts over for all recipients:
    /// a duplicate is better than a lost message.
    static func stateOrReset(_ directory: SpoolDirectory, id: String, envelope: SpoolEnvelope, logger: Logger) throws(SpoolDirectory.ReadError) -> SpoolEntryState {
        do {
            return try directory.readState(id: id, envelope: envelope)
        } catch .corrupt(let reason) {
            let moved = directory.quarantine(name: "\(id).state")
            logger.error("spool: corrupt state file moved aside; all recipients will be retried",
                         metadata: ["queue_id": "\(id)", "reason": "\(reason)", "moved_to": "\(moved)"])
            return .initial(for: envelope)
        }
    }

    static func quarantine(_ directory: SpoolDirectory, id: String, reason: String, logger: Logger) {
        let moved = directory.quarantine(name: "\(id).msg")
        if FileManager.default.fileExists(atPath: directory.statePath(id)) {
            _ = directory.quarantine(name: "\(id).state")
        }
        logger.error("spool: corrupt queue file moved aside", metadata: ["queue_id": "\(id)", "reason": "\(reason)", "moved_to": "\(moved)"])
    }
}
