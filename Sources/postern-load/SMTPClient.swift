import NIOCore
import NIOPosix
import NIOSSL
import PosternSMTP

/// A minimal SMTP client session over one NIO channel, for load generation: reads whole replies,
/// writes commands, upgrades to TLS in place after STARTTLS. Not a general client.
struct SMTPLoadError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// Reads SMTP replies from an async channel's inbound stream with `SMTPReplyParser`.
struct ReplyReader {
    var iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator
    var buffer = ByteBuffer()
    var parser = SMTPReplyParser()

    init(_ iterator: NIOAsyncChannelInboundStream<ByteBuffer>.AsyncIterator) { self.iterator = iterator }

    mutating func reply() async throws -> SMTPReply {
        while true {
            if let reply = try parser.next(&buffer) {
                if buffer.readerIndex > 65536 { buffer.discardReadBytes() }
                return reply
            }
            guard var more = try await iterator.next() else { throw SMTPLoadError("connection closed by server") }
            buffer.writeBuffer(&more)
        }
    }
}

enum LoadMode: String { case device, submission }

struct SessionSettings: Sendable {
    var host: String
    var port: Int
    var mode: LoadMode
    var sender: String
    var recipient: String
    var user: String?
    var password: String?
    var tlsContext: NIOSSLContext?
    var serverName: String?
    var message: ByteBuffer  // dot-stuffed body ending in CRLF.CRLF
}

/// Per-session results.
struct SessionResult: Sendable {
    var accepted = 0
    var failed: [Int: Int] = [:]
    var errors: [String] = []
    /// Nanoseconds from handing the final ".\r\n" to the socket to reading the reply.
    var latencies: [UInt64] = []
}

/// Runs one connection: greeting, EHLO, (STARTTLS, EHLO, AUTH), then `count` transactions, QUIT.
func runConnection(_ s: SessionSettings, count: Int, group: EventLoopGroup, result: inout SessionResult) async throws {
    let channel = try await ClientBootstrap(group: group)
        .channelOption(.socketOption(.tcp_nodelay), value: 1)
        .connectTimeout(.seconds(10))
        .connect(host: s.host, port: s.port) { channel in
            channel.eventLoop.makeCompletedFuture {
                try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
            }
        }
    try await channel.executeThenClose { inbound, outbound in
        var reader = ReplyReader(inbound.makeAsyncIterator())
        func command(_ line: String, expect: Int) async throws -> SMTPReply {
            try await outbound.write(ByteBuffer(string: line + "\r\n"))
            let reply = try await reader.reply()
            guard reply.code == expect else { throw SMTPLoadError("\(line.split(separator: " ").first ?? "") -> \(reply)") }
            return reply
        }
        let greeting = try await reader.reply()
        guard greeting.code == 220 else { throw SMTPLoadError("greeting: \(greeting)") }
        _ = try await command("EHLO load.localhost", expect: 250)
        if s.mode == .submission {
            _ = try await command("STARTTLS", expect: 220)
            guard let context = s.tlsContext else { throw SMTPLoadError("no TLS context") }
            let serverName = s.serverName
            let raw = channel.channel
            try await raw.eventLoop.submit {
                try raw.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: context, serverHostname: serverName), position: .first)
            }.get()
            _ = try await command("EHLO load.localhost", expect: 250)
            var token = ByteBuffer()
            token.writeBytes([0] + Array((s.user ?? "").utf8) + [0] + Array((s.password ?? "").utf8))
            let encoded = String(base64Encoding: token.readableBytesView)
            _ = try await command("AUTH PLAIN \(encoded)", expect: 235)
        }
        for _ in 0..<count {
            let mail = try await command("MAIL FROM:<\(s.sender)>", expect: 250)
            _ = mail
            _ = try await command("RCPT TO:<\(s.recipient)>", expect: 250)
            _ = try await command("DATA", expect: 354)
            try await outbound.write(s.message)
            let start = NIODeadline.now()
            let reply = try await reader.reply()
            let elapsed = NIODeadline.now() - start
            if reply.code == 250 {
                result.accepted += 1
                result.latencies.append(UInt64(max(0, elapsed.nanoseconds)))
            } else {
                result.failed[reply.code, default: 0] += 1
                if result.errors.count < 5 { result.errors.append(reply.description) }
            }
        }
        try await outbound.write(ByteBuffer(string: "QUIT\r\n"))
        _ = try? await reader.reply()
    }
}

extension String {
    /// Standard base64 (RFC 4648) of bytes.
    init<C: Collection>(base64Encoding bytes: C) where C.Element == UInt8 {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var it = Array(bytes)[...]
        while !it.isEmpty {
            let chunk = Array(it.prefix(3)); it = it.dropFirst(3)
            let b0 = chunk[0], b1 = chunk.count > 1 ? chunk[1] : 0, b2 = chunk.count > 2 ? chunk[2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 0x3) << 4 | b1 >> 4)])
            out.append(chunk.count > 1 ? alphabet[Int((b1 & 0xF) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(chunk.count > 2 ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
        }
        self = String(decoding: out, as: UTF8.self)
    }
}

/// A few headers, then a body of `size` bytes (like `smtp-source -l`) in 78-byte lines, then CRLF.CRLF.
func makeMessage(size: Int, sender: String, recipient: String) -> ByteBuffer {
    var text = "From: <\(sender)>\r\nTo: <\(recipient)>\r\nSubject: postern-load\r\nDate: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
    text += "Message-ID: <load@load.localhost>\r\n\r\n"
    let line = String(repeating: "abcdefghij", count: 8).prefix(76) + "\r\n"
    var body = 0
    while body + line.utf8.count <= size { text += line; body += line.utf8.count }
    if size - body >= 3 { text += String(repeating: "x", count: size - body - 2) + "\r\n" }
    text += ".\r\n"
    return ByteBuffer(string: text)
}

func percentile(_ sorted: [UInt64], _ p: Double) -> Double {
    guard !sorted.isEmpty else { return .nan }
    let index = min(sorted.count - 1, max(0, Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1))
    return Double(sorted[index]) / 1e6
}
