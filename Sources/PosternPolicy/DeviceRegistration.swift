import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A new device as an admin describes it to `postern devices add`.
public struct DeviceRegistration: Sendable, Hashable {
    public var id: String
    public var department: String
    public var owner: String
    public var location: String?
    /// Free text kept with the entry (e.g. the model, or where the registration came from).
    public var note: String?
    public var addresses: [String]
    public var senders: [String]
    /// Defaults to the global sunset date.
    public var sunset: CalendarDate?
    /// Bytes or with a suffix (`10M`), as in devices.yaml.
    public var maxMessageSize: String?
    /// e.g. `60/hour`.
    public var maxRate: String?

    public init(id: String, department: String, owner: String, location: String? = nil, addresses: [String],
                senders: [String], sunset: CalendarDate? = nil, maxMessageSize: String? = nil, maxRate: String? = nil,
                note: String? = nil) {
        self.id = id
        self.note = note
        self.department = department
        self.owner = owner
        self.location = location
        self.addresses = addresses
        self.senders = senders
        self.sunset = sunset
        self.maxMessageSize = maxMessageSize
        self.maxRate = maxRate
    }
}

/// Appends device entries to devices.yaml without disturbing the text (comments, order) already there.
public enum DevicesFileEditor {
    /// Validates the whole policy with the new entry, then writes devices.yaml atomically under an advisory lock.
    /// Registration date is today in the policy's time zone. Returns the device as loaded, or why it was refused.
    public static func append(_ registration: DeviceRegistration, directory: URL, now: Date) -> Result<RegisteredDevice, PolicyErrors> {
        let devicesURL = directory.appendingPathComponent(PolicyLoader.devicesFile)
        let display = PolicyLoader.displayPath(directory: directory, name: PolicyLoader.devicesFile)
        func failure(_ message: String, _ fix: String, line: Int = 0) -> Result<RegisteredDevice, PolicyErrors> {
            .failure(PolicyErrors(issues: [PolicyIssue(file: display, line: line, message: message, fix: fix)]))
        }

        let current: PolicySet
        let lock: DevicesLock
        switch lockAndLoad(directory: directory, display: display, refusal: "no device was added") {
        case .failure(let errors): return .failure(errors)
        case .success(let (held, policy)): (lock, current) = (held, policy)
        }
        defer { lock.release() }
        guard let sunset = registration.sunset ?? current.globalSunset else {
            return failure("no sunset date given and policy.yaml sets no global sunset", "pass --sunset YYYY-MM-DD")
        }
        let registered = current.today(now)
        guard let data = try? Data(contentsOf: devicesURL), let existing = String(data: data, encoding: .utf8) else {
            return failure("cannot read \(display)", "check that it exists and is UTF-8")
        }
        let newText = appending(entry: render(registration, registered: registered, sunset: sunset), to: existing)

        switch PolicyLoader.load(directory: directory, replacing: [PolicyLoader.devicesFile: newText]) {
        case .failure(var errors):
            let firstNewLine = newText.components(separatedBy: "\n").count - 1 - render(registration, registered: registered, sunset: sunset).count + 1
            errors.issues.append(PolicyIssue(file: display, line: firstNewLine,
                                             message: "the new entry (lines \(firstNewLine) on, not written) was refused, devices.yaml is unchanged",
                                             fix: "correct the options given to devices add"))
            return .failure(errors)
        case .success(let policy):
            guard let device = policy.device(id: registration.id) else {
                return failure("the new entry did not load", "report this as a bug")
            }
            do {
                try writeAtomically(Data(newText.utf8), to: devicesURL)
            } catch {
                return failure("cannot write \(display): \(error)", "check the directory's permissions and free space")
            }
            return .success(device)
        }
    }

    /// The entry as YAML lines, keys indented by two more spaces than the item dash.
    static func render(_ r: DeviceRegistration, registered: CalendarDate, sunset: CalendarDate, indent: String = "  ") -> [String] {
        var lines = ["- id: \(quote(r.id))",
                     "  department: \(quote(r.department))",
                     "  owner: \(quote(r.owner))"]
        if let location = r.location { lines.append("  location: \(quote(location))") }
        if let note = r.note { lines.append("  note: \(quote(note))") }
        lines.append("  addresses:")
        lines += r.addresses.map { "    - \(quote($0))" }
        lines.append("  senders:")
        lines += r.senders.map { "    - \(quote($0))" }
        lines.append("  registered: \(registered)")
        lines.append("  sunset: \(sunset)")
        if let s = r.maxMessageSize { lines.append("  max-message-size: \(quote(s))") }
        if let m = r.maxRate { lines.append("  max-rate: \(quote(m))") }
        return lines
    }

    /// Appends the entry under `devices:`, matching the indentation of the entries already there.
    static func appending(entry: [String], to text: String) -> String {
        var lines = text.components(separatedBy: "\n")
        if lines.last == "" { lines.removeLast() }
        // `devices: []` (no devices yet) becomes a block list.
        if let i = lines.firstIndex(where: { $0.range(of: #"^devices:\s*\[\s*\]\s*(#.*)?$"#, options: .regularExpression) != nil }) {
            lines[i] = "devices:"
        }
        let indent = lines.lazy.compactMap { line -> String? in
            guard let r = line.range(of: #"^ *- "#, options: .regularExpression) else { return nil }
            return String(line[r].dropLast(2))
        }.first ?? "  "
        if let last = lines.last, !last.trimmingCharacters(in: .whitespaces).isEmpty, !last.hasSuffix("devices:") {
            lines.append("")
        }
        return (lines + entry.map { indent + $0 }).joined(separator: "\n") + "\n"
    }

    /// A YAML scalar: plain when it is unambiguous, double-quoted otherwise.
    static func quote(_ s: String) -> String {
        let plain = !s.isEmpty && s.utf8.allSatisfy { b in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains(b)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b) || "@._-/".utf8.contains(b)
        } && s.first.map { $0.isLetter || $0.isNumber } == true
        if plain { return s }
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F {
                    out += String(format: "\\x%02X", scalar.value)
                } else if (0x80...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029 {
                    // Line breaks to libyaml (U+0085, U+2028, U+2029) and the other C1 controls: escaped, so that
                    // the text written keeps its lines (the loader then refuses them in free text anyway).
                    out += String(format: "\\u%04X", scalar.value)
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }

    /// temp file, fsync, rename over the target, fsync the directory.
    static func writeAtomically(_ data: Data, to url: URL) throws {
        let dir = url.deletingLastPathComponent().path
        let temp = url.deletingLastPathComponent()
            .appendingPathComponent(".\(url.lastPathComponent).tmp-\(getpid())-\(UInt32.random(in: 0...UInt32.max))").path
        let fd = open(temp, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        var ok = false
        defer {
            if !ok { unlink(temp) }
        }
        do {
            defer { close(fd) }
            try data.withUnsafeBytes { (buffer: UnsafeRawBufferPointer) throws in
                var offset = 0
                while offset < buffer.count {
                    let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)  // `!`: not empty (offset < count)
                    if n < 0 {
                        if errno == EINTR { continue }
                        throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
                    }
                    offset += n
                }
            }
            guard fsync(fd) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        }
        guard rename(temp, url.path) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        ok = true
        let dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dfd >= 0 {
            fsync(dfd)
            close(dfd)
        }
    }

    private static func errnoText() -> String { String(cString: strerror(errno)) }

    /// The advisory lock that serialises every edit of devices.yaml; held until `release()`.
    struct DevicesLock {
        let fd: Int32
        func release() {
            flock(fd, LOCK_UN)
            close(fd)
        }
    }

    /// Takes the devices lock and loads the current policy; an edit starts only from a policy that loads.
    /// `refusal` says what did not happen when it does not load.
    static func lockAndLoad(directory: URL, display: String, refusal: String) -> Result<(DevicesLock, PolicySet), PolicyErrors> {
        func failure(_ message: String, _ fix: String) -> Result<(DevicesLock, PolicySet), PolicyErrors> {
            .failure(PolicyErrors(issues: [PolicyIssue(file: display, line: 0, message: message, fix: fix)]))
        }
        // The lock lives beside the file, not on it: rename replaces the file's inode, a lock on it would not hold.
        let lockPath = directory.appendingPathComponent(".devices.yaml.lock").path
        let fd = open(lockPath, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else { return failure("cannot open lock file \(lockPath): \(errnoText())", "check the directory's permissions") }
        guard flock(fd, LOCK_EX) == 0 else {
            let reason = errnoText()
            close(fd)
            return failure("cannot lock \(lockPath): \(reason)", "try again")
        }
        let lock = DevicesLock(fd: fd)
        switch PolicyLoader.load(directory: directory) {
        case .success(let policy):
            return .success((lock, policy))
        case .failure(var errors):
            lock.release()
            errors.issues.append(PolicyIssue(file: display, line: 0, message: "the current policy does not load, so \(refusal)",
                                             fix: "fix the errors above first (postern check)"))
            return .failure(errors)
        }
    }
}
