import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PosternCore
import PosternSink
import PosternSpool
import PosternTestSupport
import XCTest
@testable import PosternRelay

/// Collects relay outcomes for assertions.
final class OutcomeLog: Sendable {
    let box = NIOLockedValueBox<[RelayOutcome]>([])
    func record(_ outcome: RelayOutcome) { box.withLockedValue { $0.append(outcome) } }
    var all: [RelayOutcome] { box.withLockedValue { $0 } }
}

final class RelayTests: XCTestCase {
    static let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
    var spoolDirectory: URL!
    var certs: RelayTestCertificates!
    var logger: Logger = {
        var logger = Logger(label: "relay-test")
        logger.logLevel = .info
        return logger
    }()

    override func setUpWithError() throws {
        spoolDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-relay-\(UUID().uuidString)")
        certs = try RelayTestCertificates.make()
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: spoolDirectory)
        try? FileManager.default.removeItem(atPath: certs.directory)
    }

    func upstream(port: Int, tls: UpstreamConfiguration.TLSMode = .startTLS, serverName: String = "localhost", ca: String? = nil,
                  clientCertificate: String? = nil, clientKey: String? = nil, maxConnections: Int = 2) -> UpstreamConfiguration {
        UpstreamConfiguration(name: "hub", host: "127.0.0.1", port: port, tls: tls, serverName: serverName, caFile: ca ?? certs.ca,
                              certificateFile: clientCertificate ?? certs.clientCertificate, keyFile: clientKey ?? certs.clientKey,
                              maxConnections: maxConnections, connectTimeout: .seconds(3), commandTimeout: .seconds(5))
    }

    func relayConfiguration(_ upstream: UpstreamConfiguration, initialRetry: Duration = .milliseconds(400), maxRetry: Duration = .seconds(2),
                            expiry: Duration = .seconds(3600)) -> RelayConfiguration {
        RelayConfiguration(hostname: "postern.test", upstreams: [upstream], defaultUpstream: upstream.name, initialRetry: initialRetry,
                           maxRetry: maxRetry, expiry: expiry, scanInterval: .milliseconds(200), jitter: 0.2)
    }

    func makeSink(tls: SinkConfiguration.TLSMode = .startTLS, faults: SinkFaults = SinkFaults(), clientCA: String? = nil) async throws -> (SinkServer, Int, String) {
        let outbox = FileManager.default.temporaryDirectory.appendingPathComponent("postern-sink-\(UUID().uuidString)").path
        let sink = SinkServer(configuration: SinkConfiguration(tls: tls, certificateFile: certs.serverCertificate, keyFile: certs.serverKey,
                                                               clientCAFile: clientCA ?? certs.ca, outbox: outbox, faults: faults),
                              group: Self.group, logger: logger)
        let port = try await sink.start()
        return (sink, port, outbox)
    }

    func enqueue(_ spool: Spool, sender: String = "alice@example.edu", recipients: [String] = ["bob@example.org"],
                 body: String = "From: alice@example.edu\r\nSubject: payslip\r\n\r\nSECRET BODY\r\n.leading dot\r\n") async throws -> String {
        let id = QueueID.make()
        try await spool.enqueue(id: id, envelope: SpoolEnvelope(sender: sender, recipients: recipients, receivedAt: Date(),
                                                                clientAddress: "192.0.2.1", listener: "submission"),
                                message: ByteBuffer(string: body))
        return id
    }

    /// Runs the relay while `body` runs, then stops it.
    func withRelay(_ configuration: RelayConfiguration, spool: Spool, log: OutcomeLog,
                   _ body: (Relay) async throws -> Void) async throws {
        let relay = Relay(configuration: configuration, spool: spool, eventLoopGroup: Self.group, logger: logger,
                          onOutcome: { log.record($0) })
        let task = Task { try await relay.run() }
        do {
            try await body(relay)
        } catch {
            task.cancel()
            _ = try? await task.value
            throw error
        }
        task.cancel()
        _ = try? await task.value
    }

    func eventually(timeout: TimeInterval = 10, _ what: String, _ condition: () async -> Bool) async throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if await condition() { return }
            try await Task.sleep(for: .milliseconds(50))
        }
        XCTFail("timed out waiting for: \(what)")
        throw CancellationError()
    }

    func queued(_ spool: Spool) -> [String] { spool.directory.listIDs() }

    // MARK: Interop with a third-party upstream

    func testDeliversToAiosmtpdOverMutualTLSWithDotStuffingIntact() async throws {
        let upstream = try TestUpstream(certificates: certs)
        defer { upstream.stop() }
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(self.upstream(port: upstream.port)), spool: spool, log: log) { relay in
            for i in 0..<3 { _ = try await enqueue(spool, recipients: ["r\(i)@example.org", "s\(i)@example.org"]) }
            relay.wake()
            try await eventually("three messages at aiosmtpd") { upstream.messages().count == 3 }
            try await eventually("queue empty") { queued(spool).isEmpty }
        }
        let first = upstream.messages()[0]
        XCTAssertTrue(first.contains("X-Peer-Cert: postern-gateway.example.edu"), first)
        XCTAssertTrue(first.contains("X-Envelope-From: <alice@example.edu>"), first)
        XCTAssertTrue(first.contains("\r\n.leading dot\r\n"), first)
        XCTAssertEqual(log.all.filter { $0.disposition == .delivered }.count, 6)
        await spool.shutdown()
    }

    func testAiosmtpdRefusesAClientWithoutItsCertificateAndTheMessageStaysQueued() async throws {
        // The upstream trusts a different CA for clients: our certificate is refused in the handshake.
        let otherCA = try RelayTestCertificates.make()
        defer { try? FileManager.default.removeItem(atPath: otherCA.directory) }
        let upstream = try TestUpstream(certificates: certs, clientCA: otherCA.ca)
        defer { upstream.stop() }
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        var id = ""
        try await withRelay(relayConfiguration(self.upstream(port: upstream.port)), spool: spool, log: log) { relay in
            id = try await enqueue(spool)
            relay.wake()
            try await eventually("an attempt") { !log.all.isEmpty }
        }
        XCTAssertEqual(upstream.messages().count, 0)
        XCTAssertEqual(queued(spool), [id])
        XCTAssertEqual(log.all.first?.disposition, .deferred)
        XCTAssertTrue(log.all.first?.reply.contains("TLS") ?? false, "\(log.all)")
        await spool.shutdown()
    }

    // MARK: Against the sink

    func testImplicitTLSAndConnectionReuseWithPipelining() async throws {
        let (sink, port, _) = try await makeSink(tls: .implicit)
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port, tls: .implicit, maxConnections: 2)), spool: spool, log: log) { relay in
            for i in 0..<20 { _ = try await enqueue(spool, recipients: ["u\(i)@example.org"]) }
            relay.wake()
            try await eventually("20 messages at the sink") { sink.receivedCount == 20 }
            try await eventually("queue empty") { queued(spool).isEmpty }
        }
        XCTAssertLessThanOrEqual(sink.connectionCount, 2, "connections are reused and bounded")
        XCTAssertTrue(sink.messages.allSatisfy { $0.clientCertificateSubject?.contains("postern-gateway.example.edu") ?? false })
        XCTAssertEqual(String(buffer: sink.messages[0].data), "From: alice@example.edu\r\nSubject: payslip\r\n\r\nSECRET BODY\r\n.leading dot\r\n")
        await sink.stop()
        await spool.shutdown()
    }

    func testUpstreamNotOfferingStartTLSGetsNothingAndTheMessageStaysQueued() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(hideStartTLS: true))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        var id = ""
        try await withRelay(relayConfiguration(upstream(port: port)), spool: spool, log: log) { relay in
            id = try await enqueue(spool)
            relay.wake()
            try await eventually("an attempt") { !log.all.isEmpty }
        }
        XCTAssertEqual(sink.receivedCount, 0)
        XCTAssertEqual(queued(spool), [id])
        XCTAssertTrue(log.all[0].reply.contains("STARTTLS"), log.all[0].reply)
        await sink.stop()
        await spool.shutdown()
    }

    func testUpstreamWithCertificateFromAnotherCAOrWrongNameGetsNothing() async throws {
        let (sink, port, _) = try await makeSink()
        let otherCA = try RelayTestCertificates.make()
        defer { try? FileManager.default.removeItem(atPath: otherCA.directory) }
        for config in [upstream(port: port, ca: otherCA.ca), upstream(port: port, serverName: "mail.example.net")] {
            let spool = try Spool(directory: spoolDirectory.appendingPathComponent(UUID().uuidString), logger: logger)
            let log = OutcomeLog()
            var id = ""
            try await withRelay(relayConfiguration(config), spool: spool, log: log) { relay in
                id = try await enqueue(spool)
                relay.wake()
                try await eventually("an attempt") { !log.all.isEmpty }
            }
            XCTAssertEqual(queued(spool), [id])
            XCTAssertEqual(log.all[0].disposition, .deferred)
            XCTAssertTrue(log.all[0].reply.contains("TLS"), log.all[0].reply)
            await spool.shutdown()
        }
        XCTAssertEqual(sink.receivedCount, 0)
        await sink.stop()
    }

    func testTransientFailureIsRetriedNoSoonerThanTheBackoffThenDelivered() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(dataReply: "451 4.3.0 try later"))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port), initialRetry: .milliseconds(400)), spool: spool, log: log) { relay in
            _ = try await enqueue(spool)
            relay.wake()
            try await eventually("two deferrals") { log.all.filter { $0.disposition == .deferred }.count >= 2 }
            sink.setFaults(SinkFaults())
            try await eventually("delivered") { log.all.contains { $0.disposition == .delivered } }
        }
        let times = log.all.map(\.at)
        XCTAssertGreaterThanOrEqual(times[1].timeIntervalSince(times[0]), 0.4, "second attempt waited the first backoff")
        XCTAssertGreaterThanOrEqual(times[2].timeIntervalSince(times[1]), 0.8, "third attempt waited the doubled backoff")
        XCTAssertEqual(log.all.map(\.attempt), [1, 2, 3])
        XCTAssertEqual(sink.receivedCount, 1)
        XCTAssertTrue(queued(spool).isEmpty)
        await sink.stop()
        await spool.shutdown()
    }

    func testDroppedConnectionMidDataDefersAndRetries() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(dropAfterData: true))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port)), spool: spool, log: log) { relay in
            _ = try await enqueue(spool)
            relay.wake()
            try await eventually("a deferral") { !log.all.isEmpty }
            sink.setFaults(SinkFaults())
            try await eventually("delivered") { log.all.contains { $0.disposition == .delivered } }
        }
        XCTAssertEqual(log.all[0].disposition, .deferred)
        XCTAssertGreaterThanOrEqual(log.all[1].at.timeIntervalSince(log.all[0].at), 0.4)
        XCTAssertTrue(queued(spool).isEmpty)
        await sink.stop()
        await spool.shutdown()
    }

    func testThrottlingBacksOffTheWholeUpstreamNotJustTheMessage() async throws {
        // The last: Exchange Online's IP throttling (451 4.7.500-699), named with its hint in the reason.
        for fault in [SinkFaults(rcptReply: "450 4.7.230 Too many connections, throttled"), SinkFaults(greeting: "421 4.3.2 Service busy"),
                      SinkFaults(rcptReply: "451 4.7.550 Access denied, please try again later")] {
            let (sink, port, _) = try await makeSink(faults: fault)
            let spool = try Spool(directory: spoolDirectory.appendingPathComponent(UUID().uuidString), logger: logger)
            let log = OutcomeLog()
            try await withRelay(relayConfiguration(upstream(port: port, maxConnections: 1), initialRetry: .seconds(1)), spool: spool, log: log) { relay in
                _ = try await enqueue(spool, recipients: ["first@example.org"])
                relay.wake()
                try await eventually("first attempt") { !log.all.isEmpty }
                // A second message queued now must wait for the upstream's pause as well.
                _ = try await enqueue(spool, recipients: ["second@example.org"])
                relay.wake()
                try await Task.sleep(for: .milliseconds(600))
                XCTAssertEqual(log.all.count, 1, "no attempt at a paused upstream: \(log.all)")
                sink.setFaults(SinkFaults())
                try await eventually("both delivered") { log.all.filter { $0.disposition == .delivered }.count == 2 }
            }
            let first = log.all[0]
            XCTAssertEqual(first.disposition, .deferred)
            if fault.rcptReply?.hasPrefix("451 4.7.550") ?? false {
                XCTAssertTrue(first.reply.hasPrefix("451 4.7.550 Access denied, please try again later -- Exchange Online is throttling this sending IP"),
                              first.reply)
            }
            for later in log.all.dropFirst() {
                XCTAssertGreaterThanOrEqual(later.at.timeIntervalSince(first.at), 1.0, "\(fault): \(later)")
            }
            await sink.stop()
            await spool.shutdown()
        }
    }

    func testPermanentFailureBouncesWithHeadersOnlyAndDeliversTheOthers() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(rcptReplies: ["gone@example.org": "550 5.1.1 No such user"]))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port)), spool: spool, log: log) { relay in
            _ = try await enqueue(spool, recipients: ["gone@example.org", "here@example.org"])
            relay.wake()
            // The original to here@ and the DSN to alice@.
            try await eventually("message and DSN at the sink") { sink.receivedCount == 2 }
            try await eventually("queue empty") { queued(spool).isEmpty }
        }
        let dsn = try XCTUnwrap(sink.messages.first { $0.sender == "" })
        XCTAssertEqual(dsn.recipients, ["alice@example.edu"])
        let text = String(buffer: dsn.data)
        XCTAssertTrue(text.contains("multipart/report; report-type=delivery-status"), text)
        XCTAssertTrue(text.contains("Final-Recipient: rfc822; gone@example.org"), text)
        XCTAssertTrue(text.contains("Status: 5.1.1"), text)
        XCTAssertTrue(text.contains("Content-Type: text/rfc822-headers"), text)
        XCTAssertTrue(text.contains("Subject: payslip"), text)
        XCTAssertFalse(text.contains("SECRET BODY"), "the DSN must not carry the body")
        XCTAssertFalse(text.contains("here@example.org"))
        XCTAssertEqual(log.all.first { $0.recipient == "gone@example.org" }?.disposition, .failed)
        await sink.stop()
        await spool.shutdown()
    }

    /// An upstream that accepts the connection and then says nothing: the command timeout ends the
    /// session (we close it), the message is deferred with the reason, and it stays queued.
    func testSilentUpstreamTimesOutAndTheMessageStaysQueued() async throws {
        final class Silent: ChannelInboundHandler, Sendable {
            typealias InboundIn = ByteBuffer
            let closed = NIOLockedValueBox(0)
            func channelInactive(context: ChannelHandlerContext) { closed.withLockedValue { $0 += 1 } }
        }
        let silent = Silent()
        let server = try await ServerBootstrap(group: Self.group)
            .childChannelInitializer { channel in channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(silent) } }
            .bind(host: "127.0.0.1", port: 0).get()
        let port = server.localAddress!.port!
        var configuration = upstream(port: port)
        configuration.commandTimeout = .seconds(1)
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        let started = Date()
        try await withRelay(relayConfiguration(configuration), spool: spool, log: log) { relay in
            _ = try await enqueue(spool)
            relay.wake()
            try await eventually("deferred") { !log.all.isEmpty }
        }
        XCTAssertEqual(log.all.first?.disposition, .deferred)
        XCTAssertEqual(log.all.first?.reply, "timeout waiting for upstream")
        XCTAssertLessThan(Date().timeIntervalSince(started), 8)
        XCTAssertEqual(queued(spool).count, 1)
        try await eventually("we closed the silent connection") { silent.closed.withLockedValue { $0 } >= 1 }
        try await server.close()
        await spool.shutdown()
    }

    func testNoDSNForANullSenderAndExpiryBounces() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(rcptReply: "550 5.7.1 Refused"))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port)), spool: spool, log: log) { relay in
            _ = try await enqueue(spool, sender: "")
            relay.wake()
            try await eventually("refused") { !log.all.isEmpty }
            try await eventually("queue empty") { queued(spool).isEmpty }
        }
        XCTAssertEqual(sink.receivedCount, 0)

        sink.setFaults(SinkFaults(rcptReplies: ["slow@example.org": "451 4.4.1 later"]))
        let log2 = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port), expiry: .seconds(1)), spool: spool, log: log2) { relay in
            _ = try await enqueue(spool, recipients: ["slow@example.org"])
            relay.wake()
            try await eventually("expired") { log2.all.contains { $0.disposition == .expired } }
            try await eventually("DSN delivered") { sink.receivedCount == 1 }
        }
        let dsn = String(buffer: sink.messages[0].data)
        XCTAssertTrue(dsn.contains("Status: 4.4.7"), dsn)
        XCTAssertTrue(dsn.contains("451 4.4.1 later"), dsn)
        await sink.stop()
        await spool.shutdown()
    }

    func testRoutesPickTheMostSpecificUpstream() {
        let config = RelayConfiguration(hostname: "h", upstreams: [], defaultUpstream: "default",
                                        routes: [.init(domainPattern: "*.example.edu", upstream: "campus"),
                                                 .init(domainPattern: "med.example.edu", upstream: "med")])
        XCTAssertEqual(config.upstream(for: "a@med.example.edu"), "med")
        XCTAssertEqual(config.upstream(for: "a@cs.example.edu"), "campus")
        XCTAssertEqual(config.upstream(for: "a@EXAMPLE.edu"), "campus")
        XCTAssertEqual(config.upstream(for: "a@example.org"), "default")
    }

    func testRetryScheduleStartsNearAMinuteAndIsCappedNearAnHour() {
        let schedule = RetrySchedule(initial: .seconds(60), maximum: .seconds(3600), jitter: 0.2)
        XCTAssertEqual(schedule.baseDelay(afterAttempt: 1), 60)
        XCTAssertEqual(schedule.baseDelay(afterAttempt: 2), 120)
        XCTAssertEqual(schedule.baseDelay(afterAttempt: 30), 3600)
        for attempt in 1...10 {
            let delay = schedule.delay(afterAttempt: attempt)
            XCTAssertGreaterThanOrEqual(delay, schedule.baseDelay(afterAttempt: attempt))
            XCTAssertLessThan(delay, schedule.baseDelay(afterAttempt: attempt) * 1.2)
        }
    }
}
