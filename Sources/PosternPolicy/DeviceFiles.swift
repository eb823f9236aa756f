#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// devices.d as the last load saw it: one directory per department, one file per device
// (`devices.d/<department>/<device-id>.yaml`). A scan lists each directory once and `stat`s each file once;
// only a file whose fingerprint (inode, size, modification time) changed is read and checked again.

/// Where a device file is: its department's directory and its file name.
struct DeviceFileKey: Hashable, Comparable, Sendable {
    var department: String
    var name: String

    /// The device id the file name gives (`chem-scanner-1.yaml` → `chem-scanner-1`).
    var id: String { String(name.dropLast(DeviceFiles.suffix.count)) }

    static func < (a: DeviceFileKey, b: DeviceFileKey) -> Bool { (a.department, a.name) < (b.department, b.name) }
}

/// One device file as the last scan read it.
struct DeviceFileRecord: Sendable {
    var fingerprint: FileFingerprint
    /// Modified so close to the scan that a second change could keep the fingerprint: the text, to compare with
    /// the next reading. Nil once the file is older than that.
    var recentText: String?
    /// The entry's own findings, with those of its place (id and file name, department and directory).
    var reading: DeviceReading
    /// What `DeviceFieldRules` say about it with its department and policy.yaml (`DepartmentFiles.ruleContext`).
    var ruleIssues: [PolicyIssue] = []

    var hasIssues: Bool { !reading.issues.isEmpty || !ruleIssues.isEmpty }
}

/// What the field rules of a department's devices depend on; the rule issues are worked out again when it changes.
struct RuleContext: Sendable, Equatable {
    var internalDomains: [DomainPattern]
    var department: Department
}

/// One department's directory.
struct DepartmentFiles: Sendable {
    var files: [String: DeviceFileRecord] = [:]
    /// Entries that are not device files, or could not be read.
    var otherIssues: [PolicyIssue] = []
    /// Files with issues of their own or rule issues.
    var troubled: Set<String> = []
    /// Files read by the latest scan (their rule issues are worked out again).
    var fresh: [String] = []
    var ruleContext: RuleContext?
}

struct DeviceFiles: Sendable {
    static let suffix = ".yaml"

    var departments: [String: DepartmentFiles] = [:]
    /// Problems of devices.d itself (missing, or holding other things than department directories).
    var topIssues: [PolicyIssue] = []
    /// Files added, changed or removed since the catalog of the last load that succeeded.
    var pending: Set<DeviceFileKey> = []

    /// Brings the records up to date with the directory at `path` (shown as `display`), with `overrides` (file
    /// text by key; nil for a file to leave out) in place of what is on disk. Returns whether anything differed
    /// from the last scan.
    mutating func scan(_ path: String, display: String, overrides: [DeviceFileKey: String?], counts: inout PolicyLoadCounts) -> Bool {
        let scanStart = PolicyClock.now()
        let topBefore = topIssues
        topIssues = []
        var changed = false
        var listed: [String] = []
        var fd: Int32 = -1
        switch PolicyFileReading.openDirectory(path) {
        case .failure(let problem):
            topIssues.append(PolicyIssue(
                file: display, line: 0,
                message: problem == .missing ? "the devices directory does not exist" : "cannot read the devices directory: \(problem.message)",
                fix: "create it: one directory per department, one file per device (`postern devices migrate` makes it from a devices.yaml)"))
        case .success(let opened):
            fd = opened
            counts.directoriesListed += 1
            switch PolicyFileReading.list(opened) {
            case .failure(let problem):
                topIssues.append(PolicyIssue(file: display, line: 0, message: "cannot list the devices directory: \(problem.message)",
                                             fix: "check its permissions"))
            case .success(let entries):
                for entry in entries.sorted(by: { $0.name < $1.name }) {
                    if isDirectory(entry, in: opened) {
                        listed.append(entry.name)
                    } else {
                        topIssues.append(PolicyIssue(file: display + "/" + entry.name, line: 0,
                                                     message: "devices.d holds one directory per department, and this is not one",
                                                     fix: "move a device file into its department's directory: devices.d/<department>/<id>.yaml"))
                    }
                }
            }
        }
        defer { if fd >= 0 { close(fd) } }
        // Directories only an edit being validated has (a department's first device) are scanned too, as empty.
        let names = Set(listed).union(overrides.keys.map(\.department))
        for department in departments.keys where !names.contains(department) {
            for name in departments[department]?.files.keys.sorted() ?? [] { pending.insert(DeviceFileKey(department: department, name: name)) }
            departments[department] = nil
            changed = true
        }
        for department in names.sorted() {
            // Taken out of the dictionary while it changes, so that its records are not copied.
            var files = departments.removeValue(forKey: department) ?? DepartmentFiles()
            var own: [String: String?] = [:]
            for (key, text) in overrides where key.department == department { own[key.name] = text }
            let onDisk = listed.contains(department) && fd >= 0
            changed = Self.scan(&files, department: department, in: onDisk ? fd : -1, display: display + "/" + department,
                                scanStart: scanStart, overrides: own, pending: &pending, counts: &counts) || changed
            departments[department] = files
        }
        return changed || topIssues != topBefore
    }

    private func isDirectory(_ entry: PolicyFileReading.Entry, in fd: Int32) -> Bool {
        if entry.type == DT_DIR { return true }
        guard entry.type == DT_UNKNOWN, case .success(let info) = PolicyFileReading.status(entry.name, in: fd) else { return false }
        return PolicyFileReading.isDirectory(info)
    }

    /// Scans one department's directory (in `parent`, or none when `parent` is -1); returns whether anything differed.
    private static func scan(_ files: inout DepartmentFiles, department: String, in parent: Int32, display: String, scanStart: Int64,
                             overrides: [String: String?], pending: inout Set<DeviceFileKey>, counts: inout PolicyLoadCounts) -> Bool {
        let otherBefore = files.otherIssues
        files.otherIssues = []
        files.fresh = []
        var changed = false
        func store(_ record: DeviceFileRecord, _ name: String) {
            files.files[name] = record
            files.fresh.append(name)
            pending.insert(DeviceFileKey(department: department, name: name))
            changed = true
        }
        func drop(_ name: String) {
            guard files.files.removeValue(forKey: name) != nil else { return }
            files.troubled.remove(name)
            pending.insert(DeviceFileKey(department: department, name: name))
            changed = true
        }
        func issue(_ name: String?, _ message: String, fix: String) {
            files.otherIssues.append(PolicyIssue(file: name.map { display + "/" + $0 } ?? display, line: 0, message: message, fix: fix))
        }
        // Files an edit gives are not looked at on disk.
        var overridden: [String: DeviceFileRecord] = [:]
        for name in overrides.keys { overridden[name] = files.files.removeValue(forKey: name) }

        var entries: [PolicyFileReading.Entry] = []
        var fd: Int32 = -1
        if parent >= 0 {
            switch PolicyFileReading.openDirectory(department, in: parent) {
            case .failure(let problem):
                issue(nil, "cannot read the directory: \(problem.message)", fix: "check its permissions")
            case .success(let opened):
                fd = opened
                counts.directoriesListed += 1
                switch PolicyFileReading.list(opened) {
                case .failure(let problem): issue(nil, "cannot list the directory: \(problem.message)", fix: "check its permissions")
                case .success(let listed): entries = listed
                }
            }
        }
        defer { if fd >= 0 { close(fd) } }
        var present = 0  // records that stand for a file on disk now
        var unusable: [String] = []
        for entry in entries where overrides[entry.name] == nil {
            let name = entry.name
            guard name.hasSuffix(suffix), name.utf8.count > suffix.utf8.count else {
                issue(name, "not a device file: a department's directory holds files named <device-id>.yaml",
                      fix: entry.type == DT_DIR ? "move this directory out of devices.d" : "rename it to <device-id>.yaml, or move it out of devices.d")
                continue
            }
            counts.filesStatted += 1
            let info: stat
            switch PolicyFileReading.status(name, in: fd) {
            case .failure(.missing): continue  // removed since the listing
            case .failure(let problem):
                issue(name, problem.message, fix: "check its permissions")
                unusable.append(name)
                continue
            case .success(let i): info = i
            }
            guard PolicyFileReading.isRegularFile(info) else {
                issue(name, FileReadProblem.notRegular.message, fix: "a device file is a regular file; put the file itself in its place")
                unusable.append(name)
                continue
            }
            if let record = files.files[name], record.recentText == nil, record.fingerprint == FileFingerprint(info) {
                present += 1
                continue
            }
            counts.filesRead += 1
            switch PolicyFileReading.readText(name, in: fd, limit: PolicyFileReading.deviceFileLimit) {
            case .failure(.missing):
                continue
            case .failure(let problem):
                // Read again at every scan (a permission put right does not change the fingerprint), and a change
                // only when the problem is another.
                present += 1
                let reading = DeviceReading(file: display + "/" + name, issues: [
                    PolicyIssue(file: display + "/" + name, line: 0, message: problem.message, fix: "make it a readable UTF-8 text file of a few lines"),
                ])
                if files.files[name]?.reading.issues != reading.issues {
                    store(DeviceFileRecord(fingerprint: .inMemory, recentText: nil, reading: reading), name)
                }
            case .success(let (text, fingerprint)):
                present += 1
                let recent = PolicyClock.isRecent(fingerprint, scanStart: scanStart) ? text : nil
                if var record = files.files[name], record.recentText == text {
                    // Read again only for its recent timestamp, and the same text: nothing to check again.
                    record.fingerprint = fingerprint
                    record.recentText = recent
                    files.files[name] = record
                    continue
                }
                counts.filesParsed += 1
                store(DeviceFileRecord(fingerprint: fingerprint, recentText: recent,
                                       reading: read(text, key: DeviceFileKey(department: department, name: name), file: display + "/" + name)), name)
            }
        }
        for name in unusable { drop(name) }
        // A name is listed once: with fewer files found than recorded, some recorded ones are gone.
        if files.files.count > present {
            let names = Set(entries.map(\.name))
            for name in files.files.keys.filter({ !names.contains($0) }) { drop(name) }
        }
        for (name, text) in overrides {
            if let text {
                counts.filesParsed += 1
                store(DeviceFileRecord(fingerprint: .inMemory, recentText: nil,
                                       reading: read(text, key: DeviceFileKey(department: department, name: name), file: display + "/" + name)), name)
            } else if overridden[name] != nil {
                files.troubled.remove(name)
                pending.insert(DeviceFileKey(department: department, name: name))
                changed = true
            }
        }
        return changed || files.otherIssues != otherBefore
    }

    /// A device file's entry with the checks of its place: its id is its file name, its department its directory.
    static func read(_ text: String, key: DeviceFileKey, file: String) -> DeviceReading {
        var reading = DeviceSchema.read(file: file, text: text)
        if let id = reading.id, id != key.id {
            reading.issues.append(PolicyIssue(file: file, line: reading.idLine, message: "device id '\(id)' does not match the file name '\(key.name)'",
                                              fix: "name the file \(id)\(suffix) (git mv), or correct id:"))
            reading.device = nil
        }
        if let department = reading.department, department != key.department {
            reading.issues.append(PolicyIssue(
                file: file, line: reading.departmentLine,
                message: "device '\(reading.id ?? key.id)' names department '\(department)' but its file is in the directory of '\(key.department)'",
                fix: "move the file to devices.d/\(department)/ (git mv), or correct department:"))
            reading.device = nil
        }
        return reading
    }
}
