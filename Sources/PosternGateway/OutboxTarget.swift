import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PosternCore
import PosternListener
import PosternSMTP
import PosternSession

/// Delivers into a directory, one `.eml` file per message, written atomically
/// (temp file, fsync, rename, fsync of the directory). The demo and tests read it. A large message is
/// written while it arrives (`startMessage`), like the spool's.
public final class OutboxTarget: DeliveryTarget {
    public let directory: URL
    private let temporary: URL
    private let threadPool: NIOThreadPool
    private let logger: Logger

    public init(directory: URL, threadPool: NIOThreadPool, logger: Logger) throws {
        self.directory = directory
        self.temporary = directory.appendingPathComponent(".tmp", isDirectory: true)
        self.threadPool = threadPool
        self.logger = logger
        try FileManager.default.createDirectory(at: temporary, withIntermediateDirectories: true)
    }

    public func startMessage(queueID: String) -> any MessageStream {
        OutboxStream(queueID: queueID, final: directory.appendingPathComponent("\(queueID).eml").path,
                     temporary: temporary.appendingPathComponent("\(queueID).eml.tmp").path, threadPool: threadPool, logger: logger)
    }

    public func accept(queueID: String, envelope: Envelope, message: ByteBuffer) async -> DeliveryOutcome {
        let final = directory.appendingPathComponent("\(queueID).eml").path
        let temp = temporary.appendingPathComponent("\(queueID).eml.tmp").path
        do {
            try await threadPool.runIfActive {
                try DurableFile.write(to: final, temporary: temp, permissions: 0o640) { output throws(DurableWriteError) in try output.write(message) }
            }
            return .queued(id: queueID)
        } catch let error as DurableWriteError {
            logger.error("outbox write failed", metadata: ["queue_id": "\(queueID)", "error": "\(error)"])
            return .temporaryFailure(error.isOutOfSpace ? .insufficientStorage : .localProblem)
        } catch {
            logger.error("outbox write failed", metadata: ["queue_id": "\(queueID)", "error": "\(error)"])
            return .temporaryFailure(.localProblem)
        }
    }
}

/// A message written into the outbox while it arrives: `DurableFile.Writer`, one step at a time on the thread pool.
struct OutboxStream: MessageStream {
    let queueID: String
    let final: String
    let temporary: String
    let threadPool: NIOThreadPool
    let logger: Logger
    /// Opened by the first append; nil again once committed or aborted.
    private let writer = NIOLockedValueBox<(file: DurableFile.Writer?, done: Bool)>((nil, false))

    init(queueID: String, final: String, temporary: String, threadPool: NIOThreadPool, logger: Logger) {
        self.queueID = queueID
        self.final = final
        self.temporary = temporary
        self.threadPool = threadPool
        self.logger = logger
    }

    private func failed(_ error: Error) -> SMTPReply {
        logger.error("outbox write failed", metadata: ["queue_id": "\(queueID)", "error": "\(error)"])
        return (error as? DurableWriteError)?.isOutOfSpace == true ? .insufficientStorage : .localProblem
    }

    func append(_ bytes: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<SMTPReply?> {
        let writer = self.writer, temporary = self.temporary
        return threadPool.runIfActive(eventLoop: eventLoop) {
            try writer.withLockedValue { state in
                try Result { () throws(DurableWriteError) in
                    guard !state.done else { throw DurableWriteError(operation: "append", path: temporary, code: EBADF) }
                    let file: DurableFile.Writer
                    if let existing = state.file { file = existing } else { file = try DurableFile.Writer(temporary: temporary, permissions: 0o640) }
                    state.file = file
                    do throws(DurableWriteError) { try file.output.write(bytes) } catch {
                        file.abort()
                        state = (nil, true)
                        throw error
                    }
                }.get()
            }
        }.map { () -> SMTPReply? in nil }.recover { failed($0) }
    }

    func finish(envelope: Envelope, headerSection: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<DeliveryOutcome> {
        let writer = self.writer, final = self.final, temporary = self.temporary, queueID = self.queueID
        return threadPool.runIfActive(eventLoop: eventLoop) {
            try writer.withLockedValue { state in
                try Result { () throws(DurableWriteError) in
                    guard !state.done, let file = state.file else { throw DurableWriteError(operation: "commit", path: temporary, code: EBADF) }
                    state = (nil, true)
                    try file.commit(to: final)
                }.get()
            }
        }.map { () -> DeliveryOutcome in .queued(id: queueID) }.recover { .temporaryFailure(failed($0)) }
    }

    func abort() {
        let writer = self.writer
        threadPool.submit { _ in
            writer.withLockedValue { state in
                state.file?.abort()
                state = (nil, true)
            }
        }
    }
}
