import CLDAP
import Foundation
import Logging
import NIOCore
import NIOPosix

/// Checks SMTP AUTH credentials against the university directory and returns who the user is.
///
/// The flow: search the user's entry as the service account with the login escaped per RFC 4515;
/// exactly one entry must match; bind as that entry with the password on a separate connection;
/// read the user's addresses and groups. libldap blocks, so every call runs on the thread pool.
///
/// Unknown and ambiguous logins cost the same as a wrong password: the directory still gets a
/// bind, with the given password, for a DN that does not exist (`uid=postern-absent-<random>,
/// <searchBase>`), so the reply comes after one round trip to the server either way.
///
/// It has no throttle of its own: the gateway and the registration page ask it through `DirectoryLogin`.
///
/// At most `maxConnections` service connections plus as many credential-check connections are
/// open; give it a thread pool with at least twice `maxConnections` threads, since time spent
/// waiting for a thread counts against the operation's time limit. Creating a `Directory` sets
/// SIGPIPE to be ignored for the process (libldap writes with plain send()).
public final class Directory: Sendable {
    private let configuration: DirectoryConfiguration
    private let threadPool: NIOThreadPool
    private let logger: Logger
    /// Connections bound as the service account; used for searches only.
    private let searchPool: LDAPConnectionPool
    /// Connections used for credential binds only; their bound identity does not matter.
    private let bindPool: LDAPConnectionPool
    private let absentUserDN: String
    private let userAttributes: [String]
    private let requiredGroups: [GroupReference]
    private let binds = Counter()
    private let opener: ConnectionOpener

    public init(configuration: DirectoryConfiguration, threadPool: NIOThreadPool, logger: Logger) throws {
        try configuration.validate()
        // libldap writes to sockets with plain send(); a server that has gone away must not
        // kill the process with SIGPIPE. Servers ignore it anyway (NIO does not set it for us).
        signal(SIGPIPE, SIG_IGN)
        let password = Array(try configuration.bindPassword.resolve().utf8)
        let settings = LDAPConnectionSettings(
            servers: configuration.uris.compactMap(LDAPServerURI.init),
            caFile: configuration.caFile,
            connectTimeout: configuration.connectTimeout,
            operationTimeout: configuration.operationTimeout
        )
        let opener = ConnectionOpener(settings: settings, bindDN: configuration.bindDN, password: password, threadPool: threadPool, logger: logger)
        let factory: LDAPConnectionPool.Factory = { try await opener.open() }
        self.configuration = configuration
        self.threadPool = threadPool
        self.logger = logger
        self.opener = opener
        self.searchPool = LDAPConnectionPool(limit: configuration.maxConnections, factory: factory)
        self.bindPool = LDAPConnectionPool(limit: configuration.maxConnections, factory: factory)
        let random = (0..<8).map { _ in String(UInt8.random(in: 0...255), radix: 16) }.joined()
        self.absentUserDN = "uid=postern-absent-\(random),\(configuration.searchBase)"
        var attributes = configuration.addressAttributes
        if case .attribute(let name) = configuration.groupLookup { attributes.append(name) }
        self.userAttributes = attributes.isEmpty ? ["1.1"] : attributes
        self.requiredGroups = configuration.requiredGroups.map { GroupReference($0, base: configuration.groupBase) }
    }

    /// How many credential binds (user DNs and the stand-in for unknown users) were sent so far.
    public var credentialBindCount: Int { binds.value }

    /// Checks the password and applies `requiredGroups`: SMTP AUTH's question without the throttle
    /// (`DirectoryLogin` adds it).
    public func authenticate(login: String, password: String) async -> DirectoryResult {
        switch await checkPassword(login: login, password: password, beforeBind: { _ in true }) {
        case .verified(let identity):
            guard meetsRequiredGroups(identity) else { return .notAuthorized }
            return .success(identity)
        case .invalidCredentials, .refusedBeforeBind:
            return .invalidCredentials
        case .unavailable(let reason):
            return .unavailable(reason)
        }
    }

    /// Whether the identity is in one of `requiredGroups` (always, when there are none).
    public func meetsRequiredGroups(_ identity: DirectoryIdentity) -> Bool {
        guard !requiredGroups.isEmpty else { return true }
        let memberOf = identity.groups
        guard requiredGroups.contains(where: { required in memberOf.contains { required.matches($0) } }) else {
            logger.info("authenticated user is in none of the required groups", metadata: ["dn": "\(identity.dn)"])
            return false
        }
        return true
    }

    /// Searches the login's entry and binds as it with the password; reads its addresses and groups when the
    /// password is right. No group requirement is applied: callers decide who may pass.
    ///
    /// `beforeBind` is called with the entry's DN once the search found exactly one, before the bind; when it
    /// answers false nothing is bound (the throttle keys on the DN there, whatever spelling found the entry).
    public func checkPassword(login: String, password: String, beforeBind: @Sendable (String) async -> Bool) async -> PasswordCheck {
        // An empty password would be an RFC 4513 unauthenticated bind, which "succeeds".
        guard !login.isEmpty, !password.isEmpty else { return .invalidCredentials }
        guard login.utf8.count <= 256, password.utf8.count <= 1024 else { return .invalidCredentials }
        let secret = Array(password.utf8)

        let entry: LDAPEntry
        switch await findEntry(login: login) {
        case .unavailable(let reason):
            return .unavailable(reason)
        case .none:
            logger.debug("no single directory entry for login", metadata: ["login": "\(login.debugDescription)"])
            // Spend a bind anyway, so that unknown logins cannot be told from wrong passwords.
            if case .unavailable(let reason) = await credentialBind(dn: absentUserDN, password: secret) {
                return .unavailable(reason)
            }
            return .invalidCredentials
        case .one(let found):
            entry = found
        }

        guard await beforeBind(entry.dn) else { return .refusedBeforeBind }

        switch await credentialBind(dn: entry.dn, password: secret) {
        case .invalidCredentials:
            logger.debug("wrong password", metadata: ["dn": "\(entry.dn)"])
            return .invalidCredentials
        case .unavailable(let reason):
            return .unavailable(reason)
        case .success, .notAuthorized:
            break
        }
        switch await identity(of: entry, login: login) {
        case .success(let identity): return .verified(identity)
        case .failure(let failure): return .unavailable(failure.reason)
        }
    }

    /// Who `login` is, without a password: the entry's addresses and groups, and whether the required groups
    /// admit it. For `postern explain`, which answers what the gateway would do after a right password; it
    /// binds nothing, so it tells nothing about passwords and counts against no throttle.
    public func lookup(login: String) async -> DirectoryLookup {
        guard !login.isEmpty, login.utf8.count <= 256 else { return .notFound }
        switch await findEntry(login: login) {
        case .unavailable(let reason): return .unavailable(reason)
        case .none: return .notFound
        case .one(let entry):
            switch await identity(of: entry, login: login) {
            case .success(let identity): return .found(identity, meetsRequiredGroups: meetsRequiredGroups(identity))
            case .failure(let failure): return .unavailable(failure.reason)
            }
        }
    }

    private enum FoundEntry {
        case one(LDAPEntry)
        /// None, several, or a truncated answer: no single entry.
        case none
        case unavailable(String)
    }

    private struct Unavailable: Error { var reason: String }

    /// The login's entry, searched as the service account with the login escaped per RFC 4515.
    private func findEntry(login: String) async -> FoundEntry {
        let filter = LDAPFilter.fill(configuration.userFilter, with: login)
        let found: LDAPSearchResult
        do {
            let base = configuration.searchBase
            let attributes = userAttributes
            found = try await withConnection(from: searchPool) {
                try $0.search(base: base, filter: filter, attributes: attributes, sizeLimit: 2)
            }
        } catch {
            return .unavailable(unavailableReason("user search failed", error))
        }
        guard found.entries.count == 1, !found.truncated, let entry = found.entries.first, !entry.dn.isEmpty else { return .none }
        return .one(entry)
    }

    /// The entry's addresses (duplicates removed, in attribute order) and groups.
    private func identity(of entry: LDAPEntry, login: String) async -> Result<DirectoryIdentity, Unavailable> {
        var addresses: [String] = []
        var seen = Set<String>()
        for attribute in configuration.addressAttributes {
            for address in entry.attributes[attribute] ?? [] where seen.insert(address.lowercased()).inserted {
                addresses.append(address)
            }
        }

        let groups: [String]
        switch configuration.groupLookup {
        case .none:
            groups = []
        case .attribute(let name):
            groups = entry.attributes[name] ?? []
        case .search(let base, let template):
            let groupFilter = LDAPFilter.fill(template, with: entry.dn)
            do {
                groups = try await withConnection(from: searchPool) {
                    try $0.search(base: base, filter: groupFilter, attributes: ["1.1"], sizeLimit: 0).entries.map(\.dn)
                }
            } catch {
                return .failure(Unavailable(reason: unavailableReason("group search failed", error)))
            }
        }
        // The login as the directory matched it, so that policy (service accounts, the audit) sees one spelling.
        return .success(DirectoryIdentity(login: LoginName.normalized(login), dn: entry.dn, addresses: addresses, groups: groups))
    }

    /// Closes the connections; later calls to `authenticate` return `.unavailable`.
    public func shutdown() async {
        await searchPool.shutdown()
        await bindPool.shutdown()
    }

    /// `.success` (password accepted), `.invalidCredentials` or `.unavailable`.
    private func credentialBind(dn: String, password: [UInt8]) async -> DirectoryResult {
        do {
            let outcome = try await withConnection(from: bindPool) { [binds] connection in
                binds.increment()
                return try connection.bind(dn: dn, password: password)
            }
            switch outcome {
            case .accepted:
                return .success(DirectoryIdentity(login: "", dn: dn, addresses: [], groups: []))
            case .rejected(let code) where Self.serverTroubleCodes.contains(code):
                return unavailable("credential bind failed", LDAPFailure(code: code, message: LDAPConnection.errorString(code)))
            case .rejected:
                return .invalidCredentials
            }
        } catch {
            return unavailable("credential bind failed", error)
        }
    }

    /// Bind results that say nothing about the password: the server could not decide.
    private static let serverTroubleCodes: Set<Int32> = [
        LDAP_OPERATIONS_ERROR, LDAP_PROTOCOL_ERROR, LDAP_BUSY, LDAP_UNAVAILABLE, LDAP_OTHER,
        LDAP_ADMINLIMIT_EXCEEDED, LDAP_TIMELIMIT_EXCEEDED, LDAP_LOOP_DETECT,
    ]

    /// Runs `body` on the thread pool with a pooled connection. A connection found dead on reuse
    /// (the server restarted or dropped it while idle) is replaced and the call repeated, since the
    /// request never reached a server; a fresh connection that fails ends the attempt.
    private func withConnection<T: Sendable>(
        from pool: LDAPConnectionPool,
        _ body: @escaping @Sendable (LDAPConnection) throws -> T
    ) async throws -> T {
        var attempts = 0
        while true {
            attempts += 1
            let lease = try await pool.lease()
            do {
                let value = try await opener.guarded(lease.connection, limit: configuration.operationTimeout + .seconds(1)) {
                    try body(lease.connection)
                }
                await pool.giveBack(lease.connection)
                return value
            } catch let failure as LDAPFailure {
                if failure.breaksConnection {
                    await pool.discard(lease.connection)
                } else {
                    await pool.giveBack(lease.connection)
                }
                if failure.serverWasDown, lease.reused, attempts <= configuration.maxConnections {
                    logger.debug("pooled directory connection was dead; retrying", metadata: ["uri": "\(lease.connection.uri)"])
                    continue
                }
                throw failure
            } catch {
                await pool.discard(lease.connection)
                throw error
            }
        }
    }

    private func unavailable(_ what: String, _ error: any Error) -> DirectoryResult {
        .unavailable(unavailableReason(what, error))
    }

    private func unavailableReason(_ what: String, _ error: any Error) -> String {
        let reason: String
        switch error {
        case let failure as LDAPFailure: reason = "\(what): \(failure)"
        case is LDAPConnectionPool.ShutDown: reason = "\(what): the directory client is shut down"
        default: reason = "\(what): \(error)"
        }
        logger.warning("directory unavailable", metadata: ["reason": "\(reason)"])
        return reason
    }
}

/// Opens connections: each server in order until one gives a secured connection bound as the
/// service account. Every blocking step runs on the thread pool under a watchdog that cuts the
/// socket if libldap's own timeouts do not end the wait.
struct ConnectionOpener: Sendable {
    var settings: LDAPConnectionSettings
    var bindDN: String
    var password: [UInt8]
    var threadPool: NIOThreadPool
    var logger: Logger

    func open() async throws -> LDAPConnection {
        var failures: [String] = []
        var lastCode: Int32 = LDAP_SERVER_DOWN
        for server in settings.servers {
            let connection: LDAPConnection
            do {
                connection = try LDAPConnection.prepare(server: server, settings: settings)
            } catch let failure as LDAPFailure {
                failures.append("\(server.uri): \(failure.message)")
                continue
            }
            do {
                try await guarded(connection, limit: settings.connectTimeout + settings.operationTimeout + .seconds(1)) {
                    try connection.secure()
                }
                let outcome = try await guarded(connection, limit: settings.operationTimeout + .seconds(1)) { [bindDN, password] in
                    try connection.bind(dn: bindDN, password: password)
                }
                switch outcome {
                case .accepted:
                    return connection
                case .rejected(let code):
                    connection.close()
                    // A refused service account is a configuration error, the same on every replica.
                    throw LDAPFailure(code: code, message: "\(server.uri): the service account \(bindDN) was refused: \(LDAPConnection.errorString(code))")
                }
            } catch let failure as LDAPFailure where failure.breaksConnection {
                connection.close()
                logger.debug("directory server unusable", metadata: ["uri": "\(server.uri)", "reason": "\(failure.message)"])
                failures.append("\(server.uri): \(failure.message)")
                lastCode = failure.code
            }
        }
        throw LDAPFailure(code: lastCode, message: failures.joined(separator: "; "))
    }

    /// Runs a blocking call on the thread pool; if it has not returned after `limit`, the
    /// connection's socket is shut down so that it does, and the call counts as timed out.
    func guarded<T: Sendable>(
        _ connection: LDAPConnection,
        limit: Duration,
        _ body: @escaping @Sendable () throws -> T
    ) async throws -> T {
        let watchdog = Task {
            try await Task.sleep(for: limit)
            connection.interrupt()
        }
        defer { watchdog.cancel() }
        do {
            return try await threadPool.runIfActive(body)
        } catch let failure as LDAPFailure where connection.wasInterrupted {
            throw LDAPFailure(code: LDAP_TIMEOUT, message: "no answer from \(connection.uri) within \(limit) (\(failure.message))")
        }
    }
}

/// A thread-safe count.
final class Counter: @unchecked Sendable {
    private let lock = NSLock()
    private var count = 0

    var value: Int { lock.withLock { count } }
    func increment() { lock.withLock { count += 1 } }
}
