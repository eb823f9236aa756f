import Foundation
import Logging
import NIOCore
import PosternCore
import PosternListener
import PosternPolicy
import PosternSMTP
import PosternSession
import ServiceLifecycle

/// Reminds each device's owner before its registration ends (the policy's reminder days, e.g. 30/7/1),
/// once per reminder period, through the normal delivery path. What was sent is remembered in a small
/// state file so a restart does not send it again.
public final class SunsetReminders: Service, Sendable {
    let policies: PolicyStore
    let target: any DeliveryTarget
    let stateFile: URL
    let hostname: String
    let interval: Duration
    let now: @Sendable () -> Date
    let logger: Logger

    public init(policies: PolicyStore, target: any DeliveryTarget, stateFile: URL, hostname: String,
                interval: Duration = .seconds(3600), now: @escaping @Sendable () -> Date = { Date() }, logger: Logger) {
        self.policies = policies
        self.target = target
        self.stateFile = stateFile
        self.hostname = hostname
        self.interval = interval
        self.now = now
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                _ = await self.sendDue()
                try? await Task.sleep(for: self.interval)
            }
        }
    }

    /// Sends the reminders due now that were not sent before; returns the keys sent.
    public func sendDue() async -> [String] {
        let policy = policies.policy
        let at = now()
        let record = RememberedKeys(file: stateFile)
        var sent = record.load()
        var newlySent: [String] = []
        for device in policy.devices {
            guard let reminder = policy.reminderDue(for: device, now: at) else { continue }
            let key = "\(device.id)|\(reminder.thresholdDays)|\(reminder.sunset.date)"
            guard !sent.contains(key), let owner = try? AddressParser.parseMailbox(device.owner) else { continue }
            let id = target.makeQueueID()
            let message = Self.message(device: device, reminder: reminder, owner: device.owner, hostname: hostname, date: at, queueID: id)
            let facts = ConnectionFacts(listenerName: "sunset-reminders", kind: .device, clientAddress: "127.0.0.1", sessionID: "reminder")
            let envelope = Envelope(sender: .null, recipients: [owner], facts: facts)
            switch await target.accept(queueID: id, envelope: envelope, message: ByteBuffer(string: message)) {
            case .queued:
                sent.insert(key)
                newlySent.append(key)
                logger.notice("sunset reminder queued", metadata: ["device": "\(device.id)", "owner": "\(device.owner)",
                                                                   "days_left": "\(reminder.daysRemaining)", "queue_id": "\(id)"])
            case .temporaryFailure(let reply):
                logger.warning("sunset reminder not queued; will try again", metadata: ["device": "\(device.id)", "reply": "\(reply)"])
            }
        }
        if !newlySent.isEmpty { record.save(sent, what: "sunset reminder", logger: logger) }
        return newlySent
    }

    static func message(device: RegisteredDevice, reminder: SunsetReminder, owner: String, hostname: String, date: Date, queueID: String) -> String {
        let days = reminder.daysRemaining == 0 ? "today is the last day" : "\(reminder.daysRemaining) day(s) left"
        return [
            "From: Postern mail gateway <postmaster@\(hostname)>",
            "To: <\(owner)>",
            "Subject: Device \(device.id): mail registration ends on \(reminder.sunset.date) (\(days))",
            "Date: \(MessageDate.rfc5322(date))",
            "Message-ID: <sunset-\(queueID)@\(hostname)>",
            "Auto-Submitted: auto-generated",
            "MIME-Version: 1.0",
            "Content-Type: text/plain; charset=utf-8",
            "",
            "Your device \(device.id) (department \(device.department), \(device.location))",
            "may send mail through the plaintext device endpoint until \(reminder.sunset.date) (\(reminder.sunset)).",
            "After that date its mail is refused.",
            "",
            "Please move the device to TLS submission on port 587 with a directory account,",
            "or ask your department's contact to renew the registration.",
            "",
        ].joined(separator: "\r\n")
    }
}
