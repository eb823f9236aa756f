import Foundation
import PosternCore
import PosternSMTP

/// One problem in a policy file, with the place and the fix.
public struct PolicyIssue: Error, Sendable, Hashable, CustomStringConvertible {
    public var file: String
    /// 1-based; 0 when the problem is the file as a whole.
    public var line: Int
    public var message: String
    public var fix: String

    public init(file: String, line: Int, message: String, fix: String) {
        self.file = file
        self.line = line
        self.message = message
        self.fix = fix
    }

    /// `FILE:LINE: message (fix: ...)`.
    public var description: String { "\(file):\(line): \(message) (fix: \(fix))" }
}

/// Every problem found while loading; a policy with any of them is not used.
public struct PolicyErrors: Error, Sendable, CustomStringConvertible {
    public var issues: [PolicyIssue]

    public init(issues: [PolicyIssue]) { self.issues = issues }

    public var description: String { issues.map(\.description).joined(separator: "\n") }
}

/// Reads and validates `policy.yaml`, `departments.yaml` and `devices.yaml` from one directory.
public enum PolicyLoader {
    public static let policyFile = "policy.yaml"
    public static let departmentsFile = "departments.yaml"
    public static let devicesFile = "devices.yaml"
    public static let fileNames = [policyFile, departmentsFile, devicesFile]
    public static let defaultReminderDays = [30, 7, 1]

    /// Loads the three policy files; other files in the directory are ignored.
    public static func load(directory: URL) -> Result<PolicySet, PolicyErrors> {
        load(directory: directory, replacing: [:])
    }

    /// Loads the policy with some files' text given in memory (by file name), e.g. to validate an edit before writing it.
    public static func load(directory: URL, replacing overrides: [String: String]) -> Result<PolicySet, PolicyErrors> {
        load(directory: directory, replacing: overrides, reusing: nil).policy
    }

    /// Loads the three policy files, taking the device entries from `previous` when devices.yaml has the
    /// same name and text (a reload for an edit of policy.yaml, or a SIGHUP). Returns what devices.yaml
    /// gave, for the next load.
    public static func load(directory: URL, reusing previous: ParsedDevices?) -> (policy: Result<PolicySet, PolicyErrors>, devices: ParsedDevices?) {
        load(directory: directory, replacing: [:], reusing: previous)
    }

    static func load(directory: URL, replacing overrides: [String: String], reusing previous: ParsedDevices?)
        -> (policy: Result<PolicySet, PolicyErrors>, devices: ParsedDevices?)
    {
        var texts: [String: String] = [:]
        var issues: [PolicyIssue] = []
        for name in fileNames {
            let display = displayPath(directory: directory, name: name)
            if let text = overrides[name] {
                texts[display] = text
                continue
            }
            let url = directory.appendingPathComponent(name)
            do {
                let data = try Data(contentsOf: url)
                guard let text = String(data: data, encoding: .utf8) else {
                    issues.append(PolicyIssue(file: display, line: 0, message: "file is not valid UTF-8", fix: "save it as UTF-8"))
                    continue
                }
                texts[display] = text
            } catch {
                issues.append(PolicyIssue(file: display, line: 0, message: "cannot read file: \(error.localizedDescription)",
                                          fix: "create \(name) in \(directory.relativePath) (see the shipped policies/ for an example)"))
            }
        }
        guard issues.isEmpty else { return (.failure(PolicyErrors(issues: issues)), previous) }
        // Every file name got a text or an issue above, so the three `texts[...]!` below hold.
        let builder = PolicyBuilder()
        builder.reusable = previous
        builder.readPolicy(file: displayPath(directory: directory, name: policyFile), text: texts[displayPath(directory: directory, name: policyFile)]!)
        builder.readDepartments(file: displayPath(directory: directory, name: departmentsFile),
                                text: texts[displayPath(directory: directory, name: departmentsFile)]!)
        builder.readDevices(file: displayPath(directory: directory, name: devicesFile), text: texts[displayPath(directory: directory, name: devicesFile)]!)
        return (builder.finish(), builder.parsedDevices)
    }

    /// Loads from texts; each argument is (name to report, YAML text).
    public static func load(policy: (String, String), departments: (String, String), devices: (String, String))
        -> Result<PolicySet, PolicyErrors>
    {
        let builder = PolicyBuilder()
        builder.readPolicy(file: policy.0, text: policy.1)
        builder.readDepartments(file: departments.0, text: departments.1)
        builder.readDevices(file: devices.0, text: devices.1)
        return builder.finish()
    }

    /// Size and modification time of each policy file, to notice edits without reading them.
    public static func fingerprint(directory: URL) -> [String: String] {
        var out: [String: String] = [:]
        for name in fileNames {
            let path = directory.appendingPathComponent(name).path
            let attributes = try? FileManager.default.attributesOfItem(atPath: path)
            let size = (attributes?[.size] as? NSNumber)?.intValue ?? -1
            let modified = (attributes?[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            out[name] = "\(size)/\(modified)"
        }
        return out
    }

    static func displayPath(directory: URL, name: String) -> String {
        let base = directory.relativePath
        return base.hasSuffix("/") ? base + name : base + "/" + name
    }
}

/// What devices.yaml gave when it was last read (its entries, index order and issues), for a later load
/// of the same text. Everything in it depends on devices.yaml alone.
public struct ParsedDevices: Sendable {
    let file: String
    let text: String
    let devices: [RegisteredDevice]
    let deviceByID: [String: Int]
    let departmentReferences: [(device: String, department: String, line: Int)]
    let issues: [PolicyIssue]
    /// Every device's address ranges, sorted for the index and the overlap check.
    let entries: [AddressIndex.Entry]
    /// Each entry's own findings by its bytes, when the file was in the layout `BlockLayoutReader.splitDevices`
    /// takes: a load of an edited file checks again only the entries whose bytes changed.
    let entryCache: DeviceEntryCache?

    /// How many device entries the load that read this text took from the load before it.
    var reusedEntries: Int { entryCache?.reused ?? 0 }
    /// Byte for byte the same name and text.
    func matches(file: String, text: String) -> Bool {
        guard file == self.file else { return false }
        var a = text
        var b = self.text
        // `!`: only for buffers that are not empty.
        return a.withUTF8 { x in b.withUTF8 { y in x.count == y.count && (x.count == 0 || memcmp(x.baseAddress!, y.baseAddress!, x.count) == 0) } }
    }
}

/// What one device entry gives on its own text, before the checks against other entries and files. Lines
/// are those of the tree it was read from; in a cache, counted from the entry's first line (1).
struct DeviceEntryFindings: Sendable {
    /// The item's line (the `- ` line).
    var line: Int
    var id: String?
    var idLine = 0
    var idIsIdentifier = false
    /// The department it names, when it names one.
    var department: String?
    var departmentLine = 0
    /// Nil when the entry has none (most entries): one reference less to copy.
    var issues: EntryIssues?

    init(line: Int) { self.line = line }
}

/// A device entry's own issues, in the order a load reports them.
final class EntryIssues: Sendable {
    /// Up to the id (unknown or missing keys, a missing id); an entry without an id has no others.
    let beforeID: [PolicyIssue]
    /// After the id, the malformed id first: a duplicate id is reported between the two lists.
    let afterID: [PolicyIssue]

    init?(beforeID: [PolicyIssue], afterID: [PolicyIssue]) {
        guard !beforeID.isEmpty || !afterID.isEmpty else { return nil }
        self.beforeID = beforeID
        self.afterID = afterID
    }
}

/// The devices of one devices.yaml, entry by entry in file order, with the check that spans entries as
/// they come (duplicate ids); unknown departments and overlaps are `PolicyBuilder.finish`'s.
struct DeviceCollector {
    let file: String
    var devices: [RegisteredDevice] = []
    /// Every device entry's id: its index in `devices`, or minus its line while it is not a valid device.
    var deviceByID: [String: Int] = [:]
    /// Every device entry's department, valid entry or not, so an unknown department is always reported.
    var departmentReferences: [(device: String, department: String, line: Int)] = []
    var issues: [PolicyIssue] = []

    init(file: String, capacity: Int) {
        self.file = file
        devices.reserveCapacity(capacity)
        deviceByID.reserveCapacity(capacity)
        departmentReferences.reserveCapacity(capacity)
    }

    /// Records one entry, lines moved down by `shift`; `device` is the entry's device when it is valid on
    /// its own. Returns the device's index in `devices` when it is one (not when its id was taken before).
    mutating func add(_ found: DeviceEntryFindings, device: RegisteredDevice?, shift: Int) -> Int? {
        if let early = found.issues?.beforeID { append(early, shift: shift) }
        guard let id = found.id else { return nil }
        // One hash lookup: the slot is filled with this entry's value unless an earlier entry holds it.
        let line = found.line + shift
        let mine = device != nil ? devices.count : -line
        var previous: Int?
        Self.claim(&deviceByID[id, default: Int.min], value: mine, previous: &previous)
        if found.idIsIdentifier, let previous {
            let other = previous >= 0 ? devices[previous].line : -previous
            issues.append(PolicyIssue(file: file, line: found.idLine + shift, message: "device '\(id)' is already registered at line \(other)",
                                      fix: "choose another id or remove the duplicate"))
        }
        if let department = found.department { departmentReferences.append((id, department, found.departmentLine + shift)) }
        if let late = found.issues?.afterID { append(late, shift: shift) }
        guard previous == nil, var device else { return nil }
        device.line += shift
        devices.append(device)
        return mine
    }

    private static func claim(_ slot: inout Int, value: Int, previous: inout Int?) {
        if slot == Int.min { slot = value } else { previous = slot }
    }

    private mutating func append(_ found: [PolicyIssue], shift: Int) {
        for var issue in found {
            if issue.line > 0 { issue.line += shift }
            issues.append(issue)
        }
    }
}

/// The entries of one devices.yaml text by their bytes, with what each gave, for the next load.
struct DeviceEntryCache: Sendable {
    /// Each entry's bytes in the text of the `ParsedDevices` holding this cache.
    let ranges: [Range<Int>]
    let hashes: [UInt64]
    let firstLines: [Int]
    /// Lines counted from the entry's first line.
    let findings: [DeviceEntryFindings]
    /// Where the entry's device is, when it is valid on its own: `k >= 0` at `devices[k]` of the `ParsedDevices`,
    /// `k <= -2` at `duplicates[-k - 2]` (an entry with the id of an earlier one); -1 for none.
    let deviceIndex: [Int32]
    /// Devices valid on their own but not in `devices` for their duplicate id; lines as in that file.
    let duplicates: [RegisteredDevice]
    /// How many entries were taken from the cache of the load before.
    let reused: Int
    /// Open addressing by hash: entry index + 1, 0 for a free slot.
    private let slots: [Int32]

    init(ranges: [Range<Int>], hashes: [UInt64], firstLines: [Int], findings: [DeviceEntryFindings], deviceIndex: [Int32],
         duplicates: [RegisteredDevice], reused: Int) {
        self.reused = reused
        self.duplicates = duplicates
        self.ranges = ranges
        self.hashes = hashes
        self.firstLines = firstLines
        self.findings = findings
        self.deviceIndex = deviceIndex
        var capacity = 16
        while capacity < 2 * hashes.count { capacity *= 2 }
        var slots = [Int32](repeating: 0, count: capacity)
        for (i, hash) in hashes.enumerated() {
            var slot = Int(truncatingIfNeeded: hash) & (capacity - 1)
            while slots[slot] != 0 { slot = (slot + 1) & (capacity - 1) }
            slots[slot] = Int32(i + 1)
        }
        self.slots = slots
    }

    /// The entry with exactly these bytes, `text` being the text the cache was made from.
    func find(_ bytes: UnsafeBufferPointer<UInt8>, hash: UInt64, in text: UnsafeBufferPointer<UInt8>) -> Int? {
        let mask = slots.count - 1
        var slot = Int(truncatingIfNeeded: hash) & mask
        while slots[slot] != 0 {
            let i = Int(slots[slot] - 1)
            // `!`: only for entries that are not empty (the range in `text` has the same count).
            if hashes[i] == hash, ranges[i].count == bytes.count,
               bytes.count == 0 || memcmp(text.baseAddress! + ranges[i].lowerBound, bytes.baseAddress!, bytes.count) == 0 {
                return i
            }
            slot = (slot + 1) & mask
        }
        return nil
    }

    /// A fast 64-bit hash of the bytes (8 at a time); equal hashes are confirmed byte for byte.
    static func hash(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt64 {
        var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(bytes.count)
        guard let base = bytes.baseAddress else { return h }
        let raw = UnsafeRawPointer(base)
        var i = 0
        func mix(_ word: UInt64) {
            h = (h ^ word) &* 0xFF51_AFD7_ED55_8CCD
            h ^= h >> 32
        }
        while i + 8 <= bytes.count {
            mix(raw.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            i += 8
        }
        var tail: UInt64 = 0
        var shift: UInt64 = 0
        while i < bytes.count {
            tail |= UInt64(base[i]) << shift
            shift += 8
            i += 1
        }
        mix(tail)
        h = (h ^ (h >> 29)) &* 0xC4CE_B9FE_1A85_EC53
        return h ^ (h >> 32)
    }
}

/// Walks the YAML trees, collecting every issue rather than stopping at the first.
final class PolicyBuilder {
    private(set) var issues: [PolicyIssue] = []
    private var file = ""

    var timeZone: TimeZone?
    var internalDomains: [DomainPattern] = []
    var globalSunset: CalendarDate?
    var reminderDays = PolicyLoader.defaultReminderDays
    var listeners: [PolicyEndpoint: ListenerRule] = [:]
    var serviceAccounts: [ServiceAccount] = []
    var departments: [String: Department] = [:]
    var departmentsRead = false
    var departmentsFile = ""
    /// Line of each department's `domains:` entry, for messages about its domains.
    var domainLines: [String: Int] = [:]
    var devices: [RegisteredDevice] = []
    /// Every device entry's id: its index in `devices`, or minus its line while it is not a valid device.
    var deviceByID: [String: Int] = [:]
    var devicesFile = ""
    /// Every device entry's department, valid entry or not, so an unknown department is always reported.
    var departmentReferences: [(device: String, department: String, line: Int)] = []
    /// Address ranges of `devices`, sorted by `AddressIndex.sort`.
    var entries: [AddressIndex.Entry] = []
    /// A previous reading of devices.yaml that `readDevices` may take instead of parsing the same text again.
    var reusable: ParsedDevices?
    /// Many devices share an owner: a text already found to be a mail address needs no second parse.
    private var lastValidOwner: String?
    /// What `readDevices` read (or took from `reusable`).
    private(set) var parsedDevices: ParsedDevices?

    // MARK: Files

    func readPolicy(file: String, text: String) {
        self.file = file
        guard let root = compose(text), let top = mapping(
            root, what: "policy.yaml",
            allowed: ["timezone", "internal-domains", "sunset", "listeners", "service-accounts"],
            required: ["timezone", "internal-domains"])
        else { return }

        if let node = top["timezone"], let name = string(node, what: "timezone") {
            if let tz = TimeZone(identifier: name) {
                timeZone = tz
            } else {
                issue(node, "unknown time zone '\(name)'", fix: "use an IANA name such as Europe/Berlin or UTC")
            }
        }
        if let node = top["internal-domains"], let items = list(node, what: "internal-domains") {
            for item in items {
                guard let text = string(item, what: "internal domain") else { continue }
                if let pattern = DomainPattern(text) {
                    internalDomains.append(pattern)
                } else {
                    issue(item, "'\(text)' is not a domain", fix: "write a domain like example.edu, or *.example.edu for its subdomains")
                }
            }
            if items.isEmpty {
                issue(node, "internal-domains is empty", fix: "list at least one domain, e.g. example.edu")
            }
        }
        if let node = top["sunset"], let sunset = mapping(node, what: "sunset", allowed: ["global", "reminder-days"], required: []) {
            if let g = sunset["global"] { globalSunset = date(g, what: "sunset.global") }
            if let r = sunset["reminder-days"], let items = list(r, what: "reminder-days") {
                var days: [Int] = []
                for item in items {
                    guard let d = int(item, what: "reminder day") else { continue }
                    if d > 0 { days.append(d) } else {
                        issue(item, "reminder day must be a positive number of days", fix: "write e.g. [30, 7, 1]")
                    }
                }
                reminderDays = Array(Set(days)).sorted(by: >)
            }
        }
        if let node = top["listeners"], let entries = mapping(
            node, what: "listeners", allowed: PolicyEndpoint.allCases.map(\.rawValue), required: [],
            unknownFix: "listener kinds are submission, submissions and device")
        {
            for endpoint in PolicyEndpoint.allCases {
                guard let entryNode = entries[endpoint.rawValue] else { continue }
                guard let entry = mapping(entryNode, what: "listener \(endpoint.rawValue)",
                                          allowed: ["enabled", "max-message-size", "header-from"], required: [])
                else { continue }
                var rule = ListenerRule(endpoint: endpoint, enabled: true, maxMessageSize: nil)
                if let e = entry["enabled"] { rule.enabled = bool(e, what: "enabled") ?? true }
                if let s = entry["max-message-size"] { rule.maxMessageSize = size(s, what: "max-message-size") }
                if let h = entry["header-from"], let text = string(h, what: "header-from") {
                    if let mode = HeaderFromMode(rawValue: text.lowercased()) { rule.headerFrom = mode } else {
                        issue(h, "'\(text)' is not a header-from mode", fix: "write enforce, warn or off")
                    }
                }
                listeners[endpoint] = rule
            }
        }
        if let node = top["service-accounts"], let items = list(node, what: "service-accounts") {
            var seen: Set<String> = []
            for item in items {
                guard let entry = mapping(item, what: "service account", allowed: ["login", "domains", "null-sender"],
                                          required: ["login", "domains"])
                else { continue }
                guard let loginNode = entry["login"], let login = string(loginNode, what: "login") else { continue }
                if !seen.insert(login).inserted {
                    issue(loginNode, "service account '\(login)' is listed twice", fix: "merge the two entries")
                }
                var domains: [DomainPattern] = []
                if let d = entry["domains"], let ds = list(d, what: "domains") {
                    for dn in ds {
                        guard let text = string(dn, what: "domain") else { continue }
                        if let p = DomainPattern(text) { domains.append(p) } else {
                            issue(dn, "'\(text)' is not a domain", fix: "write a domain like example.edu or *.example.edu")
                        }
                    }
                }
                let allowNull = entry["null-sender"].flatMap { bool($0, what: "null-sender") } ?? false
                serviceAccounts.append(ServiceAccount(login: login, domains: domains, allowNullSender: allowNull))
            }
        }
    }

    func readDepartments(file: String, text: String) {
        self.file = file
        guard let root = compose(text),
              let top = mapping(root, what: "departments.yaml", allowed: ["departments"], required: ["departments"]),
              let items = top["departments"].flatMap({ list($0, what: "departments") })
        else { return }
        // Only a readable departments file can tell which departments are unknown.
        departmentsRead = true
        departmentsFile = file
        for item in items {
            guard let entry = mapping(item, what: "department", allowed: ["id", "name", "contact", "sunset", "domains"], required: ["id", "name"]),
                  let idNode = entry["id"], let id = string(idNode, what: "id")
            else { continue }
            guard Self.isIdentifier(id) else {
                issue(idNode, "department id '\(id)' has characters other than a-z, 0-9, '-', '_' and '.'", fix: "use a short lower-case name like chem")
                continue
            }
            if departments[id] != nil {
                issue(idNode, "department '\(id)' is defined twice", fix: "remove or rename one of the entries")
                continue
            }
            let name = entry["name"].flatMap { string($0, what: "name") } ?? id
            if let n = entry["name"], let problem = DeviceFieldRules.freeTextProblem(name) {
                issue(n, "name of department '\(id)': \(problem)", fix: "write the name in plain text")
            }
            var contact: String?
            if let c = entry["contact"], let text = string(c, what: "contact") {
                if Self.isMailbox(text) { contact = text } else {
                    issue(c, "contact '\(text)' is not a mail address", fix: "write an address like it-chem@chem.example.edu")
                }
            }
            let sunset = entry["sunset"].flatMap { date($0, what: "sunset") }
            var domains: [DomainPattern] = []
            if let d = entry["domains"], let items = list(d, what: "domains") {
                for dn in items {
                    guard let text = string(dn, what: "domain") else { continue }
                    if let pattern = DomainPattern(text) { domains.append(pattern) } else {
                        issue(dn, "'\(text)' is not a domain", fix: "write a domain like chem.example.edu, or *.chem.example.edu for its subdomains")
                    }
                }
                domainLines[id] = d.line
            }
            departments[id] = Department(id: id, name: name, contact: contact, sunset: sunset, domains: domains)
        }
    }

    /// Keys of a device entry, in the order `mapping` returns their values.
    private enum DeviceKey: Int, CaseIterable {
        case id, department, owner, location, note, addresses, senders, registered, sunset, maxMessageSize, maxRate

        var name: String {
            switch self {
            case .id: return "id"
            case .department: return "department"
            case .owner: return "owner"
            case .location: return "location"
            case .note: return "note"
            case .addresses: return "addresses"
            case .senders: return "senders"
            case .registered: return "registered"
            case .sunset: return "sunset"
            case .maxMessageSize: return "max-message-size"
            case .maxRate: return "max-rate"
            }
        }
    }

    func readDevices(file: String, text: String) {
        self.file = file
        devicesFile = file
        let previous = reusable?.file == file ? reusable : nil
        if let previous, previous.matches(file: file, text: text) {
            devices = previous.devices
            deviceByID = previous.deviceByID
            departmentReferences = previous.departmentReferences
            issues += previous.issues
            entries = previous.entries
            parsedDevices = previous
            return
        }
        let issuesBefore = issues.count
        var text = text
        let read = text.withUTF8 { buffer -> (DeviceCollector, DeviceEntryCache)? in
            guard let split = BlockLayoutReader.splitDevices(buffer) else { return nil }
            guard let previous, let old = previous.entryCache else { return readEntries(buffer, split, reusing: nil) }
            var oldText = previous.text
            return oldText.withUTF8 { readEntries(buffer, split, reusing: (old, $0, previous.devices)) }
        }
        var collector: DeviceCollector
        if let read {
            collector = read.0
        } else {
            collector = DeviceCollector(file: file, capacity: 0)
            parseDevices(text, into: &collector)
        }
        issues += collector.issues
        collector.issues = []
        (devices, deviceByID, departmentReferences) = (collector.devices, collector.deviceByID, collector.departmentReferences)
        collector = DeviceCollector(file: file, capacity: 0)  // the only references left are the builder's
        entries.reserveCapacity(devices.count)
        for i in devices.indices {
            for r in devices[i].addresses { entries.append(AddressIndex.Entry(range: r, device: i)) }
        }
        AddressIndex.sort(&entries)
        parsedDevices = ParsedDevices(file: file, text: text, devices: devices, deviceByID: deviceByID,
                                      departmentReferences: departmentReferences, issues: Array(issues[issuesBefore...]),
                                      entries: entries, entryCache: read?.1)
    }

    /// The devices of a file in the layout `BlockLayoutReader.splitDevices` cuts into entries: each entry
    /// whose bytes a previous load (`reusing`: its cache, text and devices) saw is taken from there, the
    /// others are read and checked. What spans entries (duplicate ids here, unknown departments and
    /// overlapping addresses in `finish`) is checked for all of them every time. Nil, with nothing
    /// recorded, when some entry is outside the layout: then the whole file must be read.
    private func readEntries(_ text: UnsafeBufferPointer<UInt8>, _ split: (ranges: [Range<Int>], firstLines: [Int]),
                             reusing old: (cache: DeviceEntryCache, text: UnsafeBufferPointer<UInt8>, devices: [RegisteredDevice])?)
        -> (DeviceCollector, DeviceEntryCache)?
    {
        let count = split.ranges.count
        // Everything goes into locals: an entry outside the layout returns nil and leaves nothing half done.
        var collector = DeviceCollector(file: file, capacity: count)
        var hashes: [UInt64] = []
        hashes.reserveCapacity(count)
        var findings: [DeviceEntryFindings] = []
        findings.reserveCapacity(count)
        var deviceIndex: [Int32] = []
        deviceIndex.reserveCapacity(count)
        var duplicates: [RegisteredDevice] = []
        var reusedCount = 0
        let (oldFindings, oldDeviceIndex, oldFirstLines, oldDuplicates) =
            (old?.cache.findings ?? [], old?.cache.deviceIndex ?? [], old?.cache.firstLines ?? [], old?.cache.duplicates ?? [])
        let oldDevices = old?.devices ?? []
        var expected = 0  // entries mostly keep their order: try the one after the last match first
        for (i, range) in split.ranges.enumerated() {
            let bytes = UnsafeBufferPointer(rebasing: text[range])
            var k: Int?
            if let old {
                // `!`: an entry is never empty (it holds at least its `- `), here or in the old text.
                if expected < old.cache.ranges.count, old.cache.ranges[expected].count == bytes.count,
                   memcmp(old.text.baseAddress! + old.cache.ranges[expected].lowerBound, bytes.baseAddress!, bytes.count) == 0 {
                    k = expected
                    hashes.append(old.cache.hashes[expected])  // the same bytes
                } else {
                    let hash = DeviceEntryCache.hash(bytes)
                    hashes.append(hash)
                    k = old.cache.find(bytes, hash: hash, in: old.text)
                }
            } else {
                hashes.append(DeviceEntryCache.hash(bytes))
            }
            let found: DeviceEntryFindings
            var device: RegisteredDevice?
            if let k {
                found = oldFindings[k]
                switch Int(oldDeviceIndex[k]) {
                case -1: break
                case let d where d >= 0: device = oldDevices[d]
                case let d: device = oldDuplicates[-d - 2]
                }
                device?.line -= oldFirstLines[k] - 1
                reusedCount += 1
                expected = k + 1
            } else {
                guard let item = BlockLayoutReader.composeEntry(bytes) else { return nil }
                (found, device) = checkEntry(item)
            }
            let shift = split.firstLines[i] - 1
            if let index = collector.add(found, device: device, shift: shift) {
                deviceIndex.append(Int32(index))
            } else if var device {
                device.line += shift
                deviceIndex.append(Int32(-duplicates.count - 2))
                duplicates.append(device)
            } else {
                deviceIndex.append(-1)
            }
            findings.append(found)
        }
        return (collector, DeviceEntryCache(ranges: split.ranges, hashes: hashes, firstLines: split.firstLines,
                                            findings: findings, deviceIndex: deviceIndex, duplicates: duplicates, reused: reusedCount))
    }

    /// devices.yaml outside the layout `readEntries` takes: the whole tree, read by `YAMLTree`.
    private func parseDevices(_ text: String, into collector: inout DeviceCollector) {
        guard let root = compose(text),
              let top = mapping(root, what: "devices.yaml", allowed: ["devices"], required: ["devices"]),
              let items = top["devices"].flatMap({ list($0, what: "devices") })
        else { return }
        collector = DeviceCollector(file: file, capacity: items.count)
        for item in items {
            let (found, device) = checkEntry(item)
            _ = collector.add(found, device: device, shift: 0)
        }
    }

    private static let deviceKeys = DeviceKey.allCases.map(\.name)
    private static let requiredDeviceKeys = [DeviceKey.id, .department, .owner, .addresses, .senders, .registered, .sunset].map(\.name)

    /// Checks one device entry on its own: everything but what depends on other entries and files.
    private func checkEntry(_ item: YAMLNode) -> (DeviceEntryFindings, RegisteredDevice?) {
        let before = issues.count
        var found = DeviceEntryFindings(line: item.line)
        guard let entry = mapping(item, what: "device", allowed: Self.deviceKeys, required: Self.requiredDeviceKeys),
              let idNode = entry[DeviceKey.id.rawValue], let id = string(idNode, what: "id")
        else {
            found.issues = EntryIssues(beforeID: takeIssues(from: before), afterID: [])
            return (found, nil)
        }
        let beforeID = takeIssues(from: before)
        found.id = id
        found.idLine = idNode.line
        var ok = true
        found.idIsIdentifier = Self.isIdentifier(id)
        if !found.idIsIdentifier {
            issue(idNode, "device id '\(id)' has characters other than a-z, 0-9, '-', '_' and '.'", fix: "use a name like chem-scanner-2")
            ok = false
        }
        let departmentNode = entry[DeviceKey.department.rawValue]
        let department = departmentNode.flatMap { string($0, what: "department") } ?? ""
        if !department.isEmpty, let departmentNode { (found.department, found.departmentLine) = (department, departmentNode.line) }
        var owner = ""
        if let o = entry[DeviceKey.owner.rawValue], let text = string(o, what: "owner") {
            if let last = lastValidOwner, text == last {
                owner = last  // one shared string for the many devices of one owner
            } else {
                owner = text
                if Self.isMailbox(text) {
                    lastValidOwner = text
                } else {
                    issue(o, "owner '\(text)' is not a mail address", fix: "write the contact address of the person responsible")
                    ok = false
                }
            }
        }
        for key in [DeviceKey.location, .note] {
            if let n = entry[key.rawValue], case .scalar(let text, _) = n, let problem = DeviceFieldRules.freeTextProblem(text) {
                // Both are quoted in the sunset reminders Postern mails to the owner, and shown on the registration page.
                issue(n, "\(key.name) of device '\(id)': \(problem)", fix: "write it in plain text")
                ok = false
            }
        }
        let location: String
        switch (entry[DeviceKey.location.rawValue].flatMap { string($0, what: "location") },
                entry[DeviceKey.note.rawValue].flatMap { string($0, what: "location") }) {
        case (nil, nil): location = ""
        case (let l?, nil): location = l
        case (nil, let n?): location = n
        case (let l?, let n?): location = l + "; " + n
        }
        var ranges: [AddressRange] = []
        if let a = entry[DeviceKey.addresses.rawValue], let items = list(a, what: "addresses") {
            if items.isEmpty { issue(a, "device '\(id)' has no addresses", fix: "list its IPv4/IPv6 address or CIDR block"); ok = false }
            ranges.reserveCapacity(items.count)
            for an in items {
                guard let text = string(an, what: "address") else { ok = false; continue }
                switch AddressRange.parse(text) {
                case .success(let r):
                    if let prior = ranges.first(where: { $0.overlaps(r) }) {
                        issue(an, "address \(text) overlaps \(prior.text) of the same device", fix: "list each address once")
                        ok = false
                    }
                    ranges.append(r)
                case .failure(.hostBitsSet(let network)):
                    issue(an, "'\(text)' has host bits set beyond the prefix", fix: "write the network \(network), or a single address without /len")
                    ok = false
                case .failure(.badPrefixLength):
                    issue(an, "'\(text)' has a bad prefix length", fix: "use /0-/32 for IPv4 and /0-/128 for IPv6")
                    ok = false
                case .failure(.notAnAddress):
                    issue(an, "'\(text)' is not an IPv4 or IPv6 address", fix: "write e.g. 10.1.2.3, 10.1.2.0/28 or 2001:db8::10")
                    ok = false
                }
            }
        }
        var senders: [SenderPattern] = []
        if let s = entry[DeviceKey.senders.rawValue], let items = list(s, what: "senders") {
            if items.isEmpty { issue(s, "device '\(id)' has no allowed senders", fix: "list the addresses or domains it sends as"); ok = false }
            senders.reserveCapacity(items.count)
            for sn in items {
                guard let text = string(sn, what: "sender") else { ok = false; continue }
                if let p = SenderPattern(text) { senders.append(p) } else {
                    issue(sn, "'\(text)' is not an address or domain", fix: "write scanner@chem.example.edu, or a domain like chem.example.edu")
                    ok = false
                }
            }
        }
        let registered = entry[DeviceKey.registered.rawValue].flatMap { date($0, what: "registered") }
        let sunsetNode = entry[DeviceKey.sunset.rawValue]
        let sunset = sunsetNode.flatMap { date($0, what: "sunset") }
        if let r = registered, let s = sunset, s < r, let sn = sunsetNode {
            issue(sn, "sunset \(s) of device '\(id)' is before its registration \(r)", fix: "set sunset on or after \(r)")
            ok = false
        }
        let maxSize = entry[DeviceKey.maxMessageSize.rawValue].flatMap { size($0, what: "max-message-size") }
        var rate: RateLimit?
        if let rn = entry[DeviceKey.maxRate.rawValue], let text = string(rn, what: "max-rate") {
            rate = RateLimit(text)
            if rate == nil {
                issue(rn, "'\(text)' is not a rate", fix: "write a count per unit, e.g. 60/hour (units: second, minute, hour, day)")
                ok = false
            }
        }
        found.issues = EntryIssues(beforeID: beforeID, afterID: takeIssues(from: before))
        guard ok, let registered, let sunset, !department.isEmpty else { return (found, nil) }
        return (found, RegisteredDevice(id: id, department: department, owner: owner, location: location,
                                        addresses: ranges, senders: senders, registered: registered, sunset: sunset,
                                        maxMessageSize: maxSize, maxRate: rate, line: item.line))
    }

    /// Removes the issues recorded since `start` and returns them.
    private func takeIssues(from start: Int) -> [PolicyIssue] {
        guard issues.count > start else { return [] }
        defer { issues.removeSubrange(start...) }
        return Array(issues[start...])
    }

    func finish() -> Result<PolicySet, PolicyErrors> {
        file = devicesFile
        if departmentsRead {
            var known: Bool?
            var last = ""
            for (id, department, line) in departmentReferences {
                // Devices of one department usually come together: look it up once per run of them.
                if known == nil || department != last { (known, last) = (departments[department] != nil, department) }
                guard known == false else { continue }
                let names = departments.keys.sorted().joined(separator: ", ")
                issues.append(PolicyIssue(file: devicesFile, line: line,
                                          message: "device '\(id)' names unknown department '\(department)'",
                                          fix: names.isEmpty ? "add the department to departments.yaml" : "use one of: \(names), or add it to departments.yaml"))
            }
        }
        checkDomainRules()
        for (a, b) in AddressIndex.overlaps(inSorted: entries) where a.device != b.device {
            let (first, second) = devices[a.device].line <= devices[b.device].line ? (a, b) : (b, a)
            issues.append(PolicyIssue(
                file: devicesFile, line: devices[second.device].line,
                message: "address \(second.range.text) of device '\(devices[second.device].id)' overlaps \(first.range.text) of device '\(devices[first.device].id)' (line \(devices[first.device].line))",
                fix: "give each device its own addresses; narrow or remove one of the two"))
        }
        guard issues.isEmpty, let timeZone else {
            return .failure(PolicyErrors(issues: issues.sorted { ($0.file, $0.line) < ($1.file, $1.line) }))
        }
        return .success(PolicySet(timeZone: timeZone, internalDomains: internalDomains, globalSunset: globalSunset,
                                  reminderDays: reminderDays, listeners: listeners, serviceAccounts: serviceAccounts,
                                  departments: departments, devices: devices, deviceByID: deviceByID,
                                  index: AddressIndex(sorted: entries)))
    }

    /// What depends on more than one file: a department's domains are internal, a device's senders lie in its
    /// department's domains (or the internal ones) and its owner is internal (`DeviceFieldRules`).
    private func checkDomainRules() {
        // Without the internal domains or the departments there is nothing to judge against; their own errors say why.
        guard departmentsRead, !internalDomains.isEmpty else { return }
        for id in departments.keys.sorted() {
            guard let department = departments[id] else { continue }
            for pattern in department.domains {
                if let problem = DeviceFieldRules.departmentDomainProblem(pattern, internalDomains: internalDomains) {
                    issues.append(PolicyIssue(file: departmentsFile, line: domainLines[id] ?? 0, message: "department '\(id)': \(problem)",
                                              fix: "list only domains inside internal-domains in policy.yaml"))
                }
            }
        }
        var department: Department?
        var lastOwner: String?
        for device in devices {
            if department?.id != device.department { department = departments[device.department] }
            guard let department else { continue }  // an unknown department is reported above
            for sender in device.senders {
                if let problem = DeviceFieldRules.senderProblem(sender, department: department, internalDomains: internalDomains) {
                    issues.append(PolicyIssue(file: devicesFile, line: device.line, message: "device '\(device.id)': \(problem)",
                                              fix: "use a sender in the department's domains, or add the domain to its domains: in departments.yaml"))
                }
            }
            if device.owner != lastOwner {
                if let problem = DeviceFieldRules.contactProblem(device.owner, internalDomains: internalDomains) {
                    issues.append(PolicyIssue(file: devicesFile, line: device.line, message: "owner of device '\(device.id)': \(problem)",
                                              fix: "name a contact with an address in the internal domains"))
                } else {
                    lastOwner = device.owner  // many devices share an owner: one check for a run of them
                }
            }
        }
    }

    // MARK: YAML helpers

    private func issue(_ node: YAMLNode?, _ message: String, fix: String) {
        issues.append(PolicyIssue(file: file, line: node?.line ?? 0, message: message, fix: fix))
    }

    private func compose(_ text: String) -> YAMLNode? {
        do {
            guard let root = try YAMLTree.compose(text) else {
                issue(nil, "file is empty", fix: "see the shipped policies/ for the expected layout")
                return nil
            }
            return root
        } catch {
            issues.append(PolicyIssue(file: file, line: error.line, message: "YAML syntax error: \(error.problem)",
                                      fix: "check indentation and quoting on this line and the one before; quote values starting with * or &"))
            return nil
        }
    }

    /// A mapping's values for the `allowed` keys, by key or by position in `allowed`.
    struct Fields {
        let keys: [String]
        var values: [YAMLNode?]

        subscript(key: String) -> YAMLNode? { keys.firstIndex(of: key).flatMap { values[$0] } }
        subscript(position: Int) -> YAMLNode? { values[position] }
    }

    private func mapping(_ node: YAMLNode, what: String, allowed: [String], required: [String],
                         unknownFix: String? = nil) -> Fields? {
        guard case .mapping(let m, _) = node else {
            issue(node, "\(what) must be a mapping of keys to values", fix: "write it as 'key: value' lines")
            return nil
        }
        var out = Fields(keys: allowed, values: Array(repeating: nil, count: allowed.count))
        // Keys usually come in the order `allowed` lists them: look after the previous one first.
        var hint = 0
        for (k, v) in m {
            guard let key = k.string else { issue(k, "keys in \(what) must be plain words", fix: "use one of: \(allowed.sorted().joined(separator: ", "))"); continue }
            guard let position = allowed[hint...].firstIndex(of: key) ?? allowed[..<hint].firstIndex(of: key) else {
                let suggestion = Self.closest(key, in: allowed).map { "did you mean '\($0)'? " } ?? ""
                issue(k, "unknown key '\(key)' in \(what)",
                      fix: suggestion + (unknownFix ?? "allowed keys are: \(allowed.sorted().joined(separator: ", "))"))
                continue
            }
            if out.values[position] != nil {
                issue(k, "key '\(key)' appears twice in \(what)", fix: "keep one of them")
                continue
            }
            out.values[position] = v
            hint = position + 1 < allowed.count ? position + 1 : 0
        }
        for key in required where out[key] == nil {
            issue(node, "\(what) is missing '\(key)'", fix: "add '\(key): ...'")
        }
        return out
    }

    private func list(_ node: YAMLNode, what: String) -> [YAMLNode]? {
        switch node {
        case .sequence(let items, _): return items
        case .scalar(let s, _) where !s.isEmpty: return [node]
        case .scalar: return []
        default:
            issue(node, "\(what) must be a list", fix: "write '- item' lines or [a, b]")
            return nil
        }
    }

    private func string(_ node: YAMLNode, what: String) -> String? {
        guard case .scalar(let text, _) = node else {
            issue(node, "\(what) must be a single value", fix: "write it as plain text on the same line")
            return nil
        }
        guard !text.isEmpty else {
            issue(node, "\(what) is empty", fix: "give it a value")
            return nil
        }
        return text
    }

    private func date(_ node: YAMLNode, what: String) -> CalendarDate? {
        guard let text = string(node, what: what) else { return nil }
        guard let d = CalendarDate(text) else {
            issue(node, "'\(text)' is not a valid date for \(what)", fix: "write the date as YYYY-MM-DD, e.g. 2026-06-30")
            return nil
        }
        return d
    }

    private func int(_ node: YAMLNode, what: String) -> Int? {
        guard let text = string(node, what: what) else { return nil }
        guard let v = Int(text) else {
            issue(node, "'\(text)' is not a whole number for \(what)", fix: "write digits only")
            return nil
        }
        return v
    }

    private func bool(_ node: YAMLNode, what: String) -> Bool? {
        guard let text = string(node, what: what) else { return nil }
        switch text.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            issue(node, "'\(text)' is not true or false for \(what)", fix: "write true or false")
            return nil
        }
    }

    /// Bytes, optionally with a binary suffix: `10485760`, `10M`, `512K`, `1G`.
    private func size(_ node: YAMLNode, what: String) -> Int? {
        guard let text = string(node, what: what) else { return nil }
        if let v = Self.parseSize(text), v > 0 { return v }
        issue(node, "'\(text)' is not a size for \(what)", fix: "write bytes, or a number with K, M or G, e.g. 10M")
        return nil
    }

    /// The sizes postern.yaml takes too (`ByteSize`).
    static func parseSize(_ text: String) -> Int? { ByteSize.parse(text) }

    static func isIdentifier(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { b in
            (UInt8(ascii: "a")...UInt8(ascii: "z")).contains(b) || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b)
                || b == UInt8(ascii: "-") || b == UInt8(ascii: "_") || b == UInt8(ascii: ".")
        }
    }

    static func isMailbox(_ s: String) -> Bool {
        guard let m = try? AddressParser.parseMailbox(s), case .name = m.domain else { return false }
        return true
    }

    static func closest(_ word: String, in candidates: [String]) -> String? { Suggestions.closest(word, in: candidates) }

}
