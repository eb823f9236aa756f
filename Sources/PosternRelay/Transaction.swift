import NIOCore
import PosternSMTP

/// What the upstream said about each recipient of one message.
struct TransactionResult: Sendable {
    var replies: [String: SMTPReply]
    /// False when the session is in an unknown state and must not be reused.
    var connectionReusable: Bool
}

extension UpstreamConnection {
    /// Sends one message: MAIL, RCPT for each recipient, DATA, the dot-stuffed body. Pipelines the
    /// envelope when the upstream offers PIPELINING. Throws if the connection fails; then no
    /// recipient counts as delivered.
    func send(sender: String, recipients: [String], body: ByteBuffer, bodyType: String?, needsReset: Bool) async throws -> TransactionResult {
        var mail = "MAIL FROM:<\(sender)>"
        if let bodyType, bodyType.uppercased() == "8BITMIME", extensions.contains("8BITMIME") { mail += " BODY=8BITMIME" }
        if extensions.contains("SIZE") { mail += " SIZE=\(body.readableBytes)" }
        var envelope = ByteBuffer()
        if needsReset { envelope.writeString("RSET\r\n") }
        envelope.writeString(mail + "\r\n")
        var replies: [String: SMTPReply] = [:]
        var accepted: [String] = []
        let resetCount = needsReset ? 1 : 0

        if supportsPipelining {
            for recipient in recipients { envelope.writeString("RCPT TO:<\(recipient)>\r\n") }
            envelope.writeString("DATA\r\n")
            let answers = try await exchange(envelope, expecting: resetCount + recipients.count + 2)
            let mailReply = answers[resetCount]
            let dataReply = answers[resetCount + recipients.count + 1]
            for (index, recipient) in recipients.enumerated() {
                let reply = mailReply.isPositive ? answers[resetCount + 1 + index] : mailReply
                if reply.isPositive { accepted.append(recipient) } else { replies[recipient] = reply }
            }
            if dataReply.code == 354 && accepted.isEmpty {
                // The upstream wants data though nobody was accepted: send an empty message's end.
                _ = try await exchange(ByteBuffer(string: ".\r\n"), expecting: 1)
                return TransactionResult(replies: replies, connectionReusable: true)
            }
            guard dataReply.code == 354 else {
                for recipient in accepted { replies[recipient] = dataReply }
                return TransactionResult(replies: replies, connectionReusable: true)
            }
        } else {
            let mailReply = try await exchange(envelope, expecting: resetCount + 1)[resetCount]
            guard mailReply.isPositive else {
                for recipient in recipients { replies[recipient] = mailReply }
                return TransactionResult(replies: replies, connectionReusable: true)
            }
            for recipient in recipients {
                let reply = try await exchange(ByteBuffer(string: "RCPT TO:<\(recipient)>\r\n"), expecting: 1)[0]
                if reply.isPositive { accepted.append(recipient) } else { replies[recipient] = reply }
            }
            guard !accepted.isEmpty else { return TransactionResult(replies: replies, connectionReusable: true) }
            let dataReply = try await exchange(ByteBuffer(string: "DATA\r\n"), expecting: 1)[0]
            guard dataReply.code == 354 else {
                for recipient in accepted { replies[recipient] = dataReply }
                return TransactionResult(replies: replies, connectionReusable: true)
            }
        }
        var encoded = channel.allocator.buffer(capacity: body.readableBytes + 64)
        DotStuffing.encode(body, into: &encoded)
        let final = try await exchange(encoded, expecting: 1, timeout: commandTimeout * 4)[0]
        for recipient in accepted { replies[recipient] = final }
        return TransactionResult(replies: replies, connectionReusable: true)
    }
}
