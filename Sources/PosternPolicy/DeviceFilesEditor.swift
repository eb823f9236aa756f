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

/// Registers, revokes and re-dates devices, each by writing or removing one device file.
///
/// Every change holds the lock of devices.d (`flock` on `devices.d/.lock`), starts from a policy that loads, is
/// validated with the whole policy as it would be afterwards, and then writes the one file atomically (temporary
/// file, fsync, rename, fsync of the directory) or removes it. Nothing else in devices.d is touched. The text is
/// made by Yams's emitter from the values, and read back before it is written.
public enum DeviceFilesEditor {
    /// The lock file every change of devices.d holds; hidden, so scans pass it by.
    public static let lockFile = ".lock"

    /// Writes a new device file. The registration date is today in the policy's time zone; the sunset defaults to the
    /// global one. Returns the device as loaded, or why it was refused.
    public static func add(_ registration: DeviceRegistration, directory: URL, now: Date, reader: PolicyReader? = nil)
        -> Result<RegisteredDevice, PolicyErrors>
    {
        edit(directory: directory, reader: reader, refusal: "no device was added") { current in
            let r = registration
            // The id and department name a file and a directory: checked before any path is made of them.
            guard SchemaReader.isIdentifier(r.id) else {
                return .refused("device id '\(r.id)' is not a name of a-z, 0-9, '-', '_' and '.' starting with a letter or digit (at most \(SchemaReader.maxIdentifierLength))",
                                "use a name like chem-scanner-2 (it is also the device's file name)")
            }
            guard current.departments[r.department] != nil else {
                let names = current.departments.keys.sorted().joined(separator: ", ")
                return .refused("device '\(r.id)' names unknown department '\(r.department)'", "use one of: \(names), or add it to departments.yaml")
            }
            if let existing = current.device(id: r.id) {
                return .refused("device '\(r.id)' is already registered (department \(existing.department))", "choose another id, or revoke the old device first")
            }
            guard let sunset = r.sunset ?? current.globalSunset else {
                return .refused("no sunset date given and policy.yaml sets no global sunset", "pass --sunset YYYY-MM-DD")
            }
            var fields: [(String, Node)] = [("id", scalar(r.id)), ("department", scalar(r.department)), ("owner", scalar(r.owner))]
            if let location = r.location { fields.append(("location", scalar(location))) }
            if let note = r.note { fields.append(("note", scalar(note))) }
            fields.append(("addresses", list(r.addresses)))
            fields.append(("senders", list(r.senders)))
            fields.append(("registered", scalar(current.today(now).description)))
            fields.append(("sunset", scalar(sunset.description)))
            if let size = r.maxMessageSize { fields.append(("max-message-size", scalar(size))) }
            if let rate = r.maxRate { fields.append(("max-rate", scalar(rate))) }
            return .write(DeviceFileKey(department: r.department, name: r.id + DeviceFiles.suffix), fields) { $0.device(id: r.id) }
        }
    }

    /// Removes the device's file and returns the device as it was.
    public static func remove(id: String, directory: URL, reader: PolicyReader? = nil) -> Result<RegisteredDevice, PolicyErrors> {
        edit(directory: directory, reader: reader, refusal: "no device was revoked") { current in
            guard let device = current.device(id: id) else { return .refused("device '\(id)' is not registered", "check the id (postern devices list)") }
            return .remove(DeviceFileKey(department: device.department, name: device.id + DeviceFiles.suffix), device)
        }
    }

    /// Sets the device's own sunset date (its last valid day); department and global dates still apply on top.
    /// The file is written anew from its values: comments in it are not kept.
    public static func setSunset(id: String, date: CalendarDate, directory: URL, reader: PolicyReader? = nil) -> Result<RegisteredDevice, PolicyErrors> {
        edit(directory: directory, reader: reader, refusal: "no sunset was changed") { current in
            guard let device = current.device(id: id) else { return .refused("device '\(id)' is not registered", "check the id (postern devices list)") }
            let key = DeviceFileKey(department: device.department, name: device.id + DeviceFiles.suffix)
            let path = directory.appendingPathComponent(PolicyLoader.devicesDirectory).appendingPathComponent(key.department).appendingPathComponent(key.name)
            guard case .success(let (text, _)) = PolicyFileReading.readText(path.path, limit: PolicyFileReading.deviceFileLimit),
                  case .mapping(let mapping)? = try? PolicyYAML.compose(text)
            else { return .refused("cannot read the file of '\(id)' again", "try again, or edit the file by hand") }
            var fields: [(String, Node)] = []
            for (key, value) in mapping {
                guard case .scalar(let name) = key else { continue }
                switch value {
                case .scalar(let s): fields.append((name.string, scalar(name.string == "sunset" ? date.description : s.string)))
                case .sequence(let items): fields.append((name.string, list(items.compactMap { $0.scalar?.string })))
                default: return .refused("the file of '\(id)' has a value that is not text or a list", "edit the file by hand")
                }
            }
            return .write(key, fields) { policy in policy.device(id: id).flatMap { $0.sunset == date ? $0 : nil } }
        }
    }

    // MARK: The one path every change takes

    enum Change {
        /// Write `fields` as the file; `loaded` finds the device in the policy afterwards (nil: not the intended effect).
        case write(DeviceFileKey, [(String, Node)], loaded: (PolicySet) -> RegisteredDevice?)
        case remove(DeviceFileKey, RegisteredDevice)
        case refused(String, String)
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
        case .refused(let message, let fix):
            return failure(message, fix)
        case .remove(let key, let device):
            if case .failure(var errors) = reader.load(changes: PolicyChanges(deviceFiles: [key: String?.none])) {
                errors.issues.append(PolicyIssue(file: display, line: 0, message: "the change was refused, so \(refusal)", fix: "correct the request"))
                return .failure(errors)
            }
            let file = devices.appendingPathComponent(key.department).appendingPathComponent(key.name)
            guard unlink(file.path) == 0 else { return failure("cannot remove \(display)/\(key.department)/\(key.name): \(PolicyFileReading.errnoText())", "check the directory's permissions") }
            try? DurableFile.syncDirectory(file.deletingLastPathComponent().path)  // the removal is done; a failed sync only risks it coming back after a power loss
            return .success(device)
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
                errors.issues.append(PolicyIssue(file: file, line: 0, message: "the change was refused, so \(refusal) (\(file) not written)",
                                                 fix: "correct the request"))
                return .failure(errors)
            case .success(let p): policy = p
            }
            guard let device = loaded(policy) else { return failure("the change did not have the intended effect", "report this as a bug", file: file) }
            do {
                try writeAtomically(Data(text.utf8), to: devices.appendingPathComponent(key.department), name: key.name)
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

    /// Writes a device file through `DurableFile` (temp file, fdatasync, rename over the target, fsync of the
    /// directory), the department's directory created first when missing (and its parent fsynced).
    static func writeAtomically(_ data: Data, to directory: URL, name: String) throws {
        if mkdir(directory.path, 0o755) == 0 {
            try DurableFile.syncDirectory(directory.deletingLastPathComponent().path)
        } else if errno != EEXIST {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
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
