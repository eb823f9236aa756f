import Foundation
import Logging
import NIOCore
import PosternSink
import PosternSpool
import XCTest
@testable import PosternRelay

/// Duplicate recipients in queue entries, the upstream-wide backoff under concurrent failures,
/// a flush lifting a pause, and handshake failures reported as such.
extension RelayTests {
    // MARK: Duplicate recipients

    /// A queue entry written before the session filtered duplicates (the build that crash-looped on
    /// it): delivered once per distinct recipient, every copy recorded, nothing left queued.
    func testQueueEntryWithDuplicateRecipientsIsDeliveredOncePerDistinctRecipient() async throws {
        let (sink, port, _) = try await makeSink()
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port)), spool: spool, log: log) { relay in
            _ = try await enqueue(spool, recipients: ["bob@example.org", "bob@example.org", "bob@EXAMPLE.org", "carol@example.org", "carol@example.org"])
            relay.wake()
            try await eventually("delivered and removed") { sink.receivedCount == 1 && queued(spool).isEmpty }
        }
        XCTAssertEqual(sink.messages.first?.recipients, ["bob@example.org", "carol@example.org"])
        XCTAssertEqual(log.all.filter { $0.disposition == .delivered }.map(\.recipient), ["bob@example.org", "carol@example.org"])
        await sink.stop()
        await spool.shutdown()
    }

    func testDuplicateRecipientsThatFailGetOneDSNLineEach() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(rcptReplies: ["gone@example.org": "550 5.1.1 No such user"]))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port)), spool: spool, log: log) { relay in
            _ = try await enqueue(spool, recipients: ["gone@example.org", "gone@example.org", "here@example.org"])
            relay.wake()
            try await eventually("message and DSN at the sink") { sink.receivedCount == 2 && queued(spool).isEmpty }
        }
        let dsn = String(buffer: try XCTUnwrap(sink.messages.first { $0.sender == "" }).data)
        XCTAssertEqual(dsn.components(separatedBy: "Final-Recipient: rfc822; gone@example.org").count - 1, 1, dsn)
        await sink.stop()
        await spool.shutdown()
    }

    // MARK: Backoff, one step per event

    /// Four deliveries that fail in the same moment are one event: one step, not four.
    func testFourFailuresOfOneMomentRaiseTheUpstreamBackoffOneStep() async throws {
        let pool = UpstreamPool(upstream: upstream(port: 9), hostname: "t", group: Self.group,
                                schedule: RetrySchedule(initial: .seconds(1), maximum: .seconds(3600), jitter: 0), logger: logger)
        let now = Date()
        let epoch = await pool.epoch
        let untils = await withTaskGroup(of: Date.self) { group in
            for _ in 0..<4 { group.addTask { await pool.backOff(epoch: epoch, now: now, reason: "450 4.7.230 throttled") } }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let level = await pool.backoffLevel
        XCTAssertEqual(level, 1)
        XCTAssertEqual(Set(untils), [now.addingTimeInterval(1)], "every failure of the event waits for the same pause")
        // The next event (an attempt begun after the pause) is the next step; a success resets.
        let next = await pool.epoch
        await pool.backOff(epoch: next, now: now.addingTimeInterval(1), reason: "450 4.7.230 throttled")
        await pool.backOff(epoch: next, now: now.addingTimeInterval(1), reason: "450 4.7.230 throttled")
        let second = await pool.backoffLevel
        XCTAssertEqual(second, 2)
        let until = await pool.pausedUntil(now: now.addingTimeInterval(1))
        XCTAssertEqual(until, now.addingTimeInterval(3))
        await pool.succeeded()
        let reset = await pool.backoffLevel
        XCTAssertEqual(reset, 0)
    }

    /// The same through the relay: several messages in flight against a throttling upstream.
    func testConcurrentThrottledDeliveriesRaiseTheBackoffOnceAndWaitForTheSamePause() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(rcptReply: "450 4.7.230 Too many connections, throttled"))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port, maxConnections: 4), initialRetry: .seconds(2), maxRetry: .seconds(3600)),
                            spool: spool, log: log) { relay in
            for i in 0..<8 { _ = try await enqueue(spool, recipients: ["u\(i)@example.org"]) }
            relay.wake()
            try await eventually("a throttled attempt") { !log.all.isEmpty }
            try await Task.sleep(for: .milliseconds(500))
            let pool = try XCTUnwrap(relay.pools["hub"])
            let level = await pool.backoffLevel
            XCTAssertEqual(level, 1, "one event, one step: \(log.all.map(\.reply))")
            let deferred = log.all.filter { $0.disposition == .deferred }
            XCTAssertGreaterThanOrEqual(deferred.count, 1)
            // Every message now waits for the upstream's pause, not for a backoff of its own.
            let paused = await pool.pausedUntil(now: Date())
            let pause = try XCTUnwrap(paused)
            for id in queued(spool) {
                let next = try XCTUnwrap(try? spool.directory.readEntry(id: id).entry.state.nextAttempt)
                XCTAssertLessThanOrEqual(abs(next.timeIntervalSince(pause)), 0.01, "\(id) waits for the pause")
            }
            sink.setFaults(SinkFaults())
            try await eventually(timeout: 15, "all delivered") { sink.receivedCount == 8 }
        }
        await sink.stop()
        await spool.shutdown()
    }

    /// A throttle of `throttleSeconds` against 20 messages and up to eight connections (the README's
    /// Microsoft 365 example) with the default maximum pause: once the upstream recovers, the queue
    /// drains within the pause in force then, not an hour later. `POSTERN_THROTTLE_SECONDS=40
    /// POSTERN_THROTTLE_INITIAL=1` gives the timeline in SECURITY.md.
    func testAfterAThrottleEverythingIsDeliveredWithinTheLongestPauseOfRecovery() async throws {
        let throttleSeconds = Double(ProcessInfo.processInfo.environment["POSTERN_THROTTLE_SECONDS"] ?? "") ?? 6
        let initial = Double(ProcessInfo.processInfo.environment["POSTERN_THROTTLE_INITIAL"] ?? "") ?? 0.5
        let (sink, port, _) = try await makeSink(faults: SinkFaults(rcptReply: "450 4.7.230 Too many connections, throttled"))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        var levels: [(at: Date, level: Int)] = []
        var recovered = Date()
        try await withRelay(relayConfiguration(upstream(port: port, maxConnections: 8), initialRetry: .milliseconds(Int64(initial * 1000)),
                                               maxRetry: .seconds(3600)),
                            spool: spool, log: log) { relay in
            let pool = try XCTUnwrap(relay.pools["hub"])
            let start = Date()
            for i in 0..<20 { _ = try await enqueue(spool, recipients: ["u\(i)@example.org"]) }
            relay.wake()
            while Date().timeIntervalSince(start) < throttleSeconds {
                let level = await pool.backoffLevel
                if level != levels.last?.level { levels.append((Date(), level)) }
                try await Task.sleep(for: .milliseconds(20))
            }
            sink.setFaults(SinkFaults())
            recovered = Date()
            try await eventually(timeout: throttleSeconds * 2, "all delivered") { sink.receivedCount == 20 }
        }
        let delivered = log.all.filter { $0.disposition == .delivered }.map(\.at)
        let last = try XCTUnwrap(delivered.max())
        let events = levels.map(\.level).max() ?? 0
        let longestPause = initial * pow(2, Double(max(events - 1, 0))) * 1.2  // the schedule's jitter is at most 20 %
        let afterRecovery = last.timeIntervalSince(recovered)
        let timeline = levels.map { String(format: "%.1fs level %d", $0.at.timeIntervalSince(levels[0].at), $0.level) }
        print("throttle \(throttleSeconds)s, initial \(initial)s: \(events) backoff events (\(timeline.joined(separator: ", "))); "
              + "\(log.all.filter { $0.disposition == .deferred }.count) deferred attempts; last delivery \(String(format: "%.2f", afterRecovery))s after recovery; "
              + "longest single pause \(String(format: "%.2f", longestPause))s")
        XCTAssertLessThanOrEqual(afterRecovery, longestPause + 0.5, "delivered within the pause in force at recovery")
        XCTAssertLessThanOrEqual(afterRecovery, 2 * initial * pow(2, Double(events)) + 0.5)
        XCTAssertEqual(Set(sink.messages.flatMap(\.recipients)).count, 20)
        await sink.stop()
        await spool.shutdown()
    }

    /// `postern queue retry` (flush) lifts the pause: here a 60 s one.
    func testAFlushLiftsTheUpstreamPause() async throws {
        let (sink, port, _) = try await makeSink(faults: SinkFaults(rcptReply: "450 4.7.230 throttled"))
        let spool = try Spool(directory: spoolDirectory, logger: logger)
        let log = OutcomeLog()
        try await withRelay(relayConfiguration(upstream(port: port), initialRetry: .seconds(60), maxRetry: .seconds(3600)), spool: spool, log: log) { relay in
            let id = try await enqueue(spool)
            relay.wake()
            try await eventually("throttled") { !log.all.isEmpty }
            sink.setFaults(SinkFaults())
            // What `postern queue retry` does: the entry due now, then the flush signal.
            let lock = try XCTUnwrap(spool.directory.lock(id: id, wait: true))
            var state = try spool.directory.readEntry(id: id).entry.state
            state.nextAttempt = Date()
            try spool.directory.writeState(id: id, state)
            lock.release()
            spool.directory.touch(.flush)
            try await eventually(timeout: 5, "delivered after the flush") { sink.receivedCount == 1 }
        }
        await sink.stop()
        await spool.shutdown()
    }
}
