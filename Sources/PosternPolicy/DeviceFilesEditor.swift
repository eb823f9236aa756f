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

/// Registers, revokes and re-dates devices, each by writing one device file.
///
/// Every change holds the lock of devices.d (`flock` on `devices.d/.lock`), starts from a policy that loads, is
/// validated with the whole policy as it would be afterwards, and then writes the one file durably
/// (`DurableFile.write`: temporary file, fdatasync, rename, fsync of the directory). Nothing else in devices.d is
/// touched, and nothing is removed: a revoked device keeps its file, marked with the day, who and why. The text is
/// made by Yams's emitter from the values, and read back before it is written. What is written follows the rules
/// of the registration page (`DeviceFieldRules`): a sunset not in the past and not after the last day the rules
/// allow, senders in the department's domains. A refusal names the file that would have been written, without
/// lines (the file was not written, so there are no lines to look at), or the other file it clashes with.
public enum DeviceFilesEditor {
    /// The lock file every change of devices.d holds; hidden, so scans pass it by.
    public static let lockFile = ".lock"

    /// Writes a new device file. The registration date is today in the policy's time zone; the sunset defaults to the
    /// last day the rules allow (the earlier of the department's and the global sunset). Returns the device as
    /// loaded, or why it was refused.
    public static func add(_ registration: DeviceRegistration, directory: URL, now: Date, reader: PolicyReader? = nil)
        -> Result<RegisteredDevice, PolicyErrors>
    {
        edit(directory: directory, reader: reader, refusal: "no device was added") { current in
            let r = registration
            // The id and department name a file and a directory: checked before any path is made of them.
            guard SchemaReader.isIdentifier(r.id) else {
                return .refused("device id '\(r.id)' is not a name of a-z, 0-9, '-', '_' and '.' starting with a letter or digit (at most \(SchemaReader.maxIdentifierLength))",
                                "use a name like chem-scanner-2 (it is also the device's file name)", nil)
            }
            guard let department = current.departments[r.department] else {
                let names = current.departments.keys.sorted().joined(separator: ", ")
                return .refused("device '\(r.id)' names unknown department '\(r.department)'", "use one of: \(names), or add it to departments.yaml", nil)
            }
            let key = DeviceFileKey(department: r.department, name: r.id + DeviceFiles.suffix)
            if let existing = current.device(id: r.id) {
                let state = existing.revocation.map { "revoked on \($0.date)" } ?? "registered"
                return .refused("device '\(r.id)' is already \(state) (devices.d/\(existing.department)/\(existing.id).yaml)",
                                "choose another id", key)
            }
            let latest = DeviceFieldRules.latestSunset(department: department, globalSunset: current.globalSunset)
            guard let sunset = r.sunset ?? latest?.date else {
                return .refused("no sunset date given, and neither department \(r.department) nor policy.yaml sets one", "pass --sunset YYYY-MM-DD", key)
            }
            if let problem = DeviceFieldRules.sunsetProblem(sunset, department: department, globalSunset: current.globalSunset,
                                                            today: current.today(now)) {
                return .refused("device '\(r.id)': \(problem)", "give a sunset within the rules (or none: the last day they allow)", key)
            }
            var fields: [(String, Node)] = [("id", scalar(r.id)), ("department", scalar(r.department)), ("owner", scalar(r.owner))]
            if let location = r.location { fields.append(("location", scalar(location))) }
            if let note = r.note { fields.append(("note", scalar(note))) }
            fields.append(("addresses", list(r.addresses)))
            fields.append(("senders", list(r.senders)))
            if !r.recipients.isEmpty { fields.append(("recipients", list(r.recipients))) }
            fields.append(("registered", scalar(current.today(now).description)))
            fields.append(("sunset", scalar(sunset.description)))
            if let size = r.maxMessageSize { fields.append(("max-message-size", scalar(size))) }
            if let rate = r.maxRate { fields.append(("max-rate", scalar(rate))) }
            return .write(key, fields) { $0.device(id: r.id) }
        }
    }

    /// Marks the device revoked: its file gets `revoked` (today), `revoked-by` and `revoke-reason`, and stays. The
    /// gateway then refuses the device naming the revocation, and its addresses and id stay taken until the file is
    /// deleted. Returns the device as revoked.
    public static func revoke(id: String, by actor: String, reason: String, directory: URL, now: Date, reader: PolicyReader? = nil)
        -> Result<RegisteredDevice, PolicyErrors>
    {
        edit(directory: directory, reader: reader, refusal: "no device was revoked") { current in
            guard let device = current.device(id: id) else { return .refused("device '\(id)' is not registered", "check the id (postern devices list)", nil) }
            let key = DeviceFileKey(department: device.department, name: device.id + DeviceFiles.suffix)
            if let revocation = device.revocation {
                return .refused("device '\(id)' was already revoked on \(revocation.date) by \(revocation.by)", "nothing to do", key)
            }
            let reason = reason.trimmingCharacters(in: .whitespacesAndNewlines)
            let actor = actor.trimmingCharacters(in: .whitespacesAndNewlines)
            guard !reason.isEmpty else { return .refused("no reason given for revoking '\(id)'", "say why, e.g. --reason \"replaced by a TLS-capable copier\"", key) }
            guard !actor.isEmpty else { return .refused("no one named as revoking '\(id)'", "say who revokes it", key) }
            guard reason.count <= 500 else { return .refused("the reason for revoking '\(id)' is longer than 500 characters", "say it shorter", key) }
            let today = current.today(now)
            return rewrite(key, directory: directory, id: id) { fields in
                fields.removeAll { DeviceSchema.revocationKeys.contains($0.0) }
                fields += [("revoked", scalar(today.description)), ("revoked-by", scalar(actor)), ("revoke-reason", scalar(reason))]
            } loaded: { policy in
                policy.device(id: id).flatMap { $0.revocation == Revocation(date: today, by: actor, reason: reason) ? $0 : nil }
            }
        }
    }

    /// Sets the device's own sunset date (its last valid day), within the rules as of `now` (`DeviceFieldRules`); the
    /// department and global dates still apply on top. The file is written anew from its values: comments in it are
    /// not kept.
    public static func setSunset(id: String, date: CalendarDate, directory: URL, now: Date, reader: PolicyReader? = nil)
        -> Result<RegisteredDevice, PolicyErrors>
    {
        edit(directory: directory, reader: reader, refusal: "no sunset was changed") { current in
            guard let device = current.device(id: id) else { return .refused("device '\(id)' is not registered", "check the id (postern devices list)", nil) }
            let key = DeviceFileKey(department: device.department, name: device.id + DeviceFiles.suffix)
            if let revocation = device.revocation {
                return .refused("device '\(id)' was revoked on \(revocation.date)", "register it anew under another id, or delete its file first", key)
            }
            if let problem = DeviceFieldRules.sunsetProblem(date, department: current.departments[device.department],
                                                            globalSunset: current.globalSunset, today: current.today(now)) {
                return .refused("device '\(id)': \(problem)", "give a sunset within the rules", key)
            }
            return rewrite(key, directory: directory, id: id) { fields in
                fields = fields.map { $0.0 == "sunset" ? ("sunset", scalar(date.description)) : $0 }
            } loaded: { policy in
                policy.device(id: id).flatMap { $0.sunset == date ? $0 : nil }
            }
        }
    }

    /// The device file's keys and values as they are, changed by `change`: what is written back.
    private static func rewrite(_ key: DeviceFileKey, directory: URL, id: String, _ change: (inout [(String, Node)]) -> Void,
                                loaded: @escaping (PolicySet) -> RegisteredDevice?) -> Change {
        let path = directory.appendingPathComponent(PolicyLoader.devicesDirectory).appendingPathComponent(key.department).appendingPathComponent(key.name)
        guard case .success(let (text, _)) = PolicyFileReading.readText(path.path, limit: PolicyFileReading.deviceFileLimit),
              case .mapping(let mapping)? = try? PolicyYAML.compose(text)
        else { return .refused("cannot read the file of '\(id)' again", "try again, or edit the file by hand", key) }
        var fields: [(String, Node)] = []
        for (name, value) in mapping {
            guard case .scalar(let name) = name else { continue }
            switch value {
            case .scalar(let s): fields.append((name.string, scalar(s.string)))
            case .sequence(let items): fields.append((name.string, list(items.compactMap { $0.scalar?.string })))
            default: return .refused("the file of '\(id)' has a value that is not text or a list", "edit the file by hand", key)
            }
        }
        change(&fields)
        return .write(key, fields, loaded: loaded)
    }

    // MARK: The one path every change takes

    enum Change {
        /// Write `fields` as the file; `loaded` finds the device in the policy afterwards (nil: not the intended effect).
        case write(DeviceFileKey, [(String, Node)], loaded: (PolicySet) -> RegisteredDevice?)
        /// Refused before anything was written: the message, the fix, and the file that would have been written.
        case refused(String, String, DeviceFileKey?)
    }

    private static func edit(directory: URL, reader: PolicyReader?, refusal: String, _ change: (PolicySet) -> Change)
        -> Result<RegisteredDevice, PolicyErrors>
    {
        let devices = directory.appendingPathComponent(PolicyLoader.devicesDirectory)
        let display = PolicyLoader.display(directory, PolicyLoader.devicesDirectory)
        func failure(_ message: String, _ fix: String, file: String = display) -> Result<RegisteredDevice, PolicyErrors> {
            .failure(PolicyErrors(issues: [PolicyIssue(file: file, line: 0, message: message, fix: fix)]))
        }
        let lock: DevicesLock
        switch DevicesLock.take(devices.path) {
        case .failure(let problem): return failure(problem.message, "check that the devices directory exists and is writable (postern check)")
        case .success(let held): lock = held
        }
        defer { lock.release() }
        let reader = reader.flatMap { $0.directory.standardizedFileURL == directory.standardizedFileURL ? $0 : nil } ?? PolicyReader(directory: directory)
        let current: PolicySet
        switch reader.load().policy {
        case .failure(var errors):
            errors.issues.append(PolicyIssue(file: display, line: 0, message: "the current policy does not load, so \(refusal)",
                                             fix: "fix the errors above first (postern check)"))
            return .failure(errors)
        case .success(let policy): current = policy
        }
        switch change(current) {
        case .refused(let message, let fix, let key):
            return failure(message, fix, file: key.map { "\(display)/\($0.department)/\($0.name)" } ?? display)
        case .write(let key, let fields, let loaded):
            let file = "\(display)/\(key.department)/\(key.name)"
            // Yams keeps text in the file as it is (no escapes) where that reads back the same, and escapes it where not.
            var text = ""
            for allowUnicode in [true, false] {
                guard let rendered = try? render(fields, allowUnicode: allowUnicode) else { continue }
                text = rendered
                if readsBack(rendered, as: fields) { break }
            }
            guard readsBack(text, as: fields) else { return failure("the entry cannot be written so that it reads back as given", "correct the request", file: file) }
            let policy: PolicySet
            switch reader.load(changes: PolicyChanges(deviceFiles: [key: text])) {
            case .failure(var errors):
                // Lines of the file that was not written point nowhere: its problems are the file's.
                errors.issues = errors.issues.map { $0.file == file ? PolicyIssue(file: file, line: 0, message: $0.message, fix: $0.fix) : $0 }
                errors.issues.append(PolicyIssue(file: file, line: 0, message: "the change was refused, so \(refusal) (\(file) not written)",
                                                 fix: "correct the request"))
                return .failure(errors)
            case .success(let p): policy = p
            }
            guard let device = loaded(policy) else { return failure("the change did not have the intended effect", "report this as a bug", file: file) }
            do {
                try write(Data(text.utf8), to: devices.appendingPathComponent(key.department), name: key.name)
            } catch {
                return failure("cannot write \(file): \(error)", "check the directory's permissions and free space")
            }
            return .success(device)
        }
    }

    // MARK: Text

    private static func scalar(_ text: String) -> Node { Node(text) }

    private static func list(_ items: [String]) -> Node { Node(items.map { Node($0) }, .implicit, .flow) }

    static func render(_ fields: [(String, Node)], allowUnicode: Bool) throws -> String {
        try Yams.serialize(node: Node(fields.map { (Node($0.0), $0.1) }), width: -1, allowUnicode: allowUnicode)
    }

    /// Whether `text` gives back exactly `fields` (text for text, lists for lists) when the loader reads it.
    static func readsBack(_ text: String, as fields: [(String, Node)]) -> Bool {
        guard PolicyYAML.anchorLine(text) == nil, case .mapping(let mapping)? = try? PolicyYAML.compose(text) else { return false }
        let read = Array(mapping)
        guard read.count == fields.count else { return false }
        for ((key, value), (name, expected)) in zip(read, fields) {
            guard key.scalar?.string == name, strings(value) == strings(expected) else { return false }
        }
        return true
    }

    private static func strings(_ node: Node) -> [String]? {
        switch node {
        case .scalar(let s): return [s.string]
        case .sequence(let items): return ["["] + items.map { $0.scalar?.string ?? "\u{0}" }
        default: return nil
        }
    }

    // MARK: Files

    /// Writes the file durably (`DurableFile.write`), making its department's directory first when it is missing (a
    /// department's first device).
    static func write(_ data: Data, to directory: URL, name: String) throws(DurableWriteError) {
        if mkdir(directory.path, 0o755) == 0 {
            try DurableFile.syncDirectory(directory.deletingLastPathComponent().path)
        } else if errno != EEXIST {
            throw DurableWriteError(operation: "mkdir", path: directory.path, code: errno)
        }
        // Readable by the gateway's user, whoever writes it (the page inside the gateway, or an admin's `devices add`).
        try DurableFile.write(to: directory.appendingPathComponent(name).path, permissions: 0o644) { output throws(DurableWriteError) in
            try output.write(data)
        }
    }

    /// The advisory lock every change of devices.d holds, on a file of its own: a lock on a device file would not
    /// survive the rename that replaces it. Held until `release()`.
    struct DevicesLock {
        let fd: Int32

        struct Problem: Error {
            let message: String
        }

        static func take(_ devicesDirectory: String) -> Result<DevicesLock, Problem> {
            let path = devicesDirectory + "/" + lockFile
            let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC | O_NOFOLLOW, 0o644)
            guard fd >= 0 else { return .failure(Problem(message: "cannot open the lock file \(path): \(PolicyFileReading.errnoText())")) }
            while flock(fd, LOCK_EX) != 0 {
                guard errno == EINTR else {
                    let reason = PolicyFileReading.errnoText()
                    close(fd)
                    return .failure(Problem(message: "cannot lock \(path): \(reason)"))
                }
            }
            return .success(DevicesLock(fd: fd))
        }

        func release() {
            flock(fd, LOCK_UN)
            close(fd)
        }
    }
}
