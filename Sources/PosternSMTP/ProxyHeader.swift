import NIOCore

/// The PROXY protocol header (HAProxy, versions 1 and 2) a load balancer puts before the client's bytes.
///
/// A trust boundary: the address it reports is the one policy decides on (a registered device is known by
/// its address), so the gateway reads it only from the balancers it is told to trust, and this parser takes
/// only what the specification allows, within fixed bounds, whatever the bytes or how they are split across
/// reads. It is pure (no I/O) and fuzzed (`Sources/PosternFuzz`).
public enum ProxyHeader: Sendable, Hashable {
    /// The client's address and port as the load balancer saw them.
    case proxied(address: String, port: Int)
    /// v1 `UNKNOWN` or v2 `LOCAL` (or v2 `PROXY` with no address family): a health check or a connection of
    /// the balancer's own; use the peer address.
    case local

    public enum ParseError: Error, Sendable, Hashable {
        /// The bytes do not start like either version: not a PROXY header at all.
        case notProxyProtocol
        /// A PROXY header, but one this parser does not take (the reason says which part).
        case malformed(String)
    }

    /// The twelve octets that open a v2 header (they cannot start an SMTP command or a TLS record).
    public static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    /// A v1 header is at most 107 octets with its CRLF (the specification's worst case, TCP6 with both ports).
    public static let v1MaxLength = 107
    /// The longest v2 address block taken. The specification allows 65,535; the addresses with TLVs of
    /// any balancer in use stay far below this, and a bound keeps what one connection can make us buffer small.
    public static let v2MaxAddressLength = 2048

    /// Parses a header from the front of `buffer` and consumes it. Returns nil when more bytes are needed;
    /// consumes nothing then or on an error. Never consumes past the header: what follows is the client's.
    public static func parse(_ buffer: inout ByteBuffer) throws(ParseError) -> ProxyHeader? {
        let view = buffer.readableBytesView
        guard let first = view.first else { return nil }
        if first == v2Signature[0] {
            guard let (header, length) = try parseV2(Array(view.prefix(16 + v2MaxAddressLength))) else { return nil }
            buffer.moveReaderIndex(forwardBy: length)
            return header
        }
        guard first == UInt8(ascii: "P") else { throw .notProxyProtocol }
        guard let (header, length) = try parseV1(Array(view.prefix(v1MaxLength))) else { return nil }
        buffer.moveReaderIndex(forwardBy: length)
        return header
    }

    /// A v2 header at the start of `bytes`, and its length; nil when it is not complete yet.
    static func parseV2(_ bytes: [UInt8]) throws(ParseError) -> (ProxyHeader, Int)? {
        let signature = bytes.prefix(v2Signature.count)
        guard signature.elementsEqual(v2Signature.prefix(signature.count)) else { throw .notProxyProtocol }
        guard bytes.count >= 16 else { return nil }
        let versionCommand = bytes[12], family = bytes[13]
        let length = Int(bytes[14]) << 8 | Int(bytes[15])
        guard versionCommand >> 4 == 2 else { throw .malformed("unsupported version") }
        guard length <= v2MaxAddressLength else { throw .malformed("header too long") }
        guard bytes.count >= 16 + length else { return nil }
        let body = bytes[16..<(16 + length)]
        switch versionCommand & 0x0F {
        case 0x0: return (.local, 16 + length)
        case 0x1: break
        default: throw .malformed("unknown command")
        }
        switch family {
        case 0x11, 0x12:  // TCP/UDP over IPv4: source, destination, source port, destination port
            guard body.count >= 12 else { throw .malformed("short IPv4 addresses") }
            let base = body.startIndex
            let address = body[base..<(base + 4)].map(String.init).joined(separator: ".")
            return (.proxied(address: address, port: Int(body[base + 8]) << 8 | Int(body[base + 9])), 16 + length)
        case 0x21, 0x22:  // TCP/UDP over IPv6
            guard body.count >= 36 else { throw .malformed("short IPv6 addresses") }
            let base = body.startIndex
            let port = Int(body[base + 32]) << 8 | Int(body[base + 33])
            guard let address = (try? SocketAddress(packedIPAddress: ByteBuffer(bytes: body[base..<(base + 16)]), port: port))?.ipAddress else {
                throw .malformed("IPv6 address")
            }
            return (.proxied(address: address, port: port), 16 + length)
        case 0x00:  // AF_UNSPEC: no address to report
            return (.local, 16 + length)
        default:
            throw .malformed("unsupported address family")
        }
    }

    /// A v1 header at the start of `bytes` (at most `v1MaxLength` of them), and its length; nil when it is not complete yet.
    static func parseV1(_ bytes: [UInt8]) throws(ParseError) -> (ProxyHeader, Int)? {
        // Decided on the first six octets alone, so that the answer does not depend on how the bytes arrive.
        guard Array("PROXY ".utf8).starts(with: bytes.prefix(6)) else { throw .notProxyProtocol }
        guard let lf = bytes.firstIndex(of: UInt8(ascii: "\n")) else {
            if bytes.count >= v1MaxLength { throw .malformed("v1 header longer than 107 octets") }
            return nil
        }
        guard lf > 0, bytes[lf - 1] == UInt8(ascii: "\r") else { throw .malformed("v1 header must end in CRLF") }
        let fields = bytes[..<(lf - 1)].split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
            .map { String(decoding: $0, as: UTF8.self) }
        guard fields.first == "PROXY", fields.count >= 2 else { throw .notProxyProtocol }
        if fields[1] == "UNKNOWN" { return (.local, lf + 1) }
        guard fields.count == 6, fields[1] == "TCP4" || fields[1] == "TCP6",
              let port = Self.port(fields[4]), Self.port(fields[5]) != nil else {
            throw .malformed("v1 header fields")
        }
        let address = fields[2]
        let family = (try? SocketAddress(ipAddress: address, port: 0))?.protocol
        let wanted: NIOBSDSocket.ProtocolFamily = fields[1] == "TCP4" ? .inet : .inet6
        guard family == wanted else { throw .malformed("v1 source address") }
        return (.proxied(address: address, port: port), lf + 1)
    }

    /// A v1 port: one to five decimal digits, 0 to 65535.
    private static func port(_ text: String) -> Int? {
        guard (1...5).contains(text.utf8.count), text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), let value = Int(text),
              value <= 65535 else { return nil }
        return value
    }
}
