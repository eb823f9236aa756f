import NIOConcurrencyHelpers
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
    /// A message to be written while it arrives (a large one, see `MessageIntake`), instead of handed over whole.
    func startMessage(queueID: String) -> any MessageStream
}

/// A message written to its target while DATA arrives (issue #20). The receiving side makes one call at a time
/// and waits for it; `abort` may come at any time.
public protocol MessageStream: Sendable {
    var queueID: String { get }
    /// Writes the next bytes (the Received header first). Completes with nil when they are written, or with the
    /// reply the client gets at the end of DATA instead of 250 (what was written is removed then).
    func append(_ bytes: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<SMTPReply?>
    /// Stores the message durably before returning `.queued`, like `DeliveryTarget.accept`. `headerSection`: the
    /// message's header section (`HeaderScanner.headerSection`), for what is read from it (the Message-ID).
    func finish(envelope: Envelope, headerSection: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<DeliveryOutcome>
    /// Removes what was written (refused, too big, or the client went away). Safe at any time and more than once.
    func abort()
}

extension DeliveryTarget {
    public func makeQueueID() -> String { QueueID.make() }

    public func accept(queueID: String, envelope: Envelope, message: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<DeliveryOutcome> {
        eventLoop.makeFutureWithTask { await self.accept(queueID: queueID, envelope: envelope, message: message) }
    }

    /// For a target that can only take whole messages: gathers the message in memory and hands it over at the end.
    public func startMessage(queueID: String) -> any MessageStream {
        GatheredMessageStream(target: self, queueID: queueID)
    }
}

/// `MessageStream` for a target without one of its own: the message is gathered in memory.
struct GatheredMessageStream: MessageStream {
    let target: any DeliveryTarget
    let queueID: String
    private let gathered = NIOLockedValueBox(ByteBuffer())

    init(target: any DeliveryTarget, queueID: String) {
        self.target = target
        self.queueID = queueID
    }

    func append(_ bytes: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<SMTPReply?> {
        gathered.withLockedValue { $0.writeImmutableBuffer(bytes) }
        return eventLoop.makeSucceededFuture(nil)
    }

    func finish(envelope: Envelope, headerSection: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<DeliveryOutcome> {
        target.accept(queueID: queueID, envelope: envelope, message: gathered.withLockedValue { $0 }, on: eventLoop)
    }

    func abort() {
        gathered.withLockedValue { $0.clear() }
    }
}

extension SMTPReply {
    /// A message not stored because the disk (or the quota) is full.
    public static let insufficientStorage = SMTPReply(452, "4.3.1", "Insufficient system storage, try again later")
    /// A message not stored for any other local reason.
    public static let localProblem = SMTPReply(451, "4.3.0", "Temporary local problem, try again later")
}
