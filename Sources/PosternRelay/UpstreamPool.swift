import Foundation
import Logging
import NIOCore
import NIOSSL

/// The connections to one upstream: at most `maxConnections`, reused across messages, and the
/// upstream-wide backoff after `421`, throttling or an outage.
///
/// The backoff follows the upstream's state, one step per event: when the upstream starts
/// refusing, every delivery in flight fails at about the same moment, and those failures are one
/// event, not one per delivery (four at once used to raise a 1 s pause to 16 s, and one throttled
/// burst of an M365 connector to the one-hour cap). An attempt carries the pool's `epoch` from when
/// it began; only a failure of an attempt begun in the current epoch raises the level, and
/// raising it starts a new epoch.
///
/// When the upstream has `auth`, each new connection authenticates with the pool's `UpstreamAuthenticator` (one
/// access token cache for all of them) before it is used; a failure there (refused credentials, a token endpoint
/// that is down) is a failed connection like any other: the upstream backs off and the mail stays queued.
actor UpstreamPool {
    let upstream: UpstreamConfiguration
    private let hostname: String
    private let group: EventLoopGroup
    private let logger: Logger
    private let schedule: RetrySchedule
    private var tlsContext: NIOSSLContext?
    /// AUTH's credentials (and the access token cache) when the upstream wants AUTH.
    let authenticator: UpstreamAuthenticator?
    private var idle: [(connection: UpstreamConnection, needsReset: Bool, since: ContinuousClock.Instant)] = []
    private var open = 0
    private var waiters: [CheckedContinuation<Void, Never>] = []
    private(set) var backoffLevel = 0
    /// While set and in the future, nobody connects to this upstream.
    private(set) var backoffUntil: Date?
    /// Raised with each backoff step; see the type's comment.
    private(set) var epoch = 0

    init(upstream: UpstreamConfiguration, hostname: String, group: EventLoopGroup, schedule: RetrySchedule, logger: Logger) {
        self.upstream = upstream
        self.hostname = hostname
        self.group = group
        self.schedule = schedule
        self.logger = logger
        authenticator = upstream.auth.map { UpstreamAuthenticator(auth: $0) }
    }

    func pausedUntil(now: Date) -> Date? {
        guard let until = backoffUntil, until > now else { return nil }
        return until
    }

    /// Backs the whole upstream off after a failure of an attempt begun in `epoch`: one step up
    /// (exponential, reset by a success) unless another failure of the same event already took it.
    /// Returns when the upstream may be tried again.
    @discardableResult
    func backOff(epoch attemptEpoch: Int, now: Date, reason: String) -> Date {
        guard attemptEpoch == epoch else {
            // Begun before the current pause was set: part of the event that set it.
            return backoffUntil ?? now
        }
        epoch += 1
        backoffLevel += 1
        let delay = schedule.delay(afterAttempt: backoffLevel)
        let until = now.addingTimeInterval(delay)
        if backoffUntil.map({ until > $0 }) ?? true { backoffUntil = until }
        logger.warning("upstream backing off", metadata: ["upstream": "\(upstream.name)", "seconds": "\(Int(delay))",
                                                          "level": "\(backoffLevel)", "reason": "\(reason)"])
        // Idle sessions to a throttling upstream are closed; new ones open after the pause.
        let sessions = idle
        idle = []
        open -= sessions.count
        for session in sessions { Task { await session.connection.quit() } }
        wakeWaiters()
        return backoffUntil ?? until
    }

    func succeeded() {
        backoffLevel = 0
        backoffUntil = nil
    }

    /// `postern queue retry` (a flush): the operator says the upstream is back; try it now. The
    /// level stays, so a flush into a still-failing upstream goes on from the step it had reached.
    func resumeNow() {
        guard backoffUntil != nil else { return }
        backoffUntil = nil
        logger.notice("upstream pause lifted by a queue flush", metadata: ["upstream": "\(upstream.name)"])
    }

    /// A session to use for one message, reusing an idle one when possible. Throws `Paused` when the
    /// upstream is backed off, also for a caller that was waiting for a connection when the pause began.
    /// `reused`: an idle session, which the upstream may have closed meanwhile.
    func acquire(now: @Sendable () -> Date) async throws -> (UpstreamConnection, needsReset: Bool, reused: Bool) {
        while true {
            if let until = pausedUntil(now: now()) { throw Paused(until: until) }
            while let session = idle.popLast() {
                if session.connection.isActive { return (session.connection, session.needsReset, true) }
                open -= 1
                await session.connection.close()
            }
            if open < upstream.maxConnections {
                open += 1
                do {
                    let context = try makeTLSContext()
                    let connection = try await UpstreamConnection.connect(to: upstream, tlsContext: context, hostname: hostname, group: group)
                    if let authenticator { _ = try await connection.authenticate(with: authenticator) }
                    return (connection, false, false)
                } catch {
                    open -= 1
                    wakeWaiters()
                    throw error
                }
            }
            await withCheckedContinuation { waiters.append($0) }
            try Task.checkCancellation()
        }
    }

    struct Paused: Error {
        var until: Date
    }

    func release(_ connection: UpstreamConnection, reusable: Bool, needsReset: Bool) async {
        if reusable && connection.isActive && backoffUntil == nil {
            idle.append((connection, needsReset, .now))
        } else {
            open -= 1
            await connection.quit()
        }
        wakeWaiters()
    }

    /// Closes sessions idle longer than the upstream's idle timeout.
    func closeIdle() async {
        let cutoff = ContinuousClock.now - upstream.idleTimeout
        let stale = idle.filter { $0.since < cutoff }
        idle.removeAll { $0.since < cutoff }
        open -= stale.count
        for session in stale { await session.connection.quit() }
        if !stale.isEmpty { wakeWaiters() }
    }

    func closeAll() async {
        let sessions = idle
        idle = []
        open -= sessions.count
        for session in sessions { await session.connection.quit() }
        wakeWaiters()
    }

    private func wakeWaiters() {
        let all = waiters
        waiters = []
        for waiter in all { waiter.resume() }
    }

    /// Certificates and keys are read when first needed, so a missing file is a delivery
    /// failure (message stays queued) rather than a crash.
    private func makeTLSContext() throws -> NIOSSLContext {
        if let tlsContext { return tlsContext }
        do {
            let context = try UpstreamConnection.makeTLSContext(upstream)
            tlsContext = context
            return context
        } catch {
            throw UpstreamConnectionError.tlsFailed("loading certificates for \(upstream.name): \(error)")
        }
    }
}
