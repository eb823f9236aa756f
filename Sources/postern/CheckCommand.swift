import ArgumentParser
import Foundation
import PosternCore
import PosternGateway
import PosternPolicy
import Yams

/// `postern check`: everything the gateway would refuse or point out about its configuration and policy, in one
/// pass. It reads the same way `postern serve` does (GatewayConfiguration, PolicyLoader, the same warnings), goes
/// on past an error in postern.yaml to the policy files, and ends with counts.
struct CheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check",
        abstract: "Validate the gateway configuration and the policy files, listing every error and warning.",
        discussion: """
            Every problem is printed to standard error as FILE:LINE: error|warning: message (fix: ...), followed by \
            a count. An error in postern.yaml does not stop the check: the policy files are checked too. Device \
            entries are checked with the same rules as the registration page and `postern devices add`. Warnings: a \
            bare group name without directory.group-base (it matches no group), a policy.yaml size limit above what \
            the listeners take, a device whose own last day lies past the global one (which \
            applies), a device that has expired, a certificate expiring within 30 days; with \
            accepted-domains on an upstream, Microsoft 365's requirements (docs/production.md).
            Exit status: 0 when nothing is wrong (warnings allowed), 1 with --strict when there are warnings and no \
            errors, 2 when there are errors.
            """)

    @Option(name: .long, help: "The gateway configuration file (YAML). Default: $POSTERN_CONFIG or /etc/postern/postern.yaml.")
    var config: String?

    @Flag(name: .long, help: "Exit 1 when there are warnings (and no errors).")
    var strict = false

    @Option(name: .long, help: "Judge device expiry at this day (YYYY-MM-DD). Default: today.")
    var at: String?

    var configPath: String {
        ConfigPath.resolve(config)
    }

    func run() throws {
        var report = CheckReport()
        var policyDirectory: String
        var configuration: GatewayConfiguration?
        do {
            let loaded = try GatewayConfiguration.load(path: configPath)
            configuration = loaded
            policyDirectory = loaded.policyDirectory
            report.warnings += loaded.warnings.map(\.warningDescription)
        } catch {
            report.errors += error.issues.map(\.errorDescription)
            // Go on to the policy files postern.yaml names, as far as it can be read.
            policyDirectory = Self.policyDirectory(named: configPath)
        }
        switch PolicyLoader.load(directory: URL(fileURLWithPath: policyDirectory, isDirectory: true)) {
        case .success(let policy):
            report.notes.append("\(policyDirectory): \(policy.devices.count) devices, \(policy.departments.count) departments")
            report.warnings += Self.deviceWarnings(policy, policyDirectory: policyDirectory, today: try today(policy))
            if let configuration {
                report.warnings += configuration.policyWarnings(policy).map(\.warningDescription)
                for finding in Microsoft365Readiness.findings(configuration: configuration, policy: policy) {
                    switch finding.severity {
                    case .error: report.errors.append(finding.description)
                    case .warning: report.warnings.append(finding.description)
                    case .info: report.notes.append(finding.description)
                    }
                }
                let unknown = (configuration.registration?.departmentGroups.keys.sorted() ?? []).filter { policy.departments[$0] == nil }
                if !unknown.isEmpty {
                    report.errors.append("\(configPath):0: error: registration.department-groups names unknown department(s) "
                                         + "\(unknown.joined(separator: ", ")) (fix: use ids from departments.yaml)")
                }
            }
        case .failure(let errors):
            report.errors += errors.issues.map(\.errorDescription)
        }
        if let configuration { report.notes.insert("\(configPath): \(configuration.listeners.count) listeners", at: 0) }
        throw report.finish(strict: strict)
    }

    /// The policy directory a postern.yaml names (`policies:`, relative to the file; `.` when absent), read
    /// without the rest of the file, for when the file as a whole does not load.
    static func policyDirectory(named configPath: String) -> String {
        let base = URL(fileURLWithPath: configPath).deletingLastPathComponent()
        let text = (try? String(contentsOfFile: configPath, encoding: .utf8)) ?? ""
        let named = (try? Yams.compose(yaml: text))?.flatMap { $0.mapping?["policies"]?.string } ?? "."
        return named.hasPrefix("/") ? named : base.appendingPathComponent(named).standardizedFileURL.path
    }

    /// What loads but does not do what it says: a device's own last day past the earlier date that applies, and
    /// devices that have expired (they refuse every message; their file only misleads).
    static func deviceWarnings(_ policy: PolicySet, policyDirectory: String, today: CalendarDate) -> [String] {
        var warnings: [String] = []
        // A revoked device is refused on purpose; its file is its history.
        for device in policy.devices.sorted(by: { $0.id < $1.id }) where device.revocation == nil {
            let file = "\(device.file(in: policyDirectory)):\(device.line)"
            let effective = policy.effectiveSunset(for: device)
            // Past the global last day: the university-wide date ends it (a department's earlier date is its own
            // choice to end its devices sooner, and not an entry that says what cannot be).
            if let global = policy.globalSunset, global < device.sunset {
                warnings.append("\(file): warning: device '\(device.id)': sunset \(device.sunset) is after the global sunset \(global), "
                                + "which applies (fix: set sunset to \(global) or earlier)")
            }
            if effective.date < today {
                let days = effective.date.days(until: today)
                warnings.append("\(file): warning: device '\(device.id)' expired \(days) day\(days == 1 ? "" : "s") ago (last valid day "
                                + "\(effective.date)); the gateway refuses its mail (fix: remove its file, or give it a new sunset within the rules)")
            }
        }
        return warnings
    }

    private func today(_ policy: PolicySet) throws -> CalendarDate {
        guard let at else { return policy.today(Date()) }
        guard let day = CalendarDate(at) else { throw ValidationError("--at '\(at)' is not a day (YYYY-MM-DD)") }
        return day
    }
}

/// What `postern check` found: errors and warnings on standard error, a count, and the exit status.
struct CheckReport {
    var errors: [String] = []
    var warnings: [String] = []
    var notes: [String] = []

    func finish(strict: Bool) -> ExitCode {
        for note in notes { print(note) }
        let output = FileHandle.standardError
        for line in errors + warnings { output.write(Data("\(line)\n".utf8)) }
        let summary = "postern check: \(errors.count) error\(errors.count == 1 ? "" : "s"), \(warnings.count) warning\(warnings.count == 1 ? "" : "s")"
        output.write(Data("\(summary)\n".utf8))
        if !errors.isEmpty { return ExitCode(2) }
        if strict && !warnings.isEmpty { return ExitCode(1) }
        return .success
    }
}
