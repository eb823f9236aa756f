import Foundation
import Logging
import NIOConcurrencyHelpers

/// The outcome of one password check through `DirectoryLogin`.
public enum LoginResult: Sendable, Hashable {
    case success(DirectoryIdentity)
    /// Wrong password, unknown or ambiguous login.
    case invalidCredentials
    /// The password was right, but the caller's `authorize` said no (not in the required groups, no role on
    /// the registration page). Callers answer it like `invalidCredentials` unless configured otherwise: a
    /// different answer would tell anyone holding a guess that it is the password.
    case notAuthorized(DirectoryIdentity)
    /// The directory gave no answer, or the account's slots stayed full of attempts in flight.
    case unavailable(String)
    /// The account or the client address is locked out; the lockout ends in `retryAfter`.
    case throttled(retryAfter: Duration)

    /// The name the audit log and the metrics use.
    public var label: String {
        switch self {
        case .success: return "success"
        case .invalidCredentials: return "invalid_credentials"
        case .notAuthorized: return "not_authorized"
        case .unavailable: return "directory_unavailable"
        case .throttled: return "throttled"
        }
    }
}

/// Password checks against the directory behind the brute-force throttle: the one door SMTP AUTH and the
/// registration page both use, with one throttle, so a lockout earned on one holds on the other.
///
/// Each attempt reserves a slot on its client address and on its account before the directory is asked, and
/// settles it with the outcome (`AuthThrottle`). The account is the login as the directory's matching rule
/// normalises it (`LoginName`) until the search has found the entry, and the entry's DN from then on, before
/// the bind: spellings the normalisation misses (an alias login, a Unicode form) still meet at the DN, so
/// the directory sees at most `lockoutAfter` wrong binds per account per lockout period.
public final class DirectoryLogin: Sendable {
    public let directory: Directory
    private let throttle: NIOLockedValueBox<AuthThrottle>
    private let now: @Sendable () -> Date
    private let logger: Logger
    /// How long an attempt waits for a slot while its account's or client's slots are full of attempts in
    /// flight; those settle within the directory's own time limits.
    private let maxWait: Duration

    public init(directory: Directory, throttle: AuthThrottle = AuthThrottle(), maxWait: Duration = .seconds(20),
                logger: Logger, now: @escaping @Sendable () -> Date = { Date() }) {
        self.directory = directory
        self.throttle = NIOLockedValueBox(throttle)
        self.maxWait = maxWait
        self.logger = logger
        self.now = now
    }

    /// SMTP AUTH: who may pass is who is in the directory's required groups.
    public func authenticateSubmitter(login: String, password: String, client: String) async -> LoginResult {
        let directory = self.directory
        return await authenticate(login: login, password: password, client: client) { directory.meetsRequiredGroups($0) }
    }

    /// Checks `password` for `login` from `client`; `authorize` decides whether an identity whose password is
    /// right may pass. A right password that `authorize` turns away counts as a failure in the throttle, like
    /// a wrong one: were it counted as a success, the moment a lockout starts would tell which guess was right.
    public func authenticate(login: String, password: String, client: String,
                             authorize: @Sendable (DirectoryIdentity) -> Bool) async -> LoginResult {
        // The directory refuses logins over 256 octets unread; cut the key there so that the throttle's memory
        // stays bounded by its key count, whatever an AUTH line carries.
        let loginKey = "login:" + String(LoginName.normalized(String(String.UnicodeScalarView(login.unicodeScalars.prefix(1024)))).prefix(256))
        switch await admit({ $0.reserve(client: client, account: loginKey, now: $1) }) {
        case .refused(let retryAfter): return .throttled(retryAfter: retryAfter)
        case .timedOut: return .unavailable("too many authentications in flight for this login or address")
        case .admitted: break
        }
        // What the gate before the bind decided, read after the check returns.
        let gate = NIOLockedValueBox<(key: String?, refusal: LoginResult?)>((nil, nil))
        let check = await directory.checkPassword(login: login, password: password) { [self] dn in
            let key = "dn:" + DistinguishedName.normalized(dn)
            switch await admit({ $0.reserve(client: nil, account: key, now: $1) }) {
            case .admitted:
                gate.withLockedValue { $0.key = key }
                return true
            case .refused(let retryAfter):
                gate.withLockedValue { $0.refusal = .throttled(retryAfter: retryAfter) }
                return false
            case .timedOut:
                gate.withLockedValue { $0.refusal = .unavailable("too many authentications in flight for this account") }
                return false
            }
        }
        let (dnKey, refusal) = gate.withLockedValue { $0 }
        let accounts = [loginKey] + (dnKey.map { [$0] } ?? [])
        func settle(_ outcome: AuthThrottle.Outcome) {
            throttle.withLockedValue { $0.settle(client: client, accounts: accounts, outcome: outcome, now: now()) }
        }
        switch check {
        case .verified(let identity):
            if authorize(identity) {
                settle(.success)
                return .success(identity)
            }
            settle(.failure)
            return .notAuthorized(identity)
        case .invalidCredentials:
            settle(.failure)
            return .invalidCredentials
        case .refusedBeforeBind:
            settle(.undecided)
            return refusal ?? .unavailable("the account was refused before the bind")
        case .unavailable(let reason):
            settle(.undecided)
            return .unavailable(reason)
        }
    }

    public func shutdown() async {
        await directory.shutdown()
    }

    private enum Admission {
        case admitted
        case refused(Duration)
        case timedOut
    }

    /// Reserves through `reserve`, waiting while the slots are full and sleeping the slow-down delay.
    private func admit(_ reserve: (inout AuthThrottle, Date) -> AuthThrottle.Verdict) async -> Admission {
        let deadline = ContinuousClock.now + maxWait
        var pause = Duration.milliseconds(10)
        while true {
            let verdict = throttle.withLockedValue { reserve(&$0, now()) }
            switch verdict {
            case .allow(let delay):
                if delay > .zero { try? await Task.sleep(for: delay) }
                return .admitted
            case .refuse(let retryAfter):
                return .refused(retryAfter)
            case .wait:
                guard ContinuousClock.now < deadline else {
                    logger.warning("authentication slots stayed full; giving up")
                    return .timedOut
                }
                // Slots free as attempts in flight settle, within milliseconds of a directory round trip.
                try? await Task.sleep(for: pause)
                pause = min(pause * 2, .milliseconds(50))
            }
        }
    }
}
