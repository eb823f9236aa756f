import Foundation
import Logging
import NIOCore
import PosternCore
import PosternListener
import PosternRelay
import PosternSMTP
import PosternSession
import PosternSpool

/// Delivers into the durable spool; the relay takes it from there. `.queued` only once the message
/// and its envelope are on disk (fdatasync, rename, fsync of the directory).
public final class SpoolTarget: DeliveryTarget {
    let spool: Spool
    let relay: Relay
    let now: @Sendable () -> Date

    init(spool: Spool, relay: Relay, now: @escaping @Sendable () -> Date) {
        self.spool = spool
        self.relay = relay
        self.now = now
    }

    public func accept(queueID: String, envelope: Envelope, message: ByteBuffer) async -> DeliveryOutcome {
        let spoolEnvelope = makeEnvelope(envelope, message: message)
        do {
            try await spool.enqueue(id: queueID, envelope: spoolEnvelope, message: message)
        } catch {
            return Self.outcome(of: error)
        }
        relay.submit(id: queueID, envelope: spoolEnvelope, message: message)
        return .queued(id: queueID)
    }

    public func accept(queueID: String, envelope: Envelope, message: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<DeliveryOutcome> {
        let spoolEnvelope = makeEnvelope(envelope, message: message)
        let relay = self.relay
        return spool.enqueue(id: queueID, envelope: spoolEnvelope, message: message, on: eventLoop).map { () -> DeliveryOutcome in
            relay.submit(id: queueID, envelope: spoolEnvelope, message: message)
            return .queued(id: queueID)
        }.recover { error in
            Self.outcome(of: (error as? SpoolError) ?? .unwritable("\(error)"))
        }
    }

    /// A large message goes into the spool while it arrives (`SpoolMessageStream`); the relay reads it from there.
    public func startMessage(queueID: String) -> any MessageStream {
        SpoolTargetStream(target: self, stream: spool.startMessage(id: queueID))
    }

    /// `message`: the message, or its header section alone (the Message-ID is read from it).
    func makeEnvelope(_ envelope: Envelope, message: ByteBuffer) -> SpoolEnvelope {
        let facts = envelope.facts
        return SpoolEnvelope(
            sender: envelope.sender.mailbox.map { "\($0)" } ?? "",
            recipients: envelope.recipients.map { "\($0)" },
            receivedAt: now(), clientAddress: facts.clientAddress, listener: facts.listenerName,
            login: facts.user?.login, messageID: HeaderScanner.messageID(in: message), bodyType: envelope.bodyType)
    }

    static func outcome(of error: SpoolError) -> DeliveryOutcome {
        switch error {
        case .full: return .temporaryFailure(.insufficientStorage)
        case .unwritable: return .temporaryFailure(.localProblem)
        }
    }
}

/// A message written into the spool while it arrives.
struct SpoolTargetStream: MessageStream {
    let target: SpoolTarget
    let stream: SpoolMessageStream

    var queueID: String { stream.id }

    func append(_ bytes: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<SMTPReply?> {
        let stream = self.stream
        return stream.append(bytes, on: eventLoop).map { () -> SMTPReply? in nil }.recover { error in
            stream.abort()
            guard case .temporaryFailure(let reply) = SpoolTarget.outcome(of: (error as? SpoolError) ?? .unwritable("\(error)")) else { return .localProblem }
            return reply
        }
    }

    func finish(envelope: Envelope, headerSection: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<DeliveryOutcome> {
        let spoolEnvelope = target.makeEnvelope(envelope, message: headerSection)
        let relay = target.relay, id = stream.id, stream = self.stream
        return stream.commit(envelope: spoolEnvelope, on: eventLoop).map { () -> DeliveryOutcome in
            relay.submit(id: id, envelope: spoolEnvelope, message: nil)
            return .queued(id: id)
        }.recover { error in
            stream.abort()
            return SpoolTarget.outcome(of: (error as? SpoolError) ?? .unwritable("\(error)"))
        }
    }

    func abort() { stream.abort() }
}
