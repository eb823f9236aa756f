import NIOConcurrencyHelpers

/// Counts open connections per client address and in total, shared by all listeners.
public final class ConnectionLimiter: Sendable {
    private struct State {
        var perClient: [String: Int] = [:]
        var total = 0
    }

    private let state = NIOLockedValueBox(State())
    public let maxPerClient: Int
    public let maxTotal: Int

    public init(maxPerClient: Int, maxTotal: Int) {
        self.maxPerClient = maxPerClient
        self.maxTotal = maxTotal
    }

    /// Reserves a slot; false when the client or the gateway is at its limit.
    public func acquire(_ client: String) -> Bool {
        state.withLockedValue { state in
            let count = state.perClient[client, default: 0]
            guard count < maxPerClient, state.total < maxTotal else { return false }
            state.perClient[client] = count + 1
            state.total += 1
            return true
        }
    }

    public func release(_ client: String) {
        state.withLockedValue { state in
            guard let count = state.perClient[client] else { return }
            if count <= 1 { state.perClient[client] = nil } else { state.perClient[client] = count - 1 }
            state.total -= 1
        }
    }

    public var total: Int { state.withLockedValue { $0.total } }
}
