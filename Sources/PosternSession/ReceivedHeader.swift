import Foundation
import PosternSMTP

/// The trace header Postern prepends to every accepted message (RFC 5321 4.4, RFC 3848 protocol names).
public enum ReceivedHeader {
    public static func make(envelope: Envelope, hostname: String, queueID: String, date: Date) -> String {
        let facts = envelope.facts
        var proto = "ESMTP"
        if facts.tls != nil { proto += "S" }
        if facts.user != nil { proto += "A" }
        let helo = sanitize(facts.heloName ?? "unknown")
        let address = facts.clientAddress.contains(":") ? "IPv6:\(facts.clientAddress)" : facts.clientAddress
        var header = "Received: from \(helo) ([\(address)])\r\n\tby \(sanitize(hostname)) (Postern) with \(proto) id \(queueID)"
        if let tls = facts.tls {
            header += "\r\n\t(using \(tls.version)"
            if let cipher = tls.cipher { header += " with cipher \(cipher)" }
            header += ")"
        }
        if envelope.recipients.count == 1 {
            header += "\r\n\tfor <\(envelope.recipients[0])>"
        }
        header += "; \(MessageDate.rfc5322(date))\r\n"
        return header
    }

    /// HELO names are client input: keep them from breaking the header.
    static func sanitize(_ text: String) -> String {
        String(text.unicodeScalars.prefix(255).map { scalar -> Character in
            (0x21...0x7E).contains(scalar.value) && scalar != "(" && scalar != ")" ? Character(scalar) : "?"
        })
    }
}
