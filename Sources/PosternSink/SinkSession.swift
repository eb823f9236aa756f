import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOSSL
import NIOTLS
import PosternSMTP
import PosternSession

/// The sink's faults as session rules: a refused sender, recipient or message is a `Verdict` like any
/// policy's, so the session answers it in its place in the dialogue. Read at each check, so a test may
/// change the faults while connections are open (`SinkServer.setFaults`).
struct SinkRules: SessionRules {
    let faults: NIOLockedValueBox<SinkFaults>

    func checkSender(_ facts: ConnectionFacts, sender: ReversePath) -> Verdict {
        guard let reply = faults.withLockedValue({ $0.mailReply }) else { return .accept }
        return .refuse(Self.reply(reply))
    }

    func checkRecipient(_ facts: ConnectionFacts, sender: ReversePath, recipient: Mailbox) -> Verdict {
        let fault = faults.withLockedValue { $0.rcptReplies[recipient.description.lowercased()] ?? $0.rcptReply }
        return fault.map { .refuse(Self.reply($0)) } ?? .accept
    }

    /// `dataReply` answers the message's final dot instead of storing it (whatever its code).
    func checkMessage(_ facts: ConnectionFacts, sender: ReversePath, message: ByteBuffer) -> MessageVerdict {
        guard let reply = faults.withLockedValue({ $0.dataReply }) else { return .accept }
        return .refuse(Self.reply(reply))
    }

    func messageSizeLimit(_ facts: ConnectionFacts) -> Int? { nil }

    /// A fault as a reply; one that is not a reply line (`SinkFaults.isValidReply` says which are) is
    /// answered as a temporary failure that names it.
    static func reply(_ text: String) -> SMTPReply {
        (try? SMTPReplyParser.parse(text)) ?? SMTPReply(451, "4.3.0", "sink fault is not an SMTP reply: \(text)")
    }
}

extension SinkFaults {
    /// Whether `text` can be given as a reply fault: one reply line such as `450 4.7.230 throttled`.
    public static func isValidReply(_ text: String) -> Bool {
        (try? SMTPReplyParser.parse(text)) != nil
    }
}

/// The thin I/O layer of one sink connection around its `SMTPSession`: frames bytes into lines or DATA,
/// does what the session returns, stores messages through `SinkServer.store`. Replies are flushed once per
/// read, so pipelined commands cost one write. The connection faults (a refusing greeting, STARTTLS
/// stripped from EHLO as a man in the middle would, a drop after the data) are done here, on the wire.
final class SinkSessionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    let server: SinkServer
    let tlsContext: NIOSSLContext
    private var session: SMTPSession
    private var lineFramer = LineFramer(maxLength: 512)
    private var dataFramer: DataFramer?
    private var buffer = ByteBuffer()
    private var out = ByteBuffer()
    /// A delivery is being stored: input waits for its answer.
    private var storing = false
    /// The last command was EHLO (its reply is the one STARTTLS may be stripped from).
    private var answeringEHLO = false

    init(server: SinkServer, tlsContext: NIOSSLContext, session: SMTPSession) {
        self.server = server
        self.tlsContext = tlsContext
        self.session = session
    }

    func channelActive(context: ChannelHandlerContext) {
        if server.configuration.tls == .startTLS { greet(context: context) }
        context.fireChannelActive()
    }

    private func greet(context: ChannelHandlerContext) {
        if let greeting = server.faults.greeting {
            apply(session.close(with: SinkRules.reply(greeting)), context: context)
            return
        }
        session.greeting().write(into: &out)
        flush(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            let handler = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self)
            session.tlsEstablished(TLSInfo(version: "TLS", peerCertificateSubject: handler?.peerCertificate.map { "\($0)" }))
            waitingForTLS = false
            if server.configuration.tls == .implicit {
                greet(context: context)
            } else {
                process(context: context)
                flush(context: context)
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is NIOSSLError || error is BoringSSLError { server.noteHandshakeFailure() }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        guard !session.isClosed else { return }
        buffer.writeBuffer(&incoming)
        process(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush(context: context)
        context.fireChannelReadComplete()
    }

    private func process(context: ChannelHandlerContext) {
        while !storing && !waitingForTLS && !session.isClosed {
            if dataFramer != nil {
                guard let outcome = dataFramer!.feed(&buffer) else { break }  // checked just above; `!` spares a copy
                dataFramer = nil
                apply(session.dataCompleted(outcome), context: context)
            } else {
                lineFramer.maxLength = session.maxLineLength
                guard let line = lineFramer.next(&buffer) else { break }
                if case .line(let text) = line { answeringEHLO = text.uppercased().hasPrefix("EHLO") }
                apply(session.receive(line), context: context)
            }
        }
        buffer.discardReadBytes()
    }

    /// After STARTTLS's 220 and until the handshake is done, the session takes no command.
    private var waitingForTLS = false

    private func apply(_ action: SessionAction, context: ChannelHandlerContext) {
        switch action {
        case .reply(var reply):
            if answeringEHLO, server.faults.hideStartTLS { reply.lines.removeAll { $0 == "STARTTLS" } }
            answeringEHLO = false
            reply.write(into: &out)
        case .close(let reply):
            reply.write(into: &out)
            flush(context: context)
            context.close(promise: nil)
        case .startTLS(let reply):
            reply.write(into: &out)
            flush(context: context)
            // Anything pipelined after STARTTLS in plaintext is dropped (RFC 3207 5).
            buffer.clear()
            waitingForTLS = true
            do {
                try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext), position: .first)
            } catch {
                context.close(promise: nil)
            }
        case .startData(let reply, let limits):
            reply.write(into: &out)
            dataFramer = DataFramer(maxMessageSize: limits.maxMessageSize, normalizeBareLF: limits.normalizeBareLF,
                                    allocator: context.channel.allocator)
        case .authenticate:
            // The sink offers no AUTH (`authAvailable` is false), so the session never asks.
            apply(session.authCompleted(.temporaryFailure), context: context)
        case .deliver(let envelope, let body):
            store(envelope, body, context: context)
        }
    }

    private func store(_ envelope: Envelope, _ body: ByteBuffer, context: ChannelHandlerContext) {
        if server.faults.dropAfterData {
            context.close(promise: nil)
            return
        }
        storing = true
        let message = SinkMessage(sender: envelope.sender.mailbox?.description ?? "", recipients: envelope.recipients.map(\.description),
                                  data: body, clientCertificateSubject: envelope.facts.tls?.peerCertificateSubject, receivedAt: Date())
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        server.store(message, on: context.eventLoop).whenComplete { result in
            let (handler, context) = loopBound.value
            let outcome: DeliveryOutcome
            switch result {
            case .success(let name):
                outcome = .queued(id: name)
            case .failure(let error):
                handler.server.logger.error("sink could not store a message", metadata: ["error": "\(error)"])
                outcome = .temporaryFailure(SMTPReply(451, "4.3.0", "Could not store message"))
            }
            handler.storing = false
            handler.apply(handler.session.deliveryCompleted(outcome), context: context)
            handler.process(context: context)
            handler.flush(context: context)
        }
    }

    private func flush(context: ChannelHandlerContext) {
        guard out.readableBytes > 0 else { return }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        out = context.channel.allocator.buffer(capacity: 256)
    }
}
