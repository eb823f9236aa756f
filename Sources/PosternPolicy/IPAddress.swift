#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An IPv4 or IPv6 address as one 128-bit value; IPv4 lives in the IPv4-mapped range `::ffff:0:0/96`,
/// so `127.0.0.1` and `::ffff:127.0.0.1` are the same address.
public struct IPAddress: Sendable, Hashable, Comparable, CustomStringConvertible {
    public var high: UInt64
    public var low: UInt64

    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// Parses textual IPv4 (dotted quad) or IPv6 (with an optional `%zone`, which is dropped).
    public init?(_ text: String) {
        var text = Substring(text)
        if let percent = text.firstIndex(of: "%") { text = text[..<percent] }
        if text.hasPrefix("["), text.hasSuffix("]") { text = text.dropFirst().dropLast() }
        if text.contains(Character(":")) {
            var raw = in6_addr()
            guard inet_pton(AF_INET6, String(text), &raw) == 1 else { return nil }
            let bytes = withUnsafeBytes(of: &raw) { Array($0) }
            self.init(bytes: bytes)
        } else {
            // inet_pton's AF_INET form is the strict dotted quad; we want exactly that.
            var raw = in_addr()
            guard inet_pton(AF_INET, String(text), &raw) == 1 else { return nil }
            let v4 = withUnsafeBytes(of: &raw) { Array($0) }
            self.init(bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] + v4)
        }
    }

    init(bytes: [UInt8]) {
        precondition(bytes.count == 16)
        var h: UInt64 = 0
        var l: UInt64 = 0
        for i in 0..<8 { h = h << 8 | UInt64(bytes[i]) }
        for i in 8..<16 { l = l << 8 | UInt64(bytes[i]) }
        self.init(high: h, low: l)
    }

    /// True for `::ffff:a.b.c.d`, the form IPv4 addresses take here.
    public var isIPv4: Bool { high == 0 && low >> 32 == 0xffff }

    public var description: String {
        if isIPv4 {
            let v = UInt32(truncatingIfNeeded: low)
            return "\(v >> 24).\(v >> 16 & 0xff).\(v >> 8 & 0xff).\(v & 0xff)"
        }
        var raw = in6_addr()
        withUnsafeMutableBytes(of: &raw) { buffer in
            for i in 0..<8 { buffer[i] = UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64(i))) }
            for i in 0..<8 { buffer[8 + i] = UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64(i))) }
        }
        var out = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        _ = inet_ntop(AF_INET6, &raw, &out, socklen_t(out.count))
        return String(decoding: out.prefix(while: { $0 != 0 }).map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    public static func < (lhs: IPAddress, rhs: IPAddress) -> Bool {
        lhs.high != rhs.high ? lhs.high < rhs.high : lhs.low < rhs.low
    }

    func masked(prefix: Int) -> IPAddress {
        IPAddress(high: high & Self.mask(prefix), low: low & Self.mask(prefix - 64))
    }

    func filled(prefix: Int) -> IPAddress {
        IPAddress(high: high | ~Self.mask(prefix), low: low | ~Self.mask(prefix - 64))
    }

    /// A 64-bit mask with the top `bits` bits set (clamped to 0...64).
    private static func mask(_ bits: Int) -> UInt64 {
        if bits <= 0 { return 0 }
        if bits >= 64 { return .max }
        return ~(UInt64.max >> UInt64(bits))
    }
}

/// One registered source: a single address or a CIDR block, as an inclusive range.
public struct AddressRange: Sendable, Hashable, CustomStringConvertible {
    public var first: IPAddress
    public var last: IPAddress
    /// The text as the policy wrote it.
    public var text: String

    public enum ParseError: Error, Sendable, Hashable {
        case notAnAddress
        case badPrefixLength
        /// The address has bits set beyond the prefix; the associated value is the network to write instead.
        case hostBitsSet(network: String)
    }

    public static func parse(_ text: String) -> Result<AddressRange, ParseError> {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(parts[0])) else { return .failure(.notAnAddress) }
        let isV4 = !parts[0].contains(Character(":"))
        let width = isV4 ? 32 : 128
        var prefix = width
        if parts.count == 2 {
            guard let p = Int(parts[1]), (0...width).contains(p), parts[1].allSatisfy({ $0.isASCII && $0.isNumber }) else {
                return .failure(.badPrefixLength)
            }
            prefix = p
        }
        let bits = isV4 ? prefix + 96 : prefix
        let network = address.masked(prefix: bits)
        guard network == address else {
            return .failure(.hostBitsSet(network: "\(network)/\(prefix)"))
        }
        return .success(AddressRange(first: network, last: network.filled(prefix: bits), text: text))
    }

    public func contains(_ address: IPAddress) -> Bool { first <= address && address <= last }

    public func overlaps(_ other: AddressRange) -> Bool { first <= other.last && other.first <= last }

    public var description: String { text }
}

/// Device lookup by client address: disjoint ranges sorted by start, searched by bisection.
struct AddressIndex: Sendable {
    struct Entry: Sendable {
        var range: AddressRange
        var device: Int
    }

    /// Sorted by `range.first`; validated disjoint before the index is built.
    private let entries: [Entry]

    init(entries: [Entry]) {
        self.entries = entries.sorted { $0.range.first < $1.range.first }
    }

    /// Pairs of entries whose ranges overlap, in sorted order (each overlapping entry paired with the earlier one).
    static func overlaps(in entries: [Entry]) -> [(Entry, Entry)] {
        let sorted = entries.sorted { $0.range.first < $1.range.first }
        var result: [(Entry, Entry)] = []
        var widest: Entry?
        for entry in sorted {
            if let w = widest, entry.range.first <= w.range.last {
                result.append((w, entry))
                if entry.range.last > w.range.last { widest = entry }
            } else {
                widest = entry
            }
        }
        return result
    }

    func device(for address: IPAddress) -> Int? {
        var lo = 0
        var hi = entries.count
        // Find the first entry whose start is greater than the address; the candidate is just before it.
        while lo < hi {
            let mid = (lo + hi) / 2
            if address < entries[mid].range.first { hi = mid } else { lo = mid + 1 }
        }
        guard lo > 0 else { return nil }
        let candidate = entries[lo - 1]
        return candidate.range.contains(address) ? candidate.device : nil
    }
}
