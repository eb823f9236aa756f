import ArgumentParser
import Foundation
import Logging
import PosternGateway

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the gateway in the foreground until SIGTERM or SIGINT.")

    @Option(name: .long, help: "The gateway configuration file (YAML). Default: $POSTERN_CONFIG or /etc/postern/postern.yaml, as for every other command.")
    var config: String?

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: Logger.Level = .info

    func run() async throws {
        let level = logLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let services: GatewayServices
        do {
            services = try await GatewayServices.start(configurationFile: ConfigPath.resolve(config), logger: Logger(label: "postern"))
        } catch {
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            throw ExitCode(1)
        }
        try await services.run()
    }
}

extension Logger.Level: @retroactive ExpressibleByArgument {}
