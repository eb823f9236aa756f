import Foundation
import Logging
import NIOConcurrencyHelpers

/// The audit trail: who sent what to whom, one JSON line per event, tied together by a session id. Never
/// message content: no subject, no headers but Message-ID, no body, no passwords.
///
/// Every event's name and fields are written here, so the format a data-protection officer reads is in one
/// place; callers pass plain values (addresses without angle brackets, `nil` for what does not apply).
public struct AuditLog: Sendable {
    public let logger: Logger
    /// Called for every policy decision as it is logged (the gateway counts them into its metrics): the reply
    /// code, nil for an accept, and the rule.
    public var countDecision: (@Sendable (_ code: Int?, _ rule: String) -> Void)?

    public init(logger: Logger, countDecision: (@Sendable (_ code: Int?, _ rule: String) -> Void)? = nil) {
        self.logger = logger
        self.countDecision = countDecision
    }

    /// An audit log that writes JSON lines to standard output, standard error (`stderr`) or a file (appended), a file
    /// rotated, compressed and expired by `retention` when given.
    public static func make(output: String?, retention: AuditRetention? = nil,
                            countDecision: (@Sendable (_ code: Int?, _ rule: String) -> Void)? = nil) throws -> AuditLog {
        let sink = try JSONLineSink(path: output, retention: retention)
        var logger = Logger(label: "postern.audit") { label in JSONLineLogHandler(label: label, sink: sink) }
        logger.logLevel = .info
        var log = AuditLog(logger: logger, countDecision: countDecision)
        log.sink = sink
        return log
    }

    /// The file sink, for `maintain`.
    var sink: JSONLineSink?

    /// Rotates a file past its day and deletes rotated files past `keep-days` (the gateway calls this hourly; writes
    /// rotate by size on their own). Waits for compression under way. Returns the rotated files deleted.
    @discardableResult
    public func maintain(now: Date = Date()) -> [String] {
        sink?.maintain(now: now) ?? []
    }

    /// Discards everything (for tools that run a gateway without an audit trail).
    public static let disabled = AuditLog(logger: Logger(label: "postern.audit") { _ in SwiftLogNoOpLogHandler() })

    /// One event with its fields, for callers with events of their own (the registration page's).
    public func event(_ name: String, _ fields: Logger.Metadata) {
        logger.info("\(name)", metadata: fields)
    }

    // MARK: A client's session

    /// A client connected; `proxyPeer` is the load balancer when the client address came from a PROXY header.
    public func connection(session: String, listener: String, kind: String, client: String, clientPort: Int, proxyPeer: String?) {
        var fields: Logger.Metadata = ["session": "\(session)", "listener": "\(listener)", "kind": "\(kind)", "client": "\(client)",
                                       "client_port": "\(clientPort)"]
        if let proxyPeer, proxyPeer != client { fields["proxy_peer"] = "\(proxyPeer)" }
        event("connection", fields)
    }

    public func tls(session: String, version: String, cipher: String?, clientCertificateSubject: String?) {
        var fields: Logger.Metadata = ["session": "\(session)", "version": "\(version)"]
        if let cipher { fields["cipher"] = "\(cipher)" }
        if let clientCertificateSubject { fields["client_cert_subject"] = "\(clientCertificateSubject)" }
        event("tls", fields)
    }

    /// An AUTH attempt: `result` is `success`, `invalid_credentials`, `not_authorized`, `directory_unavailable` or
    /// `throttled`; `dn` the entry, on success.
    public func auth(session: String, login: String, mechanism: String, result: String, dn: String?) {
        var fields: Logger.Metadata = ["session": "\(session)", "login": "\(login)", "mechanism": "\(mechanism)", "result": "\(result)"]
        if let dn { fields["dn"] = "\(dn)" }
        event("auth", fields)
    }

    /// A policy decision at `stage` (`mail`, `rcpt`, `data`): accepted when `code` is nil.
    public func decision(session: String, stage: String, sender: String, recipient: String?, code: Int?, enhancedStatus: String?,
                         rule: String, device: String?, login: String?) {
        var fields: Logger.Metadata = ["session": "\(session)", "stage": "\(stage)", "sender": "<\(sender)>",
                                       "result": "\(code.map { "\($0) \(enhancedStatus ?? "")" } ?? "accept")", "rule": "\(rule)"]
        if let recipient { fields["recipient"] = "<\(recipient)>" }
        if let device { fields["device"] = "\(device)" }
        if let login { fields["login"] = "\(login)" }
        event("decision", fields)
        countDecision?(code, rule)
    }

    /// A message stored and answered 250: `size` in bytes as stored (with the gateway's Received header);
    /// `device` the registered device that sent it; `external` the recipients outside the internal domains (nil:
    /// not known). `postern report` reads these with the `relay` events: keep the two in step with `AuditRecord`.
    public func accepted(session: String, queueID: String, sender: String, recipients: [String], size: Int, listener: String,
                         client: String, messageID: String?, login: String?, device: String? = nil, external: [String]? = nil) {
        var fields: Logger.Metadata = ["session": "\(session)", "queue_id": "\(queueID)", "sender": "<\(sender)>",
                                       "recipients": .array(recipients.map { "<\($0)>" }), "size": "\(size)", "listener": "\(listener)",
                                       "client": "\(client)"]
        if let messageID { fields["message_id"] = "\(messageID)" }
        if let login { fields["login"] = "\(login)" }
        if let device { fields["device"] = "\(device)" }
        if let external { fields["external"] = .array(external.map { "<\($0)>" }) }
        event("accepted", fields)
    }

    /// A whole message refused at the end of DATA, or not stored.
    public func messageRefused(session: String, code: Int, enhancedStatus: String?) {
        event("message_refused", ["session": "\(session)", "result": "\(code) \(enhancedStatus ?? "")"])
    }

    // MARK: The queue

    /// A queued message taken out of delivery (a poison message: the gateway died delivering it).
    public func held(queueID: String, sender: String, recipients: [String], reason: String) {
        event("held", ["queue_id": "\(queueID)", "sender": "<\(sender)>", "recipients": .array(recipients.map { "<\($0)>" }),
                       "reason": "\(reason)"])
    }

    /// A postmaster's change to the queue (`postern queue flush|hold|release|delete`).
    public func queueChange(action: String, queueID: String, sender: String, recipients: [String], actor: String) {
        event("queue_\(action)", ["queue_id": "\(queueID)", "sender": "<\(sender)>", "recipients": .array(recipients.map { "<\($0)>" }),
                                   "actor": "\(actor)"])
    }

    /// One relay attempt's outcome for one recipient.
    public func relay(queueID: String, recipient: String, upstream: String, reply: String, attempt: Int, outcome: String) {
        event("relay", ["queue_id": "\(queueID)", "recipient": "\(recipient)", "upstream": "\(upstream)",
                        "reply": "\(reply)", "attempt": "\(attempt)", "outcome": "\(outcome)"])
    }
}

struct AuditLogError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

/// A swift-log handler that writes each entry as one JSON object on one line.
public struct JSONLineLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    let label: String
    let sink: JSONLineSink

    init(label: String, sink: JSONLineSink) {
        self.label = label
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        // The event's fields over the handler's, and both over `time` and `event` (as a merge in that order would).
        var object = event.metadata ?? [:]
        if !metadata.isEmpty { object.merge(metadata, uniquingKeysWith: { fromEvent, _ in fromEvent }) }
        if object["time"] == nil { object["time"] = .string(Self.timestamp()) }
        if object["event"] == nil { object["event"] = .string("\(event.message)") }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(512)
        Self.appendJSON(object, to: &bytes)
        bytes.append(0x0A)
        sink.write(Data(bytes))
    }

    /// One JSON object, keys sorted, strings escaped as RFC 8259 requires ('/' is not escaped).
    /// Written by hand: JSONSerialization (locale-aware key sorting, boxing) was the largest single
    /// cost of an accepted message in profiles.
    static func appendJSON(_ object: Logger.Metadata, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "{"))
        for (n, field) in object.sorted(by: { $0.key < $1.key }).enumerated() {
            if n > 0 { out.append(UInt8(ascii: ",")) }
            appendJSON(string: field.key, to: &out)
            out.append(UInt8(ascii: ":"))
            appendJSON(value: field.value, to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    static func appendJSON(value: Logger.Metadata.Value, to out: inout [UInt8]) {
        switch value {
        case .string(let s): appendJSON(string: s, to: &out)
        case .stringConvertible(let s): appendJSON(string: s.description, to: &out)
        case .array(let a):
            out.append(UInt8(ascii: "["))
            for (n, element) in a.enumerated() {
                if n > 0 { out.append(UInt8(ascii: ",")) }
                appendJSON(value: element, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .dictionary(let d): appendJSON(d, to: &out)
        }
    }

    private static let hex = Array("0123456789abcdef".utf8)

    /// A JSON string (RFC 8259 escaping; '/' is not escaped). Also the spool's envelope writer's.
    public static func appendJSON(string: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        // Most strings need no escape: one copy.
        if !string.utf8.contains(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) {
            out.append(contentsOf: string.utf8)
            out.append(UInt8(ascii: "\""))
            return
        }
        for byte in string.utf8 {
            switch byte {
            case UInt8(ascii: "\""): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
            case UInt8(ascii: "\\"): out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
            case 0x0A: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
            case 0x0D: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
            case 0x09: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
            case 0x08: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "b")])
            case 0x0C: out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "f")])
            case 0..<0x20:
                out.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"),
                                        hex[Int(byte >> 4)], hex[Int(byte & 0xF)]])
            default: out.append(byte)
            }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// `2026-11-24T16:13:54.123Z`. Digits written by hand: `String(format:)` was about half the
    /// cost of an audit line in profiles.
    static func timestamp() -> String {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var tm = tm()
        var seconds = time.tv_sec
        gmtime_r(&seconds, &tm)
        return timestamp(year: Int(tm.tm_year) + 1900, month: Int(tm.tm_mon) + 1, day: Int(tm.tm_mday), hour: Int(tm.tm_hour),
                         minute: Int(tm.tm_min), second: Int(tm.tm_sec), millisecond: Int(time.tv_nsec / 1_000_000))
    }

    static func timestamp(year: Int, month: Int, day: Int, hour: Int, minute: Int, second: Int, millisecond: Int) -> String {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(24)
        func digits(_ value: Int, _ count: Int) {
            var divisor = 1
            for _ in 1..<count { divisor *= 10 }
            var v = value
            while divisor > 0 {
                bytes.append(UInt8(ascii: "0") + UInt8((v / divisor) % 10))
                v %= divisor
                divisor /= 10
            }
        }
        digits(year, 4); bytes.append(UInt8(ascii: "-")); digits(month, 2); bytes.append(UInt8(ascii: "-")); digits(day, 2)
        bytes.append(UInt8(ascii: "T")); digits(hour, 2); bytes.append(UInt8(ascii: ":")); digits(minute, 2)
        bytes.append(UInt8(ascii: ":")); digits(second, 2); bytes.append(UInt8(ascii: ".")); digits(millisecond, 3)
        bytes.append(UInt8(ascii: "Z"))
        return String(decoding: bytes, as: UTF8.self)
    }
}
