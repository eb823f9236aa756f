import Foundation
import Logging
import PosternDirectory
import PosternGateway

extension RegistrationServer {
    /// The registration page as `postern serve` runs it: from the `registration:` section of the gateway's file,
    /// logging in through the gateway's own `DirectoryLogin` (one throttle for SMTP AUTH and the page), counting
    /// into its metrics, and mailing through its delivery target (the spool and the relay, or the outbox). nil
    /// when the file has no such section.
    public static func make(configurationFile: String, gateway: Gateway, audit: AuditLog, logger: Logger) async throws -> RegistrationServer? {
        guard let configuration = try RegistrationConfiguration.load(path: configurationFile, gateway: gateway.configuration) else { return nil }
        guard let login = gateway.directoryLogin else {
            throw RegistrationFailure("the registration page logs in against the directory, and no directory is configured")
        }
        for warning in configuration.warnings { logger.warning("\(warning)") }
        let desk = try RegistrationDesk(configuration: configuration, policyDirectory: URL(fileURLWithPath: gateway.configuration.policyDirectory),
                                        audit: audit)
        let notifier = RegistrationNotifier(target: gateway.deliveryTarget, hostname: gateway.configuration.hostname, configuration: configuration,
                                            audit: audit, logger: logger)
        return try await RegistrationServer(desk: desk, login: login, revealNotAuthorized: gateway.configuration.revealNotAuthorized,
                                            metrics: gateway.metrics, notifier: notifier, logger: logger)
    }
}
