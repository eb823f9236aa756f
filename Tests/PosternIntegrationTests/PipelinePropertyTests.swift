import Foundation
import PosternSMTP
import Logging
import NIOCore
import NIOPosix
import PosternSink
import PosternTestSupport
import XCTest

/// Whole-pipeline property test: random but plausible SMTP conversations through the real listener,
/// session, policy, spool and relay into an in-process upstream, checked against three invariants:
/// the process never traps (a trap would end this test process), every message answered `250`
/// arrives exactly once per distinct recipient with its body intact, and nothing refused arrives.
///
/// Generated: duplicate recipients and case variants, quoted local parts, external and relay-hack
/// recipients, refused senders, unregistered clients, pipelined and unpipelined groups, RSET,
/// several transactions per connection, bodies around the size limit and the 998-octet line limit,
/// dot-lines, 8-bit bytes and bare LFs. The upstream defers one mailbox for the first half of the
/// run, so partial deliveries and retries are part of it.
///
/// `make test` runs `POSTERN_PIPELINE_TRANSACTIONS` (default 300) with a fixed seed; `make fuzz` runs
/// a long one with a random seed. A failure prints its seed: `POSTERN_PIPELINE_SEED=<seed>` replays
/// the same conversations.
final class PipelinePropertyTests: XCTestCase {
    static let sizeLimit = 32 * 1024

    func testRandomConversationsKeepTheInvariants() async throws {
        let environment = ProcessInfo.processInfo.environment
        let transactions = Int(environment["POSTERN_PIPELINE_TRANSACTIONS"] ?? "") ?? 300
        let seed: UInt64 = environment["POSTERN_PIPELINE_SEED"].flatMap { $0 == "random" ? UInt64.random(in: 1...UInt64.max) : UInt64($0) } ?? 20261201
        print("pipeline property test: \(transactions) transactions, POSTERN_PIPELINE_SEED=\(seed)")

        let work = FileManager.default.temporaryDirectory.appendingPathComponent("postern-pipeline-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        let certs = Repo.certs.path
        let outbox = work.appendingPathComponent("sink")
        let fixture = try await SinkFixture.start(outbox: outbox)
        let sink = fixture.sink
        let sinkPort = fixture.port
        sink.setFaults(SinkFaults(rcptReplies: ["carol@example.edu": "451 4.3.0 Try again later"]))
        let harness = try await GatewayHarness.start(
            listeners: "  - { name: device, kind: device, listen: \"127.0.0.1:0\", max-message-size: \(Self.sizeLimit) }",
            delivery: """
                delivery:
                  spool: \(work.appendingPathComponent("spool").path)
                  relay:
                    upstreams:
                      - { name: sink, host: 127.0.0.1, port: \(sinkPort), tls: starttls, server-name: localhost, ca-file: \(certs)/ca.pem, certificate: \(certs)/client.pem, key: \(certs)/client.key, max-connections: 4 }
                    retry: { initial-seconds: 1, max-seconds: 2, scan-seconds: 1 }
                """)
        let port = harness.port("device")

        var generator = SplitMix64(seed: seed)
        var conversations: [[PlannedTransaction]] = []
        var planned = 0
        while planned < transactions {
            let conversation = (0..<Int.random(in: 1...4, using: &generator)).map { _ in PlannedTransaction.random(using: &generator, limit: Self.sizeLimit) }
            planned += conversation.count
            conversations.append(conversation)
        }
        let sources = conversations.map { _ in Int.random(in: 0..<10, using: &generator) == 0 ? "127.0.0.2" : "127.0.0.1" }
        let plan = conversations

        // Four clients at once; the deferring mailbox is cured half-way.
        let results = LockedOutcomes()
        let next = LockedCounter()
        let cured = LockedCounter()
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            while true {
                let index = next.increment() - 1
                guard index < plan.count else { return }
                if index == plan.count / 2, cured.increment() == 1 { sink.setFaults(SinkFaults()) }
                results.append(Self.run(plan[index], source: sources[index], port: port))
            }
        }
        sink.setFaults(SinkFaults())
        let outcomes = results.all
        let accepted = outcomes.filter { $0.queueID != nil }
        let counts = outcomes.reduce(into: [String: Int]()) { $0[$1.kind, default: 0] += 1 }
        print("pipeline property test: outcomes \(counts.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", "))")
        XCTAssertGreaterThan(accepted.count, transactions / 4, "enough of the generated transactions are acceptable to test delivery")

        // Wait for the relay to deliver everything (deferred mailboxes retry after about a second).
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            if harness.gateway.spool?.depth == 0 && Set(Self.deliveries(in: outbox).compactMap(\.queueID)).isSuperset(of: accepted.compactMap(\.queueID)) { break }
            try await Task.sleep(for: .milliseconds(100))
        }

        // From the sink's outbox, which keeps every message (its memory keeps the last thousand).
        let deliveries = Self.deliveries(in: outbox)
        var arrived: [String: [Delivery]] = [:]
        for message in deliveries {
            guard let id = message.queueID else { XCTFail("a message without our Received id arrived: \(String(decoding: message.data.prefix(300), as: UTF8.self))"); continue }
            arrived[id, default: []].append(message)
        }
        let acceptedIDs = Set(accepted.compactMap(\.queueID))
        for id in arrived.keys where !acceptedIDs.contains(id) {
            XCTFail("seed \(seed): \(id) arrived but was never answered 250 (or its answer was lost)")
        }
        for outcome in accepted {
            guard let id = outcome.queueID else { continue }
            let copies = arrived[id] ?? []
            let delivered = copies.flatMap(\.recipients).map(Self.mailboxKey)
            XCTAssertEqual(delivered.count, Set(delivered).count, "seed \(seed): \(id) reached a recipient twice: \(copies.map(\.recipients))")
            XCTAssertEqual(Set(delivered), Set(outcome.acceptedRecipients.map(Self.mailboxKey)),
                           "seed \(seed): \(id) accepted for \(outcome.acceptedRecipients), delivered to \(copies.map(\.recipients))")
            for copy in copies {
                let data = copy.data
                XCTAssertTrue(data.starts(with: Array("Received: ".utf8)) && data.suffix(outcome.body.count).elementsEqual(outcome.body),
                              "seed \(seed): \(id)'s body changed on the way")
            }
            if outcome.body.count > Self.sizeLimit { XCTFail("seed \(seed): \(id) over the size limit (\(outcome.body.count)) was accepted") }
        }
        XCTAssertEqual(harness.gateway.spool?.depth, 0, "seed \(seed): the queue drained")

        // Still serving.
        let last = Self.run([PlannedTransaction(sender: "scanner@example.edu", recipients: ["bob@example.edu"], body: Array("Subject: last\r\n\r\nend\r\n".utf8),
                                                pipelined: false, abandon: false)], source: "127.0.0.1", port: port)
        XCTAssertNotNil(last.first?.queueID, "the gateway still accepts mail after the run: \(last)")
        print("pipeline property test: \(outcomes.count) transactions in \(conversations.count) connections, \(accepted.count) accepted, "
              + "\(deliveries.count) upstream deliveries")

        await harness.stop()
        await fixture.stop()
        try? FileManager.default.removeItem(at: work)
    }

    /// A message as the sink's outbox file has it: `Return-Path`, `X-Sink-Recipients`, perhaps
    /// `X-Sink-Client-Certificate`, then the data as received.
    struct Delivery {
        var recipients: [String]
        var data: [UInt8]

        /// The gateway's queue id, from the Received header it prepends (`... with ESMTP id <ID>;`).
        var queueID: String? {
            let head = String(decoding: data.prefix(600), as: UTF8.self)
            guard head.hasPrefix("Received: "), let range = head.range(of: "with ESMTP id ") else { return nil }
            return String(head[range.upperBound...].prefix { !$0.isWhitespace && $0 != ";" })
        }
    }

    static func deliveries(in outbox: URL) -> [Delivery] {
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: outbox.path)) ?? []).filter { $0.hasSuffix(".eml") }
        return files.compactMap { name -> Delivery? in
            guard var bytes = try? [UInt8](Data(contentsOf: outbox.appendingPathComponent(name))) else { return nil }
            var recipients: [String] = []
            for _ in 0..<3 {
                guard let end = bytes.firstIndex(of: 0x0A) else { break }
                let line = String(decoding: bytes[..<end], as: UTF8.self).trimmingCharacters(in: .newlines)
                guard line.hasPrefix("Return-Path:") || line.hasPrefix("X-Sink-") else { break }
                if line.hasPrefix("X-Sink-Recipients: ") {
                    recipients = line.dropFirst("X-Sink-Recipients: ".count).components(separatedBy: ", ")
                }
                bytes.removeSubrange(...end)
            }
            return Delivery(recipients: recipients, data: bytes)
        }
    }

    /// One mailbox: the demo's recipients are all in internal domains, where case does not count.
    static func mailboxKey(_ address: String) -> String {
        var text = address
        if text.hasPrefix("\""), let close = text.dropFirst().firstIndex(of: "\"") {
            text = String(text[text.index(after: text.startIndex)..<close]) + text[text.index(after: close)...]
        }
        return text.lowercased()
    }

    struct Outcome: Sendable, CustomStringConvertible {
        /// `queued`, or the code that ended the transaction (`554-mail`, `552-data`, ...).
        var kind: String
        var queueID: String?
        var acceptedRecipients: [String]
        var body: [UInt8]
        var description: String { "\(kind) \(queueID ?? "-") \(acceptedRecipients)" }
    }

    /// Runs one connection's transactions; blocking, on a dispatch thread.
    static func run(_ conversation: [PlannedTransaction], source: String, port: Int) -> [Outcome] {
        var outcomes: [Outcome] = []
        guard let client = try? ClientSocket(port: port, source: source, timeoutSeconds: 20), (try? client.smtpReply())?.code == 220,
              (try? client.command("EHLO property.test"))?.code == 250 else {
            return [Outcome(kind: "connect-failed", queueID: nil, acceptedRecipients: [], body: [])]
        }
        defer { client.close() }
        let started = Date()
        do {
            for transaction in conversation {
                let outcome = try transaction.run(on: client)
                outcomes.append(outcome)
                if outcome.kind.hasPrefix("421") { break }
                // A transaction that did not end cleanly is reset, as a client should.
                if outcome.queueID == nil && outcome.kind != "rset" { _ = try client.command("RSET") }
            }
            _ = try? client.command("QUIT")
        } catch {
            print("pipeline property test: connection lost after \(Date().timeIntervalSince(started))s: \(error); \(outcomes)")
            outcomes.append(Outcome(kind: "connection-lost", queueID: nil, acceptedRecipients: [], body: []))
        }
        return outcomes
    }
}

struct PlannedTransaction: Sendable {
    var sender: String
    var recipients: [String]
    /// The message as meant, CRLF lines, before dot-stuffing.
    var body: [UInt8]
    var pipelined: Bool
    /// RSET instead of DATA.
    var abandon: Bool

    static let senders = ["scanner@example.edu", "scanner@example.edu", "scanner@example.edu", "scanner@example.edu", "scanner@example.edu",
                          "scanner@example.edu", "Scanner@Example.edu", "intruder@example.edu", "scanner@gmail.com"]
    static let recipientPool = ["bob@example.edu", "bob@example.edu", "Bob@Example.EDU", "\"bob\"@example.edu", "carol@example.edu",
                                "dave@chem.example.edu", "DAVE@CHEM.example.edu", "erin@phys.example.edu", "x@gmail.com",
                                "a%b@example.edu", "bob@example.edu.evil.test"]

    static func random(using generator: inout SplitMix64, limit: Int) -> PlannedTransaction {
        let sender = senders.randomElement(using: &generator) ?? "scanner@example.edu"
        let recipients = (0..<Int.random(in: 0...6, using: &generator)).map { _ in recipientPool.randomElement(using: &generator) ?? "bob@example.edu" }
        var body = Array("Subject: property \(UInt32.random(in: 0...UInt32.max, using: &generator))\r\n\r\n".utf8)
        let shape = Int.random(in: 0..<100, using: &generator)
        // At most one kind of bad line per message, in about one message of ten.
        let hazard = Int.random(in: 0..<20, using: &generator)
        let target: Int
        switch shape {
        case 0..<15: target = limit + Int.random(in: -300...300, using: &generator)  // around the size limit
        case 15..<20: target = 2 * limit
        default: target = Int.random(in: 0...3000, using: &generator)
        }
        while body.count < target {
            var line: [UInt8] = []
            let kind = Int.random(in: 0..<100, using: &generator)
            let length: Int
            if hazard == 0 && kind < 10 {
                length = Int.random(in: 995...1001, using: &generator)  // around the 998-octet line limit
            } else {
                length = Int.random(in: 0...120, using: &generator)
            }
            if kind >= 3 && kind < 13 { line += Array(".".utf8) }  // dot-lines, stuffed on the wire
            if kind >= 13 && kind < 16 { line += Array("..".utf8) }
            while line.count < length {
                let r = Int.random(in: 0..<100, using: &generator)
                if r < 4 { line.append(UInt8.random(in: 0x80...0xFF, using: &generator)) }  // 8-bit
                else { line.append(UInt8.random(in: 0x20...0x7E, using: &generator)) }
            }
            if hazard == 1 && kind < 5 { line += [0x0A] }  // a bare LF: the message must be refused
            body += line + [0x0D, 0x0A]
            if target - body.count < 0 { break }
        }
        return PlannedTransaction(sender: sender, recipients: recipients, body: body,
                                  pipelined: Bool.random(using: &generator), abandon: Int.random(in: 0..<10, using: &generator) == 0)
    }

    func run(on client: ClientSocket) throws -> PipelinePropertyTests.Outcome {
        func outcome(_ kind: String, _ id: String? = nil, _ accepted: [String] = []) -> PipelinePropertyTests.Outcome {
            .init(kind: kind, queueID: id, acceptedRecipients: accepted, body: body)
        }
        let commands = ["MAIL FROM:<\(sender)>"] + recipients.map { "RCPT TO:<\($0)>" } + [abandon ? "RSET" : "DATA"]
        var replies: [SMTPReply] = []
        if pipelined {
            try client.send(commands.map { $0 + "\r\n" }.joined())
            for _ in commands { replies.append(try client.smtpReply()) }
        } else {
            for command in commands {
                let reply = try client.command(command)
                replies.append(reply)
                if reply.code == 421 { break }
            }
        }
        if let closing = replies.first(where: { $0.code == 421 }) { return outcome("421-\(closing.description.dropFirst(4).prefix(20))") }
        let accepted = zip(recipients, replies.dropFirst().prefix(recipients.count)).filter { $0.1.code == 250 }.map(\.0)
        guard replies.first?.code == 250 else { return outcome("\(replies.first?.code ?? 0)-mail") }
        if abandon { return outcome("rset") }
        guard let dataReply = replies.last, dataReply.code == 354 else { return outcome("\(replies.last?.code ?? 0)-data") }
        var wire: [UInt8] = []
        var atLineStart = true
        for byte in body {
            if atLineStart && byte == UInt8(ascii: ".") { wire.append(byte) }
            wire.append(byte)
            atLineStart = byte == 0x0A
        }
        wire += Array(".\r\n".utf8)
        try client.send(wire)
        let final = try client.smtpReply()
        guard final.code == 250, let text = final.lines.last, let id = text.split(separator: " ").last.map(String.init), text.contains("queued as") else {
            return outcome("\(final.code)-end")
        }
        return outcome("queued", id, accepted)
    }
}

extension ClientSocket {
    func command(_ line: String) throws -> SMTPReply {
        try send(line + "\r\n")
        return try smtpReply()
    }
}

final class LockedOutcomes: @unchecked Sendable {
    private let lock = NSLock()
    private var outcomes: [PipelinePropertyTests.Outcome] = []
    func append(_ more: [PipelinePropertyTests.Outcome]) { lock.lock(); outcomes += more; lock.unlock() }
    var all: [PipelinePropertyTests.Outcome] { lock.lock(); defer { lock.unlock() }; return outcomes }
}

final class LockedCounter: @unchecked Sendable {
    private let lock = NSLock()
    private var value = 0
    func increment() -> Int { lock.lock(); defer { lock.unlock() }; value += 1; return value }
}
