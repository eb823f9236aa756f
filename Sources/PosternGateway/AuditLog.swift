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
        event("auth", ["session": "\(facts.sessionID)", "login": "\(login)", "mechanism": "\(mechanism)", "result": "\(result)"])
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

    /// One relay attempt's outcome for one recipient.
    public func relay(queueID: String, recipient: String, upstream: String, reply: String, attempt: Int, outcome: String) {
        event("relay", ["queue_id": "\(queueID)", "recipient": "\(recipient)", "upstream": "\(upstream)",
                        "reply": "\(reply)", "attempt": "\(attempt)", "outcome": "\(outcome)"])
    }
}

/// Where JSON lines go: standard output or an append-only file. Whole lines under one lock.
final class JSONLineSink: Sendable {
    private let handle: NIOLockedValueBox<FileHandle>

    init(path: String?) throws {
        if let path, path != "-", path != "stdout" {
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
        var object: [String: Any] = ["time": Self.timestamp(), "event": "\(event.message)"]
        for (key, value) in metadata.merging(event.metadata ?? [:], uniquingKeysWith: { $1 }) {
            object[key] = Self.json(value)
        }
        guard var data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes]) else { return }
        data.append(0x0A)
        sink.write(data)
    }

    static func json(_ value: Logger.Metadata.Value) -> Any {
        switch value {
        case .string(let s): return s
        case .stringConvertible(let s): return s.description
        case .array(let a): return a.map(json)
        case .dictionary(let d): return d.mapValues(json)
        }
    }

    static func timestamp() -> String {
        var time = timespec()
        clock_gettime(CLOCK_REALTIME, &time)
        var tm = tm()
        var seconds = time.tv_sec
        gmtime_r(&seconds, &tm)
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                      tm.tm_hour, tm.tm_min, tm.tm_sec, time.tv_nsec / 1_000_000)
    }
}
