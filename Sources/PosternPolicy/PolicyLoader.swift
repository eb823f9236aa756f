import Foundation

/// Reads and validates a policy directory: `policy.yaml`, `departments.yaml` and `devices.d/<department>/<device-id>.yaml`.
///
/// A load given the snapshot of the load before (`PolicyReader` keeps it) looks at each device file's fingerprint
/// (inode, size, modification time) and reads and checks only the files whose fingerprint changed. It looks at
/// every file (one listing per directory, one `stat` per file), or, when `PolicyReader`'s watch of devices.d
/// (`DeviceFilesWatch`) names what changed, at those entries alone. What spans files is checked on the whole set
/// every time: unknown department directories, duplicate ids and overlapping addresses (`DeviceCatalog`, which
/// checks a changed device against its neighbours in the last good tables), and the field rules of each device
/// with its department and policy.yaml (worked out again for every device of a department whose rules changed).
public enum PolicyLoader {
    public static let policyFile = "policy.yaml"
    public static let departmentsFile = "departments.yaml"
    public static let devicesDirectory = "devices.d"
    /// The single devices file of earlier versions; `postern devices migrate` turns it into devices.d.
    public static let legacyDevicesFile = "devices.yaml"
    public static let defaultReminderDays = [30, 7, 1]

    /// Loads the policy from scratch.
    public static func load(directory: URL) -> Result<PolicySet, PolicyErrors> {
        var snapshot: PolicySnapshot?
        return load(directory: directory, snapshot: &snapshot)
    }

    /// Loads the policy, reading only what changed since `previous` was taken; returns the snapshot for the next load.
    public static func load(directory: URL, reusing previous: PolicySnapshot?) -> (policy: Result<PolicySet, PolicyErrors>, snapshot: PolicySnapshot) {
        var snapshot = previous
        let policy = load(directory: directory, snapshot: &snapshot)
        return (policy, snapshot ?? PolicySnapshot(directory: display(directory)))
    }

    /// The display path of a file in the policy directory, as messages name it.
    public static func display(_ directory: URL, _ name: String? = nil) -> String {
        let base = directory.relativePath
        guard let name else { return base }
        return base.hasSuffix("/") ? base + name : base + "/" + name
    }

    /// Loads the policy with `changes` in place of what is on disk; updates `snapshot` (which must be this
    /// directory's, or nil) to what this load read. With `only` (and a snapshot), looks at just those entries of
    /// devices.d (entry names by department directory) and takes every other device file as the snapshot has it.
    static func load(directory: URL, snapshot: inout PolicySnapshot?, changes: PolicyChanges = PolicyChanges(),
                     only: [String: Set<String>]? = nil) -> Result<PolicySet, PolicyErrors> {
        let root = display(directory)
        // Moved out of the optional, so that the records are not shared (and copied) while they change.
        let reusing = snapshot?.directory == root
        var state = reusing ? snapshot ?? PolicySnapshot(directory: root) : PolicySnapshot(directory: root)
        snapshot = nil
        defer { snapshot = state }
        state.counts = PolicyLoadCounts()
        var changed = false

        changed = state.policyFile.refresh(directory: directory, name: policyFile, display: display(directory, policyFile), counts: &state.counts) {
            PolicyFileContent(file: $0, text: $1)
        } || changed
        changed = state.departmentsFile.refresh(directory: directory, name: departmentsFile, display: display(directory, departmentsFile),
                                                counts: &state.counts) { DepartmentsFileContent(file: $0, text: $1) } || changed
        let legacy = !changes.ignoreLegacyFile && FileManager.default.fileExists(atPath: directory.appendingPathComponent(legacyDevicesFile).path)
        changed = changed || legacy != state.legacyFilePresent
        state.legacyFilePresent = legacy
        let devicesName = changes.devicesDirectory ?? devicesDirectory
        // Only entries of the directory the snapshot scanned can be looked at alone.
        let scope = reusing && changes.devicesDirectory == nil ? only : nil
        changed = state.devices.scan(directory.appendingPathComponent(devicesName).path, display: display(directory, devicesName),
                                     overrides: changes.deviceFiles, only: scope, counts: &state.counts) || changed
        state.changed = changed

        let policy = state.policyFile.content
        let departments = state.departmentsFile.content
        var issues = state.policyFile.issues + state.departmentsFile.issues
        if let departments, let policy {
            issues += departments.domainIssues(file: display(directory, departmentsFile), internalDomains: policy.internalDomains)
        }
        if legacy {
            issues.append(PolicyIssue(
                file: display(directory, legacyDevicesFile), line: 0,
                message: "devices.yaml is no longer read: each device is a file devices.d/<department>/<device-id>.yaml",
                fix: "run `postern devices migrate --policies \(root)`, which writes devices.d from it and moves it aside"))
        }
        state.devices.checkRules(internalDomains: policy?.internalDomains ?? [], departments: departments)
        issues += state.devices.issues(departments: departments, display: display(directory, devicesName))

        // A clash with a file an edit gives is reported on that file: the one the edit would write.
        let edited = Set(changes.deviceFiles.keys.map { display(directory, devicesName) + "/" + $0.department + "/" + $0.name })
        let catalog = state.devices.catalog(patching: state.catalog, blaming: edited, counts: &state.counts, issues: &issues)
        guard issues.isEmpty, let policy, let timeZone = policy.timeZone, let departments else {
            return .failure(PolicyErrors(sorting: issues))
        }
        state.catalog = catalog
        state.devices.pending = []
        return .success(PolicySet(timeZone: timeZone, internalDomains: policy.internalDomains, globalSunset: policy.globalSunset,
                                  reminderDays: policy.reminderDays, listeners: policy.listeners, serviceAccounts: policy.serviceAccounts,
                                  departments: departments.departments, catalog: catalog,
                                  topFilesDigest: ContentDigest((state.policyFile.text ?? "") + "\u{0}" + (state.departmentsFile.text ?? ""))))
    }
}

/// What a load reads in place of the files on disk: an edit being validated, or a migration being checked.
struct PolicyChanges {
    /// Device files by key: their text, or nil for a file to leave out.
    var deviceFiles: [DeviceFileKey: String?] = [:]
    /// Load as if there were no devices.yaml.
    var ignoreLegacyFile = false
    /// Another directory of the policy directory in place of devices.d.
    var devicesDirectory: String?
}

/// What one load did: the directories it listed and the device files it looked at, read and parsed; whether
/// the device tables were patched from the last good load's or built from every device.
public struct PolicyLoadCounts: Sendable, Hashable {
    public var directoriesListed = 0
    public var filesStatted = 0
    /// Device files, policy.yaml and departments.yaml read.
    public var filesRead = 0
    /// Device files checked (read and found different, or new).
    public var filesParsed = 0
    public var catalogPatched = false
    /// Every entry of devices.d looked at (listed and `stat`ed), not just those a watch named.
    public var everyDeviceFile = false

    public init() {}
}

/// What a load read, for the next load of the same directory: each device file's fingerprint and findings, the
/// other files' texts and findings, and the device tables of the last load that succeeded.
public struct PolicySnapshot: Sendable {
    let directory: String
    var policyFile = TopFile<PolicyFileContent>()
    var departmentsFile = TopFile<DepartmentsFileContent>()
    var legacyFilePresent = false
    var devices = DeviceFiles()
    /// The last good load's device tables; `devices.pending` lists the files changed since.
    var catalog: DeviceCatalog?
    /// What the load that made this snapshot did.
    public internal(set) var counts = PolicyLoadCounts()
    /// Whether that load found any file different from the load before it (always, for a first load).
    public internal(set) var changed = true

    init(directory: String) { self.directory = directory }
}

/// policy.yaml or departments.yaml: read at every load (they are small) and checked again when the text differs.
/// What checking one of the top files gave: its content and its own problems.
protocol CheckedFileContent: Sendable {
    var issues: [PolicyIssue] { get }
}

extension PolicyFileContent: CheckedFileContent {}
extension DepartmentsFileContent: CheckedFileContent {}

struct TopFile<Content: CheckedFileContent>: Sendable {
    var text: String?
    var problem: FileReadProblem?
    var content: Content?
    private var readIssues: [PolicyIssue] = []

    var issues: [PolicyIssue] { readIssues + (content?.issues ?? []) }

    /// Returns whether the file differs from the last reading.
    mutating func refresh(directory: URL, name: String, display: String, counts: inout PolicyLoadCounts,
                          parse: (String, String) -> Content) -> Bool {
        counts.filesRead += 1
        switch PolicyFileReading.readText(directory.appendingPathComponent(name).path, limit: PolicyFileReading.policyFileLimit, followSymlinks: true) {
        case .success(let (text, _)):
            guard text != self.text else { return false }
            (self.text, problem, content, readIssues) = (text, nil, parse(display, text), [])
        case .failure(let problem):
            guard problem != self.problem else { return false }
            let message = problem == .notUTF8 ? problem.message : "cannot read file: \(problem.message)"
            let fix = problem == .notUTF8 ? "save it as UTF-8" : "create \(name) in \(directory.relativePath) (see the shipped policies/ for an example)"
            (text, self.problem, content, readIssues) = (nil, problem, nil, [PolicyIssue(file: display, line: 0, message: message, fix: fix)])
        }
        return true
    }
}

/// Loads one policy directory again and again, each time reading only what changed since the last load.
///
/// Which device files may have changed, it learns from a `DeviceFilesWatch` where the platform has one: a load then
/// looks at the entries the kernel named, not at every file. A load asked to look at everything (a SIGHUP), the
/// first load, and any load after the watch lost track, scan all of devices.d.
public final class PolicyReader: @unchecked Sendable {
    public let directory: URL
    /// Serialises loads; guards `snapshot` and `watch`.
    private let lock = NSLock()
    private var snapshot: PolicySnapshot?
    private var watch: DeviceFilesWatch?

    public init(directory: URL) { self.directory = directory }

    /// The policy as the files are now; `changed` is false when no file differs from the last load's. With
    /// `everything`, every device file's fingerprint is looked at, whatever the watch says.
    public func load(everything: Bool = false) -> (policy: Result<PolicySet, PolicyErrors>, changed: Bool, counts: PolicyLoadCounts) {
        lock.withLock {
            var only: [String: Set<String>]?
            if !everything, snapshot != nil, let watch, case .entries(let names) = watch.changes() {
                only = names
            } else {
                // Watching starts before the scan, so that a change while it runs is an event for the next load.
                watch = nil
                watch = DeviceFilesWatch.start(directory: directory.path, devicesName: PolicyLoader.devicesDirectory)
            }
            let policy = PolicyLoader.load(directory: directory, snapshot: &snapshot, only: only)
            return (policy, snapshot?.changed ?? true, snapshot?.counts ?? PolicyLoadCounts())
        }
    }

    /// What the latest load did.
    public var lastCounts: PolicyLoadCounts { lock.withLock { snapshot?.counts ?? PolicyLoadCounts() } }

    /// The policy with `changes` in place of the files on disk, without keeping what this load read. Other device
    /// files are taken as the latest load saw them (an edit loads first, under the lock of devices.d).
    func load(changes: PolicyChanges) -> Result<PolicySet, PolicyErrors> {
        lock.withLock {
            var copy = snapshot
            return PolicyLoader.load(directory: directory, snapshot: &copy, changes: changes, only: [:])
        }
    }
}
