import Logging
import NIOCore
import PosternCore
import PosternSMTP
import PosternSession

/// Handing a message to the delivery target: whole at the end of DATA, or, for a large one, streamed while DATA
/// arrives (issue #20: what `MessageIntake` says, done). Split from SMTPServerHandler.swift to keep each file
/// under 400 lines.
extension SMTPServerHandler {
    func deliver(_ envelope: Envelope, _ body: ByteBuffer, context: ChannelHandlerContext) {
        machine.startWaiting(for: .delivery)
        let target = environment.target
        let queueID = target.makeQueueID()
        let header = ReceivedHeader.make(envelope: envelope, hostname: session.configuration.hostname, queueID: queueID, date: environment.now())
        var composed = context.channel.allocator.buffer(capacity: header.utf8.count + body.readableBytes)
        composed.writeString(header)
        composed.writeImmutableBuffer(body)
        let message = composed
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        let audit = environment.audit
        let metrics = environment.metrics
        let logger = self.logger
        target.accept(queueID: queueID, envelope: envelope, message: message, on: context.eventLoop).whenSuccess { outcome in
            Self.record(outcome, queueID: queueID, envelope: envelope, messageID: HeaderScanner.messageID(in: body), size: message.readableBytes,
                        audit: audit, metrics: metrics, logger: logger)
            let this = handler.value
            guard this.machine.waitEnded() else { return }
            this.apply(this.session.deliveryCompleted(outcome), context: boundContext.value)
            this.process(context: boundContext.value)
        }
    }

    /// The message is stored (or not) whether or not the client is still there to hear it.
    static func record(_ outcome: DeliveryOutcome, queueID: String, envelope: Envelope, messageID: String?, size: Int,
                               audit: AuditLog, metrics: any ConnectionMetrics, logger: Logger) {
        switch outcome {
        case .queued(let id):
            audit.accepted(envelope, queueID: id, messageID: messageID, size: size)
            metrics.messageAccepted(listener: envelope.facts.listenerName)
        case .temporaryFailure(let reply):
            logger.warning("message not stored", metadata: ["queue_id": "\(queueID)", "reply": "\(reply)"])
            audit.refusedMessage(envelope.facts, reply: reply)
        }
    }

    func intakeAction(_ action: MessageIntake.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .decideOnHeaderSection:
            guard var held = dataFramer?.takeStored(), let envelope = session.dataEnvelope else { return }
            let verdict = session.headerSectionReceived(held)
            var fields = ""
            switch verdict {
            case .refuse:
                intakeAction(intake.headerDecided(accepted: false), context: context)
                return
            case .accept: break
            case .acceptAdding(let added): fields = added
            }
            let target = environment.target
            let queueID = target.makeQueueID()
            let received = ReceivedHeader.make(envelope: envelope, hostname: session.configuration.hostname, queueID: queueID, date: environment.now())
            var first = context.channel.allocator.buffer(capacity: received.utf8.count + fields.utf8.count + held.readableBytes)
            first.writeString(received)
            first.writeString(fields)
            first.writeBuffer(&held)
            // A copy: a slice would keep the whole first chunk alive until the end.
            let section = HeaderScanner.headerSection(of: first.getSlice(at: first.readerIndex + received.utf8.count, length: first.readableBytes - received.utf8.count) ?? ByteBuffer())
            var headerSection = context.channel.allocator.buffer(capacity: section.readableBytes)
            headerSection.writeImmutableBuffer(section)
            stream = (target.startMessage(queueID: queueID), headerSection, 0)
            _ = intake.headerDecided(accepted: true)
            write(first, context: context)
        case .write:
            guard let chunk = dataFramer?.takeStored() else { return }
            write(chunk, context: context)
        case .drop:
            _ = dataFramer?.takeStored()
        case .abort:
            stream?.stream.abort()
            stream = nil
        }
    }

    /// Writes a chunk; input waits for it (backpressure), then the turn goes on.
    func write(_ chunk: ByteBuffer, context: ChannelHandlerContext) {
        guard let stream = stream?.stream else { return }
        self.stream?.written += chunk.readableBytes
        machine.startWaiting(for: .messageWrite)
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        stream.append(chunk, on: context.eventLoop).whenComplete { result in
            let this = handler.value
            let failure: SMTPReply?
            switch result {
            case .success(let reply): failure = reply
            case .failure: failure = .localProblem
            }
            if let failure {
                this.streamFailure = failure
                this.intakeAction(this.intake.writeFailed(), context: boundContext.value)
            }
            guard this.machine.waitEnded() else { return }
            this.process(context: boundContext.value)
        }
    }

    /// The end of a streamed message: its last bytes, then the target makes it durable before the 250.
    func finishStream(_ envelope: Envelope, tail: ByteBuffer, context: ChannelHandlerContext) {
        guard let current = self.stream else {
            apply(session.deliveryCompleted(.temporaryFailure(.localProblem)), context: context)
            return
        }
        self.stream = nil
        let stream = current.stream, headerSection = current.headerSection, size = current.written + tail.readableBytes
        machine.startWaiting(for: .delivery)
        let eventLoop = context.eventLoop
        let handler = NIOLoopBound(self, eventLoop: eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: eventLoop)
        let audit = environment.audit, metrics = environment.metrics, logger = self.logger
        let written = tail.readableBytes > 0 ? stream.append(tail, on: eventLoop) : eventLoop.makeSucceededFuture(nil)
        written.flatMap { failure -> EventLoopFuture<DeliveryOutcome> in
            if let failure {
                stream.abort()
                return eventLoop.makeSucceededFuture(.temporaryFailure(failure))
            }
            return stream.finish(envelope: envelope, headerSection: headerSection, on: eventLoop)
        }.recover { _ in
            stream.abort()
            return .temporaryFailure(.localProblem)
        }.whenSuccess { outcome in
            Self.record(outcome, queueID: stream.queueID, envelope: envelope, messageID: HeaderScanner.messageID(in: headerSection),
                        size: size, audit: audit, metrics: metrics, logger: logger)
            let this = handler.value
            guard this.machine.waitEnded() else { return }
            this.apply(this.session.deliveryCompleted(outcome), context: boundContext.value)
            this.process(context: boundContext.value)
        }
    }

    /// The connection went away in the middle of a streamed message, or the message will be refused: what was
    /// written goes.
    func abandonStream() {
        stream?.stream.abort()
        stream = nil
    }
}
