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
        var text = text
        guard let parsed = text.withUTF8({ Self.parse($0) }) else { return nil }
        self = parsed
    }

    /// The bytes of `init?(_:)`; IPv4 is parsed here (it is the hot case: every registered address and
    /// every device client), IPv6 by `inet_pton`.
    static func parse(_ bytes: UnsafeBufferPointer<UInt8>) -> IPAddress? {
        // The zone and bracket rules below work on ASCII bytes; other text goes the Character way.
        guard bytes.allSatisfy({ $0 < 0x80 }) else { return parseCharacters(String(decoding: bytes, as: UTF8.self)) }
        var end = bytes.count
        if let percent = bytes.firstIndex(of: UInt8(ascii: "%")) { end = percent }
        var start = 0
        if end >= 2, bytes[0] == UInt8(ascii: "["), bytes[end - 1] == UInt8(ascii: "]") {
            start = 1
            end -= 1
        }
        return parseBare(UnsafeBufferPointer(rebasing: bytes[start..<end]))
    }

    /// ASCII text without zone or brackets.
    private static func parseBare(_ text: UnsafeBufferPointer<UInt8>) -> IPAddress? {
        if text.contains(UInt8(ascii: ":")) {
            // inet_pton reads a C string: a NUL inside would end it early, so such text is no address.
            guard !text.contains(0) else { return nil }
            var raw = in6_addr()
            let ok = withUnsafeTemporaryAllocation(of: CChar.self, capacity: text.count + 1) { c -> Bool in
                for (i, b) in text.enumerated() { c[i] = CChar(bitPattern: b) }
                c[text.count] = 0
                return inet_pton(AF_INET6, c.baseAddress!, &raw) == 1  // `!`: capacity is at least 1
            }
            guard ok else { return nil }
            return withUnsafeBytes(of: &raw) { IPAddress(bytes: $0) }
        }
        guard let v4 = parseIPv4(text) else { return nil }
        return IPAddress(high: 0, low: 0xffff_0000_0000 | UInt64(v4))
    }

    /// Text with non-ASCII characters (only ever valid inside a zone, which is dropped).
    private static func parseCharacters(_ text: String) -> IPAddress? {
        var text = Substring(text)
        if let percent = text.firstIndex(of: "%") { text = text[..<percent] }
        if text.hasPrefix("["), text.hasSuffix("]") { text = text.dropFirst().dropLast() }
        var ascii = String(text)
        return ascii.withUTF8 { bytes in bytes.allSatisfy({ $0 < 0x80 }) ? parseBare(bytes) : nil }
    }

    /// The strict dotted quad exactly as glibc's `inet_pton(AF_INET)` accepts it: four decimal parts of
    /// 0-255, no leading zeros, no empty parts, nothing else.
    static func parseIPv4(_ text: UnsafeBufferPointer<UInt8>) -> UInt32? {
        var value: UInt32 = 0
        var part: UInt32 = 0
        var digits = 0
        var parts = 0
        for b in text {
            if b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") {
                if digits > 0, part == 0 { return nil }  // leading zero
                part = part * 10 + UInt32(b - UInt8(ascii: "0"))
                guard part <= 255 else { return nil }
                if digits == 0 { parts += 1 }
                digits += 1
            } else if b == UInt8(ascii: "."), digits > 0, parts < 4 {
                value = value << 8 | part
                part = 0
                digits = 0
            } else {
                return nil
            }
        }
        guard parts == 4, digits > 0 else { return nil }
        return value << 8 | part
    }

    /// `bytes` are an `in6_addr`'s 16 (the only caller): no input reaches the precondition.
    init(bytes: UnsafeRawBufferPointer) {
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
        var bytes = text
        return bytes.withUTF8 { bytes in
            let slash = bytes.firstIndex(of: UInt8(ascii: "/")) ?? bytes.count
            let addressPart = UnsafeBufferPointer(rebasing: bytes[..<slash])
            guard let address = IPAddress.parse(addressPart) else { return .failure(.notAnAddress) }
            let isV4 = addressPart.allSatisfy({ $0 < 0x80 })
                ? !addressPart.contains(UInt8(ascii: ":"))
                : !String(decoding: addressPart, as: UTF8.self).contains(Character(":"))
            let width = isV4 ? 32 : 128
            var prefix = width
            if slash < bytes.count {
                let digits = bytes[(slash + 1)...]
                var p = 0
                for b in digits {
                    guard b >= UInt8(ascii: "0"), b <= UInt8(ascii: "9") else { return .failure(.badPrefixLength) }
                    p = p * 10 + Int(b - UInt8(ascii: "0"))
                    guard p <= width else { return .failure(.badPrefixLength) }
                }
                guard !digits.isEmpty else { return .failure(.badPrefixLength) }
                prefix = p
            }
            let bits = isV4 ? prefix + 96 : prefix
            let network = address.masked(prefix: bits)
            guard network == address else {
                return .failure(.hostBitsSet(network: "\(network)/\(prefix)"))
            }
            return .success(AddressRange(first: network, last: network.filled(prefix: bits), text: text))
        }
    }

    public func contains(_ address: IPAddress) -> Bool { first <= address && address <= last }

    public func overlaps(_ other: AddressRange) -> Bool { first <= other.last && other.first <= last }

    public var description: String { text }
}
