import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import PosternSMTP

/// Failures the sink can be told to produce, for tests of the relay.
public struct SinkFaults: Sendable, Hashable {
    /// Reply to every RCPT instead of 250, e.g. `450 4.7.230 throttled`.
    public var rcptReply: String?
    /// Replies for particular recipient addresses (lower-cased), taking precedence.
    public var rcptReplies: [String: String]
    public var mailReply: String?
    /// Reply after the message's final dot instead of 250.
    public var dataReply: String?
    /// Close the connection after the message data arrives, without a reply.
    public var dropAfterData: Bool
    /// Greeting instead of 220 (e.g. `421 4.3.2 busy`).
    public var greeting: String?
    /// Do not offer STARTTLS (a downgrade by a man in the middle).
    public var hideStartTLS: Bool

    public init(rcptReply: String? = nil, rcptReplies: [String: String] = [:], mailReply: String? = nil, dataReply: String? = nil,
                dropAfterData: Bool = false, greeting: String? = nil, hideStartTLS: Bool = false) {
        self.rcptReply = rcptReply
        self.rcptReplies = rcptReplies
        self.mailReply = mailReply
        self.dataReply = dataReply
        self.dropAfterData = dropAfterData
        self.greeting = greeting
        self.hideStartTLS = hideStartTLS
    }
}

/// How the sink listens and what it does with what it receives.
public struct SinkConfiguration: Sendable {
    public enum TLSMode: String, Sendable { case startTLS = "starttls", implicit }
    public var host: String
    public var port: Int
    public var tls: TLSMode
    public var certificateFile: String
    public var keyFile: String
    /// CA bundle that client certificates must chain to. A client certificate is required.
    public var clientCAFile: String
    /// Where received messages are written (`<name>.eml`); nil discards them.
    public var outbox: String?
    public var hostname: String
    public var maxMessageSize: Int
    public var faults: SinkFaults

    public init(host: String = "127.0.0.1", port: Int = 0, tls: TLSMode = .startTLS, certificateFile: String, keyFile: String,
                clientCAFile: String, outbox: String?, hostname: String = "sink.localhost", maxMessageSize: Int = 50 * 1024 * 1024,
                faults: SinkFaults = SinkFaults()) {
        self.host = host
        self.port = port
        self.tls = tls
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.clientCAFile = clientCAFile
        self.outbox = outbox
        self.hostname = hostname
        self.maxMessageSize = maxMessageSize
        self.faults = faults
    }
}

/// One message as the sink received it.
public struct SinkMessage: Sendable, Hashable {
    public var sender: String
    public var recipients: [String]
    public var data: ByteBuffer
    /// The client certificate's subject, as the sink saw it.
    public var clientCertificateSubject: String?
    public var receivedAt: Date
}

/// A small SMTP server that requires and verifies a client certificate and stores or discards
/// what it receives: the demo upstream and the benchmark sink.
public final class SinkServer: Sendable {
    let configuration: SinkConfiguration
    let group: EventLoopGroup
    let logger: Logger
    let state = NIOLockedValueBox(SinkState())
    let faultsBox: NIOLockedValueBox<SinkFaults>
    private let channelBox = NIOLockedValueBox<Channel?>(nil)
    let fileIO = NIOThreadPool(numberOfThreads: 2)

    struct SinkState {
        var received = 0
        var connections = 0
        var handshakeFailures = 0
        var kept: [SinkMessage] = []
        var counter = 0
    }

    public init(configuration: SinkConfiguration, group: EventLoopGroup, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.logger = logger
        self.faultsBox = NIOLockedValueBox(configuration.faults)
    }

    public var receivedCount: Int { state.withLockedValue { $0.received } }
    public var connectionCount: Int { state.withLockedValue { $0.connections } }
    public var handshakeFailureCount: Int { state.withLockedValue { $0.handshakeFailures } }
    /// The last 1,000 messages received (outbox mode only), for tests.
    public var messages: [SinkMessage] { state.withLockedValue { $0.kept } }

    public var faults: SinkFaults {
        get { faultsBox.withLockedValue { $0 } }
    }
    public func setFaults(_ faults: SinkFaults) { faultsBox.withLockedValue { $0 = faults } }

    /// Binds and starts serving; returns the bound port.
    public func start() async throws -> Int {
        var tls = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(configuration.certificateFile).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: configuration.keyFile, format: .pem)))
        tls.minimumTLSVersion = .tlsv12
        // Requires a client certificate and checks its chain (there is no host name to check).
        tls.certificateVerification = .noHostnameVerification
        tls.trustRoots = .file(configuration.clientCAFile)
        let context = try NIOSSLContext(configuration: tls)
        if let outbox = configuration.outbox {
            try FileManager.default.createDirectory(atPath: outbox, withIntermediateDirectories: true)
        }
        fileIO.start()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    state.withLockedValue { $0.connections += 1 }
                    if configuration.tls == .implicit {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    }
                    try channel.pipeline.syncOperations.addHandler(SinkSessionHandler(server: self, tlsContext: context))
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        channelBox.withLockedValue { $0 = channel }
        let port = channel.localAddress?.port ?? configuration.port
        logger.info("sink listening", metadata: ["address": "\(configuration.host):\(port)", "tls": "\(configuration.tls.rawValue)",
                                                 "outbox": "\(configuration.outbox ?? "(discard)")"])
        return port
    }

    public func stop() async {
        let channel = channelBox.withLockedValue { channel -> Channel? in
            defer { channel = nil }
            return channel
        }
        try? await channel?.close()
        try? await fileIO.shutdownGracefully()
    }

    /// Stores a message (off the event loop) and completes when it is written.
    func store(_ message: SinkMessage, on eventLoop: EventLoop) -> EventLoopFuture<Void> {
        let name: String = state.withLockedValue { state in
            state.received += 1
            state.counter += 1
            if configuration.outbox != nil {
                // The last few are kept for tests to inspect; the outbox holds them all.
                if state.kept.count >= 1000 { state.kept.removeFirst(state.kept.count - 999) }
                state.kept.append(message)
            }
            return String(format: "%.6f-%06d", message.receivedAt.timeIntervalSince1970, state.counter)
        }
        guard let outbox = configuration.outbox else { return eventLoop.makeSucceededVoidFuture() }
        return fileIO.runIfActive(eventLoop: eventLoop) {
            var file = "Return-Path: <\(message.sender)>\r\n"
            file += "X-Sink-Recipients: \(message.recipients.joined(separator: ", "))\r\n"
            if let subject = message.clientCertificateSubject { file += "X-Sink-Client-Certificate: \(subject)\r\n" }
            var bytes = Data(file.utf8)
            bytes.append(contentsOf: message.data.readableBytesView)
            let tmp = "\(outbox)/.\(name).tmp"
            try bytes.write(to: URL(fileURLWithPath: tmp))
            try FileManager.default.moveItem(atPath: tmp, toPath: "\(outbox)/\(name).eml")
        }
    }

    func noteHandshakeFailure() { state.withLockedValue { $0.handshakeFailures += 1 } }
}

/// One SMTP session on the sink: a small state machine over lines, replies flushed per read so
/// pipelined commands cost one write.
final class SinkSessionHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    enum Phase { case command, data(DataFramer), storing, closed }

    let server: SinkServer
    let tlsContext: NIOSSLContext
    var phase: Phase = .command
    var tlsActive: Bool
    var framer = LineFramer(maxLength: 2048)
    var buffer = ByteBuffer()
    var out = ByteBuffer()
    var sender: String?
    var recipients: [String] = []
    var clientSubject: String?

    init(server: SinkServer, tlsContext: NIOSSLContext) {
        self.server = server
        self.tlsContext = tlsContext
        self.tlsActive = server.configuration.tls == .implicit
    }

    func channelActive(context: ChannelHandlerContext) {
        if server.configuration.tls == .startTLS { sendGreeting(context: context) }
        context.fireChannelActive()
    }

    private func sendGreeting(context: ChannelHandlerContext) {
        if let greeting = server.faults.greeting {
            reply(greeting)
            flush(context: context)
            context.close(promise: nil)
            phase = .closed
            return
        }
        reply("220 \(server.configuration.hostname) ESMTP Postern sink")
        flush(context: context)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event {
            tlsActive = true
            if let handler = try? context.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self) {
                clientSubject = handler.peerCertificate.map { "\($0)" }
            }
            if server.configuration.tls == .implicit { sendGreeting(context: context) }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if error is NIOSSLError || error is BoringSSLError { server.noteHandshakeFailure() }
        context.close(promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        process(context: context)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        flush(context: context)
        context.fireChannelReadComplete()
    }

    private func process(context: ChannelHandlerContext) {
        loop: while buffer.readableBytes > 0 {
            switch phase {
            case .closed, .storing:
                break loop
            case .data(var dataFramer):
                phase = .storing  // so that the framer's buffer is uniquely referenced while it grows
                guard let outcome = dataFramer.feed(&buffer) else {
                    phase = .data(dataFramer)
                    break loop
                }
                finishData(outcome, context: context)
            case .command:
                guard let line = framer.next(&buffer) else { break loop }
                switch line {
                case .line(let text):
                    if handleCommand(text, context: context) == false { break loop }
                case .bareLF:
                    reply("500 5.5.2 Command lines must end in CRLF")
                case .tooLong:
                    reply("500 5.5.2 Line too long")
                }
            }
        }
        buffer.discardReadBytes()
    }

    /// Returns false when processing must stop (TLS switch, close).
    private func handleCommand(_ text: String, context: ChannelHandlerContext) -> Bool {
        let command: SMTPCommand
        do { command = try CommandParser.parse(Substring(text)) } catch {
            reply(error.reply.wireLine)
            return true
        }
        let faults = server.faults
        switch command {
        case .ehlo:
            var lines = ["\(server.configuration.hostname)", "PIPELINING", "8BITMIME", "SIZE \(server.configuration.maxMessageSize)", "ENHANCEDSTATUSCODES"]
            if !tlsActive && !faults.hideStartTLS { lines.append("STARTTLS") }
            for (index, line) in lines.enumerated() { reply("250\(index == lines.count - 1 ? " " : "-")\(line)") }
        case .helo:
            reply("250 \(server.configuration.hostname)")
        case .startTLS:
            guard !tlsActive, server.configuration.tls == .startTLS else {
                reply("503 5.5.1 TLS already active")
                return true
            }
            reply("220 2.0.0 Ready to start TLS")
            flush(context: context)
            // Anything pipelined after STARTTLS in plaintext is dropped (RFC 3207 5).
            buffer.clear()
            do {
                try context.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext), position: .first)
            } catch {
                context.close(promise: nil)
            }
            sender = nil
            recipients = []
            return false
        case .mail(let path, _):
            guard tlsActive else { reply("530 5.7.0 Must issue a STARTTLS command first"); return true }
            guard sender == nil else { reply("503 5.5.1 Nested MAIL command"); return true }
            if let failure = faults.mailReply { reply(failure); return true }
            sender = path.mailbox.map { $0.description } ?? ""
            recipients = []
            reply("250 2.1.0 Ok")
        case .rcpt(let mailbox, _):
            guard sender != nil else { reply("503 5.5.1 Need MAIL command"); return true }
            let address = mailbox.description
            if let failure = faults.rcptReplies[address.lowercased()] ?? faults.rcptReply {
                reply(failure)
                return true
            }
            recipients.append(address)
            reply("250 2.1.5 Ok")
        case .data:
            guard sender != nil, !recipients.isEmpty else { reply("554 5.5.1 No valid recipients"); return true }
            reply("354 End data with <CR><LF>.<CR><LF>")
            phase = .data(DataFramer(maxMessageSize: server.configuration.maxMessageSize, allocator: context.channel.allocator))
        case .rset:
            sender = nil
            recipients = []
            reply("250 2.0.0 Ok")
        case .noop:
            reply("250 2.0.0 Ok")
        case .quit:
            reply("221 2.0.0 Bye")
            flush(context: context)
            context.close(promise: nil)
            phase = .closed
            return false
        default:
            reply("502 5.5.1 Command not implemented")
        }
        return true
    }

    private func finishData(_ outcome: DataFramer.Outcome, context: ChannelHandlerContext) {
        let faults = server.faults
        let from = sender ?? ""
        let to = recipients
        sender = nil
        recipients = []
        switch outcome {
        case .rejected(let why):
            phase = .command
            reply(why.reply.wireLine)
        case .message(let data):
            if faults.dropAfterData {
                phase = .closed
                context.close(promise: nil)
                return
            }
            if let failure = faults.dataReply {
                phase = .command
                reply(failure)
                return
            }
            phase = .storing
            let message = SinkMessage(sender: from, recipients: to, data: data, clientCertificateSubject: clientSubject, receivedAt: Date())
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            server.store(message, on: context.eventLoop).whenComplete { result in
                let (handler, context) = loopBound.value
                switch result {
                case .success: handler.reply("250 2.0.0 Ok: queued")
                case .failure(let error):
                    handler.server.logger.error("sink could not store a message", metadata: ["error": "\(error)"])
                    handler.reply("451 4.3.0 Could not store message")
                }
                handler.phase = .command
                handler.process(context: context)
                handler.flush(context: context)
            }
        }
    }

    private func reply(_ line: String) {
        out.writeString(line)
        out.writeStaticString("\r\n")
    }

    private func flush(context: ChannelHandlerContext) {
        guard out.readableBytes > 0 else { return }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        out = context.channel.allocator.buffer(capacity: 256)
    }
}

extension SMTPReply {
    /// The reply as one wire line without CRLF (single-line replies only).
    var wireLine: String {
        var text = wireString
        while text.hasSuffix("\r\n") { text.removeLast(2) }
        return text
    }
}
