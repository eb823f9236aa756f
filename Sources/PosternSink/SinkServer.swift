import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import PosternSMTP
import PosternSession

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
/// what it receives: the demo upstream, the relay tests' upstream and the benchmark sink. Its sessions are
/// `SMTPSession`s, as on the gateway's listeners, so the relay faces the same rules as from a production
/// server (no MAIL before EHLO, none before TLS, one MAIL at a time); the faults come in through the
/// session's rules (`SinkRules`).
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
        var keptBytes = 0
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
                    if configuration.tls == .implicit {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: context))
                    }
                    try channel.pipeline.syncOperations.addHandler(SinkSessionHandler(server: self, tlsContext: context,
                                                                                      session: makeSession(for: channel)))
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

    /// Stores a message (off the event loop) and completes with its name when it is written: what the
    /// gateway's `DeliveryTarget` is to its sessions. The outbox file is the message after three header
    /// fields of the sink's (`Return-Path`, `X-Sink-Recipients`, `X-Sink-Client-Certificate`), which tests read.
    func store(_ message: SinkMessage, on eventLoop: EventLoop) -> EventLoopFuture<String> {
        let name: String = state.withLockedValue { state in
            state.received += 1
            state.counter += 1
            if configuration.outbox != nil {
                // The last few are kept for tests to inspect, at most 1,000 and (beyond the last one) 64 MiB, so
                // that large messages do not pile up in memory; the outbox holds them all.
                state.kept.append(message)
                state.keptBytes += message.data.readableBytes
                while state.kept.count > 1, state.kept.count > 1000 || state.keptBytes > 64 << 20 {
                    state.keptBytes -= state.kept.removeFirst().data.readableBytes
                }
            }
            return String(format: "%.6f-%06d", message.receivedAt.timeIntervalSince1970, state.counter)
        }
        guard let outbox = configuration.outbox else { return eventLoop.makeSucceededFuture(name) }
        return fileIO.runIfActive(eventLoop: eventLoop) {
            var file = "Return-Path: <\(message.sender)>\r\n"
            file += "X-Sink-Recipients: \(message.recipients.joined(separator: ", "))\r\n"
            if let subject = message.clientCertificateSubject { file += "X-Sink-Client-Certificate: \(subject)\r\n" }
            var bytes = Data(file.utf8)
            bytes.append(contentsOf: message.data.readableBytesView)
            let tmp = "\(outbox)/.\(name).tmp"
            try bytes.write(to: URL(fileURLWithPath: tmp))
            try FileManager.default.moveItem(atPath: tmp, toPath: "\(outbox)/\(name).eml")
            return name
        }
    }

    func noteHandshakeFailure() { state.withLockedValue { $0.handshakeFailures += 1 } }

    /// A session as a receiving MTA has it: TLS required before MAIL (STARTTLS, or implicit TLS first), no
    /// AUTH, limits far above what the relay sends, and the faults as rules.
    func makeSession(for channel: Channel) -> SMTPSession {
        let kind: ListenerKind = configuration.tls == .implicit ? .submissions : .submission
        let sessionID = state.withLockedValue { state -> Int in
            state.connections += 1
            return state.connections
        }
        let session = SessionConfiguration(hostname: configuration.hostname, listenerName: "sink", kind: kind,
                                           maxMessageSize: configuration.maxMessageSize, maxRecipients: 10_000,
                                           authAvailable: false, maxErrors: 1_000_000, requiresAuthentication: false)
        let facts = ConnectionFacts(listenerName: "sink", kind: kind, clientAddress: channel.remoteAddress?.ipAddress ?? "unknown",
                                    clientPort: channel.remoteAddress?.port ?? 0, sessionID: "\(sessionID)")
        return SMTPSession(configuration: session, facts: facts, rules: SinkRules(faults: faultsBox))
    }
}
