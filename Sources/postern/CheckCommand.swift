import ArgumentParser
import Foundation
import PosternGateway
import PosternPolicy
import PosternRegistration

struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the gateway configuration and the policy files; exit 1 listing each error.",
        discussion: """
            Errors are printed as FILE:LINE: message (fix: ...). Device entries are checked with the same rules as \
            the registration page and `postern devices add`: senders in the department's domains (the internal \
            domains when it lists none), an internal owner, plain-text location and note. Warnings (FILE:LINE: \
            warning: ...) do not change the exit status: for example a bare group name without directory.group-base, \
            which matches no group. Certificates (server, relay client, each upstream's CA file): an error once \
            expired, a warning under 30 days, a warning when a chain does not lead to a known root. With \
            accepted-domains on an upstream (Microsoft 365): the relay client certificate's names and the senders' \
            domains against them (docs/production.md, Microsoft 365).
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
        // The registration page's section, when there is one.
        let registration: RegistrationConfiguration?
        do {
            registration = try RegistrationConfiguration.load(path: config, gateway: configuration)
        } catch {
            for issue in error.issues { print(issue) }
            throw ExitCode(1)
        }
        for warning in configuration.warnings + (registration?.warnings ?? []) {
            print("\(warning.file):\(warning.line): warning: \(warning.message)" + (warning.fix.map { " (fix: \($0))" } ?? ""))
        }
        switch PolicyLoader.load(directory: URL(fileURLWithPath: configuration.policyDirectory)) {
        case .success(let policy):
            print("\(configuration.policyDirectory): ok (\(policy.devices.count) devices, \(policy.departments.count) departments)")
            // Certificates' chains and expiry, and Microsoft 365's requirements for upstreams with accepted-domains (issue #17).
            let findings = Microsoft365Readiness.findings(configuration: configuration, policy: policy)
            for finding in findings { print(finding) }
            if findings.contains(where: { $0.severity == .error }) { throw ExitCode(1) }
            let unknown = (registration?.departmentGroups.keys.sorted() ?? []).filter { policy.departments[$0] == nil }
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
