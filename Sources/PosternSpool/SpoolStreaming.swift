import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PosternCore

/// A message being written into the spool while DATA arrives (issue #20): memory does not grow with its size.
/// Each step runs on the spool's I/O threads. The receiving side calls one step at a time and waits for it
/// (which is its backpressure: it reads no more from the client meanwhile); `abort` may come at any time and
/// waits for a step in progress. `commit` returns only when the message is as durable as `Spool.enqueue` makes
/// one: fdatasync, rename, and the shared directory fsync.
public final class SpoolMessageStream: Sendable {
    public let id: String
    private let spool: Spool
    private let writer: NIOLockedValueBox<MessageFileWriter>

    init(spool: Spool, id: String, reuse: String?) {
        self.spool = spool
        self.id = id
        self.writer = NIOLockedValueBox(spool.directory.messageWriter(id: id, reuse: reuse))
    }

    /// Octets appended so far.
    public var messageLength: Int { writer.withLockedValue { $0.messageLength } }

    /// Appends message bytes (any number; the caller bounds each chunk).
    public func append(_ bytes: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        let writer = self.writer
        return spool.pool.runIfActive(eventLoop: eventLoop) {
            try writer.withLockedValue { writer in Result { () throws(SpoolError) in try writer.append(bytes) } }.get()
        }
    }

    /// Writes the envelope, makes the file durable and queues it.
    public func commit(envelope: SpoolEnvelope, on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        let writer = self.writer, id = self.id, syncer = spool.syncer, logger = spool.logger, index = spool.index
        return spool.pool.runIfActive(eventLoop: eventLoop) {
            do {
                try writer.withLockedValue { writer in Result { () throws(SpoolError) in try writer.commit(envelope: envelope) } }.get()
            } catch {
                logger.error("spool write failed", metadata: ["queue_id": "\(id)", "error": "\(error)"])
                throw error
            }
            try Spool.sync(syncer, logger: logger)
            index.withLockedValue { $0[id] = envelope.receivedAt }
        }
    }

    /// Removes what was written (the transaction was refused, too big, or the client went away). Runs on the
    /// I/O threads after a step in progress; if they have stopped, here (a file left behind then is in `tmp/`,
    /// which recovery empties).
    public func abort() {
        let writer = self.writer
        spool.pool.submit { _ in writer.withLockedValue { $0.abort() } }
    }
}

/// A queued message for delivery: in memory when it is small, else an open file read in chunks.
public enum SpooledMessage: Sendable {
    case inMemory(ByteBuffer)
    case file(OpenMessageFile)

    public var size: Int {
        switch self {
        case .inMemory(let buffer): return buffer.readableBytes
        case .file(let file): return file.messageLength
        }
    }
}

extension Spool {
    /// Messages up to this size are read whole for delivery; larger ones are sent from the file in chunks.
    public static let inMemoryReadLimit = 1 << 20

    /// Starts a message written while it arrives; nothing is opened until its first `append`.
    public func startMessage(id: String) -> SpoolMessageStream {
        SpoolMessageStream(spool: self, id: id, reuse: free.withLockedValue { $0.popLast() })
    }

    /// Reads an entry for delivery: its message whole when small, else opened and checked in chunks (the
    /// caller closes the file). A corrupt entry is moved aside and reported as nil.
    public func readForDelivery(id: String) async -> (entry: SpoolEntry, message: SpooledMessage)? {
        let directory = self.directory
        let logger = self.logger
        return await readingEntry(id: id) { intake throws(SpoolDirectory.ReadError) -> (entry: SpoolEntry, message: SpooledMessage) in
            if let (entry, message) = try intake.readEntry(id) { return (entry, .inMemory(message)) }
            let file = try directory.openMessage(id: id)
            if file.messageLength <= Self.inMemoryReadLimit {
                // From the file already open: header and envelope are read and checked once, the message once.
                defer { file.close() }
                let message = try file.readWhole()
                // A corrupt state file alone does not take the message out of delivery (as for a large one).
                let state = try SpoolRecovery.stateOrReset(directory, id: id, envelope: file.envelope, logger: logger)
                return (SpoolEntry(id: id, envelope: file.envelope, state: state, messageSize: message.readableBytes), .inMemory(message))
            }
            do throws(SpoolDirectory.ReadError) {
                try file.verify()
                let state = try SpoolRecovery.stateOrReset(directory, id: id, envelope: file.envelope, logger: logger)
                return (SpoolEntry(id: id, envelope: file.envelope, state: state, messageSize: file.messageLength), .file(file))
            } catch {
                file.close()
                throw error
            }
        }
    }

    /// `count` bytes of an open message file from `offset`, read on the I/O threads.
    public func read(_ file: OpenMessageFile, from offset: Int, count: Int) async throws -> ByteBuffer {
        try await pool.runIfActive { try file.read(from: offset, count: count) }
    }
}
