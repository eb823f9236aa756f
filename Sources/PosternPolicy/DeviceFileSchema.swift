import Foundation
import Yams

/// What one device entry gives on its own, before the checks against other devices and files: a device file
/// of devices.d, or one entry of an old devices.yaml (`postern devices migrate`).
struct DeviceReading: Sendable {
    /// The file it was read from, as messages name it.
    var file = ""
    /// The device, when the entry is valid on its own.
    var device: RegisteredDevice?
    /// The SHA-256 of the file's path in devices.d and its text, for `PolicySet.fingerprint`.
    var digest: ContentDigest?
    var id: String?
    var idLine = 0
    /// The department it names, when it names one.
    var department: String?
    var departmentLine = 0
    var ownerLine = 0
    var addressesLine = 0
    var sendersLine = 0
    var recipientsLine = 0
    var issues: [PolicyIssue] = []
}

/// The keys of a device entry: who owns it, where it sits, what it may do and until when.
enum DeviceSchema {
    static let keys = ["id", "department", "owner", "location", "note", "addresses", "senders", "registered", "sunset",
                       "max-message-size", "max-rate", "recipients", "revoked", "revoked-by", "revoke-reason"]
    /// Written together by a revocation (`DeviceFilesEditor.revoke`).
    static let revocationKeys = ["revoked", "revoked-by", "revoke-reason"]
    static let requiredKeys = ["id", "department", "owner", "addresses", "senders", "registered", "sunset"]

    /// Reads a device file's text (`file` is the name to report).
    static func read(file: String, text: String) -> DeviceReading {
        var reader = SchemaReader(file: file)
        guard let root = reader.document(text) else { return DeviceReading(file: file, issues: reader.issues) }
        return read(root, reader: &reader)
    }

    /// Checks one device entry on its own: everything but what depends on other devices and files.
    static func read(_ node: Node, reader: inout SchemaReader) -> DeviceReading {
        let before = reader.issues.count
        var found = check(node, reader: &reader)
        found.file = reader.file
        found.issues = Array(reader.issues[before...])
        return found
    }

    private static func check(_ node: Node, reader: inout SchemaReader) -> DeviceReading {
        var found = DeviceReading()
        let before = reader.issues.count
        guard let entry = reader.mapping(node, what: "device", allowed: keys, required: requiredKeys),
              let idNode = entry["id"], let id = reader.string(idNode, what: "id")
        else { return found }
        found.id = id
        found.idLine = SchemaReader.line(idNode)
        var ok = true
        if !SchemaReader.isIdentifier(id) {
            reader.issue(idNode, "device id '\(id)' is not a name of a-z, 0-9, '-', '_' and '.' starting with a letter or digit (at most \(SchemaReader.maxIdentifierLength))",
                         fix: "use a name like chem-scanner-2 (it is also the device's file name)")
            ok = false
        }
        let departmentNode = entry["department"]
        let department = departmentNode.flatMap { reader.string($0, what: "department") } ?? ""
        if !department.isEmpty { (found.department, found.departmentLine) = (department, SchemaReader.line(departmentNode)) }
        var owner = ""
        if let o = entry["owner"], let text = reader.string(o, what: "owner") {
            owner = text
            found.ownerLine = SchemaReader.line(o)
            if !SchemaReader.isMailbox(text) {
                reader.issue(o, "owner '\(text)' is not a mail address", fix: "write the contact address of the person responsible")
                ok = false
            }
        }
        for key in ["location", "note"] {
            if let n = entry[key], case .scalar(let scalar) = n, let problem = DeviceFieldRules.freeTextProblem(scalar.string) {
                // Both are quoted in the sunset reminders Postern mails to the owner, and shown on the registration page.
                reader.issue(n, "\(key) of device '\(id)': \(problem)", fix: "write it in plain text")
                ok = false
            }
        }
        let location: String
        switch (entry["location"].flatMap { reader.string($0, what: "location") }, entry["note"].flatMap { reader.string($0, what: "note") }) {
        case (nil, nil): location = ""
        case (let l?, nil): location = l
        case (nil, let n?): location = n
        case (let l?, let n?): location = l + "; " + n
        }
        var ranges: [AddressRange] = []
        if let a = entry["addresses"], let items = reader.list(a, what: "addresses") {
            found.addressesLine = SchemaReader.line(a)
            if items.isEmpty { reader.issue(a, "device '\(id)' has no addresses", fix: "list its IPv4/IPv6 address or CIDR block"); ok = false }
            ranges = addresses(items, reader: &reader, ok: &ok)
        }
        var senders: [SenderPattern] = []
        if let s = entry["senders"], let items = reader.list(s, what: "senders") {
            found.sendersLine = SchemaReader.line(s)
            if items.isEmpty { reader.issue(s, "device '\(id)' has no allowed senders", fix: "list the addresses or domains it sends as"); ok = false }
            for sn in items {
                guard let text = reader.string(sn, what: "sender") else { ok = false; continue }
                if let p = SenderPattern(text) { senders.append(p) } else {
                    reader.issue(sn, "'\(text)' is not an address or domain", fix: "write scanner@chem.example.edu, or a domain like chem.example.edu")
                    ok = false
                }
            }
        }
        var recipients: [RecipientPattern] = []
        if let r = entry["recipients"], let items = reader.list(r, what: "recipients") {
            found.recipientsLine = SchemaReader.line(r)
            if items.isEmpty {
                reader.issue(r, "device '\(id)' has an empty recipients list, which would refuse every recipient",
                             fix: "list what it may send to (owner, an address, *@a.domain), or leave recipients out for any internal recipient")
                ok = false
            }
            for rn in items {
                guard let text = reader.string(rn, what: "recipient") else { ok = false; continue }
                if let p = RecipientPattern(text) { recipients.append(p) } else {
                    reader.issue(rn, "'\(text)' is not a recipient rule", fix: DeviceFieldRules.recipientForms)
                    ok = false
                }
            }
        }
        let registered = entry["registered"].flatMap { reader.date($0, what: "registered") }
        let sunsetNode = entry["sunset"]
        let sunset = sunsetNode.flatMap { reader.date($0, what: "sunset") }
        if let r = registered, let s = sunset, s < r {
            reader.issue(sunsetNode, "sunset \(s) of device '\(id)' is before its registration \(r)", fix: "set sunset on or after \(r)")
            ok = false
        }
        let maxSize = entry["max-message-size"].flatMap { reader.size($0, what: "max-message-size") }
        var rate: RateLimit?
        if let rn = entry["max-rate"], let text = reader.string(rn, what: "max-rate") {
            rate = RateLimit(text)
            if rate == nil {
                reader.issue(rn, "'\(text)' is not a rate", fix: "write a count per unit, e.g. 60/hour (units: second, minute, hour, day)")
                ok = false
            }
        }
        let revocation = revocation(entry, id: id, registered: registered, reader: &reader, ok: &ok)
        guard ok, reader.issues.count == before, let registered, let sunset, !department.isEmpty else { return found }
        found.device = RegisteredDevice(id: id, department: department, owner: owner, location: location, addresses: ranges,
                                        senders: senders, registered: registered, sunset: sunset, maxMessageSize: maxSize,
                                        maxRate: rate, line: SchemaReader.line(node), revocation: revocation, recipients: recipients)
        return found
    }

    /// `revoked`, `revoked-by` and `revoke-reason`: all three or none.
    private static func revocation(_ entry: SchemaReader.Fields, id: String, registered: CalendarDate?, reader: inout SchemaReader,
                                   ok: inout Bool) -> Revocation? {
        let present = revocationKeys.filter { entry[$0] != nil }
        guard !present.isEmpty else { return nil }
        guard present.count == revocationKeys.count, let dateNode = entry["revoked"], let byNode = entry["revoked-by"],
              let reasonNode = entry["revoke-reason"]
        else {
            let missing = revocationKeys.filter { entry[$0] == nil }.joined(separator: ", ")
            reader.issue(present.compactMap { entry[$0] }.first, "device '\(id)' has \(present.joined(separator: ", ")) but not \(missing)",
                         fix: "a revocation gives revoked (the day), revoked-by and revoke-reason; `postern devices revoke` writes them")
            ok = false
            return nil
        }
        let date = reader.date(dateNode, what: "revoked")
        if let date, let registered, date < registered {
            reader.issue(dateNode, "device '\(id)' is revoked on \(date), before its registration \(registered)", fix: "correct revoked:")
            ok = false
        }
        var texts: [String] = []
        for (node, what) in [(byNode, "revoked-by"), (reasonNode, "revoke-reason")] {
            guard let text = reader.string(node, what: what) else { ok = false; continue }
            if text.trimmingCharacters(in: .whitespaces).isEmpty {
                reader.issue(node, "\(what) of device '\(id)' is empty", fix: "say who revoked it and why")
                ok = false
            } else if let problem = DeviceFieldRules.freeTextProblem(text) {
                // Shown on the registration page and in `postern devices list`, and written to the audit log.
                reader.issue(node, "\(what) of device '\(id)': \(problem)", fix: "write it in plain text")
                ok = false
            }
            texts.append(text)
        }
        guard let date, texts.count == 2 else { return nil }
        return Revocation(date: date, by: texts[0], reason: texts[1])
    }

    /// The address ranges of `items`; a range that overlaps another of the same device is reported at the later one.
    private static func addresses(_ items: [Node], reader: inout SchemaReader, ok: inout Bool) -> [AddressRange] {
        var ranges: [(range: AddressRange, node: Node, position: Int)] = []
        ranges.reserveCapacity(items.count)
        for an in items {
            guard let text = reader.string(an, what: "address") else { ok = false; continue }
            switch AddressRange.parse(text) {
            case .success(let r):
                ranges.append((r, an, ranges.count))
            case .failure(.hostBitsSet(let network)):
                reader.issue(an, "'\(text)' has host bits set beyond the prefix", fix: "write the network \(network), or a single address without /len")
                ok = false
            case .failure(.badPrefixLength):
                reader.issue(an, "'\(text)' has a bad prefix length", fix: "use /0-/32 for IPv4 and /0-/128 for IPv6")
                ok = false
            case .failure(.notAnAddress):
                reader.issue(an, "'\(text)' is not an IPv4 or IPv6 address", fix: "write e.g. 10.1.2.3, 10.1.2.0/28 or 2001:db8::10")
                ok = false
            }
        }
        // Sorted by start, each range overlaps the widest before it or none (n log n: a file may list many).
        var widest: (range: AddressRange, node: Node, position: Int)?
        for item in ranges.sorted(by: { ($0.range.first, $0.position) < ($1.range.first, $1.position) }) {
            if let w = widest, item.range.first <= w.range.last {
                let (earlier, later) = w.position < item.position ? (w, item) : (item, w)
                reader.issue(later.node, "address \(later.range.text) overlaps \(earlier.range.text) of the same device", fix: "list each address once")
                ok = false
                if item.range.last > w.range.last { widest = item }
            } else {
                widest = item
            }
        }
        return ranges.map(\.range)
    }

    /// What depends on the device's department and policy.yaml (`DeviceFieldRules`): its senders lie in the
    /// department's domains (or the internal ones) and its owner is internal.
    static func ruleIssues(_ device: RegisteredDevice, reading: DeviceReading, file: String, department: Department,
                           internalDomains: [DomainPattern]) -> [PolicyIssue] {
        var issues: [PolicyIssue] = []
        for sender in device.senders {
            if let problem = DeviceFieldRules.senderProblem(sender, department: department, internalDomains: internalDomains) {
                issues.append(PolicyIssue(file: file, line: reading.sendersLine, message: "device '\(device.id)': \(problem)",
                                          fix: "use a sender in the department's domains, or add the domain to its domains: in departments.yaml"))
            }
        }
        for recipient in device.recipients {
            if let problem = DeviceFieldRules.recipientProblem(recipient, internalDomains: internalDomains) {
                issues.append(PolicyIssue(file: file, line: reading.recipientsLine, message: "device '\(device.id)': \(problem)",
                                          fix: "recipients narrow the internal domains a device may send to; write one inside them"))
            }
        }
        if let problem = DeviceFieldRules.contactProblem(device.owner, internalDomains: internalDomains) {
            issues.append(PolicyIssue(file: file, line: reading.ownerLine, message: "owner of device '\(device.id)': \(problem)",
                                      fix: "name a contact with an address in the internal domains"))
        }
        return issues
    }
}
