import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOSSL
import PosternCore
import PosternSMTP
import PosternSession
import XCTest
import PosternGateway
@testable import PosternListener

/// `SMTPServerHandler` doing what its state machine says, on an `EmbeddedChannel`: shutdown while busy,
/// pipelining through a delivery, STARTTLS, and the PROXY header before the session (backpressure:
/// `ConnectionFlowTests`).
final class ServerHandlerWiringTests: XCTestCase {
    func environment(target: any DeliveryTarget = UnusedTarget(), tls: NIOSSLContext? = nil) -> ConnectionEnvironment {
        ConnectionEnvironment(target: target, authenticator: nil, tls: TLSContextBox(tls), logger: Logger(label: "wiring-test"),
                              audit: .disabled, now: { Date() }, metrics: GatewayMetrics())
    }

    func session(_ kind: ListenerKind = .device, client: String = "127.0.0.1") -> SMTPSession {
        SMTPSession(configuration: SessionConfiguration(hostname: "gw.test", listenerName: kind.rawValue, kind: kind, maxMessageSize: 1 << 20),
                    facts: ConnectionFacts(listenerName: kind.rawValue, kind: kind, clientAddress: client, sessionID: "wiring"),
                    rules: AcceptingRules())
    }

    /// A connected channel with a handler for `session`, greeting taken.
    func connected(_ session: SMTPSession, _ environment: ConnectionEnvironment) throws -> (EmbeddedChannel, ReadCounter) {
        let reads = ReadCounter()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(reads)
        try channel.pipeline.syncOperations.addHandler(SMTPServerHandler(session: session, environment: environment))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2525)).wait()
        XCTAssertEqual(try ConnectionFlowTests.replies(channel), ["220 gw.test ESMTP Postern"])
        return (channel, reads)
    }

    static let transaction = "EHLO c.test\r\nMAIL FROM:<scanner@example.edu>\r\nRCPT TO:<bob@example.edu>\r\nDATA\r\n"
    static let message = "Subject: x\r\n\r\nhello\r\n.\r\n"

    // MARK: Shutdown while busy

    func testShutdownWhileAMessageIsStoredAnswersItThenCloses() throws {
        let target = HeldTarget()
        let (channel, _) = try connected(session(), environment(target: target))
        try channel.writeInbound(ByteBuffer(string: Self.transaction + Self.message))
        XCTAssertEqual(try ConnectionFlowTests.replies(channel).suffix(3), ["250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"])
        XCTAssertEqual(target.pending, 1, "the message is with the delivery target")
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        XCTAssertTrue(channel.isActive, "the message is answered first")
        XCTAssertEqual(try ConnectionFlowTests.replies(channel), [])
        target.answer(.queued(id: "Q1"))
        XCTAssertEqual(try ConnectionFlowTests.replies(channel),
                       ["250 2.0.0 Ok: queued as Q1", "421 4.3.2 Service shutting down, closing transmission channel"])
        XCTAssertFalse(channel.isActive)
    }

    func testShutdownWhileAMessageIsReceivedAnswersItThenCloses() throws {
        let target = HeldTarget()
        let (channel, _) = try connected(session(), environment(target: target))
        try channel.writeInbound(ByteBuffer(string: Self.transaction + "Subject: x\r\n"))
        _ = try ConnectionFlowTests.replies(channel)
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        try channel.writeInbound(ByteBuffer(string: "\r\nhello\r\n.\r\nNOOP\r\n"))
        XCTAssertTrue(channel.isActive)
        target.answer(.temporaryFailure(SMTPReply(451, "4.3.0", "spool")))
        XCTAssertEqual(try ConnectionFlowTests.replies(channel),
                       ["451 4.3.0 spool", "421 4.3.2 Service shutting down, closing transmission channel"], "the NOOP is not answered")
        XCTAssertFalse(channel.isActive)
    }

    func testShutdownOfAnIdleSessionClosesAtOnceAndALateAnswerIsDropped() throws {
        let (channel, _) = try connected(session(), environment())
        try channel.writeInbound(ByteBuffer(string: "EHLO c.test\r\n"))
        _ = try ConnectionFlowTests.replies(channel)
        channel.pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent())
        XCTAssertEqual(try ConnectionFlowTests.replies(channel), ["421 4.3.2 Service shutting down, closing transmission channel"])
        XCTAssertFalse(channel.isActive)
        channel.pipeline.fireUserInboundEventTriggered(IdleStateHandler.IdleStateEvent.read)
        XCTAssertEqual(try ConnectionFlowTests.replies(channel), [], "one closing reply")
    }

    // MARK: Pipelining

    /// A whole transaction and the next commands in one read, with a delivery target that answers at once
    /// (within the turn): every reply, in order, and the message once.
    func testAPipelinedTransactionWithAnImmediateDeliveryIsAnsweredInOrder() throws {
        let target = HeldTarget(immediate: .queued(id: "Q9"))
        let (channel, reads) = try connected(session(), environment(target: target))
        try channel.writeInbound(ByteBuffer(string: Self.transaction + Self.message + "RSET\r\nQUIT\r\n"))
        var replies = try ConnectionFlowTests.replies(channel)
        channel.embeddedEventLoop.advanceTime(by: TurnQueue.pause)
        replies += try ConnectionFlowTests.replies(channel)
        XCTAssertEqual(replies.filter { !$0.hasPrefix("250-") }, [
            "250 ENHANCEDSTATUSCODES", "250 2.1.0 Ok", "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>",
            "250 2.0.0 Ok: queued as Q9", "250 2.0.0 Ok", "221 2.0.0 Bye",
        ])
        XCTAssertEqual(target.received, 1)
        XCTAssertFalse(channel.isActive)
        XCTAssertEqual(reads.count, 0)
    }

    // MARK: STARTTLS

    func testSTARTTLSDropsPipelinedPlaintextAndPutsTLSFirstWithReadsFlowing() throws {
        let (channel, reads) = try connected(session(.submission), environment(tls: try Self.serverTLS()))
        try channel.writeInbound(ByteBuffer(string: "EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<alice@example.edu>\r\n"))
        let replies = try ConnectionFlowTests.replies(channel)
        XCTAssertEqual(replies.last, "220 2.0.0 Ready to start TLS", "and no reply to the MAIL sent in plaintext (CVE-2011-0411)")
        XCTAssertTrue(replies.contains("250 STARTTLS"), "\(replies)")
        XCTAssertNotNil(try? channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self))
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.read()
        XCTAssertEqual(reads.count, 1, "the handshake's records flow whatever else holds input")
        channel.embeddedEventLoop.advanceTime(by: ServerConnectionStateMachine.stallTimeout)
        XCTAssertTrue(channel.isActive, "not cut off while the handshake is under way")
        _ = try? channel.close().wait()
    }

    func testSTARTTLSWithoutACertificateAnswers454AndGoesOnInPlaintext() throws {
        let (channel, _) = try connected(session(.submission), environment(tls: nil))
        try channel.writeInbound(ByteBuffer(string: "EHLO c.test\r\nSTARTTLS\r\nMAIL FROM:<alice@example.edu>\r\n"))
        XCTAssertEqual(try ConnectionFlowTests.replies(channel).suffix(2), [
            "454 4.7.0 TLS not available due to temporary reason", "530 5.7.0 Must issue a STARTTLS command first",
        ])
        XCTAssertNil(try? channel.pipeline.syncOperations.handler(type: NIOSSLServerHandler.self))
        XCTAssertTrue(channel.isActive)
    }

    // MARK: PROXY

    func proxied(_ installed: InstalledClient) throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        let environment = self.environment()
        let proxy = ProxyProtocolHandler(peer: "127.0.0.5") { [self] channel, client, port in
            installed.value = (client, port)
            try channel.pipeline.syncOperations.addHandler(SMTPServerHandler(session: session(client: client), environment: environment))
        }
        try channel.pipeline.syncOperations.addHandler(proxy)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.5", port: 1234)).wait()
        return channel
    }

    func testAPROXYHeaderSplitAcrossReadsInstallsTheSessionForTheReportedClient() throws {
        let installed = InstalledClient()
        let channel = try proxied(installed)
        try channel.writeInbound(ByteBuffer(string: "PROXY TCP4 192.0.2.7 12"))
        XCTAssertNil(installed.value)
        XCTAssertEqual(try ConnectionFlowTests.replies(channel), [], "no greeting before the header")
        try channel.writeInbound(ByteBuffer(string: "7.0.0.1 40000 25\r\nHELO lb-client\r\n"))
        XCTAssertEqual(installed.value?.client, "192.0.2.7")
        XCTAssertEqual(installed.value?.port, 40000)
        XCTAssertEqual(try ConnectionFlowTests.replies(channel), ["220 gw.test ESMTP Postern", "250 gw.test"],
                       "what followed the header in the same read reaches the session")
        XCTAssertNil(try? channel.pipeline.syncOperations.handler(type: ProxyProtocolHandler.self), "the PROXY handler is gone")
    }

    func testGarbageOrNoHeaderInTimeClosesTheConnectionWithoutASession() throws {
        let garbage = InstalledClient()
        let first = try proxied(garbage)
        try first.writeInbound(ByteBuffer(string: "EHLO spoof\r\n"))
        XCTAssertFalse(first.isActive)
        XCTAssertNil(garbage.value)

        let silent = InstalledClient()
        let second = try proxied(silent)
        second.embeddedEventLoop.advanceTime(by: .seconds(10))
        XCTAssertFalse(second.isActive)
        XCTAssertNil(silent.value)
    }

    // MARK: Helpers

    static func serverTLS() throws -> NIOSSLContext {
        try Repo.ensureCertificates()
        let certs = Repo.certs
        let configuration = TLSConfiguration.makeServerConfiguration(
            certificateChain: try NIOSSLCertificate.fromPEMFile(certs.appendingPathComponent("server.pem").path).map { .certificate($0) },
            privateKey: .privateKey(try NIOSSLPrivateKey(file: certs.appendingPathComponent("server.key").path, format: .pem)))
        return try NIOSSLContext(configuration: configuration)
    }
}

/// What the PROXY handler passed to `install`.
final class InstalledClient: @unchecked Sendable {
    var value: (client: String, port: Int)?
}

/// A delivery target that answers when the test says (or at once with `immediate`).
final class HeldTarget: DeliveryTarget, @unchecked Sendable {
    private var promises: [EventLoopPromise<DeliveryOutcome>] = []
    private let immediate: DeliveryOutcome?
    private(set) var received = 0
    var pending: Int { promises.count }

    init(immediate: DeliveryOutcome? = nil) {
        self.immediate = immediate
    }

    func makeQueueID() -> String { "Q" }

    func accept(queueID: String, envelope: Envelope, message: ByteBuffer) async -> DeliveryOutcome {
        .temporaryFailure(SMTPReply(451, "4.3.0", "not in this test"))
    }

    func accept(queueID: String, envelope: Envelope, message: ByteBuffer, on eventLoop: EventLoop) -> EventLoopFuture<DeliveryOutcome> {
        received += 1
        if let immediate { return eventLoop.makeSucceededFuture(immediate) }
        let promise = eventLoop.makePromise(of: DeliveryOutcome.self)
        promises.append(promise)
        return promise.futureResult
    }

    func answer(_ outcome: DeliveryOutcome) {
        promises.removeFirst().succeed(outcome)
    }
}
