import Foundation

/// Slows down and then stops password guessing, per account and per client address.
///
/// An attempt first reserves a slot on its account (and its client address) and only then asks the
/// directory; it settles the reservation with the outcome. Attempts in flight count like failures
/// towards the lockout, so however many connections guess in parallel, an account costs the directory
/// at most `lockoutAfter` wrong binds per lockout period: when the failures so far and the attempts in
/// flight fill the account's slots, the next attempt waits (`wait`) until one settles.
///
/// Accounts are keys the caller chooses: the login as the directory's matching rule normalises it before
/// the search, the entry's DN after it (`DirectoryLogin`). Client addresses are a table of their own, with
/// their own limits, independent of the login.
///
/// After `slowDownAfter` failures each attempt waits `delayStep` more (up to `maxDelay`); after
/// `lockoutAfter` failures attempts are refused for `lockoutDuration`. A streak without a new failure for
/// `forgetAfter` is forgotten. Memory is bounded by `maxTrackedKeys` per table: when full, spent streaks go
/// first, then the oldest tenth (attempts in flight last).
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
            self.lockoutAfter = max(1, lockoutAfter)
            self.lockoutDuration = lockoutDuration
            self.forgetAfter = forgetAfter
        }

        /// For one account: 3 free tries, then 1 s more per failure up to 5 s, locked 15 min after 10.
        public static let login = Limits(
            slowDownAfter: 3, delayStep: .seconds(1), maxDelay: .seconds(5),
            lockoutAfter: 10, lockoutDuration: .seconds(15 * 60), forgetAfter: .seconds(15 * 60))
        /// For one client address, which may be shared by many people behind NAT: more lenient.
        public static let client = Limits(
            slowDownAfter: 5, delayStep: .seconds(1), maxDelay: .seconds(5),
            lockoutAfter: 30, lockoutDuration: .seconds(15 * 60), forgetAfter: .seconds(15 * 60))
    }

    /// What to do with an attempt before asking the directory.
    public enum Verdict: Sendable, Hashable {
        /// Reserved: go ahead after `delay`, and `settle` the reservation afterwards.
        case allow(delay: Duration)
        /// The slots are taken by attempts in flight; ask again when one may have settled.
        case wait
        /// Locked out: do not contact the directory; the lockout ends in `retryAfter`.
        case refuse(retryAfter: Duration)
    }

    /// How a reserved attempt ended.
    public enum Outcome: Sendable, Hashable {
        /// A wrong password, an unknown login, or a right password the caller does not let in.
        case failure
        /// The right password: the account's streak ends (the client address keeps its record, since one
        /// success among many guessed logins does not make the guessing innocent).
        case success
        /// No answer about the password (directory unavailable, refused before the bind).
        case undecided
    }

    struct Streak: Sendable, Hashable {
        var failures = 0
        var lastFailure: Date?
        var lockedUntil: Date?
        /// Reserved attempts not settled yet.
        var pending = 0

        var isSpent: Bool { failures == 0 && pending == 0 && lockedUntil == nil }
    }

    public let perAccount: Limits
    public let perClient: Limits
    public let maxTrackedKeys: Int
    private(set) var accounts: [String: Streak] = [:]
    private(set) var clients: [String: Streak] = [:]

    public init(perAccount: Limits = .login, perClient: Limits = .client, maxTrackedKeys: Int = 10_000) {
        self.perAccount = perAccount
        self.perClient = perClient
        self.maxTrackedKeys = max(1, maxTrackedKeys)
    }

    /// How many accounts and client addresses have a streak or an attempt in flight.
    public var trackedKeys: (accounts: Int, clients: Int) { (accounts.count, clients.count) }

    /// Attempts in flight for an account.
    public func pending(account: String) -> Int { accounts[account]?.pending ?? 0 }

    /// Reserves a slot on `account` and, when given, on `client`: both or neither.
    public mutating func reserve(client: String?, account: String, now: Date) -> Verdict {
        let byAccount = Self.current(accounts[account], perAccount, now)
        let byClient = client.map { Self.current(clients[$0], perClient, now) }
        let locks = [Self.lockRemaining(byAccount, now), byClient.flatMap { Self.lockRemaining($0, now) }].compactMap { $0 }
        if let longest = locks.max() { return .refuse(retryAfter: longest) }
        if byAccount.failures + byAccount.pending >= perAccount.lockoutAfter { return .wait }
        if let byClient, byClient.failures + byClient.pending >= perClient.lockoutAfter { return .wait }
        var reserved = byAccount
        reserved.pending += 1
        Self.store(&accounts, account, reserved, limits: perAccount, now: now, cap: maxTrackedKeys)
        var delay = Self.delay(byAccount, perAccount)
        if let client, var streak = byClient {
            streak.pending += 1
            Self.store(&clients, client, streak, limits: perClient, now: now, cap: maxTrackedKeys)
            delay = max(delay, Self.delay(streak, perClient))
        }
        return .allow(delay: delay)
    }

    /// Settles one reservation of each of `accounts` and of `client` with the attempt's outcome.
    public mutating func settle(client: String?, accounts keys: [String], outcome: Outcome, now: Date) {
        for key in keys {
            var streak = Self.current(accounts[key], perAccount, now)
            streak.pending = max(0, streak.pending - 1)
            switch outcome {
            case .failure: Self.fail(&streak, perAccount, now)
            case .success: streak = Streak(pending: streak.pending)
            case .undecided: break
            }
            Self.store(&accounts, key, streak, limits: perAccount, now: now, cap: maxTrackedKeys)
        }
        if let client {
            var streak = Self.current(clients[client], perClient, now)
            streak.pending = max(0, streak.pending - 1)
            if outcome == .failure { Self.fail(&streak, perClient, now) }
            Self.store(&clients, client, streak, limits: perClient, now: now, cap: maxTrackedKeys)
        }
    }

    // MARK: Streaks

    /// The streak as of `now`: a served lockout or a quiet streak starts afresh; attempts in flight stay.
    private static func current(_ streak: Streak?, _ limits: Limits, _ now: Date) -> Streak {
        guard var streak else { return Streak() }
        if let until = streak.lockedUntil {
            if now >= until { streak = Streak(pending: streak.pending) }
        } else if let last = streak.lastFailure, now >= last + limits.forgetAfter.timeInterval {
            streak = Streak(pending: streak.pending)
        }
        return streak
    }

    private static func lockRemaining(_ streak: Streak, _ now: Date) -> Duration? {
        guard let until = streak.lockedUntil, now < until else { return nil }
        // Bounded before the conversion: a clock that jumps must not make a Double too large for Int64.
        return .milliseconds(Int64((min(until.timeIntervalSince(now), 366 * 86_400) * 1000).rounded(.up)))
    }

    private static func delay(_ streak: Streak, _ limits: Limits) -> Duration {
        guard streak.failures >= limits.slowDownAfter else { return .zero }
        let steps = min(streak.failures - limits.slowDownAfter + 1, 1000)
        return min(limits.maxDelay, limits.delayStep * steps)
    }

    private static func fail(_ streak: inout Streak, _ limits: Limits, _ now: Date) {
        streak.failures = min(streak.failures + 1, Int(Int32.max))
        streak.lastFailure = now
        if streak.failures >= limits.lockoutAfter, streak.lockedUntil == nil {
            streak.lockedUntil = now + limits.lockoutDuration.timeInterval
        }
    }

    private static func store(_ table: inout [String: Streak], _ key: String, _ streak: Streak, limits: Limits, now: Date, cap: Int) {
        if streak.isSpent {
            table[key] = nil
            return
        }
        if table[key] == nil, table.count >= cap { makeRoom(&table, limits: limits, now: now, cap: cap) }
        table[key] = streak
    }

    private static func makeRoom(_ table: inout [String: Streak], limits: Limits, now: Date, cap: Int) {
        table = table.filter { !current($0.value, limits, now).isSpent }
        guard table.count >= cap else { return }
        // Evict a tenth at once so that a flood of new keys costs one sort per many insertions; streaks with
        // attempts in flight go last, so that their reservations are not lost while anything else is left.
        let evict = max(1, table.count - cap + 1, cap / 10)
        let order = table.sorted { a, b in
            if (a.value.pending == 0) != (b.value.pending == 0) { return a.value.pending == 0 }
            return (a.value.lastFailure ?? .distantPast) < (b.value.lastFailure ?? .distantPast)
        }
        for (key, _) in order.prefix(evict) { table[key] = nil }
    }
}

extension Duration {
    var timeInterval: TimeInterval {
        let (seconds, attoseconds) = components
        return TimeInterval(seconds) + TimeInterval(attoseconds) / 1e18
    }
}
