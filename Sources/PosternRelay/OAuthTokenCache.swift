import Foundation

/// An access token and how long the token endpoint said it lasts.
struct AccessToken: Sendable, Hashable, CustomStringConvertible {
    var value: String
    var fetchedAt: Date
    var lifetime: TimeInterval

    /// When the cache stops handing it out: a tenth of its life before it expires, at most five minutes
    /// before (Entra ID's tokens live about an hour), so that a session that authenticates with it never
    /// presents an expired one.
    var refreshAt: Date { fetchedAt.addingTimeInterval(lifetime - min(300, lifetime / 10)) }

    var description: String { "access token fetched at \(fetchedAt), valid \(Int(lifetime)) s (value not shown)" }
}

/// One upstream's access token, fetched when first needed and again before it expires; every connection of the
/// upstream shares it. Connections that need a token while one is being fetched wait for that fetch instead of
/// starting their own. A token the upstream refused is replaced once (`token(replacing:)`): several sessions
/// that were refused the same token cause one fetch, not one each.
///
/// A fetch that fails is not cached: the next connection tries again, and the upstream's backoff
/// (`UpstreamPool`) spaces those tries out while the token endpoint is down.
actor OAuthTokenCache {
    typealias Fetch = @Sendable () async -> Result<(token: String, lifetime: TimeInterval), UpstreamConnectionError>

    private let fetch: Fetch
    private let now: @Sendable () -> Date
    private var current: AccessToken?
    private var inFlight: Task<Result<AccessToken, UpstreamConnectionError>, Never>?
    /// Tokens fetched so far (for tests and the probe).
    private(set) var fetches = 0

    init(now: @escaping @Sendable () -> Date = { Date() }, fetch: @escaping Fetch) {
        self.fetch = fetch
        self.now = now
    }

    /// A token to authenticate with: the cached one while it is not due for refresh and is not `replacing` (a token
    /// the upstream refused), else a new one. `fresh` when it was fetched for this call (or by a fetch it joined).
    func token(replacing rejected: String? = nil) async -> Result<(token: String, fresh: Bool), UpstreamConnectionError> {
        if let current, current.value != rejected, now() < current.refreshAt {
            return .success((current.value, false))
        }
        if let rejected, current?.value == rejected { current = nil }
        let task: Task<Result<AccessToken, UpstreamConnectionError>, Never>
        if let inFlight {
            task = inFlight
        } else {
            let fetch = self.fetch
            let now = self.now
            task = Task {
                let started = now()
                return await fetch().map { AccessToken(value: $0.token, fetchedAt: started, lifetime: $0.lifetime) }
            }
            inFlight = task
            fetches += 1
        }
        let result = await task.value
        if inFlight == task {
            inFlight = nil
            if case .success(let token) = result { current = token }
        }
        return result.map { ($0.value, true) }
    }

    /// Forgets the cached token (the configuration changed, or a test wants the next call to fetch).
    func clear() {
        current = nil
    }
}
