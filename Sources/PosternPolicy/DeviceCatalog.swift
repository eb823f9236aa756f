/// One registered device as the catalog holds it: shared by its places in both tables, and by every policy
/// that keeps it across reloads.
final class DeviceEntry: Sendable {
    let device: RegisteredDevice
    /// The file it comes from, as messages name it, and the lines of its id and its addresses there.
    let file: String
    let idLine: Int
    let addressesLine: Int
    /// What its file's text hashes to (`DeviceReading.digest`), for `PolicySet.fingerprint`; not part of the device.
    let sourceDigest: ContentDigest?

    init(device: RegisteredDevice, file: String, idLine: Int, addressesLine: Int, sourceDigest: ContentDigest? = nil) {
        self.sourceDigest = sourceDigest
        self.device = device
        self.file = file
        self.idLine = idLine
        self.addressesLine = addressesLine
    }
}

/// One address range of a device, in the address table: its bounds, and which of the device's ranges it is (for
/// its text). Nothing in it but the device needs counting references, so that a search copies little.
struct AddressEntry: Sendable {
    var first: IPAddress
    var last: IPAddress
    var index: Int
    var entry: DeviceEntry

    init(_ range: AddressRange, index: Int, entry: DeviceEntry) {
        (first, last, self.index, self.entry) = (range.first, range.last, index, entry)
    }

    /// The range as its device file wrote it.
    var text: String {
        let addresses = entry.device.addresses
        return addresses.indices.contains(index) ? addresses[index].text : "\(first)-\(last)"
    }
}

/// The devices of a policy: by id (then department) for `device(id:)` and by address for the decisions.
///
/// In a catalog that a policy uses, no two devices share an id and no two address ranges overlap. Those are
/// the checks across device files. `build` makes them over every device (a first load, or a load with
/// problems, whose every problem is reported); `patched` makes a reload's catalog from the last good one and
/// the devices whose files changed. It checks each changed device against its neighbours in both tables:
/// in tables that hold no duplicate and no overlap, a device that clashes with any other sits next to one it
/// clashes with. When it finds a clash, `build` finds and reports all of them.
struct DeviceCatalog: Sendable {
    /// Sorted by (id, department).
    private(set) var byID: ChunkedArray<DeviceEntry>
    /// Sorted by the first address of the range.
    private(set) var byAddress: ChunkedArray<AddressEntry>

    /// A catalog of `entries` and the problems between them (duplicate ids, overlapping addresses); use it only when
    /// there are none. Each problem is reported on the later of the two files (by path, then line), or on the one in
    /// `blaming` (an edit being validated: the file it would write).
    static func build(_ entries: [DeviceEntry], blaming: Set<String> = []) -> (catalog: DeviceCatalog, issues: [PolicyIssue]) {
        var issues: [PolicyIssue] = []
        // The order in which of two clashing entries the second is the one reported.
        func order(_ e: DeviceEntry, line: Int) -> (Int, String, Int) { (blaming.contains(e.file) ? 1 : 0, e.file, line) }
        let reportOrder = entries.sorted {
            let (a, b) = (order($0, line: $0.idLine), order($1, line: $1.idLine))
            return ($0.device.id, a.0, a.1, a.2) < ($1.device.id, b.0, b.1, b.2)
        }
        var first: DeviceEntry?
        for entry in reportOrder {
            if let f = first, f.device.id == entry.device.id {
                issues.append(PolicyIssue(file: entry.file, line: entry.idLine,
                                          message: "device '\(entry.device.id)' is already registered in \(place(f, line: f.idLine))",
                                          fix: "a device is registered once: remove one of the two, or choose another id"))
            } else {
                first = entry
            }
        }
        var ranges: [AddressEntry] = []
        ranges.reserveCapacity(entries.count)
        for entry in entries {
            for (index, range) in entry.device.addresses.enumerated() { ranges.append(AddressEntry(range, index: index, entry: entry)) }
        }
        ranges.sort { ($0.first, $0.entry.file, $0.entry.addressesLine) < ($1.first, $1.entry.file, $1.entry.addressesLine) }
        // Each range that overlaps any before it overlaps the one reaching furthest.
        var widest: AddressEntry?
        for item in ranges {
            if let w = widest, item.first <= w.last {
                if w.entry !== item.entry {
                    let (earlier, later) = order(w.entry, line: w.entry.addressesLine) <= order(item.entry, line: item.entry.addressesLine) ? (w, item) : (item, w)
                    issues.append(PolicyIssue(
                        file: later.entry.file, line: later.entry.addressesLine,
                        message: "address \(later.text) of device '\(later.entry.device.id)' overlaps \(earlier.text) of device '\(earlier.entry.device.id)' (\(place(earlier.entry, line: earlier.entry.addressesLine)))",
                        fix: "give each device its own addresses; narrow or remove one of the two"))
                }
                if item.last > w.last { widest = item }
            } else {
                widest = item
            }
        }
        let sorted = blaming.isEmpty ? reportOrder : entries.sorted { ($0.device.id, $0.file, $0.idLine) < ($1.device.id, $1.file, $1.idLine) }
        return (DeviceCatalog(byID: ChunkedArray(sorted), byAddress: ChunkedArray(ranges)), issues)
    }

    private static func place(_ entry: DeviceEntry, line: Int) -> String { "\(entry.file):\(line)" }

    /// This catalog without the devices `removing` names (id, department) and with those of `adding`; nil when
    /// an added device may share an id or addresses with another.
    func patched(removing: [(id: String, department: String)], adding: [DeviceEntry]) -> DeviceCatalog? {
        var catalog = self
        for (id, department) in removing {
            let p = catalog.byID.partitionPoint { ($0.device.id, $0.device.department) < (id, department) }
            guard p < catalog.byID.count else { continue }
            let old = catalog.byID[p]
            guard old.device.id == id, old.device.department == department else { continue }
            catalog.byID.remove(at: p)
            for range in old.device.addresses {
                let q = catalog.byAddress.partitionPoint { $0.first < range.first }
                guard q < catalog.byAddress.count, catalog.byAddress[q].entry === old else { return nil }
                catalog.byAddress.remove(at: q)
            }
        }
        for entry in adding {
            let device = entry.device
            let p = catalog.byID.partitionPoint { ($0.device.id, $0.device.department) < (device.id, device.department) }
            if p > 0, catalog.byID[p - 1].device.id == device.id { return nil }
            if p < catalog.byID.count, catalog.byID[p].device.id == device.id { return nil }
            catalog.byID.insert(entry, at: p)
            for (index, range) in device.addresses.enumerated() {
                let q = catalog.byAddress.partitionPoint { $0.first < range.first }
                if q > 0, catalog.byAddress[q - 1].last >= range.first { return nil }
                if q < catalog.byAddress.count, catalog.byAddress[q].first <= range.last { return nil }
                catalog.byAddress.insert(AddressEntry(range, index: index, entry: entry), at: q)
            }
        }
        return catalog
    }

    func entry(id: String) -> DeviceEntry? {
        let p = byID.partitionPoint { $0.device.id < id }
        guard p < byID.count, byID[p].device.id == id else { return nil }
        return byID[p]
    }

    /// The device whose range holds `address`.
    func entry(for address: IPAddress) -> DeviceEntry? {
        let p = byAddress.partitionPoint { $0.first <= address }
        guard p > 0 else { return nil }
        let candidate = byAddress[p - 1]
        return address <= candidate.last ? candidate.entry : nil
    }
}

/// The registered devices of a policy, sorted by id (then department).
public struct DeviceList: RandomAccessCollection, Sendable, Equatable {
    let entries: ChunkedArray<DeviceEntry>

    public var startIndex: Int { entries.startIndex }
    public var endIndex: Int { entries.endIndex }
    public subscript(position: Int) -> RegisteredDevice { entries[position].device }

    public func makeIterator() -> Iterator { Iterator(entries: entries.makeIterator()) }

    public struct Iterator: IteratorProtocol {
        var entries: ChunkedArray<DeviceEntry>.Iterator
        public mutating func next() -> RegisteredDevice? { entries.next()?.device }
    }

    public static func == (lhs: DeviceList, rhs: DeviceList) -> Bool { lhs.elementsEqual(rhs) }
}
