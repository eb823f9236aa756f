/// A bounded set of reusable LDAP connections. A connection is lent to one task at a time;
/// broken ones are discarded and their place taken by a new one when next needed.
actor LDAPConnectionPool {
    typealias Factory = @Sendable () async throws -> LDAPConnection

    struct Lease: Sendable {
        var connection: LDAPConnection
        /// The connection was used before, so it may have been closed by the server meanwhile.
        var reused: Bool
    }

    struct ShutDown: Error {}

    private let limit: Int
    private let factory: Factory
    private var idle: [LDAPConnection] = []
    /// Connections lent out, idle, or being opened.
    private var count = 0
    private enum Handover: Sendable {
        case connection(LDAPConnection)
        /// A slot was freed for the waiter: it opens its own connection.
        case slot
        case shutDown
    }
    private var waiters: [CheckedContinuation<Handover, Never>] = []
    private var isShutDown = false

    init(limit: Int, factory: @escaping Factory) {
        self.limit = limit
        self.factory = factory
    }

    func lease() async throws -> Lease {
        guard !isShutDown else { throw ShutDown() }
        if let connection = idle.popLast() { return Lease(connection: connection, reused: true) }
        if count < limit {
            count += 1
            return try await openInReservedSlot()
        }
        switch await withCheckedContinuation({ waiters.append($0) }) {
        case .connection(let connection):
            return Lease(connection: connection, reused: true)
        case .slot:
            guard !isShutDown else {
                count -= 1
                throw ShutDown()
            }
            return try await openInReservedSlot()
        case .shutDown:
            throw ShutDown()
        }
    }

    /// Opens a connection in a slot already counted; frees the slot if that fails.
    private func openInReservedSlot() async throws -> Lease {
        do {
            return Lease(connection: try await factory(), reused: false)
        } catch {
            releaseSlot()
            throw error
        }
    }

    /// A connection that works and is back in the state the pool hands out.
    func giveBack(_ connection: LDAPConnection) {
        if isShutDown {
            connection.close()
            releaseSlot()
        } else if !waiters.isEmpty {
            waiters.removeFirst().resume(returning: .connection(connection))
        } else {
            idle.append(connection)
        }
    }

    /// A connection that must not be used again.
    func discard(_ connection: LDAPConnection) {
        connection.close()
        releaseSlot()
    }

    private func releaseSlot() {
        if !waiters.isEmpty {
            // The slot passes straight to a waiter, which opens its own connection.
            waiters.removeFirst().resume(returning: .slot)
        } else {
            count -= 1
        }
    }

    /// Closes idle connections; lent ones are closed as they come back.
    func shutdown() {
        isShutDown = true
        for connection in idle { connection.close() }
        count -= idle.count
        idle.removeAll()
        let pending = waiters
        waiters.removeAll()
        for waiter in pending { waiter.resume(returning: .shutDown) }
    }
}
