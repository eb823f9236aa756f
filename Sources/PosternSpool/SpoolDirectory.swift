import Foundation
import NIOCore
import PosternCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The on-disk layout of a spool and the blocking operations on it. `Spool` runs these off the
/// event loops; the `postern queue` CLI uses them directly, so it works whether or not a gateway runs.
///
/// Layout: `tmp/` (files being written), `queue/<id>.msg` (message and envelope, written once by
/// `MessageFileWriter`: temp file, fdatasync, rename, directory fsync), `queue/<id>.state` (delivery state, replaced
/// atomically), `hold/` (entries taken out of delivery: a message that crashed delivery twice, see
/// `DeliveryLedger`; `postern queue release` puts one back), `corrupt/` (files that failed
/// validation, kept for a human), `free/` (files of delivered messages kept for reuse: see
/// `recycle`), `wake` and `flush` (touched to make a running relay rescan now, see `Signal`),
/// `delivering` (the `DeliveryLedger`), `intake/` (the intake log: messages accepted together, made durable with
/// one write and one fdatasync, and moved out within seconds; see `SpoolIntake`).
public struct SpoolDirectory: Sendable {
    public let root: URL
    // Computed once: the relay checks `wakePath` on every loop turn and every file operation builds
    // a path from `queuePath`; URL.appendingPathComponent per call showed in profiles.
    public let tmpPath: String
    public let queuePath: String
    public let holdPath: String
    public let corruptPath: String
    public let freePath: String
    public let wakePath: String
    public let intakePath: String
    /// With spool encryption (`SpoolSealing`): seals new message files with the current key and opens sealed
    /// ones. Without it, files are written in the clear, and a sealed file cannot be read (`ReadError.locked`).
    public let keys: SpoolKeyRing?

    /// Format 1: envelope, then message. Read, no longer written.
    static let magic = "POSTERN-SPOOL 1"
    /// Format 2: message, then envelope (see `MessageFileWriter`).
    static let magic2 = "POSTERN-SPOOL 2"
    /// Format 3: format 2 with the message and the envelope each a sealed stream (spool encryption, `SpoolSealing`);
    /// the lengths and the checksum in the header line are those of the stored, sealed bytes.
    static let magic3 = "POSTERN-SPOOL 3"

    public init(root: URL, keys: SpoolKeyRing? = nil) {
        self.root = root
        self.keys = keys
        tmpPath = root.appendingPathComponent("tmp").path
        queuePath = root.appendingPathComponent("queue").path
        holdPath = root.appendingPathComponent("hold").path
        corruptPath = root.appendingPathComponent("corrupt").path
        freePath = root.appendingPathComponent("free").path
        wakePath = root.appendingPathComponent("wake").path
        intakePath = root.appendingPathComponent(SpoolIntake.directoryName).path
    }

    public func createDirectories() throws(SpoolError) {
        for path in [tmpPath, queuePath, holdPath, corruptPath, freePath, intakePath] {
            do {
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            } catch {
                throw .unwritable("creating \(path): \(error)")
            }
        }
    }

    /// Where an entry lives: in the queue the relay delivers from, or held out of it.
    public enum Area: String, Sendable, CaseIterable {
        case queue
        case hold
    }

    public func path(of area: Area) -> String { area == .queue ? queuePath : holdPath }
    func messagePath(_ id: String, in area: Area = .queue) -> String { "\(path(of: area))/\(id).msg" }
    func statePath(_ id: String, in area: Area = .queue) -> String { "\(path(of: area))/\(id).state" }

    static func error(_ what: String, _ code: Int32 = errno) -> SpoolError {
        if code == ENOSPC || code == EDQUOT { return .full }
        return .unwritable("\(what): \(String(cString: strerror(code)))")
    }

    // MARK: Writing

    /// Writes `destination` through `DurableFile` with its temp file in `tmp/`, without the directory fsync: the
    /// caller fsyncs the destination directory, once for many files. With `reuse` (a name in `free/`), that file
    /// is overwritten instead of a new one being created.
    func writeDurably(_ destination: String, tmpName: String, reuse: String? = nil,
                      _ body: (DurableFile.Output) throws(DurableWriteError) -> Void) throws(SpoolError) {
        do {
            try DurableFile.write(to: destination, temporary: "\(tmpPath)/\(tmpName)", reusing: reuse.map { "\(freePath)/\($0)" },
                                  syncDirectory: false, body)
        } catch {
            throw Self.error(error)
        }
    }

    static func error(_ error: DurableWriteError) -> SpoolError {
        error.isOutOfSpace ? .full : .unwritable(error.description)
    }

    /// Writes a message held in memory whole (`MessageFileWriter` in one step). The caller fsyncs the queue directory.
    public func writeMessage(id: String, envelope: SpoolEnvelope, message: ByteBuffer, reuse: String? = nil) throws(SpoolError) {
        let writer = messageWriter(id: id, reuse: reuse)
        try writer.append(message)
        try writer.commit(envelope: envelope)
    }

    /// Replaces the state file atomically. The caller fsyncs the queue directory.
    public func writeState(id: String, _ state: SpoolEntryState, in area: Area = .queue) throws(SpoolError) {
        let data: Data
        do { data = try JSONEncoder.spool.encode(state) } catch { throw .unwritable("encoding state: \(error)") }
        try writeDurably(statePath(id, in: area), tmpName: "\(id).state.\(UInt32.random(in: 0...UInt32.max))") { output throws(DurableWriteError) in
            try output.write(data)
        }
    }

    /// Removes a message and its state: message first, so a crash in between leaves only an
    /// orphaned state file, which recovery removes.
    public func remove(id: String, in area: Area = .queue) throws(SpoolError) {
        if unlink(messagePath(id, in: area)) != 0 && errno != ENOENT { throw Self.error("unlink \(id).msg") }
        if unlink(statePath(id, in: area)) != 0 && errno != ENOENT { throw Self.error("unlink \(id).state") }
    }

    /// Removes a finished entry like `remove`, but keeps its message file's inode for the next
    /// message: renamed to `free/<id>`. Creating a file costs an inode allocation, which on ext4
    /// (most of all without a journal, where it skips recently deleted inodes one by one) showed as
    /// a fifth of the gateway's CPU, under the directory's lock. Returns false if the message file
    /// was already gone.
    public func recycle(id: String) throws(SpoolError) -> Bool {
        guard rename(messagePath(id), "\(freePath)/\(id)") == 0 else {
            // Gone already, or not movable: remove it the ordinary way.
            try remove(id: id)
            return false
        }
        if unlink(statePath(id)) != 0 && errno != ENOENT { throw Self.error("unlink \(id).state") }
        return true
    }

    /// Names of the files in `free/`.
    public func freeNames() -> [String] {
        (try? FileManager.default.contentsOfDirectory(atPath: freePath)) ?? []
    }

    public func syncQueueDirectory() throws(SpoolError) {
        try syncDirectory(queuePath)
    }

    public func syncDirectory(_ path: String) throws(SpoolError) {
        do { try DurableFile.syncDirectory(path) } catch { throw Self.error(error) }
    }

    // MARK: Holding

    /// Takes an entry out of delivery: its state (with the reason) goes to `hold/` first, then the
    /// message. A crash in between leaves the entry queued, with a stray state in `hold/` that the
    /// next hold overwrites; never a message without its state.
    public func hold(id: String, state: SpoolEntryState) throws(SpoolError) {
        try writeState(id: id, state, in: .hold)
        try syncDirectory(holdPath)
        guard rename(messagePath(id), messagePath(id, in: .hold)) == 0 else { throw Self.error("rename \(id).msg to hold/") }
        try syncDirectory(holdPath)
        if unlink(statePath(id)) != 0 && errno != ENOENT { throw Self.error("unlink \(id).state") }
        try syncQueueDirectory()
    }

    /// Puts a held entry back into the queue, due now, with its count of interrupted deliveries
    /// cleared. The mirror of `hold`: state first, then the message.
    public func release(id: String, now: Date) throws(SpoolError) {
        let entry: SpoolEntry
        do { entry = try readEntry(id: id, in: .hold).entry } catch {
            throw .unwritable("\(id) cannot be read: \(error)")
        }
        var state = entry.state
        state.interruptedDeliveries = nil
        state.heldReason = nil
        state.nextAttempt = now
        try writeState(id: id, state)
        try syncQueueDirectory()
        guard rename(messagePath(id, in: .hold), messagePath(id)) == 0 else { throw Self.error("rename hold/\(id).msg to queue/") }
        try syncQueueDirectory()
        if unlink(statePath(id, in: .hold)) != 0 && errno != ENOENT { throw Self.error("unlink hold/\(id).state") }
        try syncDirectory(holdPath)
    }

    /// What `postern queue` asks of a running relay, through a file's modification time (the CLI
    /// works on the files whether or not a gateway runs, so there is no socket to ask through).
    public enum Signal: String, Sendable, CaseIterable {
        /// The queue changed: rescan it now.
        case wake
        /// A flush (`postern queue retry`): rescan, and lift any upstream pause too.
        case flush
        /// Move every message of the intake log not being delivered into `queue/` now (`SpoolIntake`), so that
        /// `postern queue` can change it.
        case settle
    }

    public func path(of signal: Signal) -> String {
        signal == .wake ? wakePath : root.appendingPathComponent(signal.rawValue).path
    }

    /// Touches a signal file so that a running relay notices it within a quarter second.
    public func touch(_ signal: Signal) {
        let fd = open(path(of: signal), O_WRONLY | O_CREAT | O_CLOEXEC, 0o600)
        if fd >= 0 {
            futimens(fd, nil)  // both times to now
            close(fd)
        }
    }

    public func stamp(of signal: Signal) -> Double? {
        var st = stat()
        guard stat(path(of: signal), &st) == 0 else { return nil }
        return Double(st.st_mtim.tv_sec) + Double(st.st_mtim.tv_nsec) / 1e9
    }

    // MARK: Reading

    public enum ReadError: Error, Sendable, Hashable {
        case missing
        case corrupt(String)
        /// A sealed file this spool has no key for (encryption off, or its key gone from the key file): left
        /// where it is, never quarantined, readable again once the key is back.
        case locked(String)
    }

    /// Queue ids with a message file, in id (that is, arrival) order.
    public func listIDs(in area: Area = .queue) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path(of: area))) ?? [])
            .filter { $0.hasSuffix(".msg") }
            .map { String($0.dropLast(4)) }
            .sorted()
    }

    /// Opens a queue file for reading: its descriptor (the caller closes it) and its size.
    static func openForReading(_ path: String) throws(ReadError) -> (fd: Int32, size: Int) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { throw .missing }
            throw .corrupt("open: \(String(cString: strerror(errno)))")
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            close(fd)
            throw .corrupt("fstat failed")
        }
        return (fd, Int(st.st_size))
    }

    /// The first `count` bytes of an open file.
    static func readPrefix(_ fd: Int32, _ count: Int) throws(ReadError) -> [UInt8] {
        try readRange(fd, offset: 0, count: count)
    }

    /// `count` bytes of an open file from `offset`.
    static func readRange(_ fd: Int32, offset start: Int, count: Int) throws(ReadError) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var offset = 0
        let ok = bytes.withUnsafeMutableBytes { buffer -> Bool in
            while offset < buffer.count, let base = buffer.baseAddress {
                let n = pread(fd, base + offset, buffer.count - offset, off_t(start + offset))
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { return false }
                offset += n
            }
            return true
        }
        guard ok else { throw .corrupt("short read") }
        return bytes
    }

    static func readFile(_ path: String) throws(ReadError) -> [UInt8] {
        let (fd, size) = try openForReading(path)
        defer { close(fd) }
        return try readPrefix(fd, size)
    }

    static func decodeEnvelope(_ bytes: ArraySlice<UInt8>) throws(ReadError) -> SpoolEnvelope {
        do {
            return try JSONDecoder.spool.decode(SpoolEnvelope.self, from: Data(bytes))
        } catch {
            throw .corrupt("envelope: \(error)")
        }
    }

    /// Whether a message file exists for `id`.
    public func contains(id: String, in area: Area = .queue) -> Bool {
        var st = stat()
        return stat(messagePath(id, in: area), &st) == 0
    }

    /// Reads a message file's header and envelope, not its body (whose checksum is therefore not
    /// checked): what a queue scan needs. Returns the envelope and the message's length.
    public func readEnvelope(id: String) throws(ReadError) -> (envelope: SpoolEnvelope, messageSize: Int) {
        let (fd, fileSize) = try Self.openForReading(messagePath(id))
        defer { close(fd) }
        var bytes = try Self.readPrefix(fd, min(fileSize, 4096))
        let header = try Self.parseHeader(bytes)
        guard fileSize == header.fileSize else { throw .corrupt("size \(fileSize), header says \(header.fileSize)") }
        let envelopeEnd = header.envelopeStart + header.envelopeLength
        if bytes.count < envelopeEnd { bytes = try Self.readRange(fd, offset: header.envelopeStart, count: header.envelopeLength) } else {
            bytes = Array(bytes[header.envelopeStart..<envelopeEnd])
        }
        guard header.sealed else { return (try Self.decodeEnvelope(bytes[...]), header.messageLength) }
        let envelope = try Self.decodeEnvelope(try opened(bytes)[...])
        let streamHeader = try Self.readRange(fd, offset: header.messageStart, count: min(header.messageLength, SpoolSealing.maxHeaderLength))
        return (envelope, try Self.sealedLayout(streamHeader, storedLength: header.messageLength).plaintextLength)
    }

    /// The plaintext of a whole sealed stream read from a file: `.locked` without its key, `.corrupt` when it
    /// does not authenticate.
    func opened(_ sealed: [UInt8]) throws(ReadError) -> [UInt8] {
        let keys = try sealingKeys()
        return try Self.opening { () throws(SealingError) in try SpoolSealing.open(sealed, keys: keys) }
    }

    /// The keys for a sealed file: `.locked` when encryption is not configured.
    func sealingKeys() throws(ReadError) -> SpoolKeyRing {
        guard let keys else { throw .locked("the file is encrypted and spool encryption is not configured (delivery.spool.encrypt)") }
        return keys
    }

    /// Runs an opening of sealed data, its failure as a read error: a key the ring lacks is `.locked` (the file is
    /// left alone), anything else `.corrupt`.
    static func opening<T>(_ body: () throws(SealingError) -> T) throws(ReadError) -> T {
        do {
            return try body()
        } catch .unknownKey(let id) {
            throw .locked(SealingError.unknownKey(id).description)
        } catch {
            throw .corrupt(error.description)
        }
    }

    static func sealedLayout(_ streamHeader: [UInt8], storedLength: Int) throws(ReadError) -> SpoolSealing.Layout {
        guard let layout = SpoolSealing.Layout(streamHeader: streamHeader, storedLength: storedLength) else {
            throw .corrupt("sealed message of \(storedLength) bytes has no valid layout")
        }
        return layout
    }

    /// Reads and validates a message file: its header, lengths, checksum and envelope.
    public func readMessage(id: String, in area: Area = .queue) throws(ReadError) -> (envelope: SpoolEnvelope, message: ByteBuffer) {
        try parseImage(try Self.readFile(messagePath(id, in: area)))
    }

    /// Validates a whole message file's bytes (from a queue file, or an intake record): header, lengths,
    /// checksum and envelope; opens them when sealed.
    func parseImage(_ bytes: [UInt8]) throws(ReadError) -> (envelope: SpoolEnvelope, message: ByteBuffer) {
        let header = try Self.parseHeader(bytes)
        guard bytes.count == header.fileSize else {
            throw .corrupt("size \(bytes.count), header says \(header.fileSize)")
        }
        let envStart = header.envelopeStart, envLength = header.envelopeLength, checksum = header.checksum
        let envelopeBytes = bytes[envStart..<(envStart + envLength)]
        let body = bytes[header.messageStart..<(header.messageStart + header.messageLength)]
        var actual = body.withUnsafeBytes { Self.fnv1a64($0) }
        if header.coversEnvelope {
            actual = bytes[envStart..<(envStart + envLength)].withUnsafeBytes { Self.fnv1a64($0, seed: actual) }
        }
        guard actual == checksum else { throw .corrupt("checksum mismatch") }
        guard header.sealed else { return (try Self.decodeEnvelope(envelopeBytes[...]), ByteBuffer(bytes: body)) }
        return (try Self.decodeEnvelope(try opened(Array(envelopeBytes))[...]), ByteBuffer(bytes: try opened(Array(body))))
    }

    /// The state file, or the initial state when there is none yet. A corrupt state file is
    /// reported as `.corrupt`; the caller decides what to do.
    public func readState(id: String, envelope: SpoolEnvelope, in area: Area = .queue) throws(ReadError) -> SpoolEntryState {
        let bytes: [UInt8]
        do { bytes = try Self.readFile(statePath(id, in: area)) } catch .missing { return .initial(for: envelope) }
        do { return try JSONDecoder.spool.decode(SpoolEntryState.self, from: Data(bytes)) } catch { throw .corrupt("state: \(error)") }
    }

    public func readEntry(id: String, in area: Area = .queue) throws(ReadError) -> (entry: SpoolEntry, message: ByteBuffer) {
        let (envelope, message) = try readMessage(id: id, in: area)
        let state = try readState(id: id, envelope: envelope, in: area)
        return (SpoolEntry(id: id, envelope: envelope, state: state, messageSize: message.readableBytes), message)
    }

    /// Moves a file aside into `corrupt/`, never deleting it.
    public func quarantine(name: String) -> String {
        let destination = "\(corruptPath)/\(name).\(Int(Date().timeIntervalSince1970))"
        rename("\(queuePath)/\(name)", destination)
        return destination
    }

    static let fnvOffset: UInt64 = 0xcbf2_9ce4_8422_2325

    /// FNV-1a over `bytes`, continuing from `seed` (the hash of what came before).
    static func fnv1a64(_ bytes: UnsafeRawBufferPointer, seed: UInt64 = fnvOffset) -> UInt64 {
        var hash = seed
        for b in bytes {
            hash ^= UInt64(b)
            hash &*= 0x100_0000_01b3
        }
        return hash
    }

    // MARK: Locking

    /// An exclusive lock on one entry (flock on its message file), held by the relay while it
    /// delivers and by the CLI while it changes the entry.
    /// (For a message in the intake log, the relay's claim on its record: `Spool.lock`.)
    public final class EntryLock: @unchecked Sendable {
        private var fd: Int32
        private var onRelease: (() -> Void)?
        init(fd: Int32) { self.fd = fd }
        init(onRelease: @escaping () -> Void) {
            self.fd = -1
            self.onRelease = onRelease
        }
        public func release() {
            if fd >= 0 { flock(fd, LOCK_UN); close(fd); fd = -1 }
            onRelease?()
            onRelease = nil
        }
        deinit { release() }
    }

    /// Locks an entry; nil if the entry is gone or (when `wait` is false) locked by someone else.
    public func lock(id: String, in area: Area = .queue, wait: Bool = false) -> EntryLock? {
        let fd = open(messagePath(id, in: area), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        while flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) != 0 {
            if errno == EINTR { continue }
            close(fd)
            return nil
        }
        // The entry may have been removed while we waited for the lock.
        var a = stat(), b = stat()
        guard fstat(fd, &a) == 0, stat(messagePath(id, in: area), &b) == 0, a.st_ino == b.st_ino else {
            close(fd)
            return nil
        }
        return EntryLock(fd: fd)
    }
}
