import NIOCore
import PosternSMTP

/// The stages for what the gateway reads before and beside SMTP commands: the PROXY header of a load
/// balancer (a trust boundary: the address it reports is the one policy decides on) and an upstream's replies.
extension FuzzInput {
    // MARK: (e) the PROXY header

    func parseProxyHeader() {
        // The top two flag bits steer the payload into the parser's deeper paths.
        let prefix: [UInt8]
        switch flags >> 6 {
        case 1: prefix = Array("PROXY ".utf8)
        case 2: prefix = ProxyHeader.v2Signature
        case 3: prefix = ProxyHeader.v2Signature + [0x21]
        default: prefix = []
        }
        let bytes = prefix + payload
        let whole = proxyHeader(bytes, chunking: [bytes.count])
        var random = SplitMix(seed &+ 3)
        let chunked = proxyHeader(bytes, chunking: random.chunking(of: bytes.count))
        fuzzCheck(whole == chunked, "ProxyHeader depends on chunking: \(whole) / \(chunked)")
        switch whole {
        case .header(let header, let consumed):
            fuzzCheck(consumed <= max(ProxyHeader.v1MaxLength, 16 + ProxyHeader.v2MaxAddressLength), "PROXY header over its bound")
            if case .proxied(let address, let port) = header {
                fuzzCheck((0...65535).contains(port), "PROXY port out of range")
                fuzzCheck((try? SocketAddress(ipAddress: address, port: 0)) != nil, "PROXY address \(address) is not an IP address")
            }
        case .needsMore:
            // Undecided only while shorter than the longest header it could still be.
            fuzzCheck(bytes.count < 16 + ProxyHeader.v2MaxAddressLength, "PROXY parser undecided on \(bytes.count) octets")
            if bytes.first == UInt8(ascii: "P") { fuzzCheck(bytes.count < ProxyHeader.v1MaxLength, "v1 undecided past 107 octets") }
        case .error:
            break
        }
    }

    enum ProxyResult: Equatable {
        case header(ProxyHeader, consumed: Int)
        case needsMore
        case error(ProxyHeader.ParseError)
    }

    func proxyHeader(_ bytes: [UInt8], chunking: [Int]) -> ProxyResult {
        var buffer = ByteBuffer()
        var offset = 0
        for size in chunking {
            buffer.writeBytes(bytes[offset..<offset + size])
            offset += size
            let before = buffer.readableBytes
            do {
                if let header = try ProxyHeader.parse(&buffer) { return .header(header, consumed: before - buffer.readableBytes) }
                fuzzCheck(buffer.readableBytes == before, "PROXY parser consumed bytes without a header")
            } catch {
                fuzzCheck(buffer.readableBytes == before, "PROXY parser consumed bytes before an error")
                return .error(error)
            }
        }
        return .needsMore
    }

    // MARK: (f) SMTP replies as an upstream sends them

    func parseReplies() {
        let whole = replies(payload, chunking: [payload.count])
        var random = SplitMix(seed &+ 4)
        let chunked = replies(payload, chunking: random.chunking(of: payload.count))
        fuzzCheck(whole.replies == chunked.replies && whole.error == chunked.error, "SMTPReplyParser depends on chunking")
        for reply in whole.replies {
            fuzzCheck((200...599).contains(reply.code), "reply code \(reply.code) out of range")
            if let status = reply.enhancedStatus {
                fuzzCheck(status.first == String(reply.code).first, "enhanced status \(status) does not match \(reply.code)")
            }
            fuzzCheck(!reply.lines.isEmpty && reply.lines.count <= 256, "reply with \(reply.lines.count) lines")
            // Written back (as the sink's faults and the tests write them) it reads the same, unless its text
            // has control characters, which writing replaces.
            if reply.lines.allSatisfy({ !$0.utf8.contains { $0 < 0x20 || $0 == 0x7F } }) {
                let again = try? SMTPReplyParser.parse(reply.wireString)
                fuzzCheck(again == reply, "reply \(reply) does not read back as itself: \(again.map { "\($0)" } ?? "error")")
            }
        }
    }

    func replies(_ bytes: [UInt8], chunking: [Int]) -> (replies: [SMTPReply], error: SMTPReplyParser.ParseError?) {
        var parser = SMTPReplyParser(maxLineLength: 512, maxLines: 16)
        var buffer = ByteBuffer()
        var result: [SMTPReply] = []
        var offset = 0
        for size in chunking {
            buffer.writeBytes(bytes[offset..<offset + size])
            offset += size
            do {
                while let reply = try parser.next(&buffer) { result.append(reply) }
            } catch {
                return (result, error)
            }
            fuzzCheck(buffer.readableBytes < 512, "SMTPReplyParser holds a line over its limit")
        }
        return (result, nil)
    }
}
