import Foundation
import NIOCore
import PosternSMTP

/// A failure report (RFC 3464 multipart/report) for the envelope sender. Carries the original
/// headers only (text/rfc822-headers), never the body: mail here may hold payslips.
public struct DeliveryStatusNotification: Sendable {
    public struct FailedRecipient: Sendable, Hashable {
        public var address: String
        /// RFC 3463 status, e.g. `5.1.1`, or `4.4.7` for an expired message.
        public var status: String
        /// The upstream's reply or a local reason.
        public var diagnostic: String
        public var remoteMTA: String?
        public init(address: String, status: String, diagnostic: String, remoteMTA: String?) {
            self.address = address
            self.status = status
            self.diagnostic = diagnostic
            self.remoteMTA = remoteMTA
        }
    }

    public var reportingMTA: String
    public var originalSender: String
    public var originalQueueID: String
    public var arrivalDate: Date
    public var recipients: [FailedRecipient]

    public init(reportingMTA: String, originalSender: String, originalQueueID: String, arrivalDate: Date, recipients: [FailedRecipient]) {
        self.reportingMTA = reportingMTA
        self.originalSender = originalSender
        self.originalQueueID = originalQueueID
        self.arrivalDate = arrivalDate
        self.recipients = recipients
    }

    /// The header section of a message: everything before the first empty line.
    public static func headers(of message: ByteBuffer) -> String {
        let view = message.readableBytesView
        var end = view.endIndex
        var index = view.startIndex
        while index + 3 < view.endIndex {
            if view[index] == 0x0D && view[index + 1] == 0x0A && view[index + 2] == 0x0D && view[index + 3] == 0x0A {
                end = index + 2
                break
            }
            index += 1
        }
        return String(decoding: view[view.startIndex..<end], as: UTF8.self)
    }

    public func render(originalMessage: ByteBuffer, messageID: String, now: Date) -> ByteBuffer {
        let boundary = "=_postern_dsn_\(messageID.filter { $0.isLetter || $0.isNumber })"
        let expired = recipients.contains { $0.status.hasPrefix("4.") }
        var text = ""
        func line(_ s: String) { text += s + "\r\n" }
        line("From: Mail Delivery System <MAILER-DAEMON@\(reportingMTA)>")
        line("To: <\(originalSender)>")
        line("Subject: Undelivered Mail Returned to Sender")
        line("Date: \(MessageDate.rfc5322(now))")
        line("Message-ID: <\(messageID)@\(reportingMTA)>")
        line("Auto-Submitted: auto-replied")
        line("MIME-Version: 1.0")
        line("Content-Type: multipart/report; report-type=delivery-status;")
        line("\tboundary=\"\(boundary)\"")
        line("")
        line("This is a MIME-encapsulated message.")
        line("")
        line("--\(boundary)")
        line("Content-Type: text/plain; charset=us-ascii")
        line("Content-Description: Notification")
        line("")
        line("This is the mail gateway at \(reportingMTA).")
        line("")
        line(expired
             ? "Your message could not be delivered in time to one or more recipients. It has been given up on."
             : "Your message could not be delivered to one or more recipients. It has been returned to you.")
        line("Only the headers of your message are included below; the content is not.")
        line("")
        for recipient in recipients {
            line("<\(Self.clean(recipient.address))>: \(Self.clean(recipient.diagnostic))")
        }
        line("")
        line("--\(boundary)")
        line("Content-Type: message/delivery-status")
        line("Content-Description: Delivery report")
        line("")
        line("Reporting-MTA: dns; \(reportingMTA)")
        line("X-Postern-Queue-ID: \(originalQueueID)")
        line("Arrival-Date: \(MessageDate.rfc5322(arrivalDate))")
        for recipient in recipients {
            line("")
            line("Final-Recipient: rfc822; \(Self.clean(recipient.address))")
            line("Action: failed")
            line("Status: \(recipient.status)")
            if let remote = recipient.remoteMTA { line("Remote-MTA: dns; \(Self.clean(remote))") }
            line("Diagnostic-Code: smtp; \(Self.clean(recipient.diagnostic))")
        }
        line("")
        line("--\(boundary)")
        line("Content-Type: text/rfc822-headers")
        line("Content-Description: Undelivered Message Headers")
        line("")
        var buffer = ByteBuffer(string: text)
        var headers = Self.headers(of: originalMessage)
        if !headers.hasSuffix("\r\n") && !headers.isEmpty { headers += "\r\n" }
        buffer.writeString(headers)
        buffer.writeString("\r\n--\(boundary)--\r\n")
        return buffer
    }

    /// One line, printable, and not so long that it breaks the 998-octet limit.
    static func clean(_ s: String) -> String {
        String(String(s.unicodeScalars.map { $0.value < 0x20 || $0.value >= 0x7F ? " " : Character($0) }).prefix(900))
    }
}
