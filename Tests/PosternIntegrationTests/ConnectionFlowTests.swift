import Foundation
import Logging
import NIOCore
import NIOEmbedded
import PosternCore
import PosternSMTP
import PosternSession
import XCTest
import PosternGateway
@testable import PosternListener

/// The backpressure of `ServerConnectionStateMachine` wired in `SMTPServerHandler`, on an `EmbeddedChannel`
/// (the rules on their own: `ServerConnectionStateMachineTests`).
final class ConnectionFlowTests: XCTestCase {
    // MARK: Limits

    /// One turn's replies must stay far below the high water mark, or a turn alone could make a client
    /// that reads look like one that does not.
    func testATurnsRepliesStayFarBelowTheHighWaterMark() {
        var session = Self.makeSession()
        _ = session.receive(.line("EHLO client.test"))
        var largest = 0
        for command in ["EHLO client.test", "HELP", "NOOP", "RSET", "VRFY x", "EXPN x", "MAIL FROM:<a@example.edu>", "XYZZY"] {
            if case .reply(let reply) = session.receive(.line(command)) { largest = max(largest, reply.wireString.utf8.count) }
        }
        XCTAssertGreaterThan(largest, 80, "the HELP and EHLO replies are the largest")
        XCTAssertLessThan(ServerConnectionStateMachine.commandsPerTurn * largest * 8, ServerConnectionStateMachine.writeBufferWaterMark.high)
    }

    // MARK: Wiring

    func testPipelinedCommandsAreAnsweredATurnAtATimeAndNothingIsReadUntilAllAreAnswered() throws {
        let (channel, reads) = try Self.connectedChannel()
        try channel.writeInbound(Self.bytes(String(repeating: "NOOP\r\n", count: 20)))
        XCTAssertEqual(try Self.replies(channel).count, ServerConnectionStateMachine.commandsPerTurn, "one turn at once")
        channel.read()
        XCTAssertEqual(reads.count, 0, "input is buffered: no read")
        channel.embeddedEventLoop.advanceTime(by: TurnQueue.pause)
        XCTAssertEqual(try Self.replies(channel).count, ServerConnectionStateMachine.commandsPerTurn, "the next turn, in the next round")
        XCTAssertEqual(reads.count, 0)
        channel.embeddedEventLoop.advanceTime(by: TurnQueue.pause)
        XCTAssertEqual(try Self.replies(channel).count, 20 - 2 * ServerConnectionStateMachine.commandsPerTurn)
        XCTAssertEqual(reads.count, 1, "all answered: the held read goes on")
        XCTAssertTrue(channel.isActive)
    }

    func testReadsWaitWhileTheChannelIsNotWritableAndGoOnWhenItIsAgain() throws {
        let (channel, reads) = try Self.connectedChannel()
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.read()
        XCTAssertEqual(reads.count, 0)
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        XCTAssertEqual(reads.count, 1)
        try channel.writeInbound(Self.bytes("NOOP\r\n"))
        XCTAssertEqual(try Self.replies(channel), ["250 2.0.0 Ok"])
        XCTAssertTrue(channel.isActive)
    }

    func testInputThatArrivesWhileTheOutputIsAtItsBoundCutsTheClientOffWith421() throws {
        let metrics = GatewayMetrics()
        let (channel, _) = try Self.connectedChannel(metrics: metrics)
        try channel.writeInbound(Self.bytes("EHLO client.test\r\n"))
        _ = try Self.replies(channel)
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        XCTAssertTrue(channel.isActive, "at the bound with nothing more sent: it may still read")
        try channel.writeInbound(Self.bytes("NOOP\r\nNOOP\r\n"))
        XCTAssertEqual(try Self.replies(channel), ["421 4.7.0 Replies not being read, closing transmission channel"])
        XCTAssertFalse(channel.isActive)
        let text = try PrometheusText(String(decoding: metrics.exposition(), as: UTF8.self))
        XCTAssertEqual(text.sum("postern_slow_readers_closed_total", ["listener": "device"]), 1)
    }

    func testAClientThatStaysAtItsOutputBoundIsCutOffAfterTheStallTimeout() throws {
        let (channel, _) = try Self.connectedChannel()
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.embeddedEventLoop.advanceTime(by: ServerConnectionStateMachine.stallTimeout - .milliseconds(1))
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1))
        XCTAssertEqual(try Self.replies(channel), ["421 4.7.0 Replies not being read, closing transmission channel"])
        XCTAssertFalse(channel.isActive)
    }

    func testAWritableChannelAgainCancelsTheStallTimeout() throws {
        let (channel, _) = try Self.connectedChannel()
        channel.isWritable = false
        channel.pipeline.fireChannelWritabilityChanged()
        channel.embeddedEventLoop.advanceTime(by: .seconds(5))
        channel.isWritable = true
        channel.pipeline.fireChannelWritabilityChanged()
        channel.embeddedEventLoop.advanceTime(by: .seconds(60))
        XCTAssertTrue(channel.isActive)
        XCTAssertEqual(try Self.replies(channel), [])
    }

    func testAClosingReplyThatIsNeverWrittenDoesNotHoldTheConnection() throws {
        let held = HeldWrites()
        let (channel, _) = try Self.connectedChannel(extra: [held])
        try channel.writeInbound(Self.bytes("QUIT\r\n"))
        XCTAssertTrue(channel.isActive, "the 221 is not written yet")
        channel.embeddedEventLoop.advanceTime(by: ServerConnectionStateMachine.closeGrace)
        XCTAssertFalse(channel.isActive)
    }

    // MARK: Helpers

    static func makeSession() -> SMTPSession {
        SMTPSession(configuration: SessionConfiguration(hostname: "gw.test", listenerName: "device", kind: .device, maxMessageSize: 1 << 20),
                    facts: ConnectionFacts(listenerName: "device", kind: .device, clientAddress: "127.0.0.1", sessionID: "flow"),
                    rules: AcceptingRules())
    }

    /// A connected channel with the handler on it (after `extra`), its greeting already taken if it was written.
    static func connectedChannel(metrics: GatewayMetrics = GatewayMetrics(), extra: [any ChannelHandler] = []) throws -> (EmbeddedChannel, ReadCounter) {
        let environment = ConnectionEnvironment(target: UnusedTarget(), authenticator: nil, tls: TLSContextBox(nil),
                                                logger: Logger(label: "flow-test"), audit: .disabled, now: { Date() }, metrics: metrics)
        let reads = ReadCounter()
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(reads)
        for handler in extra { try channel.pipeline.syncOperations.addHandler(handler) }
        try channel.pipeline.syncOperations.addHandler(SMTPServerHandler(session: makeSession(), environment: environment))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2525)).wait()
        if extra.isEmpty { XCTAssertEqual(try replies(channel).first?.prefix(3), "220") }
        return (channel, reads)
    }

    static func bytes(_ text: String) -> ByteBuffer { ByteBuffer(string: text) }

    /// Reply lines written since the last call.
    static func replies(_ channel: EmbeddedChannel) throws -> [String] {
        var text = ""
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { text += String(buffer: buffer) }
        return text.split(separator: "\r\n").map(String.init)
    }
}

/// Counts the reads that reach the socket end of the pipeline.
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    private(set) var count = 0
    func read(context: ChannelHandlerContext) {
        count += 1
        context.read()
    }
}

/// Keeps every write pending, as a socket whose peer never reads would.
final class HeldWrites: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    private var promises: [EventLoopPromise<Void>?] = []
    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        promises.append(promise)
    }
    func flush(context: ChannelHandlerContext) {}
    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        for promise in promises { promise?.fail(ChannelError.ioOnClosedChannel) }
        promises.removeAll()
        context.close(mode: mode, promise: promise)
    }
}

/// Rules that accept everything, for tests of the handler's wiring rather than of policy.
struct AcceptingRules: SessionRules {
    func checkSender(_ facts: ConnectionFacts, sender: ReversePath) -> Verdict { .accept }
    func checkRecipient(_ facts: ConnectionFacts, sender: ReversePath, recipient: Mailbox) -> Verdict { .accept }
    func checkMessage(_ facts: ConnectionFacts, sender: ReversePath, message: ByteBuffer) -> MessageVerdict { .accept }
    func messageSizeLimit(_ facts: ConnectionFacts) -> Int? { nil }
}

struct UnusedTarget: DeliveryTarget {
    func makeQueueID() -> String { "unused" }
    func accept(queueID: String, envelope: Envelope, message: ByteBuffer) async -> DeliveryOutcome {
        .temporaryFailure(SMTPReply(451, "4.3.0", "not in this test"))
    }
}

/// Rounds of turns on one event loop.
final class TurnQueueTests: XCTestCase {
    func testATurnQueuedDuringARoundWaitsForTheNextRoundAfterThePause() {
        let loop = EmbeddedEventLoop()
        let queue = TurnQueue(eventLoop: loop)
        var runs: [String] = []
        func again(_ name: String, times: Int) {
            queue.enqueue {
                runs.append(name)
                if times > 1 { again(name, times: times - 1) }
            }
        }
        again("a", times: 3)
        again("b", times: 2)
        loop.run()
        XCTAssertEqual(runs, [], "not before the pause: the loop polls its sockets first")
        loop.advanceTime(by: TurnQueue.pause)
        XCTAssertEqual(runs, ["a", "b"], "one turn each per round")
        loop.run()
        XCTAssertEqual(runs, ["a", "b"], "the next round is not due at once")
        loop.advanceTime(by: TurnQueue.pause)
        XCTAssertEqual(runs, ["a", "b", "a", "b"])
        loop.advanceTime(by: TurnQueue.pause)
        XCTAssertEqual(runs, ["a", "b", "a", "b", "a"])
        loop.advanceTime(by: .seconds(1))
        XCTAssertEqual(runs.count, 5)
    }

    func testARoundThatTakesLongerThanItsSliceLeavesTheRestForTheNextRound() {
        let loop = EmbeddedEventLoop()
        let queue = TurnQueue(eventLoop: loop)
        var runs: [String] = []
        queue.enqueue {
            runs.append("slow")
            let end = NIODeadline.now() + TurnQueue.slice + .milliseconds(1)
            while NIODeadline.now() < end {}
            queue.enqueue { runs.append("slow again") }
        }
        queue.enqueue { runs.append("b") }
        queue.enqueue { runs.append("c") }
        loop.advanceTime(by: TurnQueue.pause)
        XCTAssertEqual(runs, ["slow"])
        loop.advanceTime(by: TurnQueue.pause)
        XCTAssertEqual(runs, ["slow", "b", "c", "slow again"], "those not served go first")
    }
}
