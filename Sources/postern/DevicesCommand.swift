import ArgumentParser
import Foundation
import PosternPolicy

/// `postern devices`: list registered devices, find those near their sunset, register and revoke, migrate devices.yaml.
struct DevicesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices",
        abstract: "List, register and revoke the devices allowed on the plaintext device endpoint; migrate a devices.yaml to devices.d.",
        subcommands: [List.self, Expiring.self, Add.self, Revoke.self, Migrate.self])

    struct Common: ParsableArguments {
        @Option(help: "Directory holding policy.yaml, departments.yaml and devices.d.")
        var policies: String = "policies"

        @Option(help: "Judge sunsets as of this day (YYYY-MM-DD) or instant (ISO 8601). Default: now.")
        var at: String?
    }

    struct List: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every registered device with its effective sunset.")

        @OptionGroup var common: Common
        @Flag(help: "Print JSON instead of a table.") var json = false

        func run() throws {
            let policy = try loadPolicy(common.policies)
            let now = try instant(common.at, policy: policy)
            try printDevices(Array(policy.devices), policy: policy, now: now, json: json)
        }
    }

    struct Expiring: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List devices whose sunset falls within a period from today.")

        @OptionGroup var common: Common
        @Option(help: "Period: days (30d or 30) or weeks (4w).") var within: String = "30d"
        @Flag(help: "Also list devices already past their sunset.") var includeExpired = false
        @Flag(help: "Print JSON instead of a table.") var json = false

        func run() throws {
            guard let days = Self.days(within) else { throw ValidationError("--within '\(within)': write e.g. 30d or 4w") }
            let policy = try loadPolicy(common.policies)
            let now = try instant(common.at, policy: policy)
            let today = policy.today(now)
            let due = policy.devices.filter { device in
                guard device.revocation == nil else { return false }
                let left = today.days(until: policy.effectiveSunset(for: device).date)
                return left <= days && (includeExpired || left >= 0)
            }.sorted { policy.effectiveSunset(for: $0).date < policy.effectiveSunset(for: $1).date }
            try printDevices(due, policy: policy, now: now, json: json)
        }

        static func days(_ text: String) -> Int? {
            let t = text.lowercased()
            if t.hasSuffix("w") {
                // A number of weeks whose days no Int holds is no period (`* 7` would trap).
                guard let weeks = Int(t.dropLast()) else { return nil }
                let days = weeks.multipliedReportingOverflow(by: 7)
                return days.overflow ? nil : days.partialValue
            }
            if t.hasSuffix("d") { return Int(t.dropLast()) }
            return Int(t)
        }
    }

    struct Add: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Register a device: validate it with the whole policy, then write devices.d/<department>/<id>.yaml.",
            discussion: """
                The registration date is today. The entry follows the same rules as the registration page and \
                `postern check`: a sunset from today to the last day the rules allow (the earlier of the department's \
                and the global sunset, which is also the default), senders in the department's domains \
                (departments.yaml `domains:`, or the internal domains when it lists none), an internal owner, location \
                in plain text (no control characters, line separators or bidi controls), recipient rules inside the \
                internal domains. The one new file is written \
                atomically under the lock of devices.d; no other file changes. A refusal names that file, which was not \
                written. Exit status: 0 added, 1 refused.
                """)

        @Option(help: "Directory holding policy.yaml, departments.yaml and devices.d.")
        var policies: String = "policies"
        @Option(help: "Device id, e.g. chem-scanner-2; also the file name.") var id: String
        @Option(help: "Department id from departments.yaml; also the directory.") var department: String
        @Option(help: "Owner's contact address, in the internal domains; reminded before the sunset.") var owner: String
        @Option(help: "Where the device sits.") var location: String?
        @Option(name: .customLong("address"), help: "Source address or CIDR block; repeat for more.") var addresses: [String] = []
        @Option(name: .customLong("sender"), help: "Allowed sender address or domain (envelope and header From), in the department's domains; repeat for more.") var senders: [String] = []
        @Option(name: .customLong("recipient"), help: ArgumentHelp("Narrows where the device may send (default: any internal recipient): owner (send to self), an address, or a domain like *@chem.example.edu; repeat for more. Refused at RCPT with 550 5.7.1 naming the rule.", valueName: "rule")) var recipients: [String] = []
        @Option(help: "Last valid day, YYYY-MM-DD (default: the last day the rules allow).") var sunset: String?
        @Option(help: "Message size limit, bytes or e.g. 10M.") var maxSize: String?
        @Option(help: "Message rate limit, e.g. 60/hour.") var maxRate: String?

        func validate() throws {
            if addresses.isEmpty { throw ValidationError("give at least one --address") }
            if senders.isEmpty { throw ValidationError("give at least one --sender") }
            if let sunset, case .failure(let problem) = CalendarDate.parse(sunset) { throw ValidationError("--sunset: \(problem.message)") }
        }

        func run() throws {
            let registration = DeviceRegistration(
                id: id, department: department, owner: owner, location: location, addresses: addresses, senders: senders,
                sunset: sunset.flatMap { CalendarDate($0) }, maxMessageSize: maxSize, maxRate: maxRate, recipients: recipients)
            let directory = URL(fileURLWithPath: policies, isDirectory: true)
            switch DeviceFilesEditor.add(registration, directory: directory, now: Date()) {
            case .success(let device):
                let file = "\(PolicyLoader.display(directory, PolicyLoader.devicesDirectory))/\(device.department)/\(device.id).yaml"
                print("added device \(device.id) as \(file): registered \(device.registered), sunset \(device.sunset)")
            case .failure(let errors):
                report(errors, outcome: "device \(id) was not added")
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a device: its file stays, marked revoked with today's date, who and why.",
            discussion: """
                Writes revoked (today, in the policy's time zone), revoked-by and revoke-reason into \
                devices.d/<department>/<id>.yaml, atomically under the lock of devices.d. The running gateway picks \
                the change up and refuses the device with "registration revoked on <date>", the audit log naming who \
                and why; its addresses and id stay taken until the file is deleted. Exit status: 0 revoked, 1 refused.
                """)

        @Option(help: "Directory holding policy.yaml, departments.yaml and devices.d.")
        var policies: String = "policies"
        @Argument(help: "The device's id.") var id: String
        @Option(help: "Why, in plain text; kept in the device's file.") var reason: String
        @Option(help: "Who revokes it (default: $SUDO_USER, else $USER).") var by: String?

        func run() throws {
            let environment = ProcessInfo.processInfo.environment
            let actor = by ?? [environment["SUDO_USER"], environment["USER"]].compactMap { $0 }.first { !$0.isEmpty } ?? "unknown"
            let directory = URL(fileURLWithPath: policies, isDirectory: true)
            switch DeviceFilesEditor.revoke(id: id, by: actor, reason: reason, directory: directory, now: Date()) {
            case .success(let device):
                let file = "\(PolicyLoader.display(directory, PolicyLoader.devicesDirectory))/\(device.department)/\(device.id).yaml"
                let revocation = device.revocation.map { "on \($0.date) by \($0.by): \($0.reason)" } ?? ""
                print("revoked device \(device.id) \(revocation); \(file) keeps it, marked revoked")
            case .failure(let errors):
                report(errors, outcome: "device \(id) was not revoked")
            }
        }
    }

    struct Migrate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Turn a devices.yaml into devices.d/<department>/<device-id>.yaml, one file per device.",
            discussion: """
                devices.yaml must load with policy.yaml and departments.yaml (the checks of `postern check`). The \
                files are written into a new directory, loaded and compared with devices.yaml, and only then renamed \
                to devices.d; devices.yaml is renamed to devices.yaml.migrated. An existing devices.d is never \
                written over. Each file holds the entry's keys and values; comments of devices.yaml are not carried over.
                """)

        @Option(help: "Directory holding policy.yaml, departments.yaml and devices.yaml.")
        var policies: String = "policies"

        func run() throws {
            let directory = URL(fileURLWithPath: policies, isDirectory: true)
            switch DevicesMigration.migrate(directory: directory) {
            case .success(let report):
                for file in report.files { print("wrote \(PolicyLoader.display(directory, file))") }
                print("migrated \(report.files.count) devices into \(report.departments) department directories of "
                      + "\(PolicyLoader.display(directory, PolicyLoader.devicesDirectory)); moved devices.yaml to \(report.movedAside)")
                if report.commentLines > 0 {
                    print("note: the \(report.commentLines) comment lines of devices.yaml are not in the device files (they are still in \(report.movedAside))")
                }
                print("next: postern check, then git add devices.d && git rm devices.yaml, and delete \(report.movedAside)")
            case .failure(let errors):
                for issue in errors.issues { FileHandle.standardError.write(Data("\(issue)\n".utf8)) }
                FileHandle.standardError.write(Data("nothing was migrated\n".utf8))
                throw ExitCode.failure
            }
        }
    }
}

/// One device as `devices list --json` prints it.
struct DeviceListing: Codable {
    var id: String
    var department: String
    var owner: String
    var location: String
    var addresses: [String]
    var senders: [String]
    /// `recipients:`; absent when the device may send to any internal recipient.
    var recipients: [String]?
    var registered: String
    var sunset: String
    var effectiveSunset: String
    var sunsetRule: String
    var daysRemaining: Int
    var status: String
    var maxMessageSize: Int?
    var maxRate: String?
    var revoked: String?
    var revokedBy: String?
    var revokeReason: String?
}

/// A refusal of `devices add` or `devices revoke` on standard error, and exit status 1. An issue of the file that was
/// not written has no line.
private func report(_ errors: PolicyErrors, outcome: String) -> Never {
    for issue in errors.issues {
        let place = issue.line > 0 ? "\(issue.file):\(issue.line)" : issue.file
        FileHandle.standardError.write(Data("\(place): error: \(issue.message) (fix: \(issue.fix))\n".utf8))
    }
    FileHandle.standardError.write(Data("\(outcome)\n".utf8))
    DevicesCommand.exit(withError: ExitCode.failure)
}

private func printDevices(_ devices: [RegisteredDevice], policy: PolicySet, now: Date, json: Bool) throws {
    let today = policy.today(now)
    let reminderWindow = policy.reminderDays.first ?? 0
    let rows = devices.map { d -> DeviceListing in
        let sunset = policy.effectiveSunset(for: d)
        let left = today.days(until: sunset.date)
        let status = d.revocation != nil ? "revoked" : left < 0 ? "expired" : left <= reminderWindow ? "expiring" : "active"
        return DeviceListing(id: d.id, department: d.department, owner: d.owner, location: d.location,
                             addresses: d.addresses.map(\.text), senders: d.senders.map(\.description),
                             recipients: d.recipients.isEmpty ? nil : d.recipients.map(\.description),
                             registered: d.registered.description, sunset: d.sunset.description,
                             effectiveSunset: sunset.date.description, sunsetRule: sunset.description, daysRemaining: left,
                             status: status, maxMessageSize: d.maxMessageSize, maxRate: d.maxRate?.description,
                             revoked: d.revocation?.date.description, revokedBy: d.revocation?.by, revokeReason: d.revocation?.reason)
    }
    if json {
        return try printJSON(rows)
    }
    let header = ["ID", "DEPARTMENT", "ADDRESSES", "SUNSET", "SET BY", "STATUS", "OWNER"]
    let table = rows.map { r -> [String] in
        let by = r.sunsetRule.split(separator: " ").dropFirst().first.map(String.init) ?? ""
        let status = r.status == "revoked" ? "revoked \(r.revoked ?? "") by \(r.revokedBy ?? "")"
            : r.status == "expired" ? "expired \(-r.daysRemaining)d ago"
            : r.status == "expiring" ? "expires in \(r.daysRemaining)d" : "active"
        return [r.id, r.department, r.addresses.joined(separator: ","), r.effectiveSunset, by, status, r.owner]
    }
    let widths = header.indices.map { i in ([header] + table).map { $0[i].count }.max() ?? 0 }
    for row in [header] + table {
        let cells = row.enumerated().map { i, cell in i == row.count - 1 ? cell : cell.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
        print(cells.joined(separator: "  "))
    }
    if rows.isEmpty { print("(no devices)") }
}
