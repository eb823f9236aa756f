import Foundation

/// What to do with an AUTH attempt before asking the directory.
public enum ThrottleVerdict: Sendable, Hashable {
    /// Check the credentials, after waiting `delay` (zero when there is no recent failure streak).
    case allow(delay: Duration)
    /// Do not contact the directory; reply `421 4.7.0` and disconnect.
    case refuse
}

/// Slows down and then stops password guessing, per client address and per login.
///
/// After `slowDownAfter` consecutive failures each attempt waits `delayStep` more (up to
/// `maxDelay`); after `lockoutAfter` failures attempts are refused for `lockoutDuration`, so a
/// guessing loop costs the directory at most `lockoutAfter` binds per lockout period. A streak
/// without a new failure for `forgetAfter` is forgotten. Memory is bounded by `maxTrackedKeys`
/// per kind of key: when full, expired streaks go first, then the oldest tenth.
public struct AuthThrottle: Sendable {
    public struct Limits: Sendable, Hashable {
        public var slowDownAfter: Int
        public var delayStep: Duration
        public var maxDelay: Duration
        public var lockoutAfter: Int
        public var lockoutDuration: Duration
        public var forgetAfter: Duration

        public init(
            slowDownAfter: Int, delayStep: Duration, maxDelay: Duration,
            lockoutAfter: Int, lockoutDuration: Duration, forgetAfter: Duration
        ) {
            self.slowDownAfter = slowDownAfter
            self.delayStep = delayStep
            self.maxDelay = maxDelay
            self.lockoutAfter = lockoutAfter
            self.lockoutDuration = lockoutDuration
            self.forgetAfter = forgetAfter
        }

        /// For one login: 3 free tries, then 1 s more per failure up to 5 s, locked 15 min after 10.
        public static let login = Limits(
            slowDownAfter: 3, delayStep: .seconds(1), maxDelay: .seconds(5),
            lockoutAfter: 10, lockoutDuration: .seconds(15 * 60), forgetAfter: .seconds(15 * 60))
        /// For one client address, which may be shared by many people behind NAT: more lenient.
        public static let client = Limits(
            slowDownAfter: 5, delayStep: .seconds(1), maxDelay: .seconds(5),
            lockoutAfter: 30, lockoutDuration: .seconds(15 * 60), forgetAfter: .seconds(15 * 60))
    }

    struct Streak: Sendable, Hashable {
        var failures: Int
        var lastFailure: Date
        var lockedUntil: Date?
    }

    public let perLogin: Limits
    public let perClient: Limits
    public let maxTrackedKeys: Int
    private(set) var logins: [String: Streak] = [:]
    private(set) var clients: [String: Streak] = [:]

    public init(perLogin: Limits = .login, perClient: Limits = .client, maxTrackedKeys: Int = 10_000) {
        self.perLogin = perLogin
        self.perClient = perClient
        self.maxTrackedKeys = max(1, maxTrackedKeys)
    }

    /// How many logins and client addresses have a streak in memory.
    public var trackedKeys: (logins: Int, clients: Int) { (logins.count, clients.count) }

    public mutating func check(client: String, login: String, now: Date) -> ThrottleVerdict {
        let byLogin = Self.current(&logins, key: Self.loginKey(login), limits: perLogin, now: now)
        let byClient = Self.current(&clients, key: client, limits: perClient, now: now)
        if Self.isLocked(byLogin, now: now) || Self.isLocked(byClient, now: now) { return .refuse }
        return .allow(delay: max(Self.delay(byLogin, perLogin), Self.delay(byClient, perClient)))
    }

    public mutating func record(success: Bool, client: String, login: String, now: Date) {
        let key = Self.loginKey(login)
        if success {
            // The right password ends the login's streak; the address keeps its record, since one
            // success among many guessed logins does not make the guessing innocent.
            logins[key] = nil
            return
        }
        Self.fail(&logins, key: key, limits: perLogin, now: now, cap: maxTrackedKeys)
        Self.fail(&clients, key: client, limits: perClient, now: now, cap: maxTrackedKeys)
    }

    // Logins differ in case only for the directory's matching rules, which ignore case for uid.
    private static func loginKey(_ login: String) -> String { login.lowercased() }

    private static func isLocked(_ streak: Streak?, now: Date) -> Bool {
        guard let until = streak?.lockedUntil else { return false }
        return now < until
    }

    private static func delay(_ streak: Streak?, _ limits: Limits) -> Duration {
        guard let streak, streak.failures >= limits.slowDownAfter else { return .zero }
        let steps = streak.failures - limits.slowDownAfter + 1
        return min(limits.maxDelay, limits.delayStep * steps)
    }

    private static func isExpired(_ streak: Streak, limits: Limits, now: Date) -> Bool {
        if let until = streak.lockedUntil { return now >= until }
        return now >= streak.lastFailure + limits.forgetAfter.timeInterval
    }

    /// The key's streak, dropping it when it has expired (a served lockout starts afresh).
    private static func current(_ table: inout [String: Streak], key: String, limits: Limits, now: Date) -> Streak? {
        guard let streak = table[key] else { return nil }
        if isExpired(streak, limits: limits, now: now) {
            table[key] = nil
            return nil
        }
        return streak
    }

    private static func fail(_ table: inout [String: Streak], key: String, limits: Limits, now: Date, cap: Int) {
        var streak = current(&table, key: key, limits: limits, now: now)
            ?? Streak(failures: 0, lastFailure: now, lockedUntil: nil)
        if streak.failures == 0, table.count >= cap {
            makeRoom(&table, limits: limits, now: now, cap: cap)
        }
        streak.failures += 1
        streak.lastFailure = now
        if streak.failures >= limits.lockoutAfter, streak.lockedUntil == nil {
            streak.lockedUntil = now + limits.lockoutDuration.timeInterval
        }
        table[key] = streak
    }

    private static func makeRoom(_ table: inout [String: Streak], limits: Limits, now: Date, cap: Int) {
        table = table.filter { !isExpired($0.value, limits: limits, now: now) }
        guard table.count >= cap else { return }
        // Evict a tenth at once so that a flood of new keys costs one sort per many insertions.
        let evict = max(1, table.count - cap + 1, cap / 10)
        let oldest = table.sorted { $0.value.lastFailure < $1.value.lastFailure }.prefix(evict)
        for (key, _) in oldest { table[key] = nil }
    }
}

extension Duration {
    var timeInterval: TimeInterval {
        let (seconds, attoseconds) = components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}
