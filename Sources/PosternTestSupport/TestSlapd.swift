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
        let code: Int32
        do {
            code = waitForExit(try spawnProcess(["/bin/bash", executable] + arguments, output: outputFile))
        } catch {
            throw Failure.command(executable, status: -1, output: "\(error)")
        }
        guard code == 0 else {
            let output = (try? String(contentsOfFile: outputFile, encoding: .utf8)) ?? ""
            throw Failure.command(([executable] + arguments).joined(separator: " "), status: code, output: output)
        }
    }
}
