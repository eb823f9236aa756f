import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PosternCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The intake log (issue #20's throughput step): messages accepted at the same moment are made durable together,
/// with one write and one `fdatasync` for the whole batch, instead of a file, an `fdatasync` and a rename each.
///
/// Layout: `intake/<n>.log`, a segment: records appended one batch at a time, each
/// `POSTERN-INTAKE 1 <id> <length>\n` followed by the message's whole queue file (`MessageFileWriter.image`: the
/// same bytes, checksum and sealing as `queue/<id>.msg`); and `intake/<n>.done`, the ids of its records that are
/// finished (delivered, or moved into `queue/`), one per line, appended with `write` and never synced: a process
/// crash (SIGKILL, a trap, the OOM killer) leaves them in the page cache; a power loss may lose some, and those
/// messages are delivered again (as a lost unlink of a delivered queue file would).
///
/// Guarantees, the same as a queue file's:
/// - A message is acknowledged (`submit`'s completion, `append`'s return) only after its batch's `fdatasync` (the
///   segment and its `.done` were created, and the intake directory fsynced, before any record went into it): no
///   `250` before the message is durable.
/// - A write that fails is cut off again (`ftruncate`); if that fails too, the segment takes no more records.
/// - At start (`recover`, under the spool's owner lock), each segment's records that are not done and have no
///   queue file yet are written to `queue/` as ordinary queue files (fdatasync, rename, one directory fsync), and
///   the segment goes. A crash in the middle of a batch leaves a cut-off record at the end of its segment: that
///   batch was never acknowledged; the bytes after the last whole record are kept in `corrupt/` for a human.
///
/// The log is short-term only. A record leaves it when its message is delivered (`finish`), when its delivery state
/// must be written (a deferral: `materialize`, then the state file as for any queue file), when its segment has been
/// closed for `settleAfter` (`maintain`), on `postern queue`'s request (the `settle` signal), and at shutdown. So a
/// stopped gateway leaves the classic layout, `postern queue` lists the log's messages and has them moved before
/// it changes one, and the long-lived files are the queue files they always were. Streamed (large) messages do not come
/// here: they are written to their own file while they arrive (`SpoolMessageStream`).
final class SpoolIntake: @unchecked Sendable {
    static let directoryName = "intake"
    /// Messages bigger than this are written as their own queue file, not into a segment.
    static let recordLimit = 1 << 20
    /// The active segment is closed (no more records) once it holds this many bytes, or is this old.
    static let segmentBytes = 32 << 20
    static let segmentSeconds = 2.0
    /// Records still in a segment this long after it closed are moved into `queue/`.
    static let settleAfter = 30.0
    static let frameMagic = "POSTERN-INTAKE 1"
    /// A frame line is at most this long (magic, a queue id, a length).
    static let frameLimit = 128

    /// Where one live record is, and its envelope (the queue scan and the CLI's settle need it without a read).
    struct Entry {
        let segment: Segment
        let offset: Int
        let length: Int
        let envelope: SpoolEnvelope
        /// The message's length (the record holds it sealed when the spool is encrypted).
        let messageSize: Int
        /// Claimed by the relay (delivering) or by a move into `queue/`.
        var busy = false
    }

    /// One segment file and its done file; the descriptors close when the last reader lets go of it.
    final class Segment: @unchecked Sendable {
        let number: UInt64
        let fd: Int32
        let doneFD: Int32
        /// Bytes written and synced. Guarded by the intake's lock.
        var size = 0
        /// No more records go in. Guarded by the intake's lock.
        var closed = false
        var closedAt: Double?
        let openedAt: Double

        init(number: UInt64, fd: Int32, doneFD: Int32, openedAt: Double) {
            self.number = number
            self.fd = fd
            self.doneFD = doneFD
            self.openedAt = openedAt
        }

        deinit {
            _ = systemClose(fd)
            _ = systemClose(doneFD)
        }
    }

    /// Records waiting for one write and `fdatasync`, and whom to tell how it went. Guarded by the intake's lock.
    private final class Batch {
        var records: [(id: String, envelope: SpoolEnvelope, size: Int, image: [UInt8])] = []
        var completions: [@Sendable (SpoolError?) -> Void] = []
    }

    let directory: SpoolDirectory
    let path: String
    private let logger: Logger
    /// Seconds on a monotonic clock (segment ages: a change of the wall clock must not keep one open).
    private let clock: @Sendable () -> Double
    /// A file in `free/` for the next queue file written here (`Spool`'s list), if any.
    private let takeFree: @Sendable () -> String?
    private let condition = NSCondition()
    // Guarded by `condition`:
    private var entries: [String: Entry] = [:]
    private var segments: [UInt64: Segment] = [:]
    private var active: Segment?
    private var nextNumber: UInt64
    private var pending = Batch()
    private var writing = false
    /// Batches written, and the records in them (mean batch size: their ratio).
    private(set) var batchesWritten = 0
    private(set) var recordsWritten = 0

    /// Opens the log of a spool whose `recover` has run (the directory holds no segments then, or only ones it
    /// could not remove: new numbers follow theirs).
    init(directory: SpoolDirectory, logger: Logger, takeFree: @escaping @Sendable () -> String? = { nil },
         clock: @escaping @Sendable () -> Double = { ProcessInfo.processInfo.systemUptime }) {
        self.directory = directory
        self.takeFree = takeFree
        self.path = directory.intakePath
        self.logger = logger
        self.clock = clock
        nextNumber = (Self.segmentNumbers(in: directory.intakePath).max() ?? 0) &+ 1
    }

    static func segmentName(_ number: UInt64) -> String {
        let hex = String(number, radix: 16)
        return String(repeating: "0", count: max(0, 16 - hex.count)) + hex
    }

    static func segmentNumbers(in path: String) -> [UInt64] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).compactMap { name in
            guard name.hasSuffix(".log"), name.count == 20 else { return nil }
            return UInt64(name.dropLast(4), radix: 16)
        }.sorted()
    }

    // MARK: Writing

    /// Queues a message's queue file image for the next batch. `completion` runs on the thread that writes the
    /// batch, after it is durable (nil) or failed, with the record then readable through this log. Returns true when
    /// no writer is running: the caller must then call `flush` (on an I/O thread), which writes this batch and any
    /// that gather meanwhile. So a message costs no thread of its own while it waits for its batch.
    func submit(id: String, envelope: SpoolEnvelope, messageSize: Int, image: [UInt8],
                completion: @escaping @Sendable (SpoolError?) -> Void) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        pending.records.append((id, envelope, messageSize, image))
        pending.completions.append(completion)
        if writing { return false }
        writing = true
        return true
    }

    /// Writes the pending batches, one write and one fdatasync each, until none is left. Blocking; called by the
    /// one `submit` told to.
    func flush() {
        condition.lock()
        while !pending.records.isEmpty {
            let batch = pending
            pending = Batch()
            var segment = active
            if let current = segment, current.size >= Self.segmentBytes || clock() - current.openedAt >= Self.segmentSeconds {
                closeSegment(current)
                segment = nil
            }
            let number = nextNumber
            if segment == nil { nextNumber &+= 1 }
            condition.unlock()
            let opened: Result<Segment, SpoolError> = segment.map { .success($0) } ?? Result { () throws(SpoolError) in try openSegment(number) }
            var written: Result<Int, SpoolError>
            switch opened {
            case .success(let target): written = Result { () throws(SpoolError) in try writeBatch(batch.records, to: target) }
            case .failure(let error): written = .failure(error)
            }
            condition.lock()
            if case .success(let target) = opened, segments[target.number] == nil {
                // New: maintenance removes it once closed and empty, even if its first write failed.
                segments[target.number] = target
                if active == nil && !target.closed { active = target }
            }
            var failure: SpoolError?
            switch (opened, written) {
            case (.success(let target), .success(let start)):
                batchesWritten &+= 1
                recordsWritten &+= batch.records.count
                var offset = start
                for record in batch.records {
                    let frame = Self.frameLength(id: record.id, length: record.image.count)
                    entries[record.id] = Entry(segment: target, offset: offset + frame, length: record.image.count, envelope: record.envelope,
                                                 messageSize: record.size)
                    offset += frame + record.image.count
                }
            case (_, .failure(let error)), (.failure(let error), _):
                failure = error
            }
            condition.unlock()
            if let failure {
                logger.error("spool intake write failed", metadata: ["messages": "\(batch.records.count)", "error": "\(failure)"])
            }
            for completion in batch.completions { completion(failure) }
            condition.lock()
        }
        writing = false
        condition.unlock()
    }

    /// Fails what waits for a batch (the I/O threads have stopped, so no `flush` will come).
    func failPending(_ error: SpoolError) {
        condition.lock()
        let batch = pending
        pending = Batch()
        writing = false
        condition.unlock()
        for completion in batch.completions { completion(error) }
    }

    /// `submit` for a caller on an I/O thread: returns once the message is durable (its batch's fdatasync), writing
    /// the batch itself when no writer runs.
    func append(id: String, envelope: SpoolEnvelope, messageSize: Int, image: [UInt8]) throws(SpoolError) {
        let done = DispatchSemaphore(value: 0)
        let outcome = NIOLockedValueBox<SpoolError?>(nil)
        if submit(id: id, envelope: envelope, messageSize: messageSize, image: image, completion: { error in
            outcome.withLockedValue { $0 = error }
            done.signal()
        }) {
            flush()
        }
        done.wait()
        if let error = outcome.withLockedValue({ $0 }) { throw error }
    }

    /// Creates segment `number` and its done file, durably (the intake directory's fsync), before any record goes in.
    private func openSegment(_ number: UInt64) throws(SpoolError) -> Segment {
        let base = "\(path)/\(Self.segmentName(number))"
        let fd = open("\(base).log", O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SpoolDirectory.error("create \(base).log") }
        let doneFD = open("\(base).done", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard doneFD >= 0 else {
            let error = SpoolDirectory.error("create \(base).done")
            _ = systemClose(fd)
            unlink("\(base).log")
            throw error
        }
        let segment = Segment(number: number, fd: fd, doneFD: doneFD, openedAt: clock())
        do { try directory.syncDirectory(path) } catch {
            unlink("\(base).log")
            unlink("\(base).done")
            throw error
        }
        return segment
    }

    static func frame(id: String, length: Int) -> [UInt8] { Array("\(frameMagic) \(id) \(length)\n".utf8) }
    static func frameLength(id: String, length: Int) -> Int { frameMagic.utf8.count + 1 + id.utf8.count + 1 + String(length).utf8.count + 1 }

    /// Writes a batch at the segment's end and syncs it; returns where it starts. Only the batch's leader calls
    /// this, so the segment's size is read and set without a race. A failure cuts the segment back.
    private func writeBatch(_ records: [(id: String, envelope: SpoolEnvelope, size: Int, image: [UInt8])], to segment: Segment) throws(SpoolError) -> Int {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(records.reduce(0) { $0 + $1.image.count + Self.frameLimit })
        for record in records {
            bytes += Self.frame(id: record.id, length: record.image.count)
            bytes += record.image
        }
        let start = segment.size
        var written = 0
        var failure: SpoolError?
        bytes.withUnsafeBytes { raw in
            while written < raw.count, let base = raw.baseAddress {
                let n = pwrite(segment.fd, base + written, raw.count - written, off_t(start + written))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 {
                    failure = SpoolDirectory.error("write intake/\(Self.segmentName(segment.number)).log", n == 0 ? EIO : errno)
                    return
                }
                written += n
            }
        }
        if failure == nil && DurableFile.syncData(segment.fd) != 0 {
            failure = SpoolDirectory.error("fdatasync intake/\(Self.segmentName(segment.number)).log")
        }
        if let failure {
            if ftruncate(segment.fd, off_t(start)) != 0 || DurableFile.syncData(segment.fd) != 0 {
                // What the failed write left cannot be taken back: no record goes after it (recovery stops there).
                condition.lock()
                closeSegment(segment)
                condition.unlock()
            }
            throw failure
        }
        segment.size = start + bytes.count
        return start
    }

    /// Takes no more records into `segment`. Call with the lock held.
    private func closeSegment(_ segment: Segment) {
        segment.closed = true
        segment.closedAt = clock()
        if active === segment { active = nil }
    }

    // MARK: Entries

    enum Claim {
        case absent
        case busy
        case claimed
    }

    /// Claims a live record for its holder (the relay while it delivers it); release with `release`.
    func claim(_ id: String) -> Claim {
        condition.lock()
        defer { condition.unlock() }
        guard entries[id] != nil else { return .absent }
        if entries[id]?.busy == true { return .busy }
        entries[id]?.busy = true
        return .claimed
    }

    func release(_ id: String) {
        condition.lock()
        entries[id]?.busy = false
        condition.unlock()
    }

    func contains(_ id: String) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        return entries[id] != nil
    }

    /// The live records' ids, envelopes and message sizes.
    func snapshot() -> [(id: String, envelope: SpoolEnvelope, size: Int)] {
        condition.lock()
        defer { condition.unlock() }
        return entries.map { ($0.key, $0.value.envelope, $0.value.messageSize) }
    }

    var count: Int {
        condition.lock()
        defer { condition.unlock() }
        return entries.count
    }

    /// Batches written so far and the records in them.
    var written: (batches: Int, records: Int) {
        condition.lock()
        defer { condition.unlock() }
        return (batchesWritten, recordsWritten)
    }

    /// A live record's queue file image, read from its segment; nil when it is no longer in the log.
    func image(_ id: String) throws(SpoolDirectory.ReadError) -> [UInt8]? {
        condition.lock()
        let entry = entries[id]
        condition.unlock()
        guard let entry else { return nil }
        // The entry holds its segment, so the descriptor stays open even if the segment goes meanwhile.
        return try SpoolDirectory.readRange(entry.segment.fd, offset: entry.offset, count: entry.length)
    }

    /// A live record as a queue entry with its message, checked (and opened when sealed); nil when it is no longer
    /// in the log.
    func readEntry(_ id: String) throws(SpoolDirectory.ReadError) -> (entry: SpoolEntry, message: ByteBuffer)? {
        guard let image = try image(id) else { return nil }
        return try directory.intakeEntry(id: id, image: image)
    }

    /// Ends a record: its message was delivered (or moved aside). Returns false when `id` is not in the log.
    @discardableResult
    func finish(_ id: String) -> Bool {
        condition.lock()
        defer { condition.unlock() }
        guard let entry = entries.removeValue(forKey: id) else { return false }
        markDone(id, in: entry.segment)
        return true
    }

    /// Appends `id` to the segment's done file. Call with the lock held (one line per write, never interleaved).
    private func markDone(_ id: String, in segment: Segment) {
        let line = Array("\(id)\n".utf8)
        let n = line.withUnsafeBytes { write(segment.doneFD, $0.baseAddress, $0.count) }
        if n != line.count {
            // Recovery would deliver this message again; say so now rather than then.
            logger.error("spool intake: could not record a finished message; after a crash it would be delivered again",
                         metadata: ["queue_id": "\(id)", "error": "\(String(cString: strerror(errno)))"])
        }
    }

    /// Moves a record that fails its check into `corrupt/` (its queue file image, as `<id>.msg.<time>`) and ends it.
    func quarantine(_ id: String, reason: String) {
        let image = try? image(id)
        let destination = "\(directory.corruptPath)/\(id).msg.\(Int(Date().timeIntervalSince1970))"
        if let image { try? DurableFile.write(to: destination, syncDirectory: true) { output throws(DurableWriteError) in try output.write(image) } }
        finish(id)
        logger.error("spool: corrupt intake record moved aside", metadata: ["queue_id": "\(id)", "reason": "\(reason)", "moved_to": "\(destination)"])
    }

    /// Moves records into `queue/` as ordinary queue files (fdatasync, rename, one directory fsync for all), then
    /// ends them in the log. `claimed`: the caller holds them (the relay writing a deferred message's state); the
    /// others are skipped while someone else holds them. Returns the ids moved.
    @discardableResult
    func materialize(_ ids: [String], claimed: Bool) throws(SpoolError) -> [String] {
        condition.lock()
        var taken: [(id: String, entry: Entry)] = []
        for id in ids {
            guard var entry = entries[id], claimed || !entry.busy else { continue }
            entry.busy = true
            entries[id] = entry
            taken.append((id, entry))
        }
        condition.unlock()
        var moved: [(id: String, entry: Entry)] = []
        var failure: SpoolError?
        for (id, entry) in taken {
            do throws(SpoolError) {
                let image: [UInt8]
                do { image = try SpoolDirectory.readRange(entry.segment.fd, offset: entry.offset, count: entry.length) } catch {
                    throw .unwritable("reading \(id) from intake/\(Self.segmentName(entry.segment.number)).log: \(error)")
                }
                if !directory.contains(id: id) && !directory.contains(id: id, in: .hold) {
                    try directory.writeQueueFile(id: id, image: image, reuse: takeFree())
                }
                moved.append((id, entry))
            } catch {
                failure = error
                break
            }
        }
        if !moved.isEmpty {
            do { try directory.syncQueueDirectory() } catch {
                failure = error
                moved = []
            }
        }
        condition.lock()
        for (id, entry) in moved {
            entries.removeValue(forKey: id)
            markDone(id, in: entry.segment)
        }
        if !claimed {
            for (id, _) in taken where !moved.contains(where: { $0.id == id }) { entries[id]?.busy = false }
        }
        condition.unlock()
        if let failure {
            logger.error("spool intake: could not move messages into the queue", metadata: ["error": "\(failure)"])
            throw failure
        }
        return moved.map(\.id)
    }

    /// The periodic upkeep: closes an active segment that is old enough, moves records of segments closed more
    /// than `settleAfter` ago (or, with `everything`, every record not being delivered) into `queue/`, and removes
    /// the segments nothing lives in any more. Blocking; on the spool's I/O threads.
    func maintain(everything: Bool = false) {
        let now = clock()
        condition.lock()
        if let current = active, !writing, everything || now - current.openedAt >= Self.segmentSeconds { closeSegment(current) }
        let settle = entries.filter { everything || ($0.value.segment.closedAt.map { now - $0 >= Self.settleAfter } ?? false) }.map(\.key)
        condition.unlock()
        if !settle.isEmpty {
            do {
                let moved = try materialize(settle.sorted(), claimed: false)
                if !moved.isEmpty {
                    logger.info("spool intake: messages not yet delivered moved into the queue", metadata: ["count": "\(moved.count)"])
                }
            } catch {
                // Logged by `materialize`; they stay in the log and are tried again at the next upkeep.
            }
        }
        // After the moves: a closed segment nothing lives in any more goes (never one still written to: only the
        // active one is, and it is closed only while no batch is being written).
        condition.lock()
        let live = Set(entries.values.map(\.segment.number))
        let empty = segments.values.filter { $0.closed && !live.contains($0.number) }.map(\.number)
        for number in empty { segments.removeValue(forKey: number) }
        condition.unlock()
        Self.remove(empty, path: path, directory: directory, logger: logger)
    }

    /// Removes finished segments: the logs first and the directory fsynced, then the done files, so a crash never
    /// leaves a log without its done file (which would deliver its records again).
    static func remove(_ numbers: [UInt64], path: String, directory: SpoolDirectory, logger: Logger) {
        guard !numbers.isEmpty else { return }
        for number in numbers { unlink("\(path)/\(segmentName(number)).log") }
        do { try directory.syncDirectory(path) } catch {
            logger.error("spool intake: directory fsync failed; done files kept", metadata: ["error": "\(error)"])
            return
        }
        for number in numbers { unlink("\(path)/\(segmentName(number)).done") }
    }

    // MARK: Recovery

    /// A record as found in a segment.
    struct Record {
        var id: String
        var image: ArraySlice<UInt8>
    }

    /// Parses a segment: its whole records in order, and how many bytes follow the last of them (a batch a crash
    /// cut short, or damage).
    static func parse(_ bytes: [UInt8]) -> (records: [Record], trailing: Int) {
        var records: [Record] = []
        var offset = 0
        while offset < bytes.count {
            let window = bytes[offset..<min(bytes.count, offset + frameLimit)]
            guard let newline = window.firstIndex(of: 0x0A) else { break }
            let fields = String(decoding: bytes[offset..<newline], as: UTF8.self).split(separator: " ", omittingEmptySubsequences: false)
            guard fields.count == 4, "\(fields[0]) \(fields[1])" == frameMagic, QueueID.isValid(String(fields[2])),
                  let length = Int(fields[3]), length > 0, length <= bytes.count - (newline + 1)
            else { break }
            records.append(Record(id: String(fields[2]), image: bytes[(newline + 1)..<(newline + 1 + length)]))
            offset = newline + 1 + length
        }
        return (records, bytes.count - offset)
    }

    static func doneIDs(_ path: String) -> Set<String> {
        guard let bytes = try? SpoolDirectory.readFile(path) else { return [] }
        return Set(bytes.split(separator: 0x0A).map { String(decoding: $0, as: UTF8.self) })
    }

    /// Segment `number`'s records whose messages still want a queue file (not done, and neither in `queue/` nor in
    /// `hold/`), and how many bytes follow its last whole record.
    static func unfinished(_ number: UInt64, in directory: SpoolDirectory) throws(SpoolDirectory.ReadError) -> (records: [Record], trailing: Int) {
        let base = "\(directory.intakePath)/\(segmentName(number))"
        let (records, trailing) = parse(try SpoolDirectory.readFile("\(base).log"))
        let done = doneIDs("\(base).done")
        let wanted = records.filter { record in
            !done.contains(record.id) && !directory.contains(id: record.id) && !directory.contains(id: record.id, in: .hold)
        }
        return (wanted, trailing)
    }

    /// What a stopped gateway left in the log, moved into `queue/` (each record not done and not already a queue
    /// or held file), then the segments removed. Call only as the spool's owner (the gateway at start, under the
    /// ledger's lock; `postern queue` when no gateway runs). Returns how many messages it moved.
    @discardableResult
    static func recover(_ directory: SpoolDirectory, logger: Logger) -> Int {
        let path = directory.intakePath
        var moved = 0
        for number in segmentNumbers(in: path) {
            let base = "\(path)/\(segmentName(number))"
            let records: [Record], trailing: Int
            do { (records, trailing) = try unfinished(number, in: directory) } catch {
                logger.error("spool recovery: intake segment unreadable; left in place", metadata: ["file": "\(base).log", "error": "\(error)"])
                continue
            }
            var written = 0
            var failed = false
            for record in records {
                do {
                    try directory.writeQueueFile(id: record.id, image: Array(record.image))
                    written += 1
                } catch {
                    logger.critical("spool recovery: cannot move a message out of the intake log; left in place",
                                    metadata: ["queue_id": "\(record.id)", "file": "\(base).log", "error": "\(error)"])
                    failed = true
                }
            }
            do { try directory.syncQueueDirectory() } catch { failed = true }
            guard !failed else { continue }
            moved += written
            if trailing > 0 {
                // Never acknowledged (its fdatasync had not returned), or damaged: kept for a human, never delivered.
                let aside = "\(directory.corruptPath)/intake-\(segmentName(number)).log.\(Int(Date().timeIntervalSince1970))"
                rename("\(base).log", aside)
                logger.warning("spool recovery: intake segment ends in an incomplete record (a write the stop cut short; never acknowledged); kept aside",
                               metadata: ["file": "\(base).log", "moved_to": "\(aside)", "bytes": "\(trailing)"])
            }
            remove([number], path: path, directory: directory, logger: logger)
            if written > 0 {
                logger.notice("spool recovery: messages moved from the intake log into the queue",
                              metadata: ["file": "intake/\(segmentName(number)).log", "count": "\(written)"])
            }
        }
        return moved
    }

    /// For `postern queue` while a gateway runs: the records still in the log (not done, not yet in `queue/` or
    /// `hold/`), read without changing anything.
    static func liveRecords(_ directory: SpoolDirectory) -> [Record] {
        segmentNumbers(in: directory.intakePath).flatMap { number in (try? unfinished(number, in: directory))?.records ?? [] }
    }
}

#if canImport(Glibc)
private let systemClose = Glibc.close
#elseif canImport(Darwin)
private let systemClose = Darwin.close
#endif

// MARK: For `postern queue`

extension SpoolDirectory {
    /// Messages in the intake log that are in neither `queue/` nor `hold/` (read only; for `postern queue list` and
    /// `show` while a gateway runs). Each is queued with its first attempt due; a record that cannot be read is
    /// given with its error.
    public func intakeEntries() -> [(id: String, read: Result<(entry: SpoolEntry, message: ByteBuffer), ReadError>)] {
        SpoolIntake.liveRecords(self).map { record in
            (record.id, Result { () throws(ReadError) in try intakeEntry(id: record.id, image: Array(record.image)) })
        }
    }

    /// A message in the intake log as a queue entry: its image checked (and opened when sealed), no state file yet
    /// (`postern queue` changes only queue files), so its first attempt is due.
    func intakeEntry(id: String, image: [UInt8]) throws(ReadError) -> (entry: SpoolEntry, message: ByteBuffer) {
        let (envelope, message) = try parseImage(image)
        return (SpoolEntry(id: id, envelope: envelope, state: .initial(for: envelope), messageSize: message.readableBytes), message)
    }

    /// Writes a whole queue file image as `queue/<id>.msg` (temp file, fdatasync, rename; the caller fsyncs `queue/`).
    func writeQueueFile(id: String, image: [UInt8], reuse: String? = nil) throws(SpoolError) {
        try writeDurably(messagePath(id), tmpName: "\(id).msg", reuse: reuse) { output throws(DurableWriteError) in try output.write(image) }
    }

    /// Before `postern queue` changes anything: the intake log's messages become queue files, which the commands
    /// change under their locks. With no gateway running (the spool's owner lock is free), this command moves them
    /// itself, holding that lock; with one running, it asks it to (the `settle` signal) and waits up to `timeout`
    /// for the log to empty. What stays is being delivered at this moment (`isInIntake` then says so).
    public func settleIntake(logger: Logger, timeout: Double = 5) {
        guard !SpoolIntake.segmentNumbers(in: intakePath).isEmpty else { return }
        let ledger = root.appendingPathComponent(DeliveryLedger.fileName).path
        let fd = open(ledger, O_RDWR | O_CLOEXEC)
        if fd < 0 && errno == ENOENT {
            // No gateway ever ran here (its start creates the ledger): nobody to ask, nobody to race.
            SpoolIntake.recover(self, logger: logger)
            return
        }
        if fd >= 0 {
            defer { _ = systemClose(fd) }
            if flock(fd, LOCK_EX | LOCK_NB) == 0 {
                SpoolIntake.recover(self, logger: logger)
                flock(fd, LOCK_UN)
                return
            }
        }
        touch(.settle)
        let deadline = Date().addingTimeInterval(timeout)
        while !SpoolIntake.liveRecords(self).isEmpty && Date() < deadline { usleep(50_000) }
    }

    /// Whether `id` is a message still in the intake log (not yet a queue file).
    public func isInIntake(id: String) -> Bool {
        SpoolIntake.liveRecords(self).contains { $0.id == id }
    }
}
