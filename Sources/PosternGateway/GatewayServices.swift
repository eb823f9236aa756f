import Foundation
import Logging
import PosternCore
import PosternPolicy
import PosternRegistration
import ServiceLifecycle
import UnixSignals

/// What `postern serve` runs, built from postern.yaml: the policy store, the audit log and metrics, the gateway
/// (listeners, relay, admin endpoint), the reload watcher, the sunset reminders, the certificate expiry watch, the
/// audit log's retention (with `audit.rotate.keep-days`) and the registration page, as one
/// `ServiceGroup`.
///
/// Threads: the gateway's event-loop group is the only one in the process; the registration page serves on it, and
/// the gateway's and the spool's thread pools are the only pools. When `run` returns, every one of them has
/// stopped: the group shuts its services down in reverse order, so the page, the reminders and the watcher stop
/// before the gateway, which stops its loops and pools last.
public final class GatewayServices: Sendable {
    public let configuration: GatewayConfiguration
    public let policies: PolicyStore
    public let gateway: Gateway
    public let registration: RegistrationServer?
    private let group: ServiceGroup

    /// Loads the configuration and the policy and binds every port; the registration page binds when `run` starts.
    /// Throws `ConfigErrors` or `PolicyErrors` (to print as they are) or a bind error, leaving no threads behind.
    public static func start(configurationFile: String, logger: Logger,
                             gracefulShutdownSignals: [UnixSignal] = [.sigterm, .sigint]) async throws -> GatewayServices {
        let configuration = try GatewayConfiguration.load(path: configurationFile)
        for warning in configuration.warnings { logger.warning("\(warning.warningDescription)") }
        let policies = try PolicyStore(directory: URL(fileURLWithPath: configuration.policyDirectory), logger: logger,
                                       userMessagesPerHour: configuration.limits.messagesPerUserPerHour)
        for warning in configuration.policyWarnings(policies.policy) { logger.warning("\(warning.warningDescription)") }
        let metrics = GatewayMetrics()
        policies.observeReloads { metrics.policyReload(applied: $0.applied) }
        let audit = try AuditLog.make(output: configuration.auditOutput, retention: configuration.auditRetention, countDecision: metrics.decision)
        let gateway = try Gateway(configuration: configuration, rules: { policies.rules(audit: audit) }, logger: logger, audit: audit,
                                  metrics: metrics, refreshPolicyGauges: { $0.refreshSunsets(policy: policies.policy, now: Date()) },
                                  policyVersion: {
                                      let (policy, generation) = policies.inForce
                                      return (policy.fingerprint, generation)
                                  })
        do {
            try await gateway.start()
            var registration: RegistrationServer?
            if let section = configuration.registration {
                registration = try await makeRegistrationServer(section, gateway: gateway, policies: policies, audit: audit, logger: logger)
            }
            let reminders = SunsetReminders(policies: policies, target: gateway.deliveryTarget, stateFile: gateway.stateFile("sunset-reminders.json"),
                                            hostname: configuration.hostname, logger: logger)
            // Certificate expiry: the metric, and audit warnings 30, 14 and 7 days ahead (once each).
            let certificates = CertificateExpiryWatch(configuration: configuration, metrics: metrics, audit: audit,
                                                      stateFile: gateway.stateFile("certificate-warnings.json"), logger: logger)
            // Shut down in reverse: whatever runs on the gateway's loops stops before the gateway stops them.
            let services: [any Service] = [gateway, ReloadService(policies: policies, gateway: gateway, logger: logger), reminders, certificates]
                + (configuration.auditRetention?.keepDays != nil ? [AuditRetentionService(audit: audit, logger: logger)] : [])
                + (registration.map { [$0] } ?? [])
            let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: gracefulShutdownSignals, logger: logger))
            return GatewayServices(configuration: configuration, policies: policies, gateway: gateway, registration: registration, group: group)
        } catch {
            await gateway.shutdown()
            throw error
        }
    }

    private init(configuration: GatewayConfiguration, policies: PolicyStore, gateway: Gateway, registration: RegistrationServer?,
                 group: ServiceGroup) {
        self.configuration = configuration
        self.policies = policies
        self.gateway = gateway
        self.registration = registration
        self.group = group
    }

    /// Runs until a graceful-shutdown signal or `stop`, then stops everything, the gateway's threads last.
    public func run() async throws {
        try await group.run()
    }

    /// Begins the graceful shutdown `run` waits for (what SIGTERM does).
    public func stop() async {
        await group.triggerGracefulShutdown()
    }

    /// The registration page as `postern serve` runs it: on the gateway's event loops, logging in through the
    /// gateway's `DirectoryLogin` (one throttle for SMTP AUTH and the page), reading and changing the gateway's
    /// policy store, counting into its metrics, and mailing through its delivery target.
    private static func makeRegistrationServer(_ configuration: RegistrationConfiguration, gateway: Gateway, policies: PolicyStore,
                                               audit: AuditLog, logger: Logger) async throws -> RegistrationServer {
        guard let login = gateway.directoryLogin else {
            // The configuration refuses a registration section without a directory; this is that rule's other half.
            throw ConfigErrors(issues: [ConfigIssue(file: gateway.configuration.file, line: 0,
                                                    message: "the registration page logs in against the directory, and no directory is configured",
                                                    fix: "add a directory: section")])
        }
        let desk = try RegistrationDesk(configuration: configuration, policies: policies, audit: audit)
        let metrics = gateway.metrics
        // Mail to the admins and the contacts goes through the gateway's own delivery path (spool and relay, or outbox).
        let notifier = RegistrationNotifier(target: gateway.deliveryTarget, hostname: gateway.configuration.hostname,
                                            configuration: configuration, audit: audit, logger: logger)
        return try await RegistrationServer(desk: desk, login: login, revealNotAuthorized: gateway.configuration.revealNotAuthorized,
                                            countLogin: { metrics.registrationLogin(result: $0) }, notifier: notifier,
                                            eventLoopGroup: gateway.eventLoopGroup, logger: logger)
    }
}

extension GatewayConfiguration {
    /// What `postern check` and `postern serve` point out about postern.yaml and the policy together: a policy.yaml
    /// `listeners.<kind>.max-message-size` above what a listener of that kind takes (its own `max-message-size`, or
    /// `limits.max-message-size`). The smaller limit applies, so such a setting would have no effect.
    ///
    /// A warning, not an error: the larger value is harmless (the smaller one is enforced), configurations that
    /// worked before keep starting, and policy.yaml is reloaded on its own, where an error would turn a valid
    /// policy edit into a refused reload because of another file.
    public func policyWarnings(_ policy: PolicySet) -> [ConfigIssue] {
        let file = URL(fileURLWithPath: policyDirectory).appendingPathComponent(PolicyLoader.policyFile).path
        var reader = ConfigReader(file: file)
        let listenersNode = reader.document(atPath: file)?.mapping?["listeners"]
        var warnings: [ConfigIssue] = []
        for listener in listeners {
            let endpoint = PolicyEndpoint(listener.kind)
            guard let policySize = policy.listeners[endpoint]?.maxMessageSize else { continue }
            let takes = listener.maxMessageSize ?? limits.maxMessageSize
            guard policySize > takes else { continue }
            let node = listenersNode?.mapping?[endpoint.rawValue]?.mapping?["max-message-size"]
            let source = listener.maxMessageSize == nil ? "limits.max-message-size" : "its max-message-size"
            warnings.append(ConfigIssue(
                file: file, line: node?.mark?.line ?? 0,
                message: "listeners.\(endpoint.rawValue).max-message-size \(ByteSize.describe(policySize)) is above what listener '\(listener.name)' "
                    + "takes (\(ByteSize.describe(takes)), \(source) in \(self.file)), so it has no effect",
                fix: "lower it to \(ByteSize.describe(takes)) or less, or raise the listener's limit in \(self.file)"))
        }
        return warnings
    }
}
