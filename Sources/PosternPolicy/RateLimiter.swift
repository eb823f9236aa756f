import Foundation
import NIOConcurrencyHelpers

/// Message rate limits per sender identity (a registered device's id, an authenticated login), shared by
/// every session of the gateway.
///
/// A token bucket per key: `count` messages at once, refilled at `count` per `seconds`. A bucket that has
/// refilled completely says nothing a missing one would not, so it is dropped when the table is full:
/// memory stays bounded by `maxKeys` however many identities send. Time comes in with each call.
public final class RateLimiter: Sendable {
    struct Bucket {
        var tokens: Double
        var updated: Date
    }

    /// The most buckets kept; past it, full and then least recently used buckets are dropped.
    public let maxKeys: Int
    private let buckets = NIOLockedValueBox<[String: Bucket]>([:])

    public init(maxKeys: Int = 100_000) {
        self.maxKeys = max(1, maxKeys)
    }

    /// Takes one message from `key`'s allowance; false when the limit is reached (nothing is taken then).
    public func admit(_ key: String, limit: RateLimit, at now: Date) -> Bool {
        let capacity = Double(limit.count)
        let perSecond = capacity / Double(limit.seconds)
        return buckets.withLockedValue { buckets in
            var bucket = buckets[key] ?? Bucket(tokens: capacity, updated: now)
            let elapsed = max(0, now.timeIntervalSince(bucket.updated))
            bucket.tokens = min(capacity, bucket.tokens + elapsed * perSecond)
            bucket.updated = max(bucket.updated, now)
            guard bucket.tokens >= 1 else {
                buckets[key] = bucket
                return false
            }
            bucket.tokens -= 1
            if buckets[key] == nil && buckets.count >= maxKeys { Self.evict(&buckets, keep: max(0, maxKeys * 9 / 10 - 1), now: now) }
            buckets[key] = bucket
            return true
        }
    }

    /// Buckets held now (for tests and metrics).
    public var count: Int { buckets.withLockedValue { $0.count } }

    /// Drops buckets that have certainly refilled (idle for a day: no supported unit is longer), then the
    /// least recently used, until at most `keep` remain. A tenth of the table goes at once, so a flood of new
    /// keys costs one sort per `maxKeys / 10` of them. A dropped bucket starts full again: under such a flood a
    /// limited identity may get a fresh allowance, which is the price of bounded memory.
    private static func evict(_ buckets: inout [String: Bucket], keep: Int, now: Date) {
        buckets = buckets.filter { now.timeIntervalSince($0.value.updated) < 86_400 }
        guard buckets.count > keep else { return }
        let oldest = buckets.sorted { $0.value.updated < $1.value.updated }.prefix(buckets.count - keep)
        for (key, _) in oldest { buckets[key] = nil }
    }
}
