import Foundation
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
    /// The directory itself could not be opened or listed.
    var directoryIssue: PolicyIssue?
    /// Entries that are not device files, or could not be looked at, by name.
    var entryIssues: [String: PolicyIssue] = [:]
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
    /// text by key; nil for a file to leave out) in place of what is on disk. With `only`, looks at just those
    /// entries of those department directories (what changed, as `DeviceFilesWatch` saw it) and keeps every other
    /// record as it is; otherwise lists every directory and looks at every entry. Returns whether anything
    /// differed from the last scan.
    mutating func scan(_ path: String, display: String, overrides: [DeviceFileKey: String?], only: [String: Set<String>]? = nil,
                       counts: inout PolicyLoadCounts) -> Bool {
        let scanStart = PolicyClock.now()
        // Looking at named entries needs devices.d and their departments as the last scan saw them.
        if let only, topIssues.isEmpty, only.keys.allSatisfy({ departments[$0] != nil }),
           case .success(let fd) = PolicyFileReading.openDirectory(path) {
            defer { close(fd) }
            var changed = false
            for department in Set(only.keys).union(overrides.keys.map(\.department)).sorted() {
                var files = departments.removeValue(forKey: department) ?? DepartmentFiles()
                var own: [String: String?] = [:]
                for (key, text) in overrides where key.department == department { own[key.name] = text }
                // A department only an edit names (its first device) is not looked for on disk.
                changed = Self.scan(&files, department: department, in: only[department] == nil ? -1 : fd,
                                    display: display + "/" + department, names: only[department] ?? [], scanStart: scanStart,
                                    overrides: own, pending: &pending, counts: &counts) || changed
                departments[department] = files
            }
            return changed
        }
        counts.everyDeviceFile = true
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
            changed = Self.scan(&files, department: department, in: onDisk ? fd : -1, display: display + "/" + department, names: nil,
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

    /// Scans one department's directory (in `parent`, or none when `parent` is -1): every entry, or with `names` only
    /// those (the others keep their records). Returns whether anything differed.
    private static func scan(_ files: inout DepartmentFiles, department: String, in parent: Int32, display: String, names: Set<String>?,
                             scanStart: Int64, overrides: [String: String?], pending: inout Set<DeviceFileKey>,
                             counts: inout PolicyLoadCounts) -> Bool {
        let issuesBefore = (files.directoryIssue, files.entryIssues)
        files.fresh = []
        var changed = false
        let look = DepartmentLook(department: department, display: display, scanStart: scanStart)
        // Files an edit gives are not looked at on disk.
        var overridden: [String: DeviceFileRecord] = [:]
        for name in overrides.keys { overridden[name] = files.files.removeValue(forKey: name) }

        var fd: Int32 = -1
        var entries: [PolicyFileReading.Entry] = []
        var listedAll = false
        if parent >= 0 {
            switch PolicyFileReading.openDirectory(department, in: parent) {
            case .failure(let problem):
                files.directoryIssue = look.issue(nil, "cannot read the directory: \(problem.message)", fix: "check its permissions")
            case .success(let opened):
                fd = opened
                files.directoryIssue = nil
                if let names {
                    entries = names.sorted().map { PolicyFileReading.Entry(name: $0, type: UInt8(DT_UNKNOWN)) }
                } else {
                    counts.directoriesListed += 1
                    switch PolicyFileReading.list(opened) {
                    case .failure(let problem):
                        files.directoryIssue = look.issue(nil, "cannot list the directory: \(problem.message)", fix: "check its permissions")
                    case .success(let listed):
                        entries = listed
                        listedAll = true
                    }
                }
            }
        } else if names == nil {
            files.directoryIssue = nil
        }
        defer { if fd >= 0 { close(fd) } }
        if names == nil { files.entryIssues = [:] }
        var present = 0  // records that stand for a file on disk now
        entries.removeAll { overrides[$0.name] != nil }
        let outcomes = look.examine(entries, in: fd, records: files.files, counts: &counts)
        for (entry, outcome) in zip(entries, outcomes) {
            files.entryIssues[entry.name] = nil
            switch outcome {
            case .unchanged:
                present += 1
            case .updated(let record):
                present += 1
                files.files[entry.name] = record  // the same text: nothing to check again
            case .read(let record):
                present += 1
                files.files[entry.name] = record
                files.fresh.append(entry.name)
                pending.insert(DeviceFileKey(department: department, name: entry.name))
                changed = true
            case .notAFile(let issue):
                files.entryIssues[entry.name] = issue
                if drop(entry.name, from: &files, department: department, pending: &pending) { changed = true }
            case .gone:
                if drop(entry.name, from: &files, department: department, pending: &pending) { changed = true }
            }
        }
        // A name is listed once: with fewer files found than recorded, some recorded ones are gone. Without a listing
        // (the directory cannot be read, or is not on disk) every recorded file is gone.
        if names == nil, files.files.count > present {
            let listedNames = listedAll ? Set(entries.map(\.name)) : []
            for name in files.files.keys.filter({ !listedNames.contains($0) }) {
                if drop(name, from: &files, department: department, pending: &pending) { changed = true }
            }
        }
        for (name, text) in overrides {
            if let text {
                counts.filesParsed += 1
                files.files[name] = DeviceFileRecord(fingerprint: .inMemory, recentText: nil,
                                                     reading: read(text, key: DeviceFileKey(department: department, name: name), file: display + "/" + name))
                files.fresh.append(name)
                pending.insert(DeviceFileKey(department: department, name: name))
                changed = true
            } else if overridden[name] != nil {
                files.troubled.remove(name)
                pending.insert(DeviceFileKey(department: department, name: name))
                changed = true
            }
        }
        return changed || issuesBefore.0 != files.directoryIssue || issuesBefore.1 != files.entryIssues
    }

    /// Forgets a file's record; returns whether there was one.
    private static func drop(_ name: String, from files: inout DepartmentFiles, department: String, pending: inout Set<DeviceFileKey>) -> Bool {
        guard files.files.removeValue(forKey: name) != nil else { return false }
        files.troubled.remove(name)
        pending.insert(DeviceFileKey(department: department, name: name))
        return true
    }

    /// A device file's entry with the checks of its place: its id is its file name, its department its directory.
    static func read(_ text: String, key: DeviceFileKey, file: String) -> DeviceReading {
        var reading = DeviceSchema.read(file: file, text: text)
        reading.digest = ContentDigest(key.department + "/" + key.name + "\n" + text)
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

/// Looking at the entries of one department's directory.
struct DepartmentLook: Sendable {
    /// Memory the workers of one `examine` fill, each its own slots; not shared otherwise.
    private struct Slots: @unchecked Sendable {
        let outcomes: UnsafeMutablePointer<Outcome>
        let counts: UnsafeMutablePointer<PolicyLoadCounts>
    }

    let department: String
    let display: String
    let scanStart: Int64

    enum Outcome {
        /// The record stands: same fingerprint.
        case unchanged
        /// Read again (a recent file) and the same text: the record with its new fingerprint, nothing to check.
        case updated(DeviceFileRecord)
        /// Read and checked anew.
        case read(DeviceFileRecord)
        /// Not a device file, or not one that can be looked at; its record (if any) goes.
        case notAFile(PolicyIssue)
        /// Not there (any more).
        case gone
    }

    func issue(_ name: String?, _ message: String, fix: String) -> PolicyIssue {
        PolicyIssue(file: name.map { display + "/" + $0 } ?? display, line: 0, message: message, fix: fix)
    }

    /// The entries of the directory open as `fd`, each against its record from the last scan: on several threads when
    /// there are many (a first load reads and parses every file; each file's work is its own).
    func examine(_ entries: [PolicyFileReading.Entry], in fd: Int32, records: [String: DeviceFileRecord],
                 counts: inout PolicyLoadCounts) -> [Outcome] {
        let workers = min(ProcessInfo.processInfo.activeProcessorCount, entries.count / 64)
        guard workers > 1 else { return entries.map { examine($0, in: fd, record: records[$0.name], counts: &counts) } }
        let slots = Slots(outcomes: .allocate(capacity: entries.count), counts: .allocate(capacity: workers))
        defer {
            slots.outcomes.deinitialize(count: entries.count)
            slots.outcomes.deallocate()
            slots.counts.deinitialize(count: workers)
            slots.counts.deallocate()
        }
        // Worker w initializes outcome slots w, w + workers, ... and its own counts slot; `records` is only read.
        DispatchQueue.concurrentPerform(iterations: workers) { worker in
            var own = PolicyLoadCounts()
            var i = worker
            while i < entries.count {
                (slots.outcomes + i).initialize(to: examine(entries[i], in: fd, record: records[entries[i].name], counts: &own))
                i += workers
            }
            (slots.counts + worker).initialize(to: own)
        }
        for c in UnsafeBufferPointer(start: slots.counts, count: workers) {
            counts.filesStatted += c.filesStatted
            counts.filesRead += c.filesRead
            counts.filesParsed += c.filesParsed
        }
        let outcomes = Array(UnsafeBufferPointer(start: slots.outcomes, count: entries.count))
        return outcomes
    }

    /// One entry of the directory open as `fd`, against its record from the last scan.
    func examine(_ entry: PolicyFileReading.Entry, in fd: Int32, record: DeviceFileRecord?, counts: inout PolicyLoadCounts) -> Outcome {
        let name = entry.name
        guard name.hasSuffix(DeviceFiles.suffix), name.utf8.count > DeviceFiles.suffix.utf8.count else {
            var isDirectory = entry.type == DT_DIR
            if entry.type == DT_UNKNOWN {
                switch PolicyFileReading.status(name, in: fd) {
                case .failure(.missing): return .gone
                case .failure: break
                case .success(let info): isDirectory = PolicyFileReading.isDirectory(info)
                }
            }
            return .notAFile(issue(name, "not a device file: a department's directory holds files named <device-id>.yaml",
                                   fix: isDirectory ? "move this directory out of devices.d" : "rename it to <device-id>.yaml, or move it out of devices.d"))
        }
        counts.filesStatted += 1
        let info: stat
        switch PolicyFileReading.status(name, in: fd) {
        case .failure(.missing): return .gone  // removed since the listing (or the event)
        case .failure(let problem): return .notAFile(issue(name, problem.message, fix: "check its permissions"))
        case .success(let i): info = i
        }
        guard PolicyFileReading.isRegularFile(info) else {
            return .notAFile(issue(name, FileReadProblem.notRegular.message, fix: "a device file is a regular file; put the file itself in its place"))
        }
        if let record, record.recentText == nil, record.fingerprint == FileFingerprint(info) { return .unchanged }
        counts.filesRead += 1
        let file = display + "/" + name
        switch PolicyFileReading.readText(name, in: fd, limit: PolicyFileReading.deviceFileLimit) {
        case .failure(.missing):
            return .gone
        case .failure(let problem):
            // Read again at every scan (a permission put right does not change the fingerprint), and a change
            // only when the problem is another.
            let reading = DeviceReading(file: file, issues: [
                PolicyIssue(file: file, line: 0, message: problem.message, fix: "make it a readable UTF-8 text file of a few lines"),
            ])
            guard record?.reading.issues != reading.issues else { return .unchanged }
            return .read(DeviceFileRecord(fingerprint: .inMemory, recentText: nil, reading: reading))
        case .success(let (text, fingerprint)):
            let recent = PolicyClock.isRecent(fingerprint, scanStart: scanStart) ? text : nil
            if var record, record.recentText == text {
                record.fingerprint = fingerprint
                record.recentText = recent
                return .updated(record)
            }
            counts.filesParsed += 1
            return .read(DeviceFileRecord(fingerprint: fingerprint, recentText: recent,
                                          reading: DeviceFiles.read(text, key: DeviceFileKey(department: department, name: name), file: file)))
        }
    }
}
