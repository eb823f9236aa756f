import ArgumentParser
import Foundation
import Logging
import NIOPosix
import PosternDirectory
import PosternGateway
import PosternListener
import PosternPolicy
import PosternSession

/// What `postern explain` judges with: the gateway's configuration (listener, limits, directory) and its
/// policy store, or the policy files alone.
struct ExplainSetting {
    var store: PolicyStore
    var listener: ListenerConfiguration
    var hostname: String
    var limits: Limits
    var authAvailable: Bool
    var directory: DirectoryConfiguration?
    var revealNotAuthorized: Bool
    /// One line saying where the settings came from.
    var source: String

    static func load(config: String?, policies: String?, listener name: String) throws -> ExplainSetting {
        let logger = Logger(label: "postern.explain")
        if let policies {
            guard let kind = ListenerKind(rawValue: name) else {
                throw ValidationError("unknown listener '\(name)'; without --config use a kind: submission, submissions or device")
            }
            return ExplainSetting(store: try openStore(policies, logger: logger, userMessagesPerHour: nil),
                                  listener: ListenerConfiguration(name: kind.rawValue, kind: kind), hostname: "localhost",
                                  limits: .defaults, authAvailable: true, directory: nil, revealNotAuthorized: false,
                                  source: "policy files in \(policies) only (no postern.yaml: default limits, no directory)")
        }
        let path = ConfigPath.resolve(config)
        let configuration: GatewayConfiguration
        do {
            configuration = try GatewayConfiguration.load(path: path)
        } catch {
            let hint = config == nil ? " (give --config FILE, or --policies DIR to judge by the policy files alone)" : ""
            FileHandle.standardError.write(Data("postern explain: cannot use the configuration \(path)\(hint):\n\(error)\n".utf8))
            throw ExitCode.failure
        }
        let listeners = configuration.listeners
        guard let chosen = listeners.first(where: { $0.name == name })
                ?? ListenerKind(rawValue: name).flatMap({ kind in listeners.first { $0.kind == kind } }) else {
            let known = listeners.map { "\($0.name) (\($0.kind.rawValue))" }.joined(separator: ", ")
            throw ValidationError("\(path) has no listener '\(name)'; it has: \(known)")
        }
        return ExplainSetting(store: try openStore(configuration.policyDirectory, logger: logger,
                                                   userMessagesPerHour: configuration.limits.messagesPerUserPerHour),
                              listener: chosen, hostname: configuration.hostname, limits: configuration.limits,
                              authAvailable: configuration.directory != nil, directory: configuration.directory,
                              revealNotAuthorized: configuration.revealNotAuthorized,
                              source: "\(path) (policy files in \(configuration.policyDirectory))")
    }

    private static func openStore(_ directory: String, logger: Logger, userMessagesPerHour: Int?) throws -> PolicyStore {
        do {
            return try PolicyStore(directory: URL(fileURLWithPath: directory, isDirectory: true), logger: logger,
                                   userMessagesPerHour: userMessagesPerHour)
        } catch {
            for issue in error.issues { FileHandle.standardError.write(Data("\(issue)\n".utf8)) }
            FileHandle.standardError.write(Data("policy in \(directory) is invalid (\(error.issues.count) error\(error.issues.count == 1 ? "" : "s"))\n".utf8))
            throw ExitCode.failure
        }
    }

    /// What AUTH would get for `login`, and a line saying how that was found.
    struct LoginAnswer {
        var outcome: AuthOutcome
        var note: String
    }

    /// Looks the login up in the configured directory (no password, no bind as the user) and maps the answer
    /// as the gateway's authenticator does. Without a directory, `addresses` and `groups` stand for it.
    func lookUp(login: String, addresses: [String], groups: [String]) async throws -> LoginAnswer {
        let given = LoginAnswer(
            outcome: .success(AuthenticatedUser(login: login, distinguishedName: "", addresses: addresses, groups: groups)),
            note: "addresses " + (addresses.isEmpty ? "(none given)" : addresses.joined(separator: ", "))
                + (groups.isEmpty ? "" : "; groups " + groups.joined(separator: ", ")))
        guard let configuration = directory else {
            var answer = given
            answer.note = "not consulted (no directory configured); \(given.note)"
            return answer
        }
        var logger = Logger(label: "postern.explain")
        logger.logLevel = .error
        let threadPool = NIOThreadPool(numberOfThreads: 2)
        threadPool.start()
        defer { threadPool.shutdownGracefully { _ in } }
        let directory: Directory
        do {
            directory = try Directory(configuration: configuration, threadPool: threadPool, logger: logger)
        } catch {
            var answer = given
            answer.note = "not consulted (the directory cannot be set up: \(error)); \(given.note)"
            return answer
        }
        let authenticator = DirectoryAuthenticator(login: DirectoryLogin(directory: directory, logger: logger),
                                                   revealNotAuthorized: revealNotAuthorized, logger: logger)
        let ignored = addresses.isEmpty && groups.isEmpty ? "" : " (--address and --group are not used: the directory answered)"
        switch await directory.lookup(login: login) {
        case .found(let identity, let admitted):
            let result: LoginResult = admitted ? .success(identity) : .notAuthorized(identity)
            let who = "\(identity.dn); addresses " + (identity.addresses.isEmpty ? "(none)" : identity.addresses.joined(separator: ", "))
                + "; groups " + (identity.groups.isEmpty ? "(none)" : identity.groups.joined(separator: ", "))
            let verdict = admitted ? "may submit" : "in none of the required groups: AUTH is refused even with the right password"
            await directory.shutdown()
            return LoginAnswer(outcome: authenticator.outcome(for: result), note: "\(who); \(verdict)\(ignored)")
        case .notFound:
            await directory.shutdown()
            return LoginAnswer(outcome: authenticator.outcome(for: .invalidCredentials),
                               note: "no single directory entry: AUTH fails whatever the password\(ignored)")
        case .unavailable(let reason):
            await directory.shutdown()
            var answer = given
            answer.note = "unavailable (\(reason)): the gateway would answer AUTH with 454 4.7.0 now; judged with \(given.note)"
            if addresses.isEmpty && groups.isEmpty { answer.outcome = .temporaryFailure }
            return answer
        }
    }
}
