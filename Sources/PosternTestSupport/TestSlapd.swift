import Foundation

/// A real OpenLDAP server on loopback for tests, loaded with policies/demo-directory.ldif.
///
/// It runs scripts/slapd-instance.sh in a fresh temporary directory with two free ports and
/// dev certificates (made by certs/make-dev-certs.sh unless a directory with them is given).
/// `stop()` and `start()` stop and restart it on the same ports and data; the instance stops
/// and its directory is removed when the object goes away.
public final class TestSlapd: @unchecked Sendable {
    public enum Failure: Error, CustomStringConvertible {
        case command(String, status: Int32, output: String)
        public var description: String {
            switch self {
            case .command(let command, let status, let output):
                return "\(command) exited with \(status):\n\(output)"
            }
        }
    }

    /// The checkout this file belongs to.
    public static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // PosternTestSupport
        .deletingLastPathComponent()  // Sources
        .deletingLastPathComponent()

    public static let suffix = "dc=example,dc=edu"
    public static let peopleBase = "ou=people,dc=example,dc=edu"
    public static let groupsBase = "ou=groups,dc=example,dc=edu"

    public let directory: URL
    public let ldapPort: Int
    public let ldapsPort: Int
    /// Directory holding ca.pem, server.pem and server.key.
    public let certificateDirectory: String
    public let ldif: String
    public var ldapURI: String { "ldap://127.0.0.1:\(ldapPort)" }
    public var ldapsURI: String { "ldaps://127.0.0.1:\(ldapsPort)" }
    public var caFile: String { certificateDirectory + "/ca.pem" }
    /// Postern's service account in the demo LDIF.
    public let bindDN = "cn=postern,ou=services,dc=example,dc=edu"
    public let bindPassword = "postern-demo-pass"
    /// slapd's log (loglevel stats: one line per operation).
    public var logFile: String { directory.appendingPathComponent("slapd.log").path }

    private let lock = NSLock()
    private var running = false

    /// Starts a new instance; throws with the script's output (slapd's log included) if it cannot.
    public init(ldif: String? = nil, certificateDirectory: String? = nil) throws {
        let root = Self.repositoryRoot
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("postern-slapd-\(UUID().uuidString.prefix(8))", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.ldif = ldif ?? root.appendingPathComponent("policies/demo-directory.ldif").path
        do {
            if let certificateDirectory {
                self.certificateDirectory = certificateDirectory
            } else {
                let certs = directory.appendingPathComponent("certs").path
                try Self.makeDevCertificates(in: certs)
                self.certificateDirectory = certs
            }
        } catch {
            try? FileManager.default.removeItem(at: directory)
            throw error
        }
        // Another process may grab a port between our probe and slapd's bind: try new ones.
        var attempt = 0
        while true {
            attempt += 1
            let ldap = freeLoopbackPort()
            var ldaps = freeLoopbackPort()
            while ldaps == ldap { ldaps = freeLoopbackPort() }
            do {
                try Self.run(Self.script, ["start", directory.path, "\(ldap)", "\(ldaps)", self.ldif, self.certificateDirectory])
                ldapPort = ldap
                ldapsPort = ldaps
                running = true
                return
            } catch {
                let log = (try? String(contentsOf: directory.appendingPathComponent("slapd.log"), encoding: .utf8)) ?? ""
                guard attempt < 3, log.contains("Address already in use") else {
                    try? FileManager.default.removeItem(at: directory)
                    throw error
                }
            }
        }
    }

    deinit {
        try? Self.run(Self.script, ["stop", directory.path])
        try? FileManager.default.removeItem(at: directory)
    }

    /// Starts slapd again on the same ports and data.
    public func start() throws {
        try lock.withLock {
            guard !running else { return }
            try Self.run(Self.script, ["start", directory.path, "\(ldapPort)", "\(ldapsPort)", ldif, certificateDirectory])
            running = true
        }
    }

    /// Stops slapd (SIGTERM) and waits until it has exited.
    public func stop() throws {
        try lock.withLock {
            guard running else { return }
            try Self.run(Self.script, ["stop", directory.path])
            running = false
        }
    }

    /// slapd's log so far.
    public func log() -> String {
        (try? String(contentsOfFile: logFile, encoding: .utf8)) ?? ""
    }

    /// How many simple binds slapd has received for `dn` (compared without case).
    public func bindCount(dn: String) -> Int {
        let needle = "bind dn=\"\(dn.lowercased())\" method="
        return log().split(separator: "\n").filter { $0.lowercased().contains(needle) }.count
    }

    /// Runs certs/make-dev-certs.sh: a dev CA (ca.pem) and certificates signed by it in `directory`.
    public static func makeDevCertificates(in directory: String) throws {
        try run(repositoryRoot.appendingPathComponent("certs/make-dev-certs.sh").path, [directory])
    }

    private static var script: String {
        repositoryRoot.appendingPathComponent("scripts/slapd-instance.sh").path
    }

    /// Runs a script with bash and waits for it; its output (stdout and stderr) goes to a file
    /// that is returned in the error when it fails. (Foundation's Process can miss the exit of a
    /// short-lived child on Linux, so this uses posix_spawn and waitpid.)
    private static func run(_ executable: String, _ arguments: [String]) throws {
        let outputFile = FileManager.default.temporaryDirectory
            .appendingPathComponent("postern-slapd-run-\(UUID().uuidString.prefix(8)).log").path
        defer { unlink(outputFile) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, outputFile, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        let argv = (["/bin/bash", executable] + arguments).map { strdup($0) } + [nil]
        defer { for pointer in argv { free(pointer) } }
        // The child must not inherit this thread's blocked signals (slapd would never see
        // SIGTERM) or an ignored SIGPIPE.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigmask(&attributes, &noSignals)
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        var pid = pid_t()
        let spawned = posix_spawn(&pid, "/bin/bash", &actions, &attributes, argv, environ)
        guard spawned == 0 else {
            throw Failure.command(executable, status: -1, output: "posix_spawn failed: \(String(cString: strerror(spawned)))")
        }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) == -1 {
            guard errno == EINTR else { break }
        }
        // WIFEXITED and WEXITSTATUS are macros Swift cannot import.
        let exited = status & 0x7f == 0
        let code = exited ? (status >> 8) & 0xff : -1
        guard code == 0 else {
            let output = (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? ""
            throw Failure.command(([executable] + arguments).joined(separator: " "), status: code, output: output)
        }
    }
}
