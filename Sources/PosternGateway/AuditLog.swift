import Foundation
import Logging
import NIOConcurrencyHelpers
import PosternSMTP
import PosternSession

/// The audit trail: who sent what to whom, one JSON line per event, tied together by a session id.
/// Never message content: no subject, no headers but Message-ID, no body, no passwords.
public struct AuditLog: Sendable {
    public let logger: Logger
    /// Policy decisions are counted here as they are logged (PolicyRules reports them only to the audit log).
    public var metrics: GatewayMetrics?

    public init(logger: Logger, metrics: GatewayMetrics? = nil) {
        self.logger = logger
        self.metrics = metrics
    }

    /// An audit log that writes JSON lines to standard output or to a file (appended).
    public static func make(output: String?, metrics: GatewayMetrics? = nil) throws -> AuditLog {
        let sink = try JSONLineSink(path: output)
        var logger = Logger(label: "postern.audit") { label in JSONLineLogHandler(label: label, sink: sink) }
        logger.logLevel = .info
        return AuditLog(logger: logger, metrics: metrics)
    }

    /// Discards everything (for tools that run a gateway without an audit trail).
    public static let disabled = AuditLog(logger: Logger(label: "postern.audit") { _ in SwiftLogNoOpLogHandler() })

    func event(_ name: String, _ fields: Logger.Metadata) {
        logger.info("\(name)", metadata: fields)
    }

    func connection(_ facts: ConnectionFacts, peer: String?) {
        var fields: Logger.Metadata = ["session": "\(facts.sessionID)", "listener": "\(facts.listenerName)",
                                       "kind": "\(facts.kind.rawValue)", "client": "\(facts.clientAddress)",
                                       "client_port": "\(facts.clientPort)"]
        if let peer, peer != facts.clientAddress { fields["proxy_peer"] = "\(peer)" }
        event("connection", fields)
    }

    func tls(_ facts: ConnectionFacts, _ info: TLSInfo) {
        var fields: Logger.Metadata = ["session": "\(facts.sessionID)", "version": "\(info.version)"]
        if let cipher = info.cipher { fields["cipher"] = "\(cipher)" }
        if let subject = info.peerCertificateSubject { fields["client_cert_subject"] = "\(subject)" }
        event("tls", fields)
    }

    func auth(_ facts: ConnectionFacts, login: String, mechanism: String, outcome: AuthOutcome) {
        let result: String
        switch outcome {
        case .success: result = "success"
        case .invalidCredentials: result = "invalid_credentials"
        case .refused: result = "not_authorized"
        case .temporaryFailure: result = "directory_unavailable"
        case .throttled: result = "throttled"
        }
        var fields: Logger.Metadata = ["session": "\(facts.sessionID)", "login": "\(login)", "mechanism": "\(mechanism)", "result": "\(result)"]
        if case .success(let user) = outcome { fields["dn"] = "\(user.distinguishedName)" }
        event("auth", fields)
    }

    func decision(_ facts: ConnectionFacts, stage: String, sender: ReversePath, recipient: Mailbox?, reply: SMTPReply?, rule: String, device: String?) {
        var fields: Logger.Metadata = ["session": "\(facts.sessionID)", "stage": "\(stage)", "sender": "\(sender)",
                                       "result": "\(reply.map { "\($0.code) \($0.enhancedStatus ?? "")" } ?? "accept")", "rule": "\(rule)"]
        if let recipient { fields["recipient"] = "<\(recipient)>" }
        if let device { fields["device"] = "\(device)" }
        if let login = facts.user?.login { fields["login"] = "\(login)" }
        event("decision", fields)
        metrics?.decision(code: reply?.code, rule: rule)
    }

    func accepted(_ envelope: Envelope, queueID: String, messageID: String?, size: Int) {
        var fields: Logger.Metadata = ["session": "\(envelope.facts.sessionID)", "queue_id": "\(queueID)",
                                       "sender": "\(envelope.sender)", "recipients": .array(envelope.recipients.map { "<\($0)>" }),
                                       "size": "\(size)", "listener": "\(envelope.facts.listenerName)", "client": "\(envelope.facts.clientAddress)"]
        if let messageID { fields["message_id"] = "\(messageID)" }
        if let login = envelope.facts.user?.login { fields["login"] = "\(login)" }
        event("accepted", fields)
    }

    func refusedMessage(_ facts: ConnectionFacts, reply: SMTPReply) {
        event("message_refused", ["session": "\(facts.sessionID)", "result": "\(reply.code) \(reply.enhancedStatus ?? "")"])
    }

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

/// Where JSON lines go: standard output, standard error (`stderr`, for tools whose gateway logs to its
/// standard output) or an append-only file. Whole lines under one lock.
final class JSONLineSink: Sendable {
    private let handle: NIOLockedValueBox<FileHandle>

    init(path: String?) throws {
        if path == "stderr" {
            self.handle = NIOLockedValueBox(FileHandle.standardError)
        } else if let path, path != "-", path != "stdout" {
            if !FileManager.default.fileExists(atPath: path) {
                guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o640]) else {
                    throw AuditLogError("cannot create audit log \(path)")
                }
            }
            guard let handle = FileHandle(forWritingAtPath: path) else { throw AuditLogError("cannot open audit log \(path)") }
            handle.seekToEndOfFile()
            self.handle = NIOLockedValueBox(handle)
        } else {
            self.handle = NIOLockedValueBox(FileHandle.standardOutput)
        }
    }

    func write(_ line: Data) {
        handle.withLockedValue { $0.write(line) }
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
        var object: Logger.Metadata = ["time": .string(Self.timestamp()), "event": .string("\(event.message)")]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            object[key] = value
        }
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
        for (n, key) in object.keys.sorted().enumerated() {
            if n > 0 { out.append(UInt8(ascii: ",")) }
            appendJSON(string: key, to: &out)
            out.append(UInt8(ascii: ":"))
            appendJSON(value: object[key]!, to: &out)  // `!`: one of the object's own keys
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

    static func appendJSON(string: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
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
