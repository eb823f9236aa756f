import NIOCore
import PosternSMTP
import XCTest

/// The PROXY protocol header (v1 text, v2 binary) as a load balancer sends it, and what else arrives.
final class ProxyHeaderTests: XCTestCase {
    /// Parses `bytes` fed `chunk` octets at a time; the header and what it left unread.
    func parse(_ bytes: [UInt8], chunk: Int = .max) throws -> (header: ProxyHeader?, rest: [UInt8]) {
        var buffer = ByteBuffer()
        var offset = 0
        while offset < bytes.count {
            let end = min(bytes.count, offset + max(1, min(chunk, bytes.count)))
            buffer.writeBytes(bytes[offset..<end])
            offset = end
            if let header = try ProxyHeader.parse(&buffer) {
                buffer.writeBytes(bytes[offset...])
                return (header, Array(buffer.readableBytesView))
            }
        }
        return (nil, Array(buffer.readableBytesView))
    }

    func v2(command: UInt8 = 0x21, family: UInt8, addresses: [UInt8], declaredLength: Int? = nil) -> [UInt8] {
        let length = declaredLength ?? addresses.count
        return ProxyHeader.v2Signature + [command, family, UInt8(length >> 8), UInt8(length & 0xFF)] + addresses
    }

    static let ipv4Addresses: [UInt8] = [192, 0, 2, 7, 127, 0, 0, 1, 0x9C, 0x40, 0x00, 0x19]  // ports 40000, 25

    // MARK: v1

    func testV1TCP4AndTCP6GiveTheSourceAndLeaveTheRest() throws {
        let tcp4 = try parse(Array("PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO x\r\n".utf8))
        XCTAssertEqual(tcp4.header, .proxied(address: "192.0.2.7", port: 40000))
        XCTAssertEqual(String(decoding: tcp4.rest, as: UTF8.self), "EHLO x\r\n")
        let tcp6 = try parse(Array("PROXY TCP6 2001:db8::7 ::1 65535 25\r\n".utf8))
        XCTAssertEqual(tcp6.header, .proxied(address: "2001:db8::7", port: 65535))
        XCTAssertEqual(tcp6.rest, [])
    }

    func testV1UnknownIsTheBalancersOwnConnection() throws {
        XCTAssertEqual(try parse(Array("PROXY UNKNOWN\r\n".utf8)).header, .local)
        XCTAssertEqual(try parse(Array("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".utf8)).header, .local)
    }

    func testV1FieldsThatAreNotAddressesOrPortsAreRefused() {
        for line in ["PROXY TCP4 2001:db8::7 127.0.0.1 40000 25\r\n", "PROXY TCP6 192.0.2.7 ::1 40000 25\r\n",
                     "PROXY TCP4 192.0.2.300 127.0.0.1 40000 25\r\n", "PROXY TCP4 192.0.2.7 127.0.0.1 65536 25\r\n",
                     "PROXY TCP4 192.0.2.7 127.0.0.1 +4000 25\r\n", "PROXY TCP4 192.0.2.7 127.0.0.1 40000\r\n",
                     "PROXY TCP4 192.0.2.7  127.0.0.1 40000 25\r\n", "PROXY UDP4 192.0.2.7 127.0.0.1 40000 25\r\n",
                     "PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\n"] {
            XCTAssertThrowsError(try parse(Array(line.utf8)), line) { error in
                guard case ProxyHeader.ParseError.malformed = error else { return XCTFail("\(line): \(error)") }
            }
        }
    }

    func testAnythingElseIsNotProxyProtocol() {
        for text in ["EHLO client\r\n", "PROXX TCP4", "GET / HTTP/1.1\r\n", "PROXY\r\n", "\u{16}\u{03}\u{01}"] {
            XCTAssertThrowsError(try parse(Array(text.utf8)), text) { error in
                XCTAssertEqual(error as? ProxyHeader.ParseError, .notProxyProtocol, text)
            }
        }
    }

    func testAV1HeaderLongerThan107OctetsIsRefusedBeforeItsEnd() {
        let long = Array("PROXY TCP6 ".utf8) + [UInt8](repeating: UInt8(ascii: "1"), count: 200)
        XCTAssertThrowsError(try parse(long)) { error in
            XCTAssertEqual(error as? ProxyHeader.ParseError, .malformed("v1 header longer than 107 octets"))
        }
        XCTAssertNil(try parse(Array(long.prefix(106))).header, "106 octets may still end")
    }

    // MARK: v2

    func testV2ProxyOverIPv4AndIPv6() throws {
        let ipv4 = try parse(v2(family: 0x11, addresses: Self.ipv4Addresses) + Array("EHLO".utf8))
        XCTAssertEqual(ipv4.header, .proxied(address: "192.0.2.7", port: 40000))
        XCTAssertEqual(ipv4.rest, Array("EHLO".utf8))
        let source: [UInt8] = [0x20, 0x01, 0x0D, 0xB8] + [UInt8](repeating: 0, count: 11) + [7]
        let ipv6 = try parse(v2(family: 0x21, addresses: source + [UInt8](repeating: 0, count: 15) + [1] + [0x01, 0xBB, 0x00, 0x19]))
        XCTAssertEqual(ipv6.header, .proxied(address: "2001:db8::7", port: 443))
    }

    func testV2LocalAndUnspecifiedAreTheBalancersOwn() throws {
        XCTAssertEqual(try parse(v2(command: 0x20, family: 0x00, addresses: [])).header, .local)
        XCTAssertEqual(try parse(v2(command: 0x20, family: 0x11, addresses: Self.ipv4Addresses)).header, .local)
        XCTAssertEqual(try parse(v2(command: 0x21, family: 0x00, addresses: [])).header, .local)
    }

    func testV2TLVsAfterTheAddressesAreSkippedNotHandedToTheSession() throws {
        let tlv: [UInt8] = [0x01, 0x00, 0x02, 0x68, 0x32]  // ALPN "h2"
        let parsed = try parse(v2(family: 0x11, addresses: Self.ipv4Addresses + tlv) + Array("QUIT".utf8))
        XCTAssertEqual(parsed.header, .proxied(address: "192.0.2.7", port: 40000))
        XCTAssertEqual(parsed.rest, Array("QUIT".utf8))
    }

    func testV2TruncatedOversizedAndOddHeadersAreRefused() {
        let cases: [([UInt8], ProxyHeader.ParseError)] = [
            (v2(family: 0x11, addresses: Array(Self.ipv4Addresses.prefix(8))), .malformed("short IPv4 addresses")),
            (v2(family: 0x21, addresses: Self.ipv4Addresses), .malformed("short IPv6 addresses")),
            (v2(family: 0x11, addresses: [], declaredLength: 4096), .malformed("header too long")),
            (v2(command: 0x11, family: 0x11, addresses: Self.ipv4Addresses), .malformed("unsupported version")),
            (v2(command: 0x2F, family: 0x11, addresses: Self.ipv4Addresses), .malformed("unknown command")),
            (v2(family: 0x31, addresses: [UInt8](repeating: 0, count: 216)), .malformed("unsupported address family")),
            (Array(ProxyHeader.v2Signature.prefix(5)) + [0x00, 0x0A], .notProxyProtocol),
        ]
        for (bytes, expected) in cases {
            XCTAssertThrowsError(try parse(bytes)) { XCTAssertEqual($0 as? ProxyHeader.ParseError, expected, "\(bytes)") }
        }
    }

    func testAHeaderThatHasNotArrivedInFullWaitsWithoutConsuming() throws {
        let header = v2(family: 0x11, addresses: Self.ipv4Addresses)
        for cut in [1, 12, 15, 16, header.count - 1] {
            var buffer = ByteBuffer(bytes: header.prefix(cut))
            XCTAssertNil(try ProxyHeader.parse(&buffer), "\(cut) octets")
            XCTAssertEqual(buffer.readableBytes, cut, "nothing consumed")
        }
    }

    /// The same bytes in any split give the same answer (the fuzz target checks this on random input).
    func testSplitAcrossReadsAnyWayTheAnswerIsTheSame() throws {
        let inputs: [[UInt8]] = [
            Array("PROXY TCP4 192.0.2.7 127.0.0.1 40000 25\r\nEHLO x\r\n".utf8),
            Array("PROXY TCP6 2001:db8::7 ::1 1 25\r\n".utf8),
            v2(family: 0x11, addresses: Self.ipv4Addresses) + [0x45],
        ]
        for input in inputs {
            let whole = try parse(input)
            for chunk in 1...8 {
                let split = try parse(input, chunk: chunk)
                XCTAssertEqual(split.header, whole.header, "chunks of \(chunk)")
                XCTAssertEqual(split.rest, whole.rest, "chunks of \(chunk)")
            }
        }
    }
}
