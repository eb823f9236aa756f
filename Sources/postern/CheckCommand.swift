import ArgumentParser
import Foundation
import PosternGateway

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the gateway configuration and the policy files; exit 1 listing each error.")

    @Option(name: .long, help: "The gateway configuration file (YAML).")
    var config: String = "policies/postern.yaml"

    func run() throws {
        do {
            let configuration = try GatewayConfiguration.load(path: config)
            print("\(config): ok (\(configuration.listeners.count) listeners)")
        } catch {
            for issue in error.issues { print(issue) }
            throw ExitCode(1)
        }
    }
}
