import NIOCore
import PosternSMTP

/// A message's bytes for the relay: whole in memory (a small one), or read in chunks while it is sent (a large
/// one, from its spool file: the relay never holds it whole).
public enum RelayMessage: Sendable {
    case inMemory(ByteBuffer)
    case chunked(size: Int, read: @Sendable (_ offset: Int, _ count: Int) async throws -> ByteBuffer)

    public var size: Int {
        switch self {
        case .inMemory(let buffer): return buffer.readableBytes
        case .chunked(let size, _): return size
        }
    }

    /// Bytes read and written at a time for a chunked message.
    static let chunkSize = 256 * 1024

    /// What a DSN quotes of a message (its header section): a large message's start, read from its file.
    func headerPart() async -> ByteBuffer {
        switch self {
        case .inMemory(let buffer):
            return buffer
        case .chunked(let size, let read):
            return HeaderScanner.headerSection(of: (try? await read(0, min(size, HeaderScanner.headerSectionLimit))) ?? ByteBuffer())
        }
    }
}

/// The session failed (closed, timed out, a garbled reply) before any byte of the message was sent: the upstream
/// cannot have the message, so it may go on a new session at once. The relay does that when the failed session
/// was a reused idle one, which the upstream may have closed just as it was taken (Postfix's SMTP client retries
/// a cached session that turns out dead the same way).
struct SessionFailedBeforeMessage: Error, CustomStringConvertible {
    var underlying: UpstreamConnectionError
    var description: String { underlying.description }
}

extension UpstreamConnection {
    /// Sends one message as `UpstreamSession` says: MAIL, RCPT for each recipient, DATA, the dot-stuffed
    /// body, pipelined when the upstream offers PIPELINING. Throws if the connection fails; then no recipient
    /// counts as delivered and the connection is not used again.
    func send(sender: String, recipients: [String], body: RelayMessage, bodyType: String?, needsReset: Bool) async throws -> TransactionResult {
        var bodySent = false
        do {
            return try await transaction(sender: sender, recipients: recipients, body: body, bodyType: bodyType, needsReset: needsReset,
                                         bodySent: &bodySent)
        } catch let error as UpstreamConnectionError where !bodySent {
            throw SessionFailedBeforeMessage(underlying: error)
        }
    }

    private func transaction(sender: String, recipients: [String], body: RelayMessage, bodyType: String?, needsReset: Bool,
                             bodySent: inout Bool) async throws -> TransactionResult {
        var session = self.session.withLockedValue { $0 }
        var action = session.send(OutboundMessage(sender: sender, recipients: recipients, size: body.size, bodyType: bodyType),
                                  needsReset: needsReset)
        while true {
            switch action {
            case .send(let commands, let count):
                action = session.receive(try await exchange(ByteBuffer(string: commands), expecting: count))
            case .sendMessage:
                // From here on the upstream may have the message: a failure is never retried on another session.
                bodySent = true
                switch body {
                case .inMemory(let message):
                    var encoded = channel.allocator.buffer(capacity: message.readableBytes + 64)
                    DotStuffing.encode(message, into: &encoded)
                    action = session.receive(try await exchange(encoded, expecting: 1, timeout: commandTimeout * 4))
                case .chunked(let size, let read):
                    // Each chunk is written before the next is read: a slow upstream holds the reading, not memory.
                    // A failure half-way throws, and the connection is dropped without the final dot.
                    var stuffer = DotStuffer()
                    var offset = 0
                    while offset < size {
                        let chunk = try await read(offset, min(RelayMessage.chunkSize, size - offset))
                        guard chunk.readableBytes > 0 else { throw UpstreamConnectionError.protocolState("the message file ended early") }
                        offset += chunk.readableBytes
                        var encoded = channel.allocator.buffer(capacity: chunk.readableBytes + chunk.readableBytes / 64 + 8)
                        stuffer.encode(chunk, into: &encoded)
                        try await write(encoded, timeout: commandTimeout * 4)
                    }
                    var end = channel.allocator.buffer(capacity: 8)
                    stuffer.finish(into: &end)
                    action = session.receive(try await exchange(end, expecting: 1, timeout: commandTimeout * 4))
                }
            case .finished(let result):
                self.session.withLockedValue { $0 = session }
                return result
            case .fail(let error):
                throw error
            case .startTLS, .ready, .sendCredentials, .authenticated, .retryWithFreshCredential:
                throw UpstreamConnectionError.protocolState("\(action.name) in a transaction")
            }
        }
    }
}

extension UpstreamConnection {
    /// Writes `bytes` with no reply expected (a chunk of a large message), returning once they are handed to
    /// the socket.
    func write(_ bytes: ByteBuffer, timeout: Duration) async throws {
        let channel = self.channel
        try await withTimeout(timeout) { try await channel.writeAndFlush(bytes) }
    }
}
