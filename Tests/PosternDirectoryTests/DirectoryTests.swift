import Foundation
import Logging
import NIOPosix
import PosternTestSupport
import XCTest

@testable import PosternDirectory

/// Tests against a real slapd loaded with policies/demo-directory.ldif.
final class DirectoryTests: XCTestCase {
    nonisolated(unsafe) static var slapd: TestSlapd!
    nonisolated(unsafe) static var threadPool: NIOThreadPool!
    nonisolated(unsafe) static var startFailure: (any Error)?

    static let alice = "uid=alice,ou=people,dc=example,dc=edu"
    static let submitters = "cn=mail-submitters,ou=groups,dc=example,dc=edu"

    override class func setUp() {
        super.setUp()
        do {
            slapd = try TestSlapd()
        } catch {
            startFailure = error
        }
        threadPool = NIOThreadPool(numberOfThreads: 4)
        threadPool.start()
    }

    override class func tearDown() {
        try? threadPool.syncShutdownGracefully()
        slapd = nil
        super.tearDown()
    }

    override func setUpWithError() throws {
        // Every test fails loudly, with slapd's log, when the directory could not be started.
        if let failure = Self.startFailure { throw failure }
    }

    private var slapd: TestSlapd { Self.slapd }

    private func configuration(
        uris: [String]? = nil,
        groupLookup: GroupLookup = .attribute("memberOf"),
        requiredGroups: [String] = [],
        groupBase: String? = TestSlapd.groupsBase,
        connectTimeout: Duration = .seconds(2),
        operationTimeout: Duration = .seconds(3),
        maxConnections: Int = 2,
        slapd: TestSlapd? = nil
    ) -> DirectoryConfiguration {
        let server = slapd ?? self.slapd
        setenv("POSTERN_TEST_LDAP_PASSWORD", server.bindPassword, 1)
        return DirectoryConfiguration(
            uris: uris ?? [server.ldapsURI],
            caFile: server.caFile,
            bindDN: server.bindDN,
            bindPassword: .environment("POSTERN_TEST_LDAP_PASSWORD"),
            searchBase: TestSlapd.peopleBase,
            groupLookup: groupLookup,
            requiredGroups: requiredGroups,
            groupBase: groupBase,
            connectTimeout: connectTimeout,
            operationTimeout: operationTimeout,
            maxConnections: maxConnections)
    }

    private func makeDirectory(_ configuration: DirectoryConfiguration) throws -> Directory {
        var logger = Logger(label: "test.directory")
        logger.logLevel = .critical
        return try Directory(configuration: configuration, threadPool: Self.threadPool, logger: logger)
    }

    private func identity(_ result: DirectoryResult, file: StaticString = #filePath, line: UInt = #line) -> DirectoryIdentity? {
        guard case .success(let identity) = result else {
            XCTFail("expected success, got \(result)", file: file, line: line)
            return nil
        }
        return identity
    }

    private func assertSuccess(_ result: DirectoryResult, file: StaticString = #filePath, line: UInt = #line) {
        _ = identity(result, file: file, line: line)
    }

    private func assertInvalid(_ result: DirectoryResult, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(result, .invalidCredentials, file: file, line: line)
    }

    private func assertUnavailable(_ result: DirectoryResult, file: StaticString = #filePath, line: UInt = #line) {
        guard case .unavailable = result else {
            return XCTFail("expected unavailable, got \(result)", file: file, line: line)
        }
    }

    // MARK: - Credentials

    func testRightPasswordOverLDAPSGivesIdentityWithAliasAndGroups() async throws {
        let directory = try makeDirectory(configuration())
        let result = await directory.authenticate(login: "alice", password: "alice-demo-pass")
        await directory.shutdown()
        let identity = try XCTUnwrap(identity(result))
        XCTAssertEqual(identity.login, "alice")
        XCTAssertEqual(identity.dn.lowercased(), Self.alice)
        XCTAssertEqual(identity.addresses, ["alice@example.edu", "a.smith@example.edu"])
        XCTAssertEqual(Set(identity.groups.map { $0.lowercased() }), [Self.submitters, "cn=staff,ou=groups,dc=example,dc=edu", "cn=postern-admins,ou=groups,dc=example,dc=edu"])
    }

    func testRightPasswordOverLDAPWithStartTLS() async throws {
        let directory = try makeDirectory(configuration(uris: [slapd.ldapURI]))
        let result = await directory.authenticate(login: "bob", password: "bob-demo-pass")
        await directory.shutdown()
        XCTAssertEqual(identity(result)?.addresses, ["bob@example.edu"])
        // The service account's bind came after StartTLS, i.e. over an encrypted connection.
        let log = slapd.log()
        XCTAssertTrue(log.contains("EXT oid=1.3.6.1.4.1.1466.20037"), "no StartTLS in slapd's log")
        XCTAssertTrue(log.contains("BIND dn=\"cn=postern,ou=services,dc=example,dc=edu\" mech=SIMPLE bind_ssf=0 ssf=256"))
    }

    func testWrongPasswordIsInvalid() async throws {
        let directory = try makeDirectory(configuration())
        let result = await directory.authenticate(login: "alice", password: "not-alice-pass")
        await directory.shutdown()
        XCTAssertEqual(result, .invalidCredentials)
    }

    func testUnknownUserIsInvalidAfterAStandInBind() async throws {
        let directory = try makeDirectory(configuration())
        let result = await directory.authenticate(login: "nobody-here", password: "whatever")
        XCTAssertEqual(result, .invalidCredentials)
        XCTAssertEqual(directory.credentialBindCount, 1, "an unknown user must cost a bind like a wrong password")
        await directory.shutdown()
        XCTAssertTrue(slapd.log().contains("BIND dn=\"uid=postern-absent-"), "no stand-in bind reached slapd")
    }

    func testAmbiguousLoginNeverAuthenticates() async throws {
        let directory = try makeDirectory(configuration())
        let result = await directory.authenticate(login: "twin", password: "twin-demo-pass")
        await directory.shutdown()
        XCTAssertEqual(result, .invalidCredentials)
    }

    func testFilterInjectionAndOddLoginsNeverAuthenticate() async throws {
        let directory = try makeDirectory(configuration())
        // Unescaped, "*)(uid=alice" and "alic*" would each select alice's entry alone.
        for login in ["*", "x)(uid=*", "a\u{0}b", "*)(uid=alice", "alic*", "alice\u{0}", "alice\\", "(uid=alice)"] {
            let result = await directory.authenticate(login: login, password: "alice-demo-pass")
            XCTAssertEqual(result, .invalidCredentials, "login \(login.debugDescription)")
        }
        await directory.shutdown()
    }

    func testEmptyPasswordIsRefusedWithoutAnyBind() async throws {
        let directory = try makeDirectory(configuration())
        let aliceBinds = slapd.bindCount(dn: Self.alice)
        assertInvalid(await directory.authenticate(login: "alice", password: ""))
        assertInvalid(await directory.authenticate(login: "", password: "alice-demo-pass"))
        XCTAssertEqual(directory.credentialBindCount, 0)
        await directory.shutdown()
        XCTAssertEqual(slapd.bindCount(dn: Self.alice), aliceBinds)
    }

    // MARK: - Groups

    func testRequiredGroupRefusesNonMembersButOnlyWithTheRightPassword() async throws {
        let directory = try makeDirectory(configuration(requiredGroups: ["mail-submitters"]))
        let alice = await directory.authenticate(login: "alice", password: "alice-demo-pass")
        let webapp = await directory.authenticate(login: "webapp", password: "webapp-demo-pass")
        let bob = await directory.authenticate(login: "bob", password: "bob-demo-pass")
        let bobGuess = await directory.authenticate(login: "bob", password: "wrong")
        await directory.shutdown()
        XCTAssertNotNil(identity(alice))
        XCTAssertNotNil(identity(webapp))
        XCTAssertEqual(bob, .notAuthorized)
        XCTAssertEqual(bobGuess, .invalidCredentials)
    }

    // MARK: - Lookup without a password (`postern explain`)

    func testLookupReadsTheEntryAndTheGroupRequirementWithoutBindingAsTheUser() async throws {
        let directory = try makeDirectory(configuration(requiredGroups: ["mail-submitters"]))
        let aliceBinds = slapd.bindCount(dn: Self.alice)
        let alice = await directory.lookup(login: "Alice")
        let bob = await directory.lookup(login: "bob")
        let nobody = await directory.lookup(login: "nobody-here")
        let twin = await directory.lookup(login: "twin")
        let injected = await directory.lookup(login: "*)(uid=alice")
        XCTAssertEqual(directory.credentialBindCount, 0, "a lookup binds nothing")
        await directory.shutdown()
        XCTAssertEqual(slapd.bindCount(dn: Self.alice), aliceBinds)
        guard case .found(let identity, let admitted) = alice else { return XCTFail("alice: \(alice)") }
        XCTAssertEqual(identity.login, "alice")
        XCTAssertEqual(identity.addresses, ["alice@example.edu", "a.smith@example.edu"])
        XCTAssertTrue(admitted)
        guard case .found(let bobIdentity, let bobAdmitted) = bob else { return XCTFail("bob: \(bob)") }
        XCTAssertEqual(bobIdentity.addresses, ["bob@example.edu"])
        XCTAssertFalse(bobAdmitted, "bob is in none of the required groups")
        XCTAssertEqual(nobody, .notFound)
        XCTAssertEqual(twin, .notFound, "two entries are no single entry")
        XCTAssertEqual(injected, .notFound)
    }

    func testLookupAgainstAnUnreachableDirectoryIsUnavailable() async throws {
        let directory = try makeDirectory(configuration(uris: ["ldap://127.0.0.1:\(freeLoopbackPort())"], connectTimeout: .seconds(2)))
        let result = await directory.lookup(login: "alice")
        await directory.shutdown()
        guard case .unavailable = result else { return XCTFail("expected unavailable, got \(result)") }
    }

    func testGroupsFoundBySearchWhenThereIsNoMemberOf() async throws {
        let lookup = GroupLookup.search(base: TestSlapd.groupsBase, filter: "(&(objectClass=groupOfNames)(member=%s))")
        let directory = try makeDirectory(configuration(groupLookup: lookup, requiredGroups: [Self.submitters]))
        let alice = await directory.authenticate(login: "alice", password: "alice-demo-pass")
        let bob = await directory.authenticate(login: "bob", password: "bob-demo-pass")
        await directory.shutdown()
        XCTAssertEqual(Set(identity(alice)?.groups.map { $0.lowercased() } ?? []), [Self.submitters, "cn=staff,ou=groups,dc=example,dc=edu", "cn=postern-admins,ou=groups,dc=example,dc=edu"])
        XCTAssertEqual(bob, .notAuthorized)
    }

    // MARK: - Availability

    func testClosedPortIsUnavailableWithinTheConnectTimeout() async throws {
        let closed = freeLoopbackPort()
        let directory = try makeDirectory(configuration(uris: ["ldaps://127.0.0.1:\(closed)"], connectTimeout: .seconds(1)))
        let clock = ContinuousClock()
        let started = clock.now
        let result = await directory.authenticate(login: "alice", password: "alice-demo-pass")
        let took = clock.now - started
        await directory.shutdown()
        assertUnavailable(result)
        XCTAssertLessThan(took, .seconds(2))
    }

    func testSilentServerIsUnavailableAfterTheTimeouts() async throws {
        // A socket that is listening but never accepts: TCP connects, then nothing. On ldap:// the
        // StartTLS request is never answered (libldap's operation timeout); on ldaps:// the TLS
        // handshake never completes, which libldap does not time out: the watchdog must.
        let silent = try SilentListener()
        defer { silent.close() }
        for uri in ["ldap://127.0.0.1:\(silent.port)", "ldaps://127.0.0.1:\(silent.port)"] {
            let directory = try makeDirectory(configuration(
                uris: [uri], connectTimeout: .milliseconds(500), operationTimeout: .milliseconds(700)))
            let clock = ContinuousClock()
            let started = clock.now
            let result = await directory.authenticate(login: "alice", password: "alice-demo-pass")
            let took = clock.now - started
            await directory.shutdown()
            assertUnavailable(result)
            XCTAssertLessThan(took, .seconds(4), uri)
        }
    }

    func testLaterURIIsUsedWhenEarlierOnesCannotBeReached() async throws {
        let closed = freeLoopbackPort()
        let directory = try makeDirectory(configuration(uris: ["ldaps://127.0.0.1:\(closed)", slapd.ldapsURI]))
        let result = await directory.authenticate(login: "alice", password: "alice-demo-pass")
        await directory.shutdown()
        XCTAssertNotNil(identity(result))
    }

    func testUntrustedServerCertificateIsUnavailable() async throws {
        let otherCA = FileManager.default.temporaryDirectory.appendingPathComponent("postern-other-ca-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: otherCA) }
        try TestSlapd.makeDevCertificates(in: otherCA.path)
        for uri in [slapd.ldapsURI, slapd.ldapURI] {
            var configuration = configuration(uris: [uri])
            configuration.caFile = otherCA.appendingPathComponent("ca.pem").path
            let directory = try makeDirectory(configuration)
            let result = await directory.authenticate(login: "alice", password: "alice-demo-pass")
            await directory.shutdown()
            assertUnavailable(result)
        }
    }

    func testStoppedDirectoryIsUnavailableAndRecoversWhenBack() async throws {
        let own = try TestSlapd(certificateDirectory: slapd.certificateDirectory)
        let directory = try makeDirectory(configuration(uris: [own.ldapsURI, own.ldapURI], slapd: own))
        assertSuccess(await directory.authenticate(login: "alice", password: "alice-demo-pass"))

        try own.stop()
        assertUnavailable(await directory.authenticate(login: "alice", password: "alice-demo-pass"))
        assertUnavailable(await directory.authenticate(login: "alice", password: "wrong"))

        try own.start()
        assertSuccess(await directory.authenticate(login: "alice", password: "alice-demo-pass"))
        assertInvalid(await directory.authenticate(login: "alice", password: "wrong"))
        await directory.shutdown()
    }

    func testManyConcurrentChecksShareASmallPool() async throws {
        let directory = try makeDirectory(configuration(maxConnections: 2))
        let results = await withTaskGroup(of: DirectoryResult.self) { group in
            for index in 0..<24 {
                group.addTask {
                    index % 3 == 0
                        ? await directory.authenticate(login: "bob", password: "wrong")
                        : await directory.authenticate(login: "alice", password: "alice-demo-pass")
                }
            }
            return await group.reduce(into: [DirectoryResult]()) { $0.append($1) }
        }
        await directory.shutdown()
        XCTAssertEqual(results.filter { $0 == .invalidCredentials }.count, 8)
        XCTAssertEqual(results.filter { if case .success = $0 { return true } else { return false } }.count, 16)
    }

    func testShutDownDirectoryIsUnavailable() async throws {
        let directory = try makeDirectory(configuration())
        assertSuccess(await directory.authenticate(login: "alice", password: "alice-demo-pass"))
        await directory.shutdown()
        assertUnavailable(await directory.authenticate(login: "alice", password: "alice-demo-pass"))
    }

    // MARK: - Brute force

    private func login(_ directory: Directory, lockoutAfter: Int, slowDownAfter: Int = 100) -> DirectoryLogin {
        var logger = Logger(label: "test.login")
        logger.logLevel = .critical
        let account = AuthThrottle.Limits(slowDownAfter: slowDownAfter, delayStep: .milliseconds(10), maxDelay: .milliseconds(30),
                                          lockoutAfter: lockoutAfter, lockoutDuration: .seconds(600), forgetAfter: .seconds(600))
        return DirectoryLogin(directory: directory, throttle: AuthThrottle(perAccount: account, perClient: .client), logger: logger)
    }

    func testBruteForceLoopThroughThrottleCostsABoundedNumberOfBinds() async throws {
        let directory = try makeDirectory(configuration())
        let lockoutAfter = 5
        let door = login(directory, lockoutAfter: lockoutAfter, slowDownAfter: 2)
        let bindsBefore = slapd.bindCount(dn: Self.alice)
        var results: [LoginResult] = []
        for attempt in 0..<50 {
            results.append(await door.authenticateSubmitter(login: "alice", password: "guess-\(attempt)", client: "192.0.2.66"))
        }
        // Even the right password is refused during the lockout, without asking the directory.
        let right = await door.authenticateSubmitter(login: "alice", password: "alice-demo-pass", client: "192.0.2.67")
        guard case .throttled(let retryAfter) = right else { return XCTFail("right password during the lockout: \(right)") }
        XCTAssertGreaterThan(retryAfter, .seconds(590))
        await directory.shutdown()
        XCTAssertEqual(results.prefix(lockoutAfter).filter { $0 == .invalidCredentials }.count, lockoutAfter)
        XCTAssertTrue(results.dropFirst(lockoutAfter).allSatisfy { if case .throttled = $0 { return true } else { return false } }, "\(results)")
        XCTAssertEqual(directory.credentialBindCount, lockoutAfter)
        XCTAssertEqual(slapd.bindCount(dn: Self.alice) - bindsBefore, lockoutAfter,
                       "BINDs in slapd's log:\n" + slapd.log().split(separator: "\n").filter { $0.contains("BIND") }.joined(separator: "\n"))
    }

    /// Twenty wrong passwords at once, from twenty addresses and in every spelling slapd takes for alice: the
    /// reservation counts them before the directory answers, so slapd sees at most `lockoutAfter` binds.
    func testParallelGuessesInAnySpellingReachTheDirectoryAtMostLockoutAfterTimes() async throws {
        let directory = try makeDirectory(configuration(maxConnections: 4))
        let lockoutAfter = 6
        let door = login(directory, lockoutAfter: lockoutAfter)
        let bindsBefore = slapd.bindCount(dn: Self.alice)
        let spellings = ["alice", " alice", "alice ", "Alice ", "ALICE", "ａｌｉｃｅ", "alice\u{00A0}"]
        let results = await withTaskGroup(of: LoginResult.self) { group -> [LoginResult] in
            for n in 0..<20 {
                group.addTask { await door.authenticateSubmitter(login: spellings[n % spellings.count], password: "guess-\(n)", client: "10.9.0.\(n)") }
            }
            return await group.reduce(into: []) { $0.append($1) }
        }
        let right = await door.authenticateSubmitter(login: " Alice", password: "alice-demo-pass", client: "10.9.1.1")
        await directory.shutdown()
        XCTAssertEqual(results.filter { $0 == .invalidCredentials }.count, lockoutAfter, "\(results)")
        XCTAssertEqual(results.filter { if case .throttled = $0 { return true } else { return false } }.count, 20 - lockoutAfter, "\(results)")
        guard case .throttled = right else { return XCTFail("the right password during the lockout: \(right)") }
        XCTAssertEqual(slapd.bindCount(dn: Self.alice) - bindsBefore, lockoutAfter)
    }

    /// A right password that `authorize` turns away counts as a failure: a lockout starts at the same attempt
    /// whichever guess was right, so its timing does not reveal the password either.
    func testRightPasswordTurnedAwayCountsAsAFailure() async throws {
        let directory = try makeDirectory(configuration(requiredGroups: ["mail-submitters"]))
        let door = login(directory, lockoutAfter: 3)
        let first = await door.authenticateSubmitter(login: "bob", password: "wrong-1", client: "192.0.2.5")
        let second = await door.authenticateSubmitter(login: "bob", password: "bob-demo-pass", client: "192.0.2.5")
        let third = await door.authenticateSubmitter(login: "bob", password: "wrong-2", client: "192.0.2.5")
        let fourth = await door.authenticateSubmitter(login: "bob", password: "bob-demo-pass", client: "192.0.2.5")
        await directory.shutdown()
        XCTAssertEqual(first, .invalidCredentials)
        guard case .notAuthorized(let identity) = second else { return XCTFail("\(second)") }
        XCTAssertEqual(identity.dn, "uid=bob,ou=people,dc=example,dc=edu")
        XCTAssertEqual(third, .invalidCredentials)
        guard case .throttled = fourth else { return XCTFail("locked after three failures, one of them the right password: \(fourth)") }
    }

    // MARK: - Configuration

    func testConfigurationMistakesAreRejectedBeforeConnecting() throws {
        var bad = configuration(uris: ["ldapi:///var/run/slapd.sock"])
        XCTAssertThrowsError(try makeDirectory(bad))
        bad = configuration(uris: ["ldaps://"])
        XCTAssertThrowsError(try makeDirectory(bad))
        bad = configuration()
        bad.userFilter = "(uid=alice)"
        XCTAssertThrowsError(try makeDirectory(bad))
        bad = configuration()
        bad.bindPassword = .environment("POSTERN_TEST_UNSET_VARIABLE_\(UUID().uuidString.prefix(6))")
        XCTAssertThrowsError(try makeDirectory(bad))
        bad = configuration(groupLookup: .none, requiredGroups: ["mail-submitters"])
        XCTAssertThrowsError(try makeDirectory(bad))
    }

    func testSecretFromFileLosesItsTrailingLineBreak() throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("postern-secret-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: file) }
        try Data("postern-demo-pass\n".utf8).write(to: file)
        XCTAssertEqual(try SecretSource.file(file.path).resolve(), "postern-demo-pass")
        XCTAssertThrowsError(try SecretSource.file(file.path + ".missing").resolve())
    }

    func testServiceAccountPasswordFromFileWorks() async throws {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("postern-secret-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: file) }
        try Data("\(slapd.bindPassword)\n".utf8).write(to: file)
        var configuration = configuration()
        configuration.bindPassword = .file(file.path)
        let directory = try makeDirectory(configuration)
        assertSuccess(await directory.authenticate(login: "alice", password: "alice-demo-pass"))
        await directory.shutdown()

        try Data("wrong-service-password".utf8).write(to: file)
        configuration.bindPassword = .file(file.path)
        let misconfigured = try makeDirectory(configuration)
        assertUnavailable(await misconfigured.authenticate(login: "alice", password: "alice-demo-pass"))
        await misconfigured.shutdown()
    }
}

/// A TCP socket on 127.0.0.1 that listens but never accepts or answers.
final class SilentListener {
    let fd: Int32
    let port: Int

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        self.fd = fd
        guard fd >= 0 else { throw POSIXError(.EMFILE) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 8) == 0 else { throw POSIXError(.EADDRINUSE) }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
    }

    func close() { _ = Glibc.close(fd) }
}
