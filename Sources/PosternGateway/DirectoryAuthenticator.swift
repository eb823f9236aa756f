import Foundation
import Logging
import PosternDirectory
import PosternListener
import PosternSMTP
import PosternSession

/// SMTP AUTH against the directory, through `DirectoryLogin` and its brute-force throttle: a wrong-password
/// streak from one client or for one account is slowed down, then refused for a while without asking LDAP.
public final class DirectoryAuthenticator: SubmissionAuthenticator {
    public let login: DirectoryLogin
    /// Answer a right password of an account outside the required groups with 550 instead of 535.
    private let revealNotAuthorized: Bool
    private let logger: Logger

    public static let throttledReply = SMTPReply(421, "4.7.0", "Too many failed authentication attempts; try again later")
    public static let invalidCredentialsReply = SMTPReply(535, "5.7.8", "Authentication credentials invalid")
    public static let notAuthorizedReply = SMTPReply(550, "5.7.1", "Not authorized to submit mail")

    public init(login: DirectoryLogin, revealNotAuthorized: Bool = false, logger: Logger) {
        self.login = login
        self.revealNotAuthorized = revealNotAuthorized
        self.logger = logger
    }

    public func authenticate(_ credentials: Credentials, client: String) async -> AuthOutcome {
        outcome(for: await login.authenticateSubmitter(login: credentials.login, password: credentials.password, client: client))
    }

    /// The session's answer to a login result: the one mapping SMTP AUTH and `postern explain` use.
    public func outcome(for result: LoginResult) -> AuthOutcome {
        switch result {
        case .success(let identity):
            return .success(AuthenticatedUser(login: identity.login, distinguishedName: identity.dn,
                                              addresses: identity.addresses, groups: identity.groups))
        case .invalidCredentials:
            return .invalidCredentials
        case .notAuthorized:
            // By default the same bytes as a wrong password; the audit log keeps the difference.
            return .refused(revealNotAuthorized ? Self.notAuthorizedReply : Self.invalidCredentialsReply)
        case .unavailable(let reason):
            logger.warning("directory unavailable", metadata: ["reason": "\(reason)"])
            return .temporaryFailure
        case .throttled:
            return .throttled(Self.throttledReply)
        }
    }

    public func shutdown() async {
        await login.shutdown()
    }
}
