import ArgumentParser
import Foundation
import PosternCore
import PosternGateway
import PosternPolicy

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the gateway configuration and the policy files; exit 1 listing each error.",
        discussion: """
            Errors are printed as FILE:LINE: message (fix: ...). Device entries are checked with the same rules as \
            the registration page and `postern devices add`: senders in the department's domains (the internal \
            domains when it lists none), an internal owner, plain-text location and note. Warnings (FILE:LINE: \
            warning: ...) do not change the exit status: for example a bare group name without directory.group-base, \
            which matches no group, or a policy.yaml listeners max-message-size above what postern.yaml's listeners take \
            (the smaller limit applies).
            """)

    @Option(name: .long, help: "The gateway configuration file (YAML).")
    var config: String = "policies/postern.yaml"

    func run() throws {
        let configuration: GatewayConfiguration
        do {
            configuration = try GatewayConfiguration.load(path: config)
        } catch {
            for issue in error.issues { print(issue) }
            throw ExitCode(1)
        }
        print("\(config): ok (\(configuration.listeners.count) listeners)")
        for warning in configuration.warnings { print(warning.warningDescription) }
        switch PolicyLoader.load(directory: URL(fileURLWithPath: configuration.policyDirectory)) {
        case .success(let policy):
            print("\(configuration.policyDirectory): ok (\(policy.devices.count) devices, \(policy.departments.count) departments)")
            for warning in configuration.policyWarnings(policy) { print(warning.warningDescription) }
            let unknown = (configuration.registration?.departmentGroups.keys.sorted() ?? []).filter { policy.departments[$0] == nil }
            if !unknown.isEmpty {
                print("\(config): registration.department-groups names unknown department(s) \(unknown.joined(separator: ", ")) (fix: use ids from departments.yaml)")
                throw ExitCode(1)
            }
        case .failure(let errors):
            for issue in errors.issues { print(issue) }
            throw ExitCode(1)
        }
    }
}
