import NIOCore
import PosternSMTP

extension UpstreamConnection {
    /// Sends one message as `UpstreamSession` says: MAIL, RCPT for each recipient, DATA, the dot-stuffed
    /// body, pipelined when the upstream offers PIPELINING. Throws if the connection fails; then no recipient
    /// counts as delivered and the connection is not used again.
    func send(sender: String, recipients: [String], body: ByteBuffer, bodyType: String?, needsReset: Bool) async throws -> TransactionResult {
        var session = self.session.withLockedValue { $0 }
        var action = session.send(OutboundMessage(sender: sender, recipients: recipients, size: body.readableBytes, bodyType: bodyType),
                                  needsReset: needsReset)
        while true {
            switch action {
            case .send(let commands, let count):
                action = session.receive(try await exchange(ByteBuffer(string: commands), expecting: count))
            case .sendMessage:
                var encoded = channel.allocator.buffer(capacity: body.readableBytes + 64)
                DotStuffing.encode(body, into: &encoded)
                action = session.receive(try await exchange(encoded, expecting: 1, timeout: commandTimeout * 4))
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
