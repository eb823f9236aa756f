import Foundation
import Logging
import NIOCore
import NIOSSL
import NIOTLS
import PosternCore
import PosternSMTP
import PosternSession

/// Checks AUTH credentials; implemented on top of the directory.
public protocol SubmissionAuthenticator: Sendable {
    func authenticate(_ credentials: Credentials, client: String) async -> AuthOutcome
}

/// What every connection's handler shares: where mail goes, how AUTH is checked, which TLS context to use.
public struct ConnectionEnvironment: Sendable {
    public var target: any DeliveryTarget
    public var authenticator: (any SubmissionAuthenticator)?
    public var tls: TLSContextBox
    public var logger: Logger
    public var audit: AuditLog
    public var now: @Sendable () -> Date
    public var metrics: any ConnectionMetrics
    /// Where connections with input left after their turn wait for the next one (see `TurnQueue`).
    var turns = TurnQueues()

    public init(target: any DeliveryTarget, authenticator: (any SubmissionAuthenticator)?, tls: TLSContextBox, logger: Logger, audit: AuditLog,
                now: @escaping @Sendable () -> Date, metrics: any ConnectionMetrics) {
        self.target = target
        self.authenticator = authenticator
        self.tls = tls
        self.logger = logger
        self.audit = audit
        self.now = now
        self.metrics = metrics
    }
}

/// What the connection handler counts (the gateway's Prometheus metrics).
public protocol ConnectionMetrics: Sendable {
    /// A client connection was accepted and greeted.
    func connectionOpened(listener: String)
    /// A client that sent commands without reading its replies was closed at its output bound.
    func slowReaderClosed(listener: String)
    /// A TLS handshake finished (STARTTLS or implicit TLS), or failed.
    func tlsHandshake(listener: String, success: Bool)
    /// One SMTP AUTH attempt's outcome.
    func auth(result: AuthOutcome)
    /// A message was stored (queued or written to the outbox) and answered 250.
    func messageAccepted(listener: String)
}

/// The thin I/O layer around `SMTPSession` and `ServerConnectionStateMachine`: frames bytes into lines or
/// DATA, gives the session what the client sent and the machine what happened to the channel, and does what
/// they return; authentication and delivery run off the event loop.
final class SMTPServerHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    var session: SMTPSession
    /// When to greet, read, handle input, wait and close (see `ServerConnectionStateMachine`).
    var machine = ServerConnectionStateMachine()
    let environment: ConnectionEnvironment
    var logger: Logger
    private var inbound: ByteBuffer
    private var outbound: ByteBuffer
    private var lineFramer = LineFramer(maxLength: 512)
    var dataFramer: DataFramer?
    /// Where the message in DATA goes while it arrives: kept in memory, or streamed (see `MessageIntake`).
    var intake = MessageIntake()
    /// The target's stream of a large message, its header section (for the Message-ID at its end) and the
    /// octets written so far.
    var stream: (stream: any MessageStream, headerSection: ByteBuffer, written: Int)?
    /// Why a streamed message could not be stored: the reply at the end of DATA instead of 250.
    var streamFailure: SMTPReply?
    /// This connection's event loop's queue of turns, known from `handlerAdded`.
    private var turnQueue: TurnQueue?
    /// Cuts the client off if the channel stays not writable (see `ServerConnectionStateMachine.stallTimeout`).
    private var stallTimer: Scheduled<Void>?
    /// How long to hold the 220; a client that talks before it is refused.
    private let greetingDelay: TimeAmount

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
        machine = ServerConnectionStateMachine(writable: context.channel.isWritable)
        // Added after a PROXY header, the channel is already active: greet now.
        if context.channel.isActive { connectionActive(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        connectionActive(context: context)
        context.fireChannelActive()
    }

    private func connectionActive(context: ChannelHandlerContext) {
        let action = machine.channelActive(greetingDelay: greetingDelay > .zero)
        guard action != .none else { return }
        environment.audit.connection(session.facts, peer: clientAddress(of: context.channel))
        environment.metrics.connectionOpened(listener: session.facts.listenerName)
        switch action {
        case .greet:
            session.greeting().write(into: &outbound)
            flushReplies(context: context)
        case .holdGreeting:
            let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
            let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.eventLoop.scheduleTask(in: greetingDelay) { handler.value.greetingDelayEnded(context: boundContext.value) }
        case .none:
            break
        }
    }

    private func greetingDelayEnded(context: ChannelHandlerContext) {
        switch machine.greetingDelayEnded(bufferedBytes: inbound.readableBytes) {
        case .refuseEarlyTalker:
            logger.notice("client talked before the greeting", metadata: ["bytes": "\(inbound.readableBytes)"])
            inbound.clear()
            apply(session.close(with: SMTPReply(554, "5.5.1", "Protocol error: data before greeting")), context: context)
        case .greetAndTakeInput:
            session.greeting().write(into: &outbound)
            process(context: context)
        case .none:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        machine.channelInactive()
        abandonStream()
        stallTimer?.cancel()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        machine.channelInactive()
        abandonStream()
        stallTimer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        switch machine.bytesArrived() {
        case .takeInput:
            inbound.writeBuffer(&bytes)
            process(context: context)
        case .keepEarlyTalkerBytes:
            inbound.writeBuffer(&bytes)
            let limit = ServerConnectionStateMachine.earlyTalkerBytes
            if inbound.readableBytes > limit {
                inbound.moveReaderIndex(forwardBy: inbound.readableBytes - limit)
                inbound.discardReadBytes()
            }
        case .discard:
            break
        }
    }

    func read(context: ChannelHandlerContext) {
        if machine.readRequested() { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        let (timer, proceedNow) = machine.writabilityChanged(to: context.channel.isWritable)
        switch timer {
        case .arm: armStallTimer(context: context)
        case .cancel: stallTimer?.cancel(); stallTimer = nil
        case .none: break
        }
        if proceedNow { proceed(context: context) }
        context.fireChannelWritabilityChanged()
    }

    private func armStallTimer(context: ChannelHandlerContext) {
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        stallTimer = context.eventLoop.scheduleTask(in: ServerConnectionStateMachine.stallTimeout) {
            let this = handler.value
            this.stallTimer = nil
            switch this.machine.stallTimerFired() {
            case .cutOff:
                this.cutOff(reason: "replies unread for \(ServerConnectionStateMachine.stallTimeout.nanoseconds / 1_000_000_000) s",
                            context: boundContext.value)
            case .rearm:
                this.armStallTimer(context: boundContext.value)
            case .none:
                break
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
            session.tlsEstablished(TLSInfo(version: version.map { ServerTLS.name(of: $0) } ?? "TLS"))
            if let tls = session.facts.tls { environment.audit.tls(session.facts, tls) }  // set by tlsEstablished just above
            environment.metrics.tlsHandshake(listener: session.facts.listenerName, success: true)
            logger.debug("tls established", metadata: ["version": "\(version.map { ServerTLS.name(of: $0) } ?? "?")"])
            if machine.waitEnded() { process(context: context) }
        } else if let idle = event as? IdleStateHandler.IdleStateEvent, idle == .read {
            if machine.idleTimedOut(sessionInData: session.isInData) { apply(session.close(with: .idleTimeout), context: context) }
        } else if event is ChannelShouldQuiesceEvent {
            if machine.quiesce(sessionInData: session.isInData) == .close { apply(session.close(with: .serviceClosing), context: context) }
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

    /// One turn: feeds buffered input to the session while the machine allows (until the framers need more
    /// bytes, the session waits, the channel stops being writable, or a turn's commands are taken), then
    /// writes the replies and asks the machine what comes next.
    func process(context: ChannelHandlerContext) {
        guard machine.turnStarted() else { return }
        while machine.mayTakeCommand() {
            if dataFramer != nil {
                guard let outcome = dataFramer!.feed(&inbound) else {  // checked just above; `!` spares a copy
                    machine.inputRanOut()
                    // Bounds what is held of a large message (`MessageIntake`).
                    intakeAction(intake.inputTaken(stored: dataFramer?.storedBytes ?? 0, rejected: dataFramer?.isRejected ?? false), context: context)
                    break
                }
                dataFramer = nil
                if case .rejected = outcome { abandonStream() }
                apply(session.dataCompleted(outcome), context: context)
            } else {
                lineFramer.maxLength = session.maxLineLength
                guard let line = lineFramer.next(&inbound) else {
                    machine.inputRanOut()
                    break
                }
                apply(session.receive(line), context: context)
            }
        }
        if inbound.readableBytes == 0 { inbound.clear() } else { inbound.discardReadBytes() }
        flushReplies(context: context)  // still in the turn: a writability change it causes waits for `proceed`
        machine.turnEnded(bufferedBytes: inbound.readableBytes)
        proceed(context: context)
    }

    /// After a turn, or a writability change outside one: another turn later, a cut-off, or a held read.
    private func proceed(context: ChannelHandlerContext) {
        switch machine.proceed(bufferedBytes: inbound.readableBytes) {
        case .takeTurnLater:
            // Other connections on this event loop get their turns, and the loop polls its sockets, first.
            turnQueue?.enqueue { [self] in
                guard machine.queuedTurnDue() else { return }
                process(context: context)
            }
        case .cutOff:
            cutOff(reason: "output bound reached", context: context)
        case .read:
            context.read()
        case .none:
            break
        }
    }

    func apply(_ action: SessionAction, context: ChannelHandlerContext) {
        switch action {
        case .reply(let reply):
            reply.write(into: &outbound)
            if machine.replyQueued(sessionInData: session.isInData) {
                apply(session.close(with: .serviceClosing), context: context)
            }
        case .close(let reply):
            if let reason = session.internalError { logger.error("session closed on an internal error", metadata: ["reason": "\(reason)"]) }
            guard machine.mayWrite else { return }  // already closing: one closing reply is enough
            reply.write(into: &outbound)
            machine.closeStarted()
            let buffer = outbound
            outbound.clear()
            let channel = context.channel
            // Best effort: a client that does not read would hold the reply, and the connection, forever.
            let grace = context.eventLoop.scheduleTask(in: ServerConnectionStateMachine.closeGrace) { channel.close(promise: nil) }
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
            intake = MessageIntake()
            streamFailure = nil
        case .authenticate(let credentials):
            authenticate(credentials, context: context)
        case .deliver(let envelope, let body):
            switch intake.phase {
            case .inMemory: deliver(envelope, body, context: context)
            case .streaming: finishStream(envelope, tail: body, context: context)
            case .dropping:
                // Writing it failed; the client hears why instead of 250.
                apply(session.deliveryCompleted(.temporaryFailure(streamFailure ?? .localProblem)), context: context)
                streamFailure = nil
            }
        }
    }

    private func flushReplies(context: ChannelHandlerContext) {
        guard outbound.readableBytes > 0, machine.mayWrite else { return }
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
        machine.startWaiting(for: .tlsHandshake)
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
        machine.startWaiting(for: .authentication)
        let client = session.facts.clientAddress
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.makeFutureWithTask {
            await authenticator.authenticate(credentials, client: client)
        }.whenSuccess { outcome in
            let this = handler.value
            guard !this.machine.isClosed else { return }
            this.environment.audit.auth(this.session.facts, login: credentials.login, mechanism: credentials.mechanism, outcome: outcome)
            this.environment.metrics.auth(result: outcome)
            // Closed meanwhile (idle timeout, shutdown) with its reply not yet written: nothing to answer.
            guard this.machine.waitEnded() else { return }
            this.apply(this.session.authCompleted(outcome), context: boundContext.value)
            this.process(context: boundContext.value)
        }
    }
}
