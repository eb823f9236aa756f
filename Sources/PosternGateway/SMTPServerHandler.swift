import Foundation
import Logging
import NIOCore
import NIOSSL
import NIOTLS
import PosternSMTP
import PosternSession

/// Checks AUTH credentials; implemented on top of the directory.
public protocol SubmissionAuthenticator: Sendable {
    func authenticate(_ credentials: Credentials, client: String) async -> AuthOutcome
}

/// What every connection's handler shares: where mail goes, how AUTH is checked, which TLS context to use.
struct ConnectionEnvironment: Sendable {
    var target: any DeliveryTarget
    var authenticator: (any SubmissionAuthenticator)?
    var tls: TLSContextBox
    var logger: Logger
    var audit: AuditLog
    var now: @Sendable () -> Date
    var metrics: GatewayMetrics
    /// Where connections with input left after their turn wait for the next one (see `TurnQueue`).
    var turns = TurnQueues()
}

/// The thin I/O layer around `SMTPSession`: frames bytes into lines or DATA, applies the session's
/// actions to the channel, and runs authentication and delivery off the event loop.
final class SMTPServerHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var session: SMTPSession
    private let environment: ConnectionEnvironment
    private var logger: Logger
    private var inbound: ByteBuffer
    private var outbound: ByteBuffer
    private var lineFramer = LineFramer(maxLength: 512)
    private var dataFramer: DataFramer?
    /// When to read, handle input, and cut off a client that does not read its replies (see `ConnectionFlow`).
    private var flow = ConnectionFlow()
    /// An authentication, a delivery or a TLS handshake is under way: input waits.
    private var waiting: Bool {
        get { flow.waiting }
        set { flow.waiting = newValue }
    }
    private var handshaking: Bool {
        get { flow.handshaking }
        set { flow.handshaking = newValue }
    }
    /// A read was asked for while input was held; it is passed on when the flow allows.
    private var pendingRead = false
    private var active = true
    private var closing: Bool {
        get { flow.closing }
        set { flow.closing = newValue }
    }
    /// Shutdown was asked for while a message was being received: close after it is answered.
    private var quiesceAfterMessage = false
    /// Input is being handled (`process`); writability changes then wait for the end of the turn.
    private var inTurn = false
    /// Another turn is queued on the event loop.
    private var turnScheduled = false
    /// This connection's event loop's queue of turns, known from `handlerAdded`.
    private var turnQueue: TurnQueue?
    /// Cuts the client off if the channel stays not writable (see `ConnectionFlow.stallTimeout`).
    private var stallTimer: Scheduled<Void>?

    /// How long to hold the 220; a client that talks before it is refused (see `greet`).
    private let greetingDelay: TimeAmount
    /// The greeting is being held back.
    private var greetingHeld: Bool {
        get { flow.greetingHeld }
        set { flow.greetingHeld = newValue }
    }

    init(session: SMTPSession, environment: ConnectionEnvironment, greetingDelay: TimeAmount = .zero) {
        self.session = session
        self.environment = environment
        self.greetingDelay = greetingDelay
        var logger = environment.logger
        logger[metadataKey: "session"] = "\(session.facts.sessionID)"
        logger[metadataKey: "listener"] = "\(session.facts.listenerName)"
        self.logger = logger
        self.inbound = ByteBuffer()
        self.outbound = ByteBuffer()
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        turnQueue = environment.turns.queue(on: context.eventLoop)
        flow.writable = context.channel.isWritable
        // Added after a PROXY header, the channel is already active: greet now.
        if context.channel.isActive { greet(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        greet(context: context)
        context.fireChannelActive()
    }

    private var greeted = false

    private func greet(context: ChannelHandlerContext) {
        guard !greeted else { return }
        greeted = true
        environment.audit.connection(session.facts, peer: clientAddress(of: context.channel))
        environment.metrics.connectionOpened(listener: session.facts.listenerName)
        guard greetingDelay > .zero else {
            session.greeting().write(into: &outbound)
            flushReplies(context: context)
            return
        }
        // RFC 5321 4.3.1 lets a client wait for the greeting; one that sends before it is a spam bot or a
        // pipelining attack (Postfix postscreen "pregreet"): refuse it rather than read what it sent.
        greetingHeld = true
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.scheduleTask(in: greetingDelay) {
            let this = handler.value
            guard this.active, !this.closing else { return }
            this.greetingHeld = false
            if this.inbound.readableBytes > 0 {
                this.logger.notice("client talked before the greeting", metadata: ["bytes": "\(this.inbound.readableBytes)"])
                this.inbound.clear()
                this.apply(this.session.close(with: SMTPReply(554, "5.5.1", "Protocol error: data before greeting")),
                           context: boundContext.value)
                return
            }
            this.session.greeting().write(into: &this.outbound)
            this.process(context: boundContext.value)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        active = false
        stallTimer?.cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        active = false
        stallTimer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !closing else { return }
        var bytes = unwrapInboundIn(data)
        inbound.writeBuffer(&bytes)
        if greetingHeld {
            // Keep no more than a line of an early talker's bytes, and read no more; it is refused when the delay ends.
            if inbound.readableBytes > 512 { inbound.moveReaderIndex(forwardBy: inbound.readableBytes - 512); inbound.discardReadBytes() }
            flow.needsInput = false
            return
        }
        flow.needsInput = false  // until the framers have looked at it
        process(context: context)
    }

    func read(context: ChannelHandlerContext) {
        // Reads wait while input is buffered, output is held, or AUTH or delivery is under way; during a TLS
        // handshake they flow (the handshake itself needs them).
        if flow.mayRead {
            context.read()
        } else {
            pendingRead = true
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        flow.writable = context.channel.isWritable
        if flow.writable {
            stallTimer?.cancel()
            stallTimer = nil
        } else if stallTimer == nil {
            armStallTimer(context: context)
        }
        // During a turn (the flush at its end) the turn decides; otherwise decide now.
        if !inTurn { proceed(context: context) }
        context.fireChannelWritabilityChanged()
    }

    /// A client that stays at its output bound without sending more is cut off after `ConnectionFlow.stallTimeout`.
    private func armStallTimer(context: ChannelHandlerContext) {
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        stallTimer = context.eventLoop.scheduleTask(in: ConnectionFlow.stallTimeout) {
            let this = handler.value
            this.stallTimer = nil
            guard this.active, !this.flow.writable, !this.closing else { return }
            if this.flow.stalled {
                this.cutOff(reason: "replies unread for \(ConnectionFlow.stallTimeout.nanoseconds / 1_000_000_000) s", context: boundContext.value)
            } else {
                this.armStallTimer(context: boundContext.value)  // AUTH, delivery or a handshake is under way: look again later
            }
        }
    }

    /// Closes a client that sends without reading its replies, once its output bound is reached.
    private func cutOff(reason: String, context: ChannelHandlerContext) {
        logger.notice("closing a client that does not read its replies",
                      metadata: ["client": "\(session.facts.clientAddress)", "reason": "\(reason)",
                                 "buffered_input": "\(inbound.readableBytes)"])
        environment.metrics.slowReaderClosed(listener: session.facts.listenerName)
        inbound.clear()
        apply(session.close(with: .repliesNotRead), context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let tlsEvent = event as? TLSUserEvent, case .handshakeCompleted = tlsEvent {
            let version = (try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self))?.tlsVersion
            session.tlsEstablished(TLSInfo(version: version?.displayName ?? "TLS"))
            if let tls = session.facts.tls { environment.audit.tls(session.facts, tls) }  // set by tlsEstablished just above
            environment.metrics.tlsHandshake(listener: session.facts.listenerName, success: true)
            handshaking = false
            logger.debug("tls established", metadata: ["version": "\(version?.displayName ?? "?")"])
            resume(context: context)
        } else if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            if session.isInData && waiting { return }  // delivery under way; it answers soon
            apply(session.close(with: .idleTimeout), context: context)
            flushReplies(context: context)
        } else if event is ChannelShouldQuiesceEvent {
            if session.isInData {
                quiesceAfterMessage = true
            } else if !waiting {
                apply(session.close(with: .serviceClosing), context: context)
                flushReplies(context: context)
            } else {
                quiesceAfterMessage = true
            }
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("connection error", metadata: ["error": "\(error)"])
        if error is NIOSSLError, session.facts.tls == nil { environment.metrics.tlsHandshake(listener: session.facts.listenerName, success: false) }
        context.close(promise: nil)
    }

    // MARK: Processing

    /// One turn: feeds buffered input to the session until it needs more bytes, starts waiting, the channel
    /// stops being writable, or `ConnectionFlow.commandsPerTurn` commands are handled; then writes the replies.
    private func process(context: ChannelHandlerContext) {
        guard !inTurn else { return }  // called again from within the turn (an action completed at once): the turn goes on
        inTurn = true
        var handled = 0
        while flow.mayHandleInput && active && handled < ConnectionFlow.commandsPerTurn {
            if dataFramer != nil {
                guard let outcome = dataFramer!.feed(&inbound) else { break }  // checked just above; `!` spares a copy
                dataFramer = nil
                apply(session.dataCompleted(outcome), context: context)
            } else {
                lineFramer.maxLength = session.maxLineLength
                guard let line = lineFramer.next(&inbound) else { break }
                apply(session.receive(line), context: context)
            }
            handled += 1
        }
        // Left through a `break` (the loop could have gone on): the framers need more bytes.
        let starved = flow.mayHandleInput && active && handled < ConnectionFlow.commandsPerTurn
        flow.needsInput = starved || inbound.readableBytes == 0
        if inbound.readableBytes == 0 { inbound.clear() } else { inbound.discardReadBytes() }
        flushReplies(context: context)
        inTurn = false
        proceed(context: context)
    }

    /// After a turn, or when something that held input ends: another turn later, a cut-off, or a read.
    private func proceed(context: ChannelHandlerContext) {
        guard active else { return }
        switch flow.next(bufferedBytes: inbound.readableBytes) {
        case .cutOff:
            cutOff(reason: "output bound reached", context: context)
        case .continueLater:
            guard !turnScheduled, let turnQueue else { break }
            // Other connections on this event loop get their turns, and the loop polls its sockets, first.
            turnScheduled = true
            turnQueue.enqueue { [self] in
                turnScheduled = false
                guard active else { return }
                process(context: context)
            }
        case .wait:
            break
        }
        if pendingRead && flow.mayRead {
            pendingRead = false
            context.read()
        }
    }

    private func apply(_ action: SessionAction, context: ChannelHandlerContext) {
        switch action {
        case .reply(let reply):
            reply.write(into: &outbound)
            if quiesceAfterMessage && !session.isInData {
                apply(session.close(with: .serviceClosing), context: context)
            }
        case .close(let reply):
            if let reason = session.internalError { logger.error("session closed on an internal error", metadata: ["reason": "\(reason)"]) }
            reply.write(into: &outbound)
            closing = true
            let buffer = outbound
            outbound.clear()
            let channel = context.channel
            // Best effort: a client that does not read would hold the reply, and the connection, forever.
            let grace = context.eventLoop.scheduleTask(in: ConnectionFlow.closeGrace) { channel.close(promise: nil) }
            context.writeAndFlush(wrapOutboundOut(buffer)).whenComplete { _ in
                grace.cancel()
                channel.close(promise: nil)
            }
        case .startTLS(let reply):
            startTLS(reply, context: context)
        case .startData(let reply, let limits):
            reply.write(into: &outbound)
            dataFramer = DataFramer(maxMessageSize: limits.maxMessageSize, normalizeBareLF: limits.normalizeBareLF,
                                    allocator: context.channel.allocator)
        case .authenticate(let credentials):
            authenticate(credentials, context: context)
        case .deliver(let envelope, let body):
            deliver(envelope, body, context: context)
        }
    }

    private func flushReplies(context: ChannelHandlerContext) {
        guard outbound.readableBytes > 0, active, !closing else { return }
        let buffer = outbound
        outbound = context.channel.allocator.buffer(capacity: 256)
        context.writeAndFlush(wrapOutboundOut(buffer), promise: nil)
    }

    /// RFC 3207: answer 220, then the handshake. Anything the client pipelined after STARTTLS was sent
    /// in plaintext and is thrown away unread (CVE-2011-0411).
    private func startTLS(_ reply: SMTPReply, context: ChannelHandlerContext) {
        guard let sslContext = environment.tls.current else {
            apply(session.tlsUnavailable(), context: context)
            return
        }
        reply.write(into: &outbound)
        flushReplies(context: context)  // the 220 leaves in plaintext before the TLS handler goes in
        inbound.clear()
        waiting = true
        handshaking = true
        do {
            try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: sslContext), position: .first)
        } catch {
            logger.error("cannot start TLS", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    private func authenticate(_ credentials: Credentials, context: ChannelHandlerContext) {
        guard let authenticator = environment.authenticator else {
            // The session offers AUTH only with an authenticator (SMTPListener); should the two ever
            // disagree, the client hears 454 4.7.0 rather than every listener going down.
            logger.error("AUTH without an authenticator")
            apply(session.authCompleted(.temporaryFailure), context: context)
            return
        }
        waiting = true
        let client = session.facts.clientAddress
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.makeFutureWithTask {
            await authenticator.authenticate(credentials, client: client)
        }.whenSuccess { outcome in
            let this = handler.value
            guard this.active else { return }
            this.environment.audit.auth(this.session.facts, login: credentials.login, mechanism: credentials.mechanism, outcome: outcome)
            this.environment.metrics.auth(result: outcome)
            // Closed meanwhile (idle timeout, shutdown) with its reply not yet written: nothing to answer.
            guard !this.closing else { return }
            this.apply(this.session.authCompleted(outcome), context: boundContext.value)
            this.resume(context: boundContext.value)
        }
    }

    private func deliver(_ envelope: Envelope, _ body: ByteBuffer, context: ChannelHandlerContext) {
        waiting = true
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
            // The message is stored whether or not the client is still there to hear it.
            switch outcome {
            case .queued(let id):
                audit.accepted(envelope, queueID: id, messageID: HeaderScanner.messageID(in: body), size: message.readableBytes)
                metrics.messageAccepted(listener: envelope.facts.listenerName)
            case .temporaryFailure(let reply):
                logger.warning("message not stored", metadata: ["queue_id": "\(queueID)", "reply": "\(reply)"])
                audit.refusedMessage(envelope.facts, reply: reply)
            }
            let this = handler.value
            guard this.active else { return }
            this.apply(this.session.deliveryCompleted(outcome), context: boundContext.value)
            this.resume(context: boundContext.value)
        }
    }

    /// Ends a wait: processes what arrived meanwhile and passes on a held read.
    private func resume(context: ChannelHandlerContext) {
        waiting = false
        process(context: context)
    }
}
