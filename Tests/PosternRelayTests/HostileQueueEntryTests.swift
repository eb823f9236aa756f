import Foundation
import NIOCore
import PosternCore
import PosternSink
import PosternSpool
import XCTest
@testable import PosternRelay

/// Queue entries with values that used to reach a trap in the relay (issue #13): counts at Int.max in
/// the state file, an arrival date no time_t holds. Each used to trap after the upstream had replied.
extension RelayTests {
    /// `attempts + 1` for the message and for each recipient overflowed; one recipient accepted, one
    /// deferred shows both the removal and the state written back.
    func testStateWithAttemptCountsAtIntMaxIsDeliveredAndDeferredWithoutOverflow() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(rcptReplies: ["carol@example.org": "451 4.3.0 later"]))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let id = try await enqueue(spool, recipients: ["bob@example.org", "carol@example.org"])
        await spool.maintainIntake(everything: true)  // a queue file, whose state file the test writes
        var state = try spool.directory.readEntry(id: id).entry.state
        state.attempts = Int.max
        for index in state.recipients.indices { state.recipients[index].attempts = Int.max }
        try spool.directory.writeState(id: id, state)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port)), spool: spool, log: log) { relay in
            relay.wake()
            try await eventually("one attempt") { log.all.count == 2 }
        }
        XCTAssertEqual(sink.messages.map(\.recipients), [["bob@example.org"]])
        XCTAssertEqual(log.all.map(\.attempt), [Int.max, Int.max])
        let after = try spool.directory.readEntry(id: id).entry.state
        XCTAssertEqual(after.attempts, Int.max)
        XCTAssertEqual(after.recipients.map(\.state), [.delivered, .pending])
        XCTAssertEqual(after.recipients.map(\.attempts), [Int.max, Int.max])
        await sink.stop()
        await spool.shutdown()
    }

    /// An envelope that says the message arrived 10^300 seconds before 1970: it has expired, and its
    /// DSN's Arrival-Date used to trap converting the date to time_t.
    func testEntryWithAnArrivalDateOutOfRangeExpiresWithADSN() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(rcptReplies: ["slow@example.org": "451 4.4.1 later"]))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let envelope = SpoolEnvelope(sender: "alice@example.edu", recipients: ["slow@example.org"], receivedAt: Date(timeIntervalSince1970: -1e300),
                                     clientAddress: "192.0.2.1", listener: "submission")
        try await spool.enqueue(id: QueueID.make(), envelope: envelope, message: ByteBuffer(string: "Subject: old\r\n\r\nbody\r\n"))
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port)), spool: spool, log: log) { relay in
            relay.wake()
            try await eventually("expired") { log.all.contains { $0.disposition == .expired } }
            try await eventually("DSN delivered") { sink.receivedCount == 1 }
        }
        let dsn = String(buffer: try XCTUnwrap(sink.messages.first).data)
        XCTAssertTrue(dsn.contains("Status: 4.4.7"), dsn)
        XCTAssertTrue(dsn.contains("Arrival-Date: Thu, 01 Jan 1970 00:00:00 +0000"), dsn)
        await sink.stop()
        await spool.shutdown()
    }
}
