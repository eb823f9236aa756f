import ArgumentParser
import Foundation
import Logging
import PosternGateway
import PosternPolicy
import PosternRegistration
import ServiceLifecycle

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the gateway in the foreground until SIGTERM or SIGINT.")

    @Option(name: .long, help: "The gateway configuration file (YAML).")
    var config: String = "policies/postern.yaml"

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "postern")
        let configuration: GatewayConfiguration
        do {
            configuration = try GatewayConfiguration.load(path: config)
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(1)
        }
        for warning in configuration.warnings { logger.warning("\(warning)") }
        let policies: PolicyStore
        do {
            policies = try PolicyStore(directory: URL(fileURLWithPath: configuration.policyDirectory), logger: logger,
                                       userMessagesPerHour: configuration.limits.messagesPerUserPerHour)
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(1)
        }
        let metrics = GatewayMetrics()
        let audit = try AuditLog.make(output: configuration.auditOutput, metrics: metrics)
        let gateway = try Gateway(configuration: configuration, rules: { policies.rules(audit: audit) },
                                  logger: logger, audit: audit, metrics: metrics,
                                  refreshPolicyGauges: { $0.refreshSunsets(policy: policies.policy, now: Date()) })
        try await gateway.start()
        let reloader = ReloadService(policies: policies, gateway: gateway, logger: logger)
        let reminders = SunsetReminders(policies: policies, target: gateway.deliveryTarget, stateFile: gateway.stateFile("sunset-reminders.json"),
                                        hostname: configuration.hostname, logger: logger)
        let certificates = CertificateExpiryWatch(configuration: configuration, metrics: metrics, audit: audit,
                                                  stateFile: gateway.stateFile("certificate-warnings.json"), logger: logger)
        var services: [any Service] = [gateway, reloader, reminders, certificates]
        // The device-registration web page, when postern.yaml has a `registration:` section.
        do {
            if let registration = try await RegistrationServer.make(configurationFile: config, gateway: gateway, audit: audit, logger: logger) {
                services.append(registration)
            }
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            await gateway.shutdown()
            throw ExitCode(1)
        }
        let group = ServiceGroup(configuration: .init(services: services, gracefulShutdownSignals: [.sigterm, .sigint],
                                                      logger: logger))
        try await group.run()
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
