import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternCore
import PosternListener
import PosternSMTP
import PosternSession

/// Delivers into a directory, one `.eml` file per message, written atomically
/// (temp file, fsync, rename, fsync of the directory). The demo and tests read it.
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
