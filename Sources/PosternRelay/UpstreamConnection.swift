import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import PosternSMTP

/// Why a connection to an upstream failed or ended.
public enum UpstreamConnectionError: Error, Sendable, Hashable, CustomStringConvertible {
    case connectFailed(String)
    case tlsFailed(String)
    /// The TLS handshake did not complete, or the upstream dropped the connection before its first
    /// reply over TLS. With TLS 1.3 the client finishes its side of the handshake before the server
    /// has checked the client certificate, so a refused certificate shows as a close or a reset
    /// right after it, not as a handshake error.
    case tlsHandshakeFailed(String)
    /// The upstream does not offer STARTTLS: we never continue in plaintext.
    case startTLSNotOffered
    case startTLSRefused(SMTPReply)
    case greetingRefused(SMTPReply)
    case ehloRefused(SMTPReply)
    case closed
    case timeout
    case malformedReply(String)
    /// The session's state machine was asked something its state cannot take (a fault of ours, see `UpstreamSession`).
    case protocolState(String)
    /// AUTH is configured but the upstream's EHLO over TLS does not offer that mechanism.
    case authNotOffered(mechanism: String, offered: [String])
    /// The upstream refused AUTH (after one fresh credential, when the first was cached); `detail` is XOAUTH2's error.
    case authRejected(mechanism: String, user: String, reply: SMTPReply, detail: String?)
    /// No credential to authenticate with: the token endpoint failed or refused, or the secret cannot be read.
    /// A local failure: the message stays queued and the upstream is backed off.
    case credentialsUnavailable(String)

    public var description: String {
        switch self {
        case .connectFailed(let why): return "connect failed: \(why)"
        case .tlsFailed(let why): return "TLS failed: \(why)"
        case .tlsHandshakeFailed(let why): return "TLS handshake failed: \(why)"
        case .startTLSNotOffered: return "upstream does not offer STARTTLS; not sending in plaintext"
        case .startTLSRefused(let reply): return "STARTTLS refused: \(ExchangeOnlineReplies.annotated(reply))"
        case .greetingRefused(let reply): return "greeting: \(ExchangeOnlineReplies.annotated(reply))"
        case .ehloRefused(let reply): return "EHLO refused: \(ExchangeOnlineReplies.annotated(reply))"
        case .closed: return "connection closed by upstream"
        case .timeout: return "timeout waiting for upstream"
        case .malformedReply(let why): return "\(why.prefix(100))"
        case .protocolState(let why): return "internal error in the upstream session: \(why)"
        case .authNotOffered(let mechanism, let offered):
            return "the upstream does not offer AUTH \(mechanism) over TLS (it offers: \(offered.isEmpty ? "no AUTH" : offered.joined(separator: " ")))"
        case .authRejected(let mechanism, let user, let reply, let detail):
            return "AUTH \(mechanism) as \(user) refused: \(ExchangeOnlineReplies.annotated(reply))" + (detail.map { " (the upstream said: \($0))" } ?? "")
        case .credentialsUnavailable(let why): return "no credentials for AUTH: \(why)"
        }
    }

    /// The greeting or EHLO was a 421 (or any 4xx): the upstream asks us to back off.
    var upstreamReply: SMTPReply? {
        switch self {
        case .greetingRefused(let reply), .ehloRefused(let reply), .startTLSRefused(let reply): return reply
        default: return nil
        }
    }
}

/// Reads SMTP replies off the wire (`SMTPReplyParser`) and hands them, in order, to whoever waits for them.
/// Also performs the STARTTLS switch: once the 220 arrives, every byte still buffered (sent in
/// plaintext after the 220) is discarded, and TLS is put in front of this handler.
final class SMTPClientHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var context: ChannelHandlerContext?
    private var buffer = ByteBuffer()
    private var parser = SMTPReplyParser()
    private var waiters = CircularBuffer<EventLoopPromise<SMTPReply>>()
    private var unclaimed = CircularBuffer<SMTPReply>()
    private var pendingStartTLS: (tls: NIOSSLClientHandler, promise: EventLoopPromise<Void>)?
    private var handshake: EventLoopPromise<Void>?
    private var failure: UpstreamConnectionError?
    /// TLS is in front (or being put there) and no reply has come over it yet: until one does, a
    /// close or reset is the upstream refusing the handshake (see `tlsHandshakeFailed`).
    private var tlsUnconfirmed: Bool

    init(implicitTLS: Bool) {
        tlsUnconfirmed = implicitTLS
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Writes `bytes` (if any) and returns the next `count` replies.
    func send(_ bytes: ByteBuffer?, expecting count: Int, eventLoop: EventLoop) -> EventLoopFuture<[SMTPReply]> {
        if let failure { return eventLoop.makeFailedFuture(failure) }
        var futures: [EventLoopFuture<SMTPReply>] = []
        for _ in 0..<count {
            let promise = eventLoop.makePromise(of: SMTPReply.self)
            if let reply = unclaimed.popFirst() { promise.succeed(reply) } else { waiters.append(promise) }
            futures.append(promise.futureResult)
        }
        if let bytes, let context { context.writeAndFlush(wrapOutboundOut(bytes), promise: nil) }
        return EventLoopFuture.whenAllSucceed(futures, on: eventLoop)
    }

    func startTLS(_ tls: NIOSSLClientHandler, eventLoop: EventLoop) -> EventLoopFuture<Void> {
        if let failure { return eventLoop.makeFailedFuture(failure) }
        let promise = eventLoop.makePromise(of: Void.self)
        pendingStartTLS = (tls, promise)
        context?.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "STARTTLS\r\n")), promise: nil)
        return promise.futureResult
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        buffer.writeBuffer(&incoming)
        while true {
            let reply: SMTPReply
            do {
                guard let next = try parser.next(&buffer) else { break }
                reply = next
            } catch {
                fail(.malformedReply("\(error)"), context: context)
                return
            }
            if handshake == nil { tlsUnconfirmed = false }
            if let (tls, promise) = pendingStartTLS {
                pendingStartTLS = nil
                guard reply.code == 220 else {
                    promise.fail(UpstreamConnectionError.startTLSRefused(reply))
                    continue
                }
                // Whatever else arrived in plaintext after the 220 is not trusted: drop it.
                buffer.clear()
                parser = SMTPReplyParser()
                handshake = promise
                tlsUnconfirmed = true
                do {
                    try context.pipeline.syncOperations.addHandler(tls, position: .first)
                } catch {
                    fail(.tlsFailed("\(error)"), context: context)
                }
                return
            }
            if let waiter = waiters.popFirst() { waiter.succeed(reply) } else { unclaimed.append(reply) }
        }
        buffer.discardReadBytes()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let event = event as? TLSUserEvent, case .handshakeCompleted = event, let handshake {
            self.handshake = nil
            handshake.succeed(())
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if handshake != nil || tlsUnconfirmed {
            fail(.tlsHandshakeFailed(Self.handshakeFailure(error)), context: context)
        } else if error is NIOSSLError || error is BoringSSLError {
            fail(.tlsFailed("\(error)"), context: context)
        } else {
            fail(.connectFailed("the upstream " + ConnectFailure.reason(error)), context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let closedInHandshake = handshake != nil || tlsUnconfirmed
        fail(closedInHandshake ? .tlsHandshakeFailed("the upstream closed the connection (client certificate refused?)") : .closed,
             context: context)
        context.fireChannelInactive()
    }

    /// What an operator should read for an error during the handshake.
    static func handshakeFailure(_ error: Error) -> String {
        if let io = error as? IOError, io.errnoCode == ECONNRESET {
            return "the upstream reset the connection (client certificate refused?)"
        }
        if error is NIOSSLError || error is BoringSSLError { return "\(error)" }
        return "\(error) (client certificate refused?)"
    }

    private func fail(_ error: UpstreamConnectionError, context: ChannelHandlerContext) {
        if failure == nil { failure = error }
        let error = failure ?? error
        while let waiter = waiters.popFirst() { waiter.fail(error) }
        if let (_, promise) = pendingStartTLS { pendingStartTLS = nil; promise.fail(error) }
        if let handshake { self.handshake = nil; handshake.fail(error) }
        context.close(promise: nil)
    }
}

/// One SMTP session with an upstream over TLS: connected, greeted, EHLO done, TLS established. The channel
/// code around `UpstreamSession`, which decides what to send.
public final class UpstreamConnection: Sendable {
    let channel: Channel
    private let handler: NIOLoopBound<SMTPClientHandler>
    /// The dialogue's state between transactions; one delivery at a time uses a connection (`UpstreamPool`).
    let session = NIOLockedValueBox(UpstreamSession(hostname: "", tls: .startTLS))
    let commandTimeout: Duration
    let upstreamName: String

    private init(channel: Channel, handler: NIOLoopBound<SMTPClientHandler>, commandTimeout: Duration, upstreamName: String) {
        self.channel = channel
        self.handler = handler
        self.commandTimeout = commandTimeout
        self.upstreamName = upstreamName
    }

    public var isActive: Bool { channel.isActive }
    /// What the upstream offered in its EHLO reply over TLS.
    public var extensions: Set<String> { session.withLockedValue { $0.extensions } }
    /// The EHLO reply's lines over TLS after the first, as the upstream wrote them.
    public var extensionLines: [String] { session.withLockedValue { $0.extensionLines } }
    public var supportsPipelining: Bool { extensions.contains("PIPELINING") }

    static func makeTLSContext(_ upstream: UpstreamConfiguration) throws -> NIOSSLContext {
        var tls = TLSConfiguration.makeClientConfiguration()
        tls.minimumTLSVersion = .tlsv12
        tls.certificateVerification = .fullVerification
        tls.trustRoots = .file(upstream.caFile)
        tls.certificateChain = try NIOSSLCertificate.fromPEMFile(upstream.certificateFile).map { .certificate($0) }
        tls.privateKey = .privateKey(try NIOSSLPrivateKey(file: upstream.keyFile, format: .pem))
        return try NIOSSLContext(configuration: tls)
    }

    /// Connects, reads the greeting, says EHLO and establishes TLS (STARTTLS or implicit).
    /// Fails rather than continue without TLS.
    static func connect(to upstream: UpstreamConfiguration, tlsContext: NIOSSLContext, hostname: String,
                        group: EventLoopGroup) async throws(UpstreamConnectionError) -> UpstreamConnection {
        let channel: Channel
        do {
            // The loop chosen here, so `group` may be any group of NIO loops (the gateway gives its session loops).
            channel = try await ClientBootstrap(group: group.next())
                .connectTimeout(.nanoseconds(Int64(upstream.connectTimeout.seconds * 1e9)))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        if upstream.tls == .implicit {
                            let tls = try NIOSSLClientHandler(context: tlsContext, serverHostname: upstream.serverName)
                            try channel.pipeline.syncOperations.addHandler(tls)
                        }
                        try channel.pipeline.syncOperations.addHandler(SMTPClientHandler(implicitTLS: upstream.tls == .implicit))
                    }
                }
                .connect(host: upstream.host, port: upstream.port)
                .get()
        } catch {
            throw .connectFailed(ConnectFailure.describe(error, host: upstream.host, port: upstream.port))
        }
        let handler: NIOLoopBound<SMTPClientHandler>
        do {
            handler = try await channel.eventLoop.submit {
                NIOLoopBound(try channel.pipeline.syncOperations.handler(type: SMTPClientHandler.self), eventLoop: channel.eventLoop)
            }.get()
        } catch {
            channel.close(promise: nil)
            throw .connectFailed("\(error)")
        }
        let connection = UpstreamConnection(channel: channel, handler: handler, commandTimeout: upstream.commandTimeout, upstreamName: upstream.name)
        do {
            var session = UpstreamSession(hostname: hostname, tls: upstream.tls)
            var action = session.start()
            setup: while true {
                switch action {
                case .send(let commands, let count):
                    action = session.receive(try await connection.exchange(commands.isEmpty ? nil : ByteBuffer(string: commands), expecting: count))
                case .startTLS:
                    let serverName = upstream.serverName
                    try await connection.withTimeout(connection.commandTimeout) {
                        try await channel.eventLoop.flatSubmit { [handler] in
                            do {
                                let tls = try NIOSSLClientHandler(context: tlsContext, serverHostname: serverName)
                                return handler.value.startTLS(tls, eventLoop: channel.eventLoop)
                            } catch {
                                return channel.eventLoop.makeFailedFuture(UpstreamConnectionError.tlsFailed("\(error)"))
                            }
                        }.get()
                    }
                    try await verifyPeerName(channel: channel, expected: upstream.serverName)
                    action = session.tlsEstablished()
                case .ready:
                    if upstream.tls == .implicit { try await verifyPeerName(channel: channel, expected: upstream.serverName) }
                    break setup
                case .fail(let error):
                    throw error
                case .sendMessage, .finished, .sendCredentials, .authenticated, .retryWithFreshCredential:
                    throw UpstreamConnectionError.protocolState("\(action.name) during setup")
                }
            }
            connection.session.withLockedValue { $0 = session }
            return connection
        } catch let error as UpstreamConnectionError {
            channel.close(promise: nil)
            throw error
        } catch {
            channel.close(promise: nil)
            throw .connectFailed("\(error)")
        }
    }

    /// NIOSSL also accepts a certificate whose IP address entry matches the socket address; the
    /// upstream must instead carry the configured name as a DNS subjectAltName.
    static func verifyPeerName(channel: Channel, expected: String) async throws {
        let names: [String] = try await channel.eventLoop.submit {
            guard let tls = try? channel.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self),
                  let certificate = tls.peerCertificate else { return [] }
            return certificate._subjectAlternativeNames()
                .filter { $0.nameType == .dnsName }
                .map { String(decoding: $0.contents, as: UTF8.self).lowercased() }
        }.get()
        let wanted = expected.lowercased()
        let ok = names.contains { name in
            if name == wanted { return true }
            if name.hasPrefix("*."), let dot = wanted.firstIndex(of: ".") {
                return wanted[dot...] == name.dropFirst() && !wanted[..<dot].isEmpty
            }
            return false
        }
        guard ok else {
            throw UpstreamConnectionError.tlsFailed("upstream certificate is not for \(expected) (DNS names: \(names.joined(separator: ", ")))")
        }
    }

    /// Writes `bytes` and waits for `count` replies.
    func exchange(_ bytes: ByteBuffer?, expecting count: Int, timeout: Duration? = nil) async throws -> [SMTPReply] {
        let handler = self.handler
        let channel = self.channel
        let limit = TimeAmount.nanoseconds(Int64((timeout ?? commandTimeout).seconds * 1e9))
        // The timer is armed and cancelled on the channel's event loop, inside the same submit:
        // from another thread each would be one more wake-up of the loop, twice per command.
        return try await channel.eventLoop.flatSubmit {
            let fired = NIOLoopBoundBox(false, eventLoop: channel.eventLoop)
            let timer = channel.eventLoop.scheduleTask(in: limit) {
                fired.value = true
                channel.close(promise: nil)
            }
            return handler.value.send(bytes, expecting: count, eventLoop: channel.eventLoop)
                .always { _ in timer.cancel() }
                .flatMapErrorThrowing { error in
                    if fired.value { throw UpstreamConnectionError.timeout }
                    throw error
                }
        }.get()
    }

    func withTimeout<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
        let channel = self.channel
        let fired = NIOLockedValueBox(false)
        let timer = channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(timeout.seconds * 1e9))) {
            fired.withLockedValue { $0 = true }
            channel.close(promise: nil)
        }
        defer { timer.cancel() }
        do {
            return try await body()
        } catch {
            if fired.withLockedValue({ $0 }) { throw UpstreamConnectionError.timeout }
            throw error
        }
    }

    /// Ends the session politely; does not wait long for the answer.
    public func quit() async {
        _ = try? await exchange(ByteBuffer(string: "QUIT\r\n"), expecting: 1, timeout: .seconds(2))
        try? await channel.close()
    }

    public func close() async {
        try? await channel.close()
    }
}
