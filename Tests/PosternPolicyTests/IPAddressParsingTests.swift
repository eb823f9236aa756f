#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
import PosternPolicy
import Testing

/// The byte parser of IPv4 and of address ranges against the earlier `inet_pton`/Character implementation.
@Suite struct IPAddressParsingTests {
    /// The former `IPAddress.init?(String)`, kept here as the reference.
    static func reference(_ text: String) -> IPAddress? {
        var text = Substring(text)
        if let percent = text.firstIndex(of: "%") { text = text[..<percent] }
        if text.hasPrefix("["), text.hasSuffix("]") { text = text.dropFirst().dropLast() }
        if text.contains(Character(":")) {
            var raw = in6_addr()
            guard inet_pton(AF_INET6, String(text), &raw) == 1 else { return nil }
            return withUnsafeBytes(of: &raw) { bytes(Array($0)) }
        }
        var raw = in_addr()
        guard inet_pton(AF_INET, String(text), &raw) == 1 else { return nil }
        return withUnsafeBytes(of: &raw) { bytes([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff] + Array($0)) }
    }

    static func bytes(_ b: [UInt8]) -> IPAddress {
        var h: UInt64 = 0, l: UInt64 = 0
        for i in 0..<8 { h = h << 8 | UInt64(b[i]) }
        for i in 8..<16 { l = l << 8 | UInt64(b[i]) }
        return IPAddress(high: h, low: l)
    }

    /// The former `AddressRange.parse`, as the reference.
    static func referenceRange(_ text: String) -> String {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = reference(String(parts[0])) else { return "notAnAddress" }
        let isV4 = !parts[0].contains(Character(":"))
        let width = isV4 ? 32 : 128
        var prefix = width
        if parts.count == 2 {
            guard let p = Int(parts[1]), (0...width).contains(p), parts[1].allSatisfy({ $0.isASCII && $0.isNumber }) else {
                return "badPrefixLength"
            }
            prefix = p
        }
        let bits = isV4 ? prefix + 96 : prefix
        // masked/filled are internal; compare through the parsed range's description and bounds instead.
        return "ok \(address) /\(prefix) bits \(bits)"
    }

    static func describe(_ result: Result<AddressRange, AddressRange.ParseError>) -> String {
        switch result {
        case .success(let r): return "ok \(r.first)-\(r.last) \(r.text)"
        case .failure(let e): return "\(e)"
        }
    }

    static let cases = [
        "1.2.3.4", "0.0.0.0", "255.255.255.255", "10.1.2.3", "01.2.3.4", "1.02.3.4", "1.2.3.00", "1.2.3", "1.2.3.4.",
        ".1.2.3.4", "1..2.3", "256.1.1.1", "1.2.3.256", "1.2.3.4 ", " 1.2.3.4", "1.2.3.4%eth0", "[1.2.3.4]", "[1.2.3.4",
        "1.2.3.4]", "[[1.2.3.4]]", "", "[", "]", "[]", "%", "%1.2.3.4", "1.2.3.4%", "+1.2.3.4", "1.2.3.-4", "1.2.3.4a",
        "::1", "::", "::ffff:1.2.3.4", "::FFFF:1.2.3.4", "[::1]", "fe80::1%eth0", "fe80::1%", "2001:db8::10",
        "2001:db8:0:0:0:0:0:10", "2001:db8::10::1", "1:2:3:4:5:6:7:8:9", ":::", "1.2.3.4:80", "[::1]:25",
        "1.2.3.4%\u{301}", "1.2.3.4\u{301}", "fe80::1%eth\u{e9}", "\u{661}.2.3.4", "1.2.3.4%%\u{301}", "[[1.2.3.4]]%\u{e9}",
        "１.2.3.4", "0x1.2.3.4", "1e0.2.3.4", "99999999999.1.1.1", "4294967296.0.0.0",
    ]

    @Test func addressesParseAsInetPtonDid() {
        for text in Self.cases {
            #expect(IPAddress(text) == Self.reference(text), "\(text.debugDescription)")
        }
    }

    @Test func randomTextParsesAsInetPtonDid() {
        var state: UInt64 = 0x2545F4914F6CDD1D
        let alphabet = Array("0123456789.:.:[]%/abfABF \u{301}")
        for _ in 0..<20_000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let length = Int(state >> 60)
            var text = ""
            for k in 0..<length { text.append(alphabet[Int((state >> UInt64(4 * k % 56)) & 0xff) % alphabet.count]) }
            state = state &* 6364136223846793005 &+ 1442695040888963407
            // Mostly near-addresses: a valid quad or IPv6 with one random edit.
            let base = ["10.1.2.3", "::1", "2001:db8::10", "192.168.0.255"][Int(state >> 62)]
            var near = Array(base)
            let at = Int(state >> 32) % (near.count + 1)
            if state & 1 == 0, at < near.count { near.remove(at: at) } else { near.insert(alphabet[Int(state >> 40) % alphabet.count], at: at) }
            for t in [text, String(near)] {
                #expect(IPAddress(t) == Self.reference(t), "\(t.debugDescription)")
            }
        }
    }

    @Test func rangesParseAsBefore() {
        let texts = Self.cases + Self.cases.map { $0 + "/24" } + [
            "10.1.2.0/28", "10.1.2.3/24", "10.1.2.3/32", "10.1.2.3/33", "10.1.2.3/", "10.1.2.3/+5", "10.1.2.3/0", "0.0.0.0/0",
            "10.1.2.3/024", "10.0.0.0/8/8", "2001:db8::/32", "2001:db8::1/32", "2001:db8::/129", "::/0", "::ffff:10.0.0.0/104",
            "10.1.2.3/\u{663}", "10.1.2.3/99999999999999999999999",
        ]
        for text in texts {
            let parsed = AddressRange.parse(text)
            switch parsed {
            case .success(let r):
                let prefix = text.split(separator: "/", maxSplits: 1).dropFirst().first.map { Int($0)! }
                #expect(Self.referenceRange(text).hasPrefix("ok \(r.first)"), "\(text.debugDescription)")
                #expect(r.first == Self.reference(String(text.split(separator: "/")[0])), "\(text.debugDescription)")
                #expect(r.contains(r.first) && r.contains(r.last) && r.text == text)
                if let prefix { #expect(Self.referenceRange(text).contains("/\(prefix) "), "\(text.debugDescription)") }
            case .failure(.notAnAddress):
                #expect(Self.referenceRange(text) == "notAnAddress", "\(text.debugDescription)")
            case .failure(.badPrefixLength):
                #expect(Self.referenceRange(text) == "badPrefixLength", "\(text.debugDescription)")
            case .failure(.hostBitsSet):
                #expect(Self.referenceRange(text).hasPrefix("ok "), "\(text.debugDescription)")
            }
        }
        #expect(Self.describe(AddressRange.parse("10.1.2.3/24")) == "hostBitsSet(network: \"10.1.2.0/24\")")
        #expect(Self.describe(AddressRange.parse("10.1.2.0/28")) == "ok 10.1.2.0-10.1.2.15 10.1.2.0/28")
        #expect(Self.describe(AddressRange.parse("2001:db8::/126")) == "ok 2001:db8::-2001:db8::3 2001:db8::/126")
    }
}
