import Foundation
import Logging
import NIOConcurrencyHelpers
import PosternDirectory
import PosternSMTP
import PosternSession

/// SMTP AUTH against the directory, behind the brute-force throttle: a wrong-password streak from one
/// client or for one login is slowed down, then refused for a while without asking LDAP at all.
public final class DirectoryAuthenticator: SubmissionAuthenticator {
    private let directory: Directory
    private let throttle: NIOLockedValueBox<AuthThrottle>
    private let now: @Sendable () -> Date
    private let logger: Logger

    public static let throttledReply = SMTPReply(421, "4.7.0", "Too many failed authentication attempts; try again later")
    public static let notAuthorizedReply = SMTPReply(550, "5.7.1", "Not authorized to submit mail")

    public init(directory: Directory, throttle: AuthThrottle = AuthThrottle(), logger: Logger, now: @escaping @Sendable () -> Date = { Date() }) {
        self.directory = directory
        self.throttle = NIOLockedValueBox(throttle)
        self.now = now
        self.logger = logger
    }

    public func authenticate(_ credentials: Credentials, client: String) async -> AuthOutcome {
        let verdict = throttle.withLockedValue { $0.check(client: client, login: credentials.login, now: now()) }
        switch verdict {
        case .refuse:
            return .throttled(Self.throttledReply)
        case .allow(let delay):
            if delay > .zero { try? await Task.sleep(for: delay) }
        }
        let result = await directory.authenticate(login: credentials.login, password: credentials.password)
        switch result {
        case .success(let identity):
            throttle.withLockedValue { $0.record(success: true, client: client, login: credentials.login, now: now()) }
            return .success(AuthenticatedUser(login: identity.login, distinguishedName: identity.dn,
                                              addresses: identity.addresses, groups: identity.groups))
        case .invalidCredentials:
            throttle.withLockedValue { $0.record(success: false, client: client, login: credentials.login, now: now()) }
            return .invalidCredentials
        case .notAuthorized:
            // The password was right: not a brute-force failure.
            throttle.withLockedValue { $0.record(success: true, client: client, login: credentials.login, now: now()) }
            return .refused(Self.notAuthorizedReply)
        case .unavailable(let reason):
            logger.warning("directory unavailable", metadata: ["reason": "\(reason)"])
            return .temporaryFailure
        }
    }

    public func shutdown() async {
        await directory.shutdown()
    }
}
