import Foundation
import Logging
import NIOCore
import NIOPosix
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

    public func makeQueueID() -> String { QueueID.make() }

    public func accept(queueID: String, envelope: Envelope, message: ByteBuffer) async -> DeliveryOutcome {
        let final = directory.appendingPathComponent("\(queueID).eml")
        let temp = temporary.appendingPathComponent("\(queueID).eml.tmp")
        let directoryPath = directory.path
        do {
            try await threadPool.runIfActive {
                try DurableFile.write(message, to: temp.path, renameTo: final.path, syncDirectory: directoryPath)
            }
            return .queued(id: queueID)
        } catch let error as DurableFile.Failure {
            logger.error("outbox write failed", metadata: ["queue_id": "\(queueID)", "error": "\(error)"])
            return .temporaryFailure(error.reply)
        } catch {
            logger.error("outbox write failed", metadata: ["queue_id": "\(queueID)", "error": "\(error)"])
            return .temporaryFailure(SMTPReply(451, "4.3.0", "Temporary local problem, try again later"))
        }
    }
}

/// Queue ids: sortable by time, unique, safe in file names (`0MFX3Q8K2A-7F3C9D`).
public enum QueueID {
    public static func make(now: Date = Date()) -> String {
        let micros = UInt64(now.timeIntervalSince1970 * 1_000_000)
        let random = UInt32.random(in: 0...UInt32.max)
        return String(micros, radix: 36, uppercase: true) + "-" + String(random, radix: 16, uppercase: true)
    }
}

/// Write-then-rename with fsyncs, so a crash leaves either nothing or the whole file.
public enum DurableFile {
    public struct Failure: Error, CustomStringConvertible {
        public var errno: Int32
        public var operation: String
        public var description: String { "\(operation): \(String(cString: strerror(errno)))" }
        /// Disk full is "insufficient storage"; everything else a local error. Both temporary for the client.
        public var reply: SMTPReply {
            errno == ENOSPC || errno == EDQUOT
                ? SMTPReply(452, "4.3.1", "Insufficient system storage, try again later")
                : SMTPReply(451, "4.3.0", "Temporary local problem, try again later")
        }
    }

    public static func write(_ buffer: ByteBuffer, to temp: String, renameTo final: String, syncDirectory: String) throws {
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw Failure(errno: errno, operation: "open \(temp)") }
        var ok = false
        defer {
            if !ok { unlink(temp) }
        }
        do {
            defer { close(fd) }
            try buffer.withUnsafeReadableBytes { bytes in
                var offset = 0
                while offset < bytes.count {
                    let n = Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset)  // `!`: not empty (offset < count)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw Failure(errno: errno, operation: "write \(temp)")
                    }
                    offset += n
                }
            }
            guard fsync(fd) == 0 else { throw Failure(errno: errno, operation: "fsync \(temp)") }
        }
        guard rename(temp, final) == 0 else { throw Failure(errno: errno, operation: "rename \(temp)") }
        ok = true
        try syncDirectoryEntry(syncDirectory)
    }

    public static func syncDirectoryEntry(_ path: String) throws {
        let dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dfd >= 0 else { throw Failure(errno: errno, operation: "open \(path)") }
        defer { close(dfd) }
        guard fsync(dfd) == 0 else { throw Failure(errno: errno, operation: "fsync \(path)") }
    }
}
