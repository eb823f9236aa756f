import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import PosternCore
import PosternSMTP
import PosternSpool

/// What happened to one recipient in one relay attempt, for the audit log.
public struct RelayOutcome: Sendable, Hashable {
    public enum Disposition: String, Sendable, Hashable {
        case delivered
        /// Temporary failure; will be retried.
        case deferred
        /// Permanent failure; a DSN was queued (unless the sender was `<>`).
        case failed
        /// Still undeliverable when the message expired; a DSN was queued.
        case expired
    }
    public var queueID: String
    public var recipient: String
    public var upstream: String
    public var disposition: Disposition
    /// The upstream's reply, or a local reason (connection, TLS).
    public var reply: String
    /// The message's attempt number (1 for the first).
    public var attempt: Int
    public var at: Date
    /// When the gateway accepted the message, for delivery latency.
    public var receivedAt: Date
}

/// Delivers queued messages to the upstreams until cancelled.
public final class Relay: Sendable {
    public let configuration: RelayConfiguration
    let spool: Spool
    let logger: Logger
    let clock: @Sendable () -> Date
    let onOutcome: (@Sendable (RelayOutcome) -> Void)?
    let pools: [String: UpstreamPool]
    let schedule: RetrySchedule
    private let state = NIOLockedValueBox(SchedulerState())
    private let signal: WakeSignal

    struct SchedulerState {
        var schedule = DeliverySchedule()
        /// Messages handed over by `submit` right after they were spooled, kept in memory (up to
        /// `preloadLimit` bytes) so that the first attempt does not read back what was just written.
        var preloaded: [String: (envelope: SpoolEnvelope, message: ByteBuffer)] = [:]
        var preloadedBytes = 0
        /// Set when `run` ends: workers finish the delivery in hand and take no more.
        var stopping = false

        mutating func takePreloaded(_ id: String) -> (envelope: SpoolEnvelope, message: ByteBuffer)? {
            guard let entry = preloaded.removeValue(forKey: id) else { return nil }
            preloadedBytes -= entry.message.readableBytes
            return entry
        }
    }

    /// Bytes of just-spooled messages kept in memory for their first attempt; beyond it the relay
    /// reads them from the spool like any other queued message.
    static let preloadLimit = 64 << 20

    public init(configuration: RelayConfiguration, spool: Spool, eventLoopGroup: EventLoopGroup, logger: Logger,
                clock: @escaping @Sendable () -> Date = { Date() }, onOutcome: (@Sendable (RelayOutcome) -> Void)? = nil) {
        self.configuration = configuration
        self.spool = spool
        self.logger = logger
        self.clock = clock
        self.onOutcome = onOutcome
        self.signal = WakeSignal(eventLoop: eventLoopGroup.next())
        let schedule = RetrySchedule(initial: configuration.initialRetry, maximum: configuration.maxRetry, jitter: configuration.jitter)
        self.schedule = schedule
        var pools: [String: UpstreamPool] = [:]
        for upstream in configuration.upstreams {
            pools[upstream.name] = UpstreamPool(upstream: upstream, hostname: configuration.hostname, group: eventLoopGroup, schedule: schedule, logger: logger)
        }
        self.pools = pools
    }

    /// Something changed (a message was queued by other means): look at the schedule now.
    public func wake() {
        signal.signal()
    }

    /// A message was just spooled (it is on disk for good): deliver it now, from memory when it is given (a
    /// small one) and there is room; a large one, streamed into the spool, is read from there in chunks.
    public func submit(id: String, envelope: SpoolEnvelope, message: ByteBuffer?) {
        state.withLockedValue { state in
            if let message, state.preloadedBytes + message.readableBytes <= Self.preloadLimit {
                state.preloaded[id] = (envelope, message)
                state.preloadedBytes += message.readableBytes
            }
            state.schedule.schedule(id, at: .distantPast)
        }
        signal.signal()
    }

    private var maxInFlight: Int { max(1, configuration.upstreams.reduce(0) { $0 + $1.maxConnections }) }

    /// Runs until the task is cancelled.
    public func run() async throws {
        await rescan(full: true)
        var lastScan = ContinuousClock.now
        var lastStampCheck = ContinuousClock.now
        var lastIntakeUpkeep = ContinuousClock.now
        var stamps = SpoolDirectory.Signal.allCases.map { spool.directory.stamp(of: $0) }
        await withTaskGroup(of: Void.self) { group in
            while !Task.isCancelled {
                let now = clock()
                let ready: [String] = state.withLockedValue { state in
                    let room = maxInFlight - state.schedule.inFlight.count
                    return room > 0 ? state.schedule.takeDue(now: now, limit: room) : []
                }
                for id in ready {
                    group.addTask {
                        // Shielded from cancellation: on shutdown a delivery in flight finishes and records
                        // its outcome (bounded by the upstream timeouts) instead of being cut off half-way.
                        await Task { await self.work(startingWith: id) }.value
                        self.signal.signal()
                    }
                }
                // The signal files (touched by `postern queue`) are checked every quarter second.
                let clockNow = ContinuousClock.now
                var stampChanged = false
                if clockNow - lastStampCheck >= .milliseconds(250) {
                    lastStampCheck = clockNow
                    let now = SpoolDirectory.Signal.allCases.map { spool.directory.stamp(of: $0) }
                    stampChanged = now != stamps
                    if let flush = SpoolDirectory.Signal.allCases.firstIndex(of: .flush), now[flush] != stamps[flush] {
                        for pool in pools.values { await pool.resumeNow() }
                    }
                    // `postern queue` wants to change a message still in the intake log: make it a queue file.
                    let settle = SpoolDirectory.Signal.allCases.firstIndex(of: .settle)
                    let settleNow = settle.map { now[$0] != stamps[$0] } ?? false
                    stamps = now
                    if settleNow || clockNow - lastIntakeUpkeep >= .seconds(1) {
                        lastIntakeUpkeep = clockNow
                        await spool.maintainIntake(everything: settleNow)
                    }
                }
                if clockNow - lastScan >= configuration.scanInterval || stampChanged {
                    lastScan = clockNow
                    await rescan(full: stampChanged)
                    for pool in pools.values { await pool.closeIdle() }
                    continue
                }
                let next = state.withLockedValue { state in
                    state.schedule.inFlight.count < maxInFlight ? state.schedule.nextDue() : nil
                }
                var wait = configuration.scanInterval.seconds
                if let next { wait = min(wait, max(0.001, next.timeIntervalSince(clock()))) }
                await signal.wait(seconds: min(wait, 0.25))
            }
            state.withLockedValue { $0.stopping = true }
            await group.waitForAll()
        }
        for pool in pools.values { await pool.closeAll() }
    }

    /// Delivers `id`, then whatever else is due, until nothing is or the relay stops: a busy queue
    /// does not go back through the loop (a wake-up and a new task) for every message.
    private func work(startingWith first: String) async {
        var current: String? = first
        while let id = current {
            await process(id: id)
            current = state.withLockedValue { state in
                state.stopping ? nil : state.schedule.takeDue(now: clock(), limit: 1).first
            }
        }
    }

    /// Reconciles the schedule with the spool on disk. A full rescan (at start, and when
    /// `postern queue` touched the wake file) re-reads every entry's state, picking up retries;
    /// the periodic one only reads entries the schedule does not know and drops vanished ones.
    func rescan(full: Bool) async {
        let state = self.state
        let known: @Sendable (String) -> Bool
        if full {
            known = { _ in false }
        } else {
            known = { id in state.withLockedValue { $0.schedule.isKnown(id) } }
        }
        // Only ids scheduled before the listing can be missing from it for good; one submitted
        // while the scan ran is simply newer than the listing.
        let before = state.withLockedValue { Set($0.schedule.due.keys) }
        let (present, entries) = await spool.scan(skipping: known)
        state.withLockedValue { state in
            for id in before.subtracting(present) where state.schedule.due[id] != nil {
                state.schedule.drop(id)
                _ = state.takePreloaded(id)
            }
            for entry in entries { state.schedule.schedule(entry.id, at: entry.state.nextAttempt) }
        }
    }

    /// One delivery attempt for one queued message, under its lock, and its next date in the schedule (nil
    /// when it is finished or gone), which also ends its in-flight mark.
    func process(id: String) async {
        let preloaded = state.withLockedValue { $0.takePreloaded(id) }
        guard let lock = spool.lock(id: id) else {
            // Busy (the CLI holds it) or gone; the next scan settles which.
            let next = spool.contains(id: id) ? clock().addingTimeInterval(1) : nil
            state.withLockedValue { $0.schedule.finish(id, next: next) }
            return
        }
        defer { lock.release() }
        let next = await attempt(id: id, preloaded: preloaded)
        // Rescheduled before the lock goes. A `postern queue` change waits for the lock, then wakes a rescan;
        // while the id was still in flight the schedule would ignore that rescan, and this attempt's date (a
        // backoff of a minute, say) would win over a flush made in that moment.
        state.withLockedValue { $0.schedule.finish(id, next: next) }
    }

    /// The attempt itself, the entry locked: `DeliveryPlan` decides, this carries it out (pool, spool, DSN,
    /// audit). Returns when to try it next, nil when it is finished or gone.
    private func attempt(id: String, preloaded: (envelope: SpoolEnvelope, message: ByteBuffer)?) async -> Date? {
        // From here to the recorded outcome, a death of the process counts against this entry.
        let mark = spool.beginDelivery(id: id)
        defer { spool.endDelivery(mark) }
        let loaded: (entry: SpoolEntry, message: SpooledMessage)?
        if let preloaded {
            // Still read the state: `postern queue` may have changed it since the message was spooled.
            loaded = spool.entry(id: id, envelope: preloaded.envelope, message: preloaded.message).map { ($0, .inMemory(preloaded.message)) }
        } else {
            loaded = await spool.readForDelivery(id: id)
        }
        guard let (entry, spooled) = loaded else { return nil }
        let message: RelayMessage
        switch spooled {
        case .inMemory(let buffer):
            message = .inMemory(buffer)
        case .file(let file):
            let spool = self.spool
            message = .chunked(size: file.messageLength) { offset, count in try await spool.read(file, from: offset, count: count) }
        }
        defer { if case .file(let file) = spooled { file.close() } }
        let now = clock()
        if entry.state.nextAttempt > now { return entry.state.nextAttempt }
        var plan = DeliveryPlan(id: id, envelope: entry.envelope, state: entry.state, now: now)
        for route in plan.routes(upstream: configuration.upstream(for:)) {
            guard let pool = pools[route.upstream] else {
                logger.error("no upstream configured", metadata: ["upstream": "\(route.upstream)", "queue_id": "\(id)"])
                plan.noSuchUpstream(route)
                continue
            }
            plan.record(await deliver(entry: entry, message: message, recipients: route.recipients, pool: pool), for: route,
                        remoteMTA: pool.upstream.host)
        }
        if plan.isExpired(expiry: configuration.expiry) { plan.expire(expiry: configuration.expiry, upstream: configuration.upstream(for:)) }
        TestFault.afterUpstreamReplies(plan.outcomes)
        let state = plan.finish(backoff: schedule.delay(afterAttempt:))

        if !plan.failed.isEmpty { await bounce(entry: entry, message: await message.headerPart(), failed: plan.failed, now: now) }
        var result: Date? = state.nextAttempt
        do {
            if state.isFinished {
                try spool.removeNow(id: id)  // a rename: not worth a hop to an I/O thread
                result = nil
            } else {
                try await spool.writeState(id: id, state)
            }
        } catch {
            // The old state stays on disk: the worst case is a repeated attempt, never a loss.
            logger.error("could not record delivery state", metadata: ["queue_id": "\(id)", "error": "\(error)"])
        }
        for outcome in plan.outcomes {
            logger.info("relay", metadata: ["queue_id": "\(id)", "rcpt": "\(outcome.recipient)", "upstream": "\(outcome.upstream)",
                                            "result": "\(outcome.disposition.rawValue)", "reply": "\(outcome.reply)", "attempt": "\(plan.attempt)"])
            onOutcome?(outcome)
        }
        return result
    }

    /// Which queued recipients are one delivery: equal once the domain's case is folded (RFC 5321
    /// 2.4 leaves the local part's case to the receiving host, so the relay does not fold it; the
    /// session already dropped the case variants that policy says are one mailbox).
    static func recipientKey(_ address: String) -> String {
        guard let at = address.lastIndex(of: "@") else { return address }
        return address[..<at] + address[at...].lowercased()
    }

    /// Throttling replies pause the whole upstream, not just this message (`ExchangeOnlineReplies.isUpstreamWide`).
    static func isUpstreamThrottle(_ reply: SMTPReply) -> Bool {
        ExchangeOnlineReplies.isUpstreamWide(reply)
    }

    /// The same result for every recipient (a connection that failed before any reply).
    private static func everyone(_ recipients: [String], _ result: DeliveryPlan.RecipientResult) -> [String: DeliveryPlan.RecipientResult] {
        Dictionary(recipients.map { ($0, result) }, uniquingKeysWith: { first, _ in first })
    }

    /// Hands `recipients` to `pool`'s upstream and says what came of it; raises or resets the upstream's
    /// backoff and puts the connection back as the replies say.
    private func deliver(entry: SpoolEntry, message: RelayMessage, recipients: [String], pool: UpstreamPool) async -> DeliveryPlan.Delivery {
        // The pool's epoch when this attempt began: a failure raises the upstream's backoff only if no
        // other failure of the same moment has already done so.
        let epoch = await pool.epoch
        var freshSessionAfterStale = false
        while true {
            let acquired: (UpstreamConnection, needsReset: Bool, reused: Bool)
            do {
                acquired = try await pool.acquire(now: clock)
            } catch let paused as UpstreamPool.Paused {
                return .paused(until: paused.until)
            } catch {
                let reason = "\(error)"
                let reply = (error as? UpstreamConnectionError)?.upstreamReply
                var pauseEnds: Date?
                if let reply, !reply.isPermanent {
                    pauseEnds = await pool.backOff(epoch: epoch, now: clock(), reason: ExchangeOnlineReplies.annotated(reply))
                } else if reply == nil {
                    pauseEnds = await pool.backOff(epoch: epoch, now: clock(), reason: reason)
                }
                logger.warning("upstream connection failed", metadata: ["upstream": "\(pool.upstream.name)", "error": "\(reason)"])
                return .attempted(Self.everyone(recipients, .local(reply.map(ExchangeOnlineReplies.annotated) ?? reason)), pauseEnds: pauseEnds)
            }
            let (connection, needsReset, reused) = acquired
            do {
                let result = try await connection.send(sender: entry.envelope.sender, recipients: recipients, body: message,
                                                       bodyType: entry.envelope.bodyType, needsReset: needsReset)
                let throttle = result.replies.values.first(where: Self.isUpstreamThrottle)
                let anyFailure = recipients.contains { !(result.replies[$0]?.isPositive ?? false) }
                var pauseEnds: Date?
                if let throttle {
                    await pool.release(connection, reusable: throttle.code != 421, needsReset: true)
                    pauseEnds = await pool.backOff(epoch: epoch, now: clock(), reason: ExchangeOnlineReplies.annotated(throttle))
                } else {
                    if !anyFailure { await pool.succeeded() }
                    await pool.release(connection, reusable: result.connectionReusable, needsReset: anyFailure)
                }
                var replies: [String: DeliveryPlan.RecipientResult] = [:]
                for recipient in recipients {
                    replies[recipient] = result.replies[recipient].map(DeliveryPlan.RecipientResult.reply) ?? .local("the upstream session gave no reply for this recipient")
                }
                return .attempted(replies, pauseEnds: pauseEnds)
            } catch let stale as SessionFailedBeforeMessage where reused && !freshSessionAfterStale {
                // A reused idle session that was gone: the upstream has nothing of this message; once more, on a new one.
                await pool.release(connection, reusable: false, needsReset: true)
                logger.notice("reused upstream session failed before the message; trying a new session",
                              metadata: ["upstream": "\(pool.upstream.name)", "error": "\(stale)"])
                freshSessionAfterStale = true
                continue
            } catch {
                await pool.release(connection, reusable: false, needsReset: true)
                logger.warning("upstream session failed", metadata: ["upstream": "\(pool.upstream.name)", "error": "\(error)"])
                return .attempted(Self.everyone(recipients, .local("\(error)")), pauseEnds: nil)
            }
        }
    }

    /// Queues a DSN to the original sender; none for a null sender.
    private func bounce(entry: SpoolEntry, message: ByteBuffer, failed: [DeliveryStatusNotification.FailedRecipient], now: Date) async {
        guard !entry.envelope.sender.isEmpty else {
            logger.notice("no DSN for a null sender", metadata: ["queue_id": "\(entry.id)"])
            return
        }
        let dsnID = QueueID.make()
        let report = DeliveryStatusNotification(reportingMTA: configuration.hostname, originalSender: entry.envelope.sender,
                                                originalQueueID: entry.id, arrivalDate: entry.envelope.receivedAt, recipients: failed)
        let body = report.render(originalMessage: message, messageID: dsnID, now: now)
        let envelope = SpoolEnvelope(sender: "", recipients: [entry.envelope.sender], receivedAt: now, clientAddress: "127.0.0.1",
                                     listener: "dsn", login: nil, messageID: "<\(dsnID)@\(configuration.hostname)>", bodyType: nil)
        do {
            try await spool.enqueue(id: dsnID, envelope: envelope, message: body)
            submit(id: dsnID, envelope: envelope, message: body)
            logger.info("DSN queued", metadata: ["queue_id": "\(entry.id)", "dsn_id": "\(dsnID)", "to": "\(entry.envelope.sender)"])
        } catch {
            logger.error("could not queue DSN", metadata: ["queue_id": "\(entry.id)", "error": "\(error)"])
        }
    }
}

/// A wake-up that is never lost: a signal before the wait makes the wait return at once.
/// The timeout is an event-loop timer (cancelled when the signal comes first), not `Task.sleep`:
/// the relay waits once per completed delivery, and a dispatch timer per wait showed in profiles.
final class WakeSignal: Sendable {
    private let eventLoop: EventLoop
    private let box = NIOLockedValueBox<(pending: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    init(eventLoop: EventLoop) {
        self.eventLoop = eventLoop
    }

    func signal() {
        let waiter = box.withLockedValue { state -> CheckedContinuation<Void, Never>? in
            if let waiter = state.waiter { state.waiter = nil; return waiter }
            state.pending = true
            return nil
        }
        waiter?.resume()
    }

    func wait(seconds: TimeInterval) async {
        if box.withLockedValue({ state in
            guard state.pending else { return false }
            state.pending = false
            return true
        }) { return }
        let timer = eventLoop.scheduleTask(in: .nanoseconds(Int64(seconds * 1e9))) { self.signal() }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let resumeNow = box.withLockedValue { state -> Bool in
                    if state.pending { state.pending = false; return true }
                    state.waiter = continuation
                    return false
                }
                if resumeNow { continuation.resume() }
            }
        } onCancel: {
            self.signal()
        }
        timer.cancel()
    }
}
