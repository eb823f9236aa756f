import ArgumentParser
import Foundation
import PosternCore
import PosternGateway

/// `postern report`: what the audit log says about the messages accepted (who sent what size to whom, and what
/// became of each recipient), filtered and summed up for a data-protection officer. The reckoning is
/// `AuditReport` in PosternCore; this command finds the files, reads them and prints.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Report from the audit log what was sent to whom (a GDPR Art. 33 assessment).",
        discussion: """
            Reads the audit log of the gateway configuration (--config, default $POSTERN_CONFIG or \
            /etc/postern/postern.yaml), or --audit FILE: the current file and every rotated one beside it \
            (FILE.STAMP and FILE.STAMP.gz), which is exactly what audit.rotate.keep-days keeps. Nothing in a \
            report comes from anywhere but the audit log, which never holds a subject or any content.

            The summary gives the number of messages, recipients (and distinct addresses and domains), internal \
            and external recipients, total and largest size, what became of each recipient (delivered, bounced, \
            still queued, expired), the first and last time, and which devices or logins sent them. --format csv \
            or jsonl prints the detail instead: one line per message and recipient, with snake_case names.

            Times are UTC, as in the audit log: 2026-12-01, 2026-12-01T09:30 or 2026-12-01T09:30:15. --since is \
            inclusive; --until is exclusive, but a bare day includes that whole day.

            Filters combine (all must hold); a filter given twice matches either value. Message filters (--since, \
            --until, --device, --login, --sender, --queue-id) pick messages; recipient filters (--recipient, \
            --recipient-domain, --external, --outcome) pick recipients, and a message counts when one of its \
            recipients is picked.

            Exit status: 0 done; 1 done, but some line or file could not be read (said on standard error); \
            2 no audit log to read; 64 a usage error.
            """)

    @Option(name: .long, help: "The gateway configuration file (YAML); its audit.output is read.")
    var config: String?

    @Option(name: .long, help: "The audit log file to read, instead of the configuration's.")
    var audit: String?

    @Option(name: .long, help: "Messages accepted at or after this time (UTC).")
    var since: String?

    @Option(name: .long, help: "Messages accepted before this time (UTC); a bare day includes that day.")
    var until: String?

    @Option(name: .long, help: "Sent by this registered device (its id).")
    var device: [String] = []

    @Option(name: .long, help: "Sent by this login (SMTP AUTH).")
    var login: [String] = []

    @Option(name: .long, help: "With this envelope sender.")
    var sender: [String] = []

    @Option(name: .long, help: "To this recipient address.")
    var recipient: [String] = []

    @Option(name: .long, help: "To a recipient in this domain.")
    var recipientDomain: [String] = []

    @Flag(name: .long, help: "Only recipients outside the internal domains.")
    var external = false

    @Option(name: .long, help: "This message (its queue id).")
    var queueId: [String] = []

    @Option(name: .long, help: "Recipients with this outcome: delivered, bounced, queued, expired or deleted.")
    var outcome: [String] = []

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case summary, csv, jsonl
    }

    @Option(name: .long, help: "summary (default), csv or jsonl (the detail, one line per message and recipient).")
    var format: Format = .summary

    func validate() throws {
        if let since, AuditReport.logTime(since) == nil { throw ValidationError("--since \(since) is not a time: write 2026-12-01 or 2026-12-01T09:30 (UTC)") }
        if let until, AuditReport.untilBound(until) == nil { throw ValidationError("--until \(until) is not a time: write 2026-12-01 or 2026-12-01T09:30 (UTC)") }
        for name in outcome where AuditReport.Outcome(rawValue: name) == nil {
            throw ValidationError("--outcome \(name) is not one of \(AuditReport.Outcome.allCases.map(\.rawValue).joined(separator: ", "))")
        }
    }

    var filter: AuditReport.Filter {
        var filter = AuditReport.Filter()
        filter.since = since.flatMap(AuditReport.logTime)
        filter.until = until.flatMap(AuditReport.untilBound)
        filter.devices = device
        filter.logins = login
        filter.senders = sender.map { AuditReport.bareAddress($0) }
        filter.recipients = recipient.map { AuditReport.bareAddress($0) }
        filter.recipientDomains = recipientDomain.map { $0.hasPrefix("@") ? String($0.dropFirst()) : $0 }
        filter.externalOnly = external
        filter.queueIDs = queueId
        filter.outcomes = outcome.compactMap(AuditReport.Outcome.init(rawValue:))
        return filter
    }

    /// The audit file named, or the configuration's.
    func auditPath() throws -> String {
        if let audit { return audit }
        let path = config ?? ProcessInfo.processInfo.environment["POSTERN_CONFIG"].flatMap { $0.isEmpty ? nil : $0 } ?? "/etc/postern/postern.yaml"
        let configuration: GatewayConfiguration
        do {
            configuration = try GatewayConfiguration.load(path: path)
        } catch {
            throw ReportFailure("cannot use the configuration \(path)\(config == nil ? " (give --config FILE or --audit FILE)" : ""):\n\(error)")
        }
        guard let output = configuration.auditOutput, output != "stderr" else {
            throw ReportFailure("\(path) writes the audit log to standard output (a journal), not a file: give --audit FILE with the lines exported")
        }
        return output
    }

    func run() throws {
        let files: [String]
        do {
            let path = try auditPath()
            files = AuditFileSet(path: path).all()
            guard !files.isEmpty else { throw ReportFailure("no audit log at \(path), nor rotated files beside it") }
        } catch let failure as ReportFailure {
            FileHandle.standardError.write(Data("postern report: \(failure.text)\n".utf8))
            throw ExitCode(2)
        }
        var report = AuditReport()
        var incomplete = false
        for file in files {
            do {
                try AuditFileReader.forEachLine(path: file) { report.add(line: $0) }
            } catch {
                FileHandle.standardError.write(Data("postern report: \(error); the report has only what could be read of it\n".utf8))
                incomplete = true
            }
        }
        if report.unreadableLines > 0 {
            FileHandle.standardError.write(Data("postern report: \(report.unreadableLines) line(s) are not JSON objects and were left out\n".utf8))
            incomplete = true
        }
        let rows = report.rows(filter)
        var out = StandardOutput()
        switch format {
        case .csv:
            out.write(AuditReportDetail.csvHeader)
            for row in rows { out.write(AuditReportDetail.csv(row)) }
        case .jsonl:
            for row in rows { out.write(AuditReportDetail.jsonLine(row)) }
        case .summary:
            out.write("Audit log: \(files.count) file(s), \(report.lines) lines, from \(files.first ?? "") to \(files.last ?? "")\n")
            let conditions = describeFilter()
            out.write("Filter: \(conditions.isEmpty ? "none" : conditions)\n\n")
            out.write(AuditReportSummary(rows: rows).text())
        }
        out.flush()
        if incomplete { throw ExitCode(1) }
    }

    func describeFilter() -> String {
        var parts: [String] = []
        if let since { parts.append("since \(since)") }
        if let until { parts.append("until \(until)") }
        for (name, values) in [("device", device), ("login", login), ("sender", sender), ("recipient", recipient),
                               ("recipient-domain", recipientDomain), ("queue-id", queueId), ("outcome", outcome)] where !values.isEmpty {
            parts.append("\(name) \(values.joined(separator: " or "))")
        }
        if external { parts.append("external recipients only") }
        return parts.joined(separator: ", ")
    }
}

struct ReportFailure: Error {
    var text: String
    init(_ text: String) { self.text = text }
}

/// Standard output through a 64 KiB buffer: a million detail lines are written in a few hundred writes.
struct StandardOutput {
    private var buffer: [UInt8] = []

    mutating func write(_ text: String) {
        buffer.append(contentsOf: text.utf8)
        if buffer.count >= 1 << 16 { flush() }
    }

    mutating func flush() {
        guard !buffer.isEmpty else { return }
        FileHandle.standardOutput.write(Data(buffer))
        buffer.removeAll(keepingCapacity: true)
    }
}
