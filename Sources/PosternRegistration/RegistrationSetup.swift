import Foundation
import Logging
import NIOPosix
import PosternDirectory
import PosternGateway

extension RegistrationServer {
    /// The registration page as `postern serve` runs it: from the `registration:` section of the gateway's file,
    /// logging in against the gateway's directory. nil when the file has no such section.
    public static func make(configurationFile: String, gateway: GatewayConfiguration, audit: AuditLog, logger: Logger) async throws -> RegistrationServer? {
        guard let configuration = try RegistrationConfiguration.load(path: configurationFile, gateway: gateway),
              var directoryConfiguration = gateway.directory else { return nil }
        // Roles here come from admin-groups and department-groups, not from SMTP AUTH's required groups.
        directoryConfiguration.requiredGroups = []
        let pool = NIOThreadPool(numberOfThreads: 2 * directoryConfiguration.maxConnections)
        pool.start()
        let directory = try Directory(configuration: directoryConfiguration, threadPool: pool, logger: logger)
        let desk = try RegistrationDesk(configuration: configuration, policyDirectory: URL(fileURLWithPath: gateway.policyDirectory), audit: audit)
        return try await RegistrationServer(desk: desk, login: directory, logger: logger)
    }
}
