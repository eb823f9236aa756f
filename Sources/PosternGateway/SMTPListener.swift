import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOExtras
import NIOPosix
import NIOSSL
import PosternPolicy
import PosternSMTP
import PosternSession

/// One bound endpoint. Accepts connections, applies connection limits, and puts an `SMTPServerHandler`
/// (behind TLS on `submissions`) on each.
final class SMTPListener: @unchecked Sendable {  // ServerQuiescingHelper is thread-safe but not marked Sendable
    let configuration: ListenerConfiguration
    private let serverChannel: any Channel
    /// Released after shutdown: its deinit touches an event loop, so it must go before the loops do.
    private let quiescing: NIOLockedValueBox<ServerQuiescingHelper?>

    var localAddress: SocketAddress? { serverChannel.localAddress }
    var isActive: Bool { serverChannel.isActive }

    private init(configuration: ListenerConfiguration, serverChannel: any Channel, quiescing: ServerQuiescingHelper) {
        self.configuration = configuration
        self.serverChannel = serverChannel
        self.quiescing = NIOLockedValueBox(quiescing)
    }

    struct Shared: Sendable {
        var hostname: String
        var limits: Limits
        var limiter: ConnectionLimiter
        var environment: ConnectionEnvironment
        var rules: @Sendable () -> any SessionRules
    }

    /// Listens on a loop of `acceptGroup` and serves each connection on a loop of `group`.
    static func bind(_ configuration: ListenerConfiguration, shared: Shared, group: any EventLoopGroup,
                     acceptGroup: any EventLoopGroup) async throws -> SMTPListener {
        let quiescing = ServerQuiescingHelper(group: group)
        let sessionConfiguration = configuration.sessionConfiguration(hostname: shared.hostname, limits: shared.limits,
                                                                       authAvailable: shared.environment.authenticator != nil)
        let idle = TimeAmount.seconds(Int64(shared.limits.idleTimeoutSeconds))
        let logger = shared.environment.logger
        let channel = try await ServerBootstrap(group: acceptGroup, childGroup: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(quiescing.makeServerChannelHandler(channel: channel))
                }
            }
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: false)
            // Backpressure (see ServerConnectionStateMachine): bounded output per connection, in the channel and in the
            // kernel, and one socket read per read event, so nothing more is read while input is buffered.
            .childChannelOption(.writeBufferWaterMark, value: ServerConnectionStateMachine.writeBufferWaterMark)
            .childChannelOption(.socketOption(.so_sndbuf), value: ChannelOptions.Types.SocketOption.Value(ServerConnectionStateMachine.socketSendBuffer))
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let peer = clientAddress(of: channel)
                    let install = { (channel: any Channel, client: String, port: Int) throws in
                        try installSession(on: channel, client: client, port: port, configuration: configuration,
                                           sessionConfiguration: sessionConfiguration, shared: shared, idle: idle)
                    }
                    if !configuration.proxyProtocolFrom.isEmpty,
                       let ip = IPAddress(peer), configuration.proxyProtocolFrom.contains(where: { $0.contains(ip) }) {
                        // A trusted load balancer: the client address comes from its PROXY header.
                        try channel.pipeline.syncOperations.addHandler(ProxyProtocolHandler(peer: peer, install: install))
                    } else {
                        try install(channel, peer, channel.remoteAddress?.port ?? 0)
                    }
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        logger.info("listening", metadata: ["listener": "\(configuration.name)", "kind": "\(configuration.kind.rawValue)",
                                            "address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
        return SMTPListener(configuration: configuration, serverChannel: channel, quiescing: quiescing)
    }

    /// Stops accepting and asks every session to finish; completes when all connections are closed.
    func quiesce() async {
        guard let helper = quiescing.withLockedValue({ $0 }) else { return }
        let promise = serverChannel.eventLoop.makePromise(of: Void.self)
        helper.initiateShutdown(promise: promise)
        try? await promise.futureResult.get()
    }

    func close() async {
        serverChannel.close(promise: nil)
        try? await serverChannel.closeFuture.get()
        quiescing.withLockedValue { $0 = nil }
    }
}

struct TLSNotConfigured: Error {}

/// Puts a session on a connection whose client address is known: connection limits, TLS on `submissions`,
/// the idle timer and the SMTP handler.
private func installSession(on channel: any Channel, client: String, port: Int, configuration: ListenerConfiguration,
                            sessionConfiguration: SessionConfiguration, shared: SMTPListener.Shared, idle: TimeAmount) throws {
    guard shared.limiter.acquire(client) else {
        shared.environment.logger.notice("connection refused: limit", metadata: ["client": "\(client)", "listener": "\(configuration.name)"])
        if configuration.kind != .submissions {
            var buffer = channel.allocator.buffer(capacity: 96)
            SMTPReply.tooManyConnections.write(into: &buffer)
            channel.writeAndFlush(buffer).whenComplete { _ in channel.close(promise: nil) }
        } else {
            channel.close(promise: nil)
        }
        return
    }
    channel.closeFuture.whenComplete { _ in shared.limiter.release(client) }
    let sync = channel.pipeline.syncOperations
    if configuration.kind == .submissions {
        guard let tls = shared.environment.tls.current else { throw TLSNotConfigured() }
        try sync.addHandler(NIOSSLServerHandler(context: tls))
    }
    try sync.addHandler(IdleStateHandler(readTimeout: idle))
    let facts = ConnectionFacts(listenerName: configuration.name, kind: configuration.kind, clientAddress: client,
                                clientPort: port, sessionID: SessionID.make())
    let session = SMTPSession(configuration: sessionConfiguration, facts: facts, rules: shared.rules())
    try sync.addHandler(SMTPServerHandler(session: session, environment: shared.environment,
                                         greetingDelay: .milliseconds(Int64(shared.limits.greetingDelayMilliseconds))))
}

/// The client's IP as policy sees it; IPv4-mapped IPv6 (`::ffff:a.b.c.d`) is reported as IPv4.
func clientAddress(of channel: any Channel) -> String {
    guard let ip = channel.remoteAddress?.ipAddress else { return "unknown" }
    if ip.lowercased().hasPrefix("::ffff:"), ip.contains(".") { return String(ip.dropFirst(7)) }
    return ip
}

enum SessionID {
    static func make() -> String {
        String((UInt64.random(in: 0...UInt64.max) & 0xFFFF_FFFF_FFFF), radix: 16, uppercase: false)
    }
}

extension ListenerConfiguration {
    /// A listener of `kind` with the defaults a configuration file gets (for `postern explain` without one).
    public init(name: String, kind: ListenerKind) {
        self.init(name: name, kind: kind, host: "", port: 0, normalizeBareLF: false, maxMessageSize: nil)
    }

    /// The configuration of this listener's sessions (the gateway's, and `postern explain`'s).
    public func sessionConfiguration(hostname: String, limits: Limits, authAvailable: Bool) -> SessionConfiguration {
        SessionConfiguration(hostname: hostname, listenerName: name, kind: kind, maxMessageSize: maxMessageSize ?? limits.maxMessageSize,
                             maxRecipients: limits.maxRecipients, normalizeBareLF: normalizeBareLF, authAvailable: authAvailable)
    }
}

extension Limits {
    /// The defaults of a configuration file without a `limits:` section.
    public static let defaults = Limits()
}
