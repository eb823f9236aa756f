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
///
/// Connections are accepted on a loop that serves none of them (`ListenerLoops.accept`), so accepting and greeting
/// a client never waits for a loop busy with sessions. NIO's `ServerBootstrap` serves a server socket's
/// connections on one group or one loop, and the session loops are part of the gateway's one group; so there is a
/// listening socket per session loop, all bound to the endpoint with `SO_REUSEPORT` (the kernel spreads new
/// connections over them by their addresses and ports) and all accepted on the accept loop.
public final class SMTPListener: @unchecked Sendable {  // ServerQuiescingHelper is thread-safe but not marked Sendable
    public let configuration: ListenerConfiguration
    private let sockets: [Socket]

    /// One listening socket and the helper that drains its connections.
    private struct Socket {
        var channel: any Channel
        /// Released after shutdown: its deinit touches an event loop, so it must go before the loops do.
        var quiescing: NIOLockedValueBox<ServerQuiescingHelper?>
    }

    public var localAddress: SocketAddress? { sockets.first?.channel.localAddress }
    public var isActive: Bool { sockets.allSatisfy(\.channel.isActive) }

    private init(configuration: ListenerConfiguration, sockets: [Socket]) {
        self.configuration = configuration
        self.sockets = sockets
    }

    /// What every listener of a gateway shares.
    public struct Shared: Sendable {
        var hostname: String
        var limits: Limits
        var limiter: ConnectionLimiter
        var environment: ConnectionEnvironment
        var rules: @Sendable () -> any SessionRules

        public init(hostname: String, limits: Limits, limiter: ConnectionLimiter, environment: ConnectionEnvironment,
                    rules: @escaping @Sendable () -> any SessionRules) {
            self.hostname = hostname
            self.limits = limits
            self.limiter = limiter
            self.environment = environment
            self.rules = rules
        }

        /// Connections open now, on every listener.
        public var connections: Int { limiter.total }
    }

    /// Listens on `loops.accept` and serves each connection on one of `loops.sessions`.
    public static func bind(_ configuration: ListenerConfiguration, shared: Shared, loops: ListenerLoops) async throws -> SMTPListener {
        if configuration.port != 0 { try ensureNotListening(host: configuration.host, port: configuration.port) }
        var sockets: [Socket] = []
        var port = configuration.port
        do {
            for loop in loops.sessions {
                let socket = try await bind(configuration, port: port, shared: shared, accept: loops.accept, sessions: loop)
                port = socket.channel.localAddress?.port ?? port  // port 0: the others join the port the first one got
                sockets.append(socket)
            }
        } catch {
            for socket in sockets { try? await socket.channel.close() }
            throw error
        }
        shared.environment.logger.info("listening", metadata: [
            "listener": "\(configuration.name)", "kind": "\(configuration.kind.rawValue)",
            "address": "\(sockets.first?.channel.localAddress.map { "\($0)" } ?? "?")",
        ])
        return SMTPListener(configuration: configuration, sockets: sockets)
    }

    private static func bind(_ configuration: ListenerConfiguration, port: Int, shared: Shared, accept: any EventLoop,
                             sessions: any EventLoop) async throws -> Socket {
        let quiescing = ServerQuiescingHelper(group: sessions)
        let sessionConfiguration = configuration.sessionConfiguration(hostname: shared.hostname, limits: shared.limits,
                                                                       authAvailable: shared.environment.authenticator != nil)
        let idle = TimeAmount.seconds(Int64(shared.limits.idleTimeoutSeconds))
        let channel = try await ServerBootstrap(group: accept, childGroup: sessions)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.socketOption(NIOBSDSocket.Option(rawValue: SO_REUSEPORT)), value: 1)
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
            .bind(host: configuration.host, port: port)
            .get()
        return Socket(channel: channel, quiescing: NIOLockedValueBox(quiescing))
    }

    /// Fails when something listens on the endpoint already. `SO_REUSEPORT` would let these sockets join the
    /// listening sockets of another process of the same user (a second `postern serve` started by mistake) and
    /// share its connections; a plain bind (with `SO_REUSEADDR`, as the listeners have, so connections of a
    /// previous run in TIME-WAIT do not count) fails instead.
    static func ensureNotListening(host: String, port: Int) throws {
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        let fd = Glibc.socket(address.protocolFamily, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw IOError(errnoCode: errno, reason: "socket") }
        defer { Glibc.close(fd) }
        var on: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        let bound = address.withSockAddr { pointer, size in Glibc.bind(fd, pointer, socklen_t(size)) }
        guard bound == 0 else { throw IOError(errnoCode: errno, reason: "bind(descriptor:ptr:bytes:) \(host):\(port)") }
    }

    /// Stops accepting and asks every session to finish; completes when all connections are closed.
    public func quiesce() async {
        await withTaskGroup(of: Void.self) { group in
            for socket in sockets {
                guard let helper = socket.quiescing.withLockedValue({ $0 }) else { continue }
                let promise = socket.channel.eventLoop.makePromise(of: Void.self)
                helper.initiateShutdown(promise: promise)
                group.addTask { try? await promise.futureResult.get() }
            }
        }
    }

    public func close() async {
        for socket in sockets {
            socket.channel.close(promise: nil)
            try? await socket.channel.closeFuture.get()
            socket.quiescing.withLockedValue { $0 = nil }
        }
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
