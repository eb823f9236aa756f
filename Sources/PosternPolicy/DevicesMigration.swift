import Foundation
import PosternCore
import Yams
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// `postern devices migrate`: turns the devices.yaml of earlier versions into devices.d, one file per device.
///
/// It reads devices.yaml with the device schema and the checks across devices and files that a load makes,
/// and goes on only when that gives a valid policy. It writes the files into a new directory beside devices.d,
/// loads the policy from there and compares its devices with devices.yaml's, and only then renames the new
/// directory to devices.d and devices.yaml to devices.yaml.migrated. It never writes over an existing devices.d.
/// Each file holds the entry's values (anchors written out); comments of devices.yaml are not carried over.
public enum DevicesMigration {
    public static let movedAsideName = PolicyLoader.legacyDevicesFile + ".migrated"
    /// An old devices.yaml may be large: 100,000 entries are about 20 MB.
    static let legacyFileLimit = 512 << 20

    /// What a migration wrote.
    public struct Report: Sendable {
        /// Paths of the device files, relative to the policy directory (`devices.d/chem/chem-scanner-1.yaml`), sorted.
        public var files: [String]
        public var departments: Int
        /// Where devices.yaml went.
        public var movedAside: String
        /// Comment lines of devices.yaml, which the device files do not hold.
        public var commentLines: Int
    }

    public static func migrate(directory: URL) -> Result<Report, PolicyErrors> {
        let legacy = directory.appendingPathComponent(PolicyLoader.legacyDevicesFile)
        let legacyDisplay = PolicyLoader.display(directory, PolicyLoader.legacyDevicesFile)
        let devices = directory.appendingPathComponent(PolicyLoader.devicesDirectory)
        func failure(_ message: String, _ fix: String, file: String = legacyDisplay) -> Result<Report, PolicyErrors> {
            .failure(PolicyErrors(issues: [PolicyIssue(file: file, line: 0, message: message, fix: fix)]))
        }
        guard FileManager.default.fileExists(atPath: legacy.path) else {
            return failure("there is no devices.yaml to migrate", "give the policy directory that holds it (--policies)")
        }
        if FileManager.default.fileExists(atPath: devices.path) {
            return failure("devices.d already exists; migrate writes a new one and never overwrites files",
                           "move devices.d away first (or delete devices.yaml if devices.d already holds its devices)",
                           file: PolicyLoader.display(directory, PolicyLoader.devicesDirectory))
        }
        guard !FileManager.default.fileExists(atPath: directory.appendingPathComponent(movedAsideName).path) else {
            return failure("\(movedAsideName) already exists, and migrate would move devices.yaml there", "move it away first")
        }
        let text: String
        switch PolicyFileReading.readText(legacy.path, limit: legacyFileLimit, followSymlinks: true) {
        case .failure(let problem): return failure(problem.message, "check the file")
        case .success(let read): text = read.text
        }
        let plan: [(key: DeviceFileKey, fields: [(String, Node)])]
        let expected: DeviceList
        switch read(legacy: text, display: legacyDisplay, directory: directory) {
        case .failure(let errors): return .failure(errors)
        case .success(let read): (plan, expected) = read
        }

        // Written beside devices.d first, on the same file system, so that devices.d appears whole or not at all.
        let stagingName = ".devices.d.migrating-\(getpid())"
        let staging = directory.appendingPathComponent(stagingName)
        var files: [String] = []
        do {
            try FileManager.default.createDirectory(at: staging, withIntermediateDirectories: false)
            for department in Set(plan.map(\.key.department)).sorted() {
                try FileManager.default.createDirectory(at: staging.appendingPathComponent(department), withIntermediateDirectories: false)
            }
            for (key, fields) in plan {
                var rendered: String?
                for allowUnicode in [true, false] {
                    if let text = try? DeviceFilesEditor.render(fields, allowUnicode: allowUnicode), DeviceFilesEditor.readsBack(text, as: fields) {
                        rendered = text
                        break
                    }
                }
                guard let rendered else {
                    try? FileManager.default.removeItem(at: staging)
                    return failure("the entry of '\(key.id)' cannot be written so that it reads back as it is", "correct it in devices.yaml")
                }
                try writeNew(Data(rendered.utf8), to: staging.appendingPathComponent(key.department).appendingPathComponent(key.name))
                files.append("\(PolicyLoader.devicesDirectory)/\(key.department)/\(key.name)")
            }
            for department in Set(plan.map(\.key.department)) { try DurableFile.syncDirectory(staging.appendingPathComponent(department).path) }
            try DurableFile.syncDirectory(staging.path)
        } catch {
            try? FileManager.default.removeItem(at: staging)
            return failure("cannot write the device files: \(error)", "check the policy directory's permissions and free space")
        }

        var snapshot: PolicySnapshot?
        let written = PolicyLoader.load(directory: directory, snapshot: &snapshot,
                                        changes: PolicyChanges(ignoreLegacyFile: true, devicesDirectory: stagingName))
        guard case .success(let policy) = written, sameDevices(policy.devices, expected) else {
            try? FileManager.default.removeItem(at: staging)
            var issues: [PolicyIssue] = []
            if case .failure(let errors) = written { issues = errors.issues }
            issues.append(PolicyIssue(file: legacyDisplay, line: 0, message: "the device files written do not give the devices of devices.yaml; nothing was changed",
                                      fix: "report this as a bug"))
            return .failure(PolicyErrors(issues: issues))
        }
        guard rename(staging.path, devices.path) == 0 else {
            let reason = PolicyFileReading.errnoText()
            try? FileManager.default.removeItem(at: staging)
            return failure("cannot rename the new directory to devices.d: \(reason)", "check that devices.d does not exist, then run migrate again")
        }
        try? DurableFile.syncDirectory(directory.path)
        guard rename(legacy.path, directory.appendingPathComponent(movedAsideName).path) == 0 else {
            return failure("devices.d was written, but devices.yaml could not be moved aside: \(PolicyFileReading.errnoText())",
                           "move or delete devices.yaml by hand; the loader refuses it beside devices.d")
        }
        try? DurableFile.syncDirectory(directory.path)
        let comments = text.split(separator: "\n").filter { $0.drop(while: { $0 == " " }).hasPrefix("#") }.count
        return .success(Report(files: files.sorted(), departments: Set(plan.map(\.key.department)).count,
                               movedAside: PolicyLoader.display(directory, movedAsideName), commentLines: comments))
    }

    /// devices.yaml's entries as device files to write, and the devices a load of them must give; or every problem
    /// that keeps devices.yaml from loading (checked as a load of devices.d checks it).
    static func read(legacy text: String, display: String, directory: URL)
        -> Result<(plan: [(key: DeviceFileKey, fields: [(String, Node)])], devices: DeviceList), PolicyErrors>
    {
        var reader = SchemaReader(file: display)
        var issues: [PolicyIssue] = []
        var plan: [(key: DeviceFileKey, fields: [(String, Node)])] = []
        var entries: [DeviceEntry] = []
        let policy = topFile(directory, PolicyLoader.policyFile) { PolicyFileContent(file: $0, text: $1) }
        let departments = topFile(directory, PolicyLoader.departmentsFile) { DepartmentsFileContent(file: $0, text: $1) }
        issues += policy.issues + departments.issues
        // Anchors are read here (earlier versions took them); the files get the values written out.
        let root: Node?
        do {
            root = try PolicyYAML.compose(text)
        } catch {
            reader.issue(line: error.line, "YAML syntax error: \(error.problem)", fix: "check indentation and quoting on this line and the one before")
            root = nil
        }
        if let root, let top = reader.mapping(root, what: "devices.yaml", allowed: ["devices"], required: ["devices"]),
           let items = top["devices"].flatMap({ reader.list($0, what: "devices") }) {
            for item in items {
                let reading = DeviceSchema.read(item, reader: &reader)
                guard let device = reading.device, case .mapping(let mapping) = item else { continue }
                var fields: [(String, Node)] = []
                for (key, value) in mapping {
                    guard let name = key.scalar?.string else { continue }
                    switch value {
                    case .sequence(let list): fields.append((name, Node(list.compactMap { $0.scalar?.string }.map { Node($0) }, .implicit, .flow)))
                    default: fields.append((name, Node(value.scalar?.string ?? "")))
                    }
                }
                plan.append((DeviceFileKey(department: device.department, name: device.id + DeviceFiles.suffix), fields))
                entries.append(DeviceEntry(device: device, file: display, idLine: reading.idLine, addressesLine: reading.addressesLine))
                if let known = departments.content, known.isKnown, let internalDomains = policy.content?.internalDomains {
                    if let department = known.departments[device.department] {
                        if !internalDomains.isEmpty {
                            issues += DeviceSchema.ruleIssues(device, reading: reading, file: display, department: department, internalDomains: internalDomains)
                        }
                    } else {
                        issues.append(PolicyIssue(file: display, line: reading.departmentLine, message: "device '\(device.id)' names unknown department '\(device.department)'",
                                                  fix: "use one of: \(known.departments.keys.sorted().joined(separator: ", ")), or add it to departments.yaml"))
                    }
                }
            }
        }
        issues += reader.issues
        let (catalog, clashes) = DeviceCatalog.build(entries)
        issues += clashes
        guard issues.isEmpty else {
            // The problems by place, then what they mean for the migration.
            var errors = PolicyErrors(sorting: issues)
            errors.issues.append(PolicyIssue(file: display, line: 0, message: "devices.yaml does not load, so nothing was migrated",
                                             fix: "correct it first: migrate writes only a devices.yaml that loads with the policy"))
            return .failure(errors)
        }
        return .success((plan, DeviceList(entries: catalog.byID)))
    }

    private static func topFile<Content: CheckedFileContent>(_ directory: URL, _ name: String, parse: (String, String) -> Content) -> TopFile<Content> {
        var file = TopFile<Content>()
        var counts = PolicyLoadCounts()
        _ = file.refresh(directory: directory, name: name, display: PolicyLoader.display(directory, name), counts: &counts, parse: parse)
        return file
    }

    /// Equal but for the lines (an entry's line in devices.yaml, a file's first line).
    static func sameDevices(_ a: DeviceList, _ b: DeviceList) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { x, y in
            var x = x
            x.line = y.line
            return x == y
        }
    }

    /// A file in the staging directory, written through `DurableFile`; its directory is fsynced once at the end.
    private static func writeNew(_ data: Data, to url: URL) throws {
        try DurableFile.write(to: url.path, permissions: 0o644, syncDirectory: false) { output throws(DurableWriteError) in try output.write(data) }
    }
}
