import NIOCore

/// The PROXY protocol header (HAProxy, versions 1 and 2) a load balancer puts before the client's bytes.
enum ProxyHeader: Equatable {
    /// The client's address and port as the load balancer saw them.
    case proxied(address: String, port: Int)
    /// v1 `UNKNOWN` or v2 `LOCAL`: a health check or a connection of the balancer's own; use the peer address.
    case local

    enum ParseError: Error, Equatable {
        case notProxyProtocol
        case malformed(String)
    }

    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let v1MaxLength = 107

    /// Parses a header from the front of `buffer`, consuming it. Returns nil when more bytes are needed.
    static func parse(_ buffer: inout ByteBuffer) throws(ParseError) -> ProxyHeader? {
        let view = buffer.readableBytesView
        guard let first = view.first else { return nil }
        if first == v2Signature[0] {
            let prefix = Array(view.prefix(16))
            guard prefix.elementsEqual(v2Signature.prefix(prefix.count)) || prefix.count > 12 && Array(prefix.prefix(12)) == v2Signature else {
                throw .notProxyProtocol
            }
            guard prefix.count == 16 else { return nil }
            guard Array(prefix.prefix(12)) == v2Signature else { throw .notProxyProtocol }
            let versionCommand = prefix[12], family = prefix[13]
            let length = Int(prefix[14]) << 8 | Int(prefix[15])
            guard versionCommand >> 4 == 2 else { throw .malformed("unsupported version") }
            guard length <= 2048 else { throw .malformed("header too long") }
            guard view.count >= 16 + length else { return nil }
            buffer.moveReaderIndex(forwardBy: 16)
            let body = buffer.readBytes(length: length)!  // `!`: `view.count >= 16 + length` above
            switch versionCommand & 0x0F {
            case 0x0: return .local
            case 0x1: break
            default: throw .malformed("unknown command")
            }
            switch family {
            case 0x11, 0x12:  // TCP/UDP over IPv4
                guard body.count >= 12 else { throw .malformed("short IPv4 addresses") }
                let address = body[0..<4].map(String.init).joined(separator: ".")
                return .proxied(address: address, port: Int(body[8]) << 8 | Int(body[9]))
            case 0x21, 0x22:  // TCP/UDP over IPv6
                guard body.count >= 36 else { throw .malformed("short IPv6 addresses") }
                let port = Int(body[32]) << 8 | Int(body[33])
                guard let address = (try? SocketAddress(packedIPAddress: ByteBuffer(bytes: body[0..<16]), port: port))?.ipAddress else {
                    throw .malformed("IPv6 address")
                }
                return .proxied(address: address, port: port)
            case 0x00:
                return .local
            default:
                throw .malformed("unsupported address family")
            }
        }
        guard first == UInt8(ascii: "P") else { throw .notProxyProtocol }
        let limit = min(view.count, v1MaxLength)
        guard let lf = view.prefix(limit).firstIndex(of: UInt8(ascii: "\n")) else {
            if view.count >= v1MaxLength { throw .malformed("v1 header longer than 107 octets") }
            if !"PROXY ".utf8.starts(with: view.prefix(6)) { throw .notProxyProtocol }
            return nil
        }
        let length = lf - view.startIndex + 1
        let line = buffer.readString(length: length)!  // `!`: those bytes are in the buffer, up to the LF
        guard line.hasSuffix("\r\n") else { throw .malformed("v1 header must end in CRLF") }
        let fields = line.dropLast(2).split(separator: " ", omittingEmptySubsequences: false)
        guard fields.first == "PROXY", fields.count >= 2 else { throw .notProxyProtocol }
        if fields[1] == "UNKNOWN" { return .local }
        guard fields.count == 6, fields[1] == "TCP4" || fields[1] == "TCP6",
              let port = Int(fields[4]), (0...65535).contains(port), Int(fields[5]) != nil else {
            throw .malformed("v1 header fields")
        }
        let address = String(fields[2])
        let valid = fields[1] == "TCP4" ? (try? SocketAddress(ipAddress: address, port: 0))?.protocol == .inet
                                        : (try? SocketAddress(ipAddress: address, port: 0))?.protocol == .inet6
        guard valid else { throw .malformed("v1 source address") }
        return .proxied(address: address, port: port)
    }
}

/// Reads the PROXY header of a connection from a trusted load balancer, then hands the connection,
/// with the reported client address, to `install` and removes itself. No header in time: closed.
final class ProxyProtocolHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private var buffer = ByteBuffer()
    private let peer: String
    private let install: (any Channel, _ client: String, _ port: Int) throws -> Void
    private var timeout: Scheduled<Void>?
    private var done = false

    init(peer: String, install: @escaping (any Channel, String, Int) throws -> Void) {
        self.peer = peer
        self.install = install
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timeout = context.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return context.fireChannelRead(data) }
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        do {
            guard let header = try ProxyHeader.parse(&buffer) else { return }
            done = true
            timeout?.cancel()
            let (client, port): (String, Int)
            switch header {
            case .proxied(let address, let p): (client, port) = (address, p)
            case .local: (client, port) = (peer, context.channel.remoteAddress?.port ?? 0)
            }
            try install(context.channel, client, port)
            let rest = buffer
            buffer = ByteBuffer()
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            if rest.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(rest)) }
        } catch {
            context.close(promise: nil)
        }
    }
}

extension ProxyProtocolHandler {
    typealias InboundOut = ByteBuffer
}
