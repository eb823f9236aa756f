import NIOCore
import PosternCore
import PosternSMTP
import PosternSession

/// Where the receiving side hands an accepted message. The outbox directory and the durable
/// spool implement it; the receiving side knows nothing else about delivery.
public protocol DeliveryTarget: Sendable {
    /// A fresh queue id, used in the Received header before the message is stored.
    func makeQueueID() -> String
    /// Stores the message (Received header already prepended) durably before returning `.queued`.
    /// Never throws: failures are a temporary reply for the client (452 4.3.1 / 451 4.3.0).
    func accept(queueID: String, envelope: Envelope, message: ByteBuffer) async -> DeliveryOutcome
    /// The same, completed on `eventLoop`. The receiving side calls this one; a target whose work
    /// runs on its own threads answers without a detour through the concurrency pool.
    func accept(queueID: String, envelope: Envelope, message: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<DeliveryOutcome>
}

extension DeliveryTarget {
    public func makeQueueID() -> String { QueueID.make() }

    public func accept(queueID: String, envelope: Envelope, message: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<DeliveryOutcome> {
        eventLoop.makeFutureWithTask { await self.accept(queueID: queueID, envelope: envelope, message: message) }
    }
}

extension SMTPReply {
    /// A message not stored because the disk (or the quota) is full.
    public static let insufficientStorage = SMTPReply(452, "4.3.1", "Insufficient system storage, try again later")
    /// A message not stored for any other local reason.
    public static let localProblem = SMTPReply(451, "4.3.0", "Temporary local problem, try again later")
}
