import ArgumentParser
import Foundation
import PosternPolicy
import PosternGateway
import PosternListener
import PosternSMTP
import PosternSession

/// `postern explain`: one transaction played through the gateway's own session and rules (`TransactionProbe`),
/// with the configuration's listener settings and the directory's answer for the login: the reply the gateway
/// would give at each stage, and the rule that decided.
struct ExplainCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Show the gateway's reply at each SMTP stage of one transaction, and the rule that decided.",
        discussion: """
            Example: postern explain --config /etc/postern/postern.yaml --listener device --client 10.1.2.3 \
              --from scan@chem.example.edu --rcpt x@gmail.com --at 2026-12-01
            The transaction runs through the gateway's own SMTP session and policy rules, as a connection to the \
            named listener would: EHLO, STARTTLS where the listener has it, AUTH with --login, MAIL FROM, each RCPT TO, \
            and with --message the end of DATA (header From policy, size). Nothing is queued or sent.
            With --config (default $POSTERN_CONFIG or /etc/postern/postern.yaml) the listener's and the gateway's \
            settings apply, and --login is looked up in the configured directory (addresses, groups, required \
            groups; no password, no bind as the user). With --policies only the policy files are read: limits take \
            their defaults and --address/--group stand for the directory.
            Exit status: 0 when the explanation was printed (whatever the decision), 1 when the configuration or \
            the policy does not load.
            """)

    @Option(help: "The gateway configuration file (YAML). Default: $POSTERN_CONFIG or /etc/postern/postern.yaml, unless --policies is given.")
    var config: String?

    @Option(help: "A policy directory to judge by without a configuration file (defaults for everything else, no directory).")
    var policies: String?

    @Option(help: "Listener: a listener name from the configuration, or a kind (submission, submissions, device).")
    var listener: String

    @Option(help: "Client IP address (IPv4 or IPv6).")
    var client: String

    @Option(help: "Envelope sender (MAIL FROM), with or without <>; <> for the null sender.")
    var from: String?

    @Option(name: .customLong("rcpt"), help: "Envelope recipient (RCPT TO); repeat for more.")
    var recipients: [String] = []

    @Option(help: "Login for SMTP AUTH: looked up in the configuration's directory.")
    var login: String?

    @Option(name: .customLong("address"), help: "Without a directory: an address of the login; repeat for more.")
    var addresses: [String] = []

    @Option(name: .customLong("group"), help: "Without a directory: a group (DN) of the login; repeat for more.")
    var groups: [String] = []

    @Flag(name: .customLong("no-tls"), help: "A submission connection that does not start TLS.")
    var noTLS = false

    @Option(help: "Judge at this day (YYYY-MM-DD, noon in the policy's time zone) or instant (ISO 8601). Default: now.")
    var at: String?

    @Option(help: "A message file (header and body; LF line ends are sent as CRLF): judged at the end of DATA.")
    var message: String?

    func validate() throws {
        guard ClientAddress(client).ip != nil else {
            throw ValidationError("--client '\(client)' is not an IP address (write one like 10.1.2.3 or 2001:db8::1)")
        }
        if config != nil && policies != nil { throw ValidationError("give --config or --policies, not both") }
    }

    func run() async throws {
        let setting = try ExplainSetting.load(config: config, policies: policies, listener: listener)
        let store = setting.store
        let policy = store.policy
        let now = try instant(at, policy: policy)
        let kind = setting.listener.kind
        let tls = kind != .device && !noTLS
        let messageBytes = try message.map(Self.read)

        print("listener:  \(setting.listener.name) (\(kind.rawValue)), client \(client), \(tls ? "TLS" : "no TLS")")
        print("settings:  \(setting.source)")
        print("at:        \(describe(now, policy.timeZone))")
        if kind == .device {
            if let device = policy.device(forAddress: client) {
                let sunset = policy.effectiveSunset(for: device)
                print("device:    \(device.id) (department \(device.department), owner \(device.owner)"
                      + (device.location.isEmpty ? "" : ", \(device.location)") + ")")
                print("sunset:    last valid day \(sunset.date) (\(sunset))")
                // The setting only; each RCPT below is judged by the session's own rules.
                print("recipients: " + (device.recipients.isEmpty ? "any internal recipient (no recipients: rule)" : PolicySet.recipientsText(device)))
            } else {
                print("device:    none registered for \(client)")
            }
        }

        var authenticate: (String) async -> AuthOutcome = { _ in .invalidCredentials }
        var directoryNote: String?
        if let login {
            let answer = try await setting.lookUp(login: login, addresses: addresses, groups: groups)
            authenticate = { _ in answer.outcome }
            directoryNote = answer.note
            print("login:     \(login): \(answer.note)")
        }
        print("")

        let decisions = DecisionCapture()
        var facts = ConnectionFacts(listenerName: setting.listener.name, kind: kind, clientAddress: client, sessionID: "explain")
        facts.clientPort = 0
        let probe = TransactionProbe(
            configuration: setting.listener.sessionConfiguration(hostname: setting.hostname, limits: setting.limits,
                                                                 authAvailable: setting.authAvailable),
            facts: facts, rules: store.rules(now: { now }, audit: decisions.auditLog()), tls: tls, login: login,
            authenticate: authenticate, sender: from, recipients: recipients, message: messageBytes, decisions: decisions)
        let (steps, outcome) = await probe.run()
        for step in steps {
            print(step.command)
            print("  -> \(step.reply)")
            if let rule = step.rule { print("     rule: \(rule)") }
        }
        switch outcome {
        case .refused(let step):
            print("decision:  refuse (at \(Self.stage(step.command)))")
            print("reply:     \(step.reply)")
            if let rule = step.rule { print("rule:      \(rule)") }
        case .accepted(let queued):
            let refused = steps.filter { $0.command.hasPrefix("RCPT") && !$0.reply.isPositive }.count
            let scope = refused == 0 ? "" : " for \(recipients.count - refused) of \(recipients.count) recipients; the others are refused as shown"
            if queued {
                print("decision:  accept\(scope)")
            } else {
                print("decision:  accept\(scope) up to DATA; the end of DATA (header From, size) is judged with --message")
            }
        case .incomplete(let why):
            print("decision:  accepted so far (\(why))")
        }
        if let directoryNote, directoryNote.hasPrefix("not consulted") || directoryNote.hasPrefix("unavailable") {
            print("note:      the directory was not asked; the login's addresses and groups are the --address and --group given")
        }
    }

    /// "MAIL FROM:<a@b>" -> "MAIL FROM"; "AUTH PLAIN (login x)" -> "AUTH".
    static func stage(_ command: String) -> String {
        if command.hasPrefix("MAIL FROM") { return "MAIL FROM" }
        if command.hasPrefix("RCPT TO") { return "RCPT TO" }
        if command.hasPrefix("(message") { return "the end of DATA" }
        return String(command.prefix { $0 != " " })
    }

    /// The file as a client would send it: bare LF line ends become CRLF (swaks and smtplib do the same).
    static func read(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else { throw ValidationError("cannot read \(path)") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(data.count)
        var previous: UInt8 = 0
        for b in data {
            if b == 0x0A && previous != 0x0D { bytes.append(0x0D) }
            bytes.append(b)
            previous = b
        }
        return bytes
    }
}

/// Loads the policy directory or prints every issue and exits 1.
func loadPolicy(_ directory: String) throws -> PolicySet {
    switch PolicyLoader.load(directory: URL(fileURLWithPath: directory, isDirectory: true)) {
    case .success(let policy): return policy
    case .failure(let errors):
        for issue in errors.issues { FileHandle.standardError.write(Data("\(issue)\n".utf8)) }
        FileHandle.standardError.write(Data("policy in \(directory) is invalid (\(errors.issues.count) error\(errors.issues.count == 1 ? "" : "s"))\n".utf8))
        throw ExitCode.failure
    }
}

/// `YYYY-MM-DD` means noon of that day in the policy's time zone; otherwise an ISO 8601 instant; nil means now.
func instant(_ text: String?, policy: PolicySet) throws -> Date {
    guard let text else { return Date() }
    if let day = CalendarDate(text) { return day.startOfDay(in: policy.timeZone).addingTimeInterval(12 * 3600) }
    if let date = ISO8601DateFormatter().date(from: text) { return date }
    throw ValidationError("'\(text)' is neither YYYY-MM-DD nor an ISO 8601 time like 2026-12-01T09:30:00Z")
}

func describe(_ date: Date, _ timeZone: TimeZone) -> String {
    let f = DateFormatter()
    f.locale = Locale(identifier: "en_US_POSIX")
    f.timeZone = timeZone
    f.dateFormat = "yyyy-MM-dd HH:mm:ss"
    return "\(f.string(from: date)) \(timeZone.identifier)"
}
