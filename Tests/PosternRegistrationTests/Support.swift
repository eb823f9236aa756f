import Foundation
import Logging
import NIOPosix
import PosternCore
import PosternDirectory
import PosternGateway
import PosternPolicy
import PosternRegistration
import PosternTestSupport
import XCTest

enum Repo {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static var policies: URL { root.appendingPathComponent("policies") }

    static var posternBinary: URL {
        let besideTests = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
            .deletingLastPathComponent().appendingPathComponent("postern")
        if FileManager.default.isExecutableFile(atPath: besideTests.path) { return besideTests }
        return root.appendingPathComponent(".build/debug/postern")
    }

    static func temporaryDirectory(_ prefix: String) throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("\(prefix)-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    /// A copy of the shipped policy files (policy.yaml, departments.yaml, devices.d) to edit.
    static func copyPolicies(to directory: URL) throws {
        for name in [PolicyLoader.policyFile, PolicyLoader.departmentsFile, PolicyLoader.devicesDirectory] {
            try FileManager.default.copyItem(at: policies.appendingPathComponent(name), to: directory.appendingPathComponent(name))
        }
    }

    /// The device files under `directory`/devices.d, by path in it (`it/demo-scanner.yaml`), hidden files left out.
    static func deviceFiles(in directory: URL) throws -> [String: String] {
        let root = directory.appendingPathComponent(PolicyLoader.devicesDirectory)
        var files: [String: String] = [:]
        for department in try FileManager.default.contentsOfDirectory(atPath: root.path) where !department.hasPrefix(".") {
            for name in try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(department).path) where !name.hasPrefix(".") {
                files["\(department)/\(name)"] = try String(contentsOf: root.appendingPathComponent(department).appendingPathComponent(name), encoding: .utf8)
            }
        }
        return files
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Runs a program to completion (posix_spawn, off the cooperative pool), output and status.
func runProgram(_ arguments: [String]) async throws -> (status: Int32, output: String) {
    try await withCheckedThrowingContinuation { continuation in
        DispatchQueue.global().async {
            let output = FileManager.default.temporaryDirectory.appendingPathComponent("postern-run-\(UUID().uuidString)").path
            defer { unlink(output) }
            do {
                let pid = try spawnProcess(arguments, output: output)
                let status = waitForExit(pid)
                continuation.resume(returning: (status, (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""))
            } catch {
                continuation.resume(throwing: error)
            }
        }
    }
}

/// One HTTP response as curl saw it.
struct HTTPResult {
    var status: Int
    var headerLines: [String]
    var body: String

    func headers(_ name: String) -> [String] {
        headerLines.compactMap { line in
            guard let colon = line.firstIndex(of: ":"), line[..<colon].lowercased() == name.lowercased() else { return nil }
            return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
    }

    /// The first hidden CSRF field's value on the page.
    var csrf: String? {
        guard let r = body.range(of: #"name="csrf" value="[0-9a-f]+""#, options: .regularExpression) else { return nil }
        return String(body[r].dropFirst(#"name="csrf" value=""#.count).dropLast())
    }
}

/// A browser stand-in: curl with its own cookie jar, verifying the server against the dev CA.
final class WebClient: @unchecked Sendable {
    let base: String
    let caFile: String
    let directory: URL
    var jar: String { directory.appendingPathComponent("cookies.txt").path }

    init(base: String, caFile: String) throws {
        self.base = base
        self.caFile = caFile
        self.directory = try Repo.temporaryDirectory("postern-curl")
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    func get(_ path: String) async throws -> HTTPResult { try await request("GET", path, form: nil) }

    func post(_ path: String, _ form: [(String, String)]) async throws -> HTTPResult { try await request("POST", path, form: form) }

    func request(_ method: String, _ path: String, form: [(String, String)]?) async throws -> HTTPResult {
        let headers = directory.appendingPathComponent("headers-\(UUID().uuidString)").path
        let body = directory.appendingPathComponent("body-\(UUID().uuidString)").path
        defer {
            unlink(headers)
            unlink(body)
        }
        var arguments = ["/usr/bin/curl", "-sS", "--max-time", "20", "--cacert", caFile, "-c", jar, "-b", jar, "-D", headers, "-o", body,
                         "-w", "%{http_code}", "-X", method]
        for (key, value) in form ?? [] { arguments += ["--data-urlencode", "\(key)=\(value)"] }
        if method == "POST" && (form ?? []).isEmpty { arguments += ["--data", ""] }
        arguments.append(base + path)
        let (status, output) = try await runProgram(arguments)
        guard status == 0, let code = Int(output.suffix(3)) else { throw TestFailure("curl \(method) \(path) failed (\(status)): \(output)") }
        let headerText = (try? String(contentsOfFile: headers, encoding: .utf8)) ?? ""
        return HTTPResult(status: code, headerLines: headerText.components(separatedBy: "\r\n").filter { !$0.isEmpty },
                          body: (try? String(contentsOfFile: body, encoding: .utf8)) ?? "")
    }

    /// GET /login for the form's token, then POST the credentials.
    func login(_ user: String, _ password: String) async throws -> HTTPResult {
        let page = try await get("/login")
        guard let token = page.csrf else { throw TestFailure("login page without a CSRF token: \(page.body)") }
        return try await post("/login", [("csrf", token), ("login", user), ("password", password)])
    }

    /// A POST that the page answers with 303 (post/redirect/get), and the GET page it leads to.
    func postAndFollow(_ path: String, _ form: [(String, String)]) async throws -> (redirect: HTTPResult, page: HTTPResult) {
        let redirect = try await post(path, form)
        guard redirect.status == 303, let location = redirect.headers("Location").first else {
            throw TestFailure("POST \(path) answered \(redirect.status), not 303: \(redirect.body)")
        }
        return (redirect, try await get(location))
    }

    /// The session's CSRF token, from a page that needs the session.
    func sessionToken() async throws -> String {
        let page = try await get("/register")
        guard page.status == 200, let token = page.csrf else { throw TestFailure("no session page: \(page.status) \(page.body)") }
        return token
    }
}

/// slapd with the demo directory, a copy of the shipped policy, and the registration page in this process.
final class RegistrationFixture: @unchecked Sendable {
    let slapd: TestSlapd
    let directory: URL
    let threadPool: NIOThreadPool
    /// The page's event loops (in `postern serve`, the gateway's).
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let ldap: Directory
    /// The page's password checks and their throttle.
    let login: DirectoryLogin
    let metrics = GatewayMetrics()
    let desk: RegistrationDesk
    /// The gateway's outbox delivery target: where the page's notification mail lands.
    let outbox: OutboxTarget
    let server: RegistrationServer
    let task: Task<Void, Error>
    let port: Int
    var policyDirectory: URL { directory.appendingPathComponent("policies") }
    var auditFile: URL { directory.appendingPathComponent("audit.jsonl") }
    var base: String { "https://127.0.0.1:\(port)" }
    var caFile: String { slapd.caFile }

    static func registrationConfiguration(certificates: String, state: String, port: Int = 0) -> RegistrationConfiguration {
        var configuration = RegistrationConfiguration(
            host: "127.0.0.1", port: port,
            tls: TLSFiles(certificateChain: certificates + "/server.pem", privateKey: certificates + "/server.key"),
            adminGroups: ["postern-admins"],
            departmentGroups: ["it": ["dept-it"], "chem": ["cn=dept-chem,ou=groups,dc=example,dc=edu"]],
            campusRanges: [try! AddressRange.parse("127.0.0.0/8").get(), try! AddressRange.parse("10.0.0.0/8").get()],
            stateDirectory: state)
        configuration.groupBase = TestSlapd.groupsBase
        configuration.universityName = "University of Example & Co"
        configuration.helpURL = "https://it.example.edu/devices-help"
        configuration.contact = "postern-help@example.edu"
        configuration.notifyAdmins = ["postern-admins@example.edu", "postmaster@example.edu"]
        configuration.publicURL = "https://devices.example.edu/"
        return configuration
    }

    /// Lenient limits: tests that log in many times are not locked out by accident; `throttle` tightens them.
    static let lenient = AuthThrottle.Limits(slowDownAfter: 100, delayStep: .milliseconds(10), maxDelay: .milliseconds(50),
                                             lockoutAfter: 100, lockoutDuration: .seconds(600), forgetAfter: .seconds(600))

    init(now: @escaping @Sendable () -> Date = { Date() }, throttle: AuthThrottle.Limits = RegistrationFixture.lenient,
         revealNotAuthorized: Bool = false, ldif: String? = nil) async throws {
        slapd = try TestSlapd(ldif: ldif)
        directory = try Repo.temporaryDirectory("postern-web")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("policies"), withIntermediateDirectories: true)
        try Repo.copyPolicies(to: directory.appendingPathComponent("policies"))
        let passwordFile = directory.appendingPathComponent("ldap-password")
        try Data(slapd.bindPassword.utf8).write(to: passwordFile)
        var configuration = DirectoryConfiguration(uris: [slapd.ldapsURI], caFile: slapd.caFile, bindDN: slapd.bindDN,
                                                   bindPassword: .file(passwordFile.path), searchBase: TestSlapd.peopleBase)
        configuration.groupLookup = .attribute("memberOf")
        threadPool = NIOThreadPool(numberOfThreads: 8)
        threadPool.start()
        var logger = Logger(label: "postern-web-test")
        logger.logLevel = .notice
        ldap = try Directory(configuration: configuration, threadPool: threadPool, logger: logger)
        var client = throttle
        client.lockoutAfter *= 3
        login = DirectoryLogin(directory: ldap, throttle: AuthThrottle(perAccount: throttle, perClient: client), logger: logger)
        let audit = try AuditLog.make(output: directory.appendingPathComponent("audit.jsonl").path)
        let policies = try PolicyStore(directory: directory.appendingPathComponent("policies"), logger: logger)
        desk = try RegistrationDesk(
            configuration: Self.registrationConfiguration(certificates: slapd.certificateDirectory, state: directory.appendingPathComponent("state").path),
            policies: policies, audit: audit, now: now)
        outbox = try OutboxTarget(directory: directory.appendingPathComponent("outbox"), threadPool: threadPool, logger: logger)
        let notifier = RegistrationNotifier(target: outbox, hostname: "gw.test", configuration: desk.configuration, audit: audit, logger: logger, now: now)
        let metrics = self.metrics
        let server = try await RegistrationServer(desk: desk, login: login, revealNotAuthorized: revealNotAuthorized,
                                                  countLogin: { metrics.registrationLogin(result: $0) }, notifier: notifier,
                                                  eventLoopGroup: group, logger: logger)
        self.server = server
        task = Task { try await server.run() }
        port = await server.port()
    }

    func stop() async {
        task.cancel()
        _ = await task.result
        await ldap.shutdown()
        try? await threadPool.shutdownGracefully()
        try? await group.shutdownGracefully()
        try? FileManager.default.removeItem(at: directory)
    }

    func client() throws -> WebClient { try WebClient(base: base, caFile: caFile) }

    func auditEvents() throws -> [[String: Any]] {
        let text = (try? String(contentsOf: auditFile, encoding: .utf8)) ?? ""
        return try text.split(separator: "\n").map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
    }

    /// The notification mails the page queued, oldest first.
    func mails() -> [String] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: outbox.directory.path)) ?? []).filter { $0.hasSuffix(".eml") }.sorted()
        return names.compactMap { try? String(contentsOf: outbox.directory.appendingPathComponent($0), encoding: .utf8) }
    }

    /// The device files of the fixture's policy, by path in devices.d.
    func deviceFiles() throws -> [String: String] { try Repo.deviceFiles(in: policyDirectory) }

    /// A complete, valid form for IT Services.
    static func form(device: String = "it-scanner-9", address: String = "127.0.0.9", sunset: String = "2027-06-30") -> [(String, String)] {
        [("department", "it"), ("device", device), ("model", "Acme ScanMaster 3000"), ("location", "Computing Centre, room 0.14"),
         ("address", address), ("sender", "scanner9@example.edu"), ("contact", "it-helpdesk@example.edu"), ("sunset", sunset),
         ("justification", "No TLS in the firmware; replacement ordered.")]
    }
}
