import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PosternCore
import PosternDirectory
import PosternListener
import PosternRelay
import PosternSMTP
import PosternSpool
import PosternSession
import ServiceLifecycle

/// The running gateway: listeners bound from the configuration, wired to policy, the directory and the
/// delivery target. Run it as a `Service`; graceful shutdown stops accepting and lets messages in
/// flight finish.
///
/// It owns the process's threads: one event-loop group for every socket (`ListenerLoops`: SMTP listeners and
/// sessions, the relay, the admin endpoint, the registration page), and the thread pools for blocking work (this
/// one for libldap and the outbox, the spool's for its writes). `shutdown` stops them all, last; what else runs
/// on the loops (the registration page) must have stopped by then.
public final class Gateway: Service, Sendable {
    public let configuration: GatewayConfiguration
    private let loops: ListenerLoops
    private let threadPool: NIOThreadPool
    private let logger: Logger
    private let shared: SMTPListener.Shared
    private let environment: ConnectionEnvironment
    private let listeners: NIOLockedValueBoxListeners
    private let authenticator: DirectoryAuthenticator?
    /// The durable queue and its relay, when delivery goes upstream.
    public let spool: Spool?
    let relay: Relay?
    private let relayTask = NIOLockedValueBox<Task<Void, Never>?>(nil)
    /// How long shutdown waits for sessions in DATA before closing them.
    public let drainTimeout: Duration
    /// Counters and gauges for Prometheus; the admin endpoint serves them.
    public let metrics: GatewayMetrics
    private let adminProbes: AdminProbes
    private let admin = NIOLockedValueBox<AdminServer?>(nil)
    private let stopping = NIOLockedValueBox(false)

    public init(configuration: GatewayConfiguration, rules: @escaping @Sendable () -> any SessionRules,
                logger: Logger, audit: AuditLog,
                drainTimeout: Duration = .seconds(30), now: @escaping @Sendable () -> Date = { Date() },
                metrics: GatewayMetrics = GatewayMetrics(),
                refreshPolicyGauges: @escaping @Sendable (GatewayMetrics) async -> Void = { _ in },
                policyVersion: @escaping @Sendable () -> (fingerprint: String, generation: Int)? = { nil }) throws {
        self.configuration = configuration
        self.logger = logger
        self.drainTimeout = drainTimeout
        self.metrics = metrics
        let tls = TLSContextBox(try configuration.tls.map(ServerTLS.makeContext))
        let loops = ListenerLoops()
        // Blocking work (file writes, libldap) runs here; each LDAP pool slot may hold a thread for a whole call.
        let threadPool = NIOThreadPool(numberOfThreads: max(8, 2 * (configuration.directory?.maxConnections ?? 0) + 4))
        threadPool.start()
        self.loops = loops
        self.threadPool = threadPool
        let parts: Parts
        do {
            parts = try Self.makeParts(configuration: configuration, group: loops.sessionGroup, threadPool: threadPool, logger: logger, audit: audit,
                                       metrics: metrics, now: now)
        } catch {
            // Nothing else holds the threads yet.
            try? loops.group.syncShutdownGracefully()
            try? threadPool.syncShutdownGracefully()
            throw error
        }
        authenticator = parts.authenticator
        let spool = parts.spool
        self.spool = spool
        relay = parts.relay
        let storePath: String
        switch configuration.delivery {
        case .outbox(let path): storePath = path
        case .relay(let spoolPath, _): storePath = URL(fileURLWithPath: spoolPath).appendingPathComponent("queue").path
        }
        adminProbes = AdminProbes(
            refreshGauges: { metrics in
                if let spool {
                    metrics.setQueue(depth: spool.depth, oldestAgeSeconds: spool.oldestAge(now: now()))
                    metrics.setHeld(count: spool.heldCount)
                    let intake = spool.intakeStatistics
                    metrics.setIntake(messages: intake.messages, batchesWritten: intake.batches, messagesWritten: intake.written)
                }
                await refreshPolicyGauges(metrics)
                if let version = policyVersion() { metrics.setPolicyVersion(fingerprint: version.fingerprint, generation: version.generation) }
            },
            spoolProblem: { HealthProbe.directoryWritable(storePath) },
            policyVersion: { policyVersion().map { "policy \($0.fingerprint) generation \($0.generation)" } })
        let environment = ConnectionEnvironment(target: parts.target, authenticator: authenticator, tls: tls, logger: logger, audit: audit, now: now,
                                                metrics: metrics)
        self.environment = environment
        shared = SMTPListener.Shared(hostname: configuration.hostname, limits: configuration.limits,
                                     limiter: ConnectionLimiter(maxPerClient: configuration.limits.maxConnectionsPerClient,
                                                                maxTotal: configuration.limits.maxConnections),
                                     environment: environment, rules: rules)
        listeners = NIOLockedValueBoxListeners()
    }

    /// The directory login, the spool and relay (or none, with an outbox) and where accepted mail goes.
    private struct Parts {
        var authenticator: DirectoryAuthenticator?
        var spool: Spool?
        var relay: Relay?
        var target: any DeliveryTarget
    }

    private static func makeParts(configuration: GatewayConfiguration, group: any EventLoopGroup, threadPool: NIOThreadPool, logger: Logger,
                                  audit: AuditLog, metrics: GatewayMetrics, now: @escaping @Sendable () -> Date) throws -> Parts {
        var authenticator: DirectoryAuthenticator?
        if let directoryConfiguration = configuration.directory {
            let directory = try Directory(configuration: directoryConfiguration, threadPool: threadPool, logger: logger)
            let account = configuration.authThrottle
            var client = account
            client.slowDownAfter *= 3
            client.lockoutAfter *= 3
            // An attempt waiting for a slot waits at most as long as one in flight can take.
            let maxWait = directoryConfiguration.connectTimeout + directoryConfiguration.operationTimeout * 3 + .seconds(2)
            let login = DirectoryLogin(directory: directory, throttle: AuthThrottle(perAccount: account, perClient: client),
                                       maxWait: maxWait, logger: logger, now: now)
            authenticator = DirectoryAuthenticator(login: login, revealNotAuthorized: configuration.revealNotAuthorized, logger: logger)
        }
        switch configuration.delivery {
        case .outbox(let path):
            let target = try OutboxTarget(directory: URL(fileURLWithPath: path), threadPool: threadPool, logger: logger)
            return Parts(authenticator: authenticator, spool: nil, relay: nil, target: target)
        case .relay(let spoolPath, let relayConfiguration):
            let spool = try Spool(directory: URL(fileURLWithPath: spoolPath), logger: logger, keys: configuration.spoolKeys)
            let relay = Relay(configuration: relayConfiguration, spool: spool, eventLoopGroup: group, logger: logger, clock: now) { outcome in
                audit.relay(queueID: outcome.queueID, recipient: outcome.recipient, upstream: outcome.upstream,
                            reply: outcome.reply, attempt: outcome.attempt, outcome: outcome.disposition.rawValue)
                metrics.relayOutcome(upstream: outcome.upstream, code: Int(outcome.reply.prefix(3)) ?? 0)
                if outcome.disposition == .delivered {
                    metrics.deliveryLatency(seconds: outcome.at.timeIntervalSince(outcome.receivedAt))
                }
            }
            for held in spool.heldAtStart {
                audit.held(queueID: held.id, sender: held.sender, recipients: held.recipients, reason: held.reason)
                metrics.messageHeld(reason: "interrupted")
            }
            return Parts(authenticator: authenticator, spool: spool, relay: relay, target: SpoolTarget(spool: spool, relay: relay, now: now))
        }
    }

    /// Binds every listener. Afterwards `boundPort(listener:)` tells where each is.
    public func start() async throws {
        for listenerConfiguration in configuration.listeners {
            let listener = try await SMTPListener.bind(listenerConfiguration, shared: shared, loops: loops)
            listeners.append(listener)
        }
        if let adminConfiguration = configuration.admin {
            let context = AdminServer.Context(metrics: metrics, probes: adminProbes, gatewayProblem: { [self] in listenerProblem() },
                                              logger: logger)
            let server = try await AdminServer.start(adminConfiguration, context: context, group: loops.services)
            admin.withLockedValue { $0 = server }
        }
        // The relay starts once every port is bound: a start that fails delivers nothing, and the relay's
        // outgoing connections cannot take an ephemeral port that a listener is about to bind.
        if let relay {
            let logger = self.logger
            relayTask.withLockedValue {
                $0 = Task {
                    do { try await relay.run() } catch { logger.error("relay stopped", metadata: ["error": "\(error)"]) }
                }
            }
        }
    }

    /// Password checks against the directory with the gateway's throttle, when a directory is configured:
    /// the registration page logs in through the same one, so that a lockout holds on both.
    public var directoryLogin: DirectoryLogin? { authenticator?.login }

    /// The admin endpoint's port, when one is configured and bound.
    public var adminPort: Int? { admin.withLockedValue { $0 }?.port }

    /// Where other servers of the process run (the registration page): a loop of the gateway's group, so that there
    /// is one event-loop group.
    public var eventLoopGroup: any EventLoopGroup { loops.services }

    /// Why the SMTP side is unhealthy: shutting down, or configured listeners that are not bound.
    func listenerProblem() -> String? {
        if stopping.withLockedValue({ $0 }) { return "draining: shutting down" }
        let bound = Set(listeners.all.filter(\.isActive).map(\.configuration.name))
        let missing = configuration.listeners.map(\.name).filter { !bound.contains($0) }
        return missing.isEmpty ? nil : "listeners not bound: \(missing.joined(separator: ", "))"
    }

    public func boundPort(listener name: String) -> Int? {
        listeners.all.first { $0.configuration.name == name }?.localAddress?.port
    }

    /// Where accepted mail goes (the spool, or the outbox without a relay).
    public var deliveryTarget: any DeliveryTarget { environment.target }

    /// A file beside the delivered mail where the gateway keeps small state of its own.
    public func stateFile(_ name: String) -> URL {
        switch configuration.delivery {
        case .outbox(let path): return URL(fileURLWithPath: path).appendingPathComponent(".\(name)")
        case .relay(let spool, _): return URL(fileURLWithPath: spool).appendingPathComponent(name)
        }
    }

    /// The TLS context for new handshakes (swapped on reload).
    public var tlsContext: TLSContextBox { environment.tls }

    /// Reads the certificate and key again; new handshakes use them, established sessions keep theirs.
    public func reloadTLS() {
        guard let files = configuration.tls else { return }
        do {
            tlsContext.replace(try ServerTLS.makeContext(files))
            logger.notice("TLS certificate reloaded", metadata: ["certificate": "\(files.certificateChain)"])
        } catch {
            logger.error("TLS reload refused; keeping the previous certificate", metadata: ["error": "\(error)"])
        }
    }

    public func run() async throws {
        if listeners.all.isEmpty { try await start() }
        try? await gracefulShutdown()
        await shutdown(notice: .seconds(configuration.admin?.drainNoticeSeconds ?? 0))
    }

    /// Stops accepting, lets sessions in DATA finish (bounded by `drainTimeout`), then closes everything.
    ///
    /// With a `notice` (`admin.drain-notice-seconds`, on a graceful shutdown), `/health` answers 503 `draining`
    /// for that long first while the listeners still accept and serve as before: a load balancer that checks
    /// `/health` more often than that stops sending new connections before this node stops taking them, so no
    /// client is refused at connect, not even one the balancer would have retried elsewhere.
    public func shutdown(notice: Duration = .zero) async {
        logger.info("shutting down", metadata: ["connections": "\(shared.connections)"])
        stopping.withLockedValue { $0 = true }
        if notice > .zero {
            logger.notice("draining: /health answers 503 while the listeners still accept", metadata: ["seconds": "\(notice.components.seconds)"])
            try? await Task.sleep(for: notice)
        }
        let all = listeners.all
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await withTaskGroup(of: Void.self) { inner in
                    for listener in all { inner.addTask { await listener.quiesce() } }
                }
            }
            group.addTask { [drainTimeout] in try? await Task.sleep(for: drainTimeout) }
            await group.next()
            group.cancelAll()
        }
        for listener in all { await listener.close() }
        // The relay stops after the delivery in flight; what is left stays queued for the next start.
        if let task = relayTask.withLockedValue({ $0 }) {
            task.cancel()
            await task.value
        }
        await spool?.shutdown()
        await admin.withLockedValue { $0 }?.close()
        await authenticator?.shutdown()
        try? await loops.group.shutdownGracefully()
        try? await threadPool.shutdownGracefully()
        logger.info("stopped")
    }
}

/// The bound listeners, appended during start.
final class NIOLockedValueBoxListeners: Sendable {
    private let box = NIOLockedValueBox<[SMTPListener]>([])
    func append(_ listener: SMTPListener) { box.withLockedValue { $0.append(listener) } }
    var all: [SMTPListener] { box.withLockedValue { $0 } }
}
