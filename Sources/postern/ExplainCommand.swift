import ArgumentParser
import Foundation
import PosternPolicy
import PosternSMTP

/// `postern explain`: how policy decides one transaction, stage by stage, and which rule decided.
struct ExplainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "explain",
        abstract: "Show the decision, the reply and the deciding rule for one transaction.",
        discussion: """
            Example: postern explain --listener device --client 10.1.2.3 --from scan@chem.example.edu --rcpt x@gmail.com --at 2026-12-01
            Stages are judged as the gateway judges them: the connection, MAIL FROM, then each RCPT TO, and with \
            --message the header From policy at the end of DATA (the message's From: and Sender: addresses).
            Exit status is 0 when the explanation was printed (whatever the decision), 1 when the policy does not load.
            """)

    @Option(help: "Directory holding policy.yaml, departments.yaml and devices.d.")
    var policies: String = "policies"

    @Option(help: "Listener kind: submission, submissions or device.")
    var listener: String

    @Option(help: "Client IP address (IPv4 or IPv6).")
    var client: String

    @Option(help: "Envelope sender (MAIL FROM), with or without <>; <> for the null sender.")
    var from: String?

    @Option(name: .customLong("rcpt"), help: "Envelope recipient (RCPT TO); repeat for more.")
    var recipients: [String] = []

    @Option(help: "Authenticated login (submission endpoints).")
    var login: String?

    @Option(name: .customLong("address"), help: "An address of the authenticated user; repeat for more.")
    var addresses: [String] = []

    @Option(name: .customLong("group"), help: "A group of the authenticated user; repeat for more.")
    var groups: [String] = []

    @Flag(name: .customLong("no-tls"), help: "Judge a submission connection that has not started TLS.")
    var noTLS = false

    @Option(help: "Judge at this day (YYYY-MM-DD, noon in the policy's time zone) or instant (ISO 8601). Default: now.")
    var at: String?

    @Option(help: "A message file (header and body; LF line ends are read as CRLF): judge its From: and Sender: too.")
    var message: String?

    func run() throws {
        guard let endpoint = PolicyEndpoint(rawValue: listener) else {
            throw ValidationError("unknown listener '\(listener)'; use submission, submissions or device")
        }
        let policy = try loadPolicy(policies)
        let now = try instant(at, policy: policy)
        let identity = login.map { SubmitterIdentity(login: $0, addresses: addresses, groups: groups) }
        let tls = endpoint != .device && !noTLS

        print("listener:  \(endpoint.rawValue), client \(client), \(tls ? "TLS" : "no TLS")"
              + (identity.map { ", login \($0.login) (\($0.addresses.joined(separator: ", ")))" } ?? ""))
        print("at:        \(describe(now, policy.timeZone))")
        if endpoint == .device {
            if let device = policy.device(forAddress: client) {
                let sunset = policy.effectiveSunset(for: device)
                print("device:    \(device.id) (department \(device.department), owner \(device.owner)"
                      + (device.location.isEmpty ? "" : ", \(device.location)") + ")")
                print("sunset:    last valid day \(sunset.date) (\(sunset))")
            } else {
                print("device:    none registered for \(client)")
            }
        }
        print("")

        var input = DecisionInput(endpoint: endpoint, clientAddress: client, tls: tls, identity: identity, now: now)
        let connection = policy.decide(input)
        report("connection", connection)
        guard connection.isAccepted else { return conclude("refused at the connection", connection) }
        guard let from else { return print("decision:  connection accepted (no --from given)") }

        let mailLabel = "MAIL FROM:\(bracketed(from))"
        let sender: ReversePath
        do {
            sender = try AddressParser.parseReversePath(Substring(bracketed(from)))
        } catch {
            let d = Decision(reply: error.reply, rule: "address syntax (RFC 5321)")
            report(mailLabel, d)
            return conclude("refused at MAIL FROM", d)
        }
        input.sender = sender
        let mail = policy.decide(input)
        report(mailLabel, mail)
        guard mail.isAccepted else { return conclude("refused at MAIL FROM", mail) }
        guard !recipients.isEmpty else { return print("decision:  sender accepted (no --rcpt given)") }

        var accepted = 0
        var lastRefusal: Decision?
        for rcpt in recipients {
            let label = "RCPT TO:\(bracketed(rcpt))"
            let d: Decision
            do {
                input.recipient = try AddressParser.parsePath(Substring(bracketed(rcpt)))
                d = policy.decide(input)
            } catch {
                d = Decision(reply: error.reply, rule: "address syntax (RFC 5321)")
            }
            report(label, d)
            if d.isAccepted { accepted += 1 } else { lastRefusal = d }
        }
        if accepted > 0, let message {
            input.recipient = nil
            let header = policy.decideHeaderFrom(input, originators: OriginatorParser.parse(try Self.read(message)))
            report("end of DATA (header-from: \(policy.headerFromMode(endpoint).rawValue))", header.decision)
            if let added = header.addedField { print("     adds: \(added.trimmingCharacters(in: .whitespacesAndNewlines))") }
            guard header.decision.isAccepted else { return conclude("refused at the end of DATA", header.decision) }
        }
        if accepted == recipients.count {
            print("decision:  accept (all \(accepted) recipient\(accepted == 1 ? "" : "s"))")
        } else if accepted == 0, let lastRefusal {
            conclude("refused at RCPT TO", lastRefusal)
        } else {
            print("decision:  accept for \(accepted) of \(recipients.count) recipients; the others are refused as shown")
        }
    }

    private func report(_ stage: String, _ d: Decision) {
        print("\(stage)")
        print("  -> \(d.reply.map(\.description) ?? "accept")")
        print("     rule: \(d.rule)")
    }

    private func conclude(_ what: String, _ d: Decision) {
        print("decision:  refuse (\(what))")
        print("reply:     \(d.reply.map(\.description) ?? "")")
        print("rule:      \(d.rule)")
    }

    private func bracketed(_ s: String) -> String { s.hasPrefix("<") ? s : "<\(s)>" }

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
