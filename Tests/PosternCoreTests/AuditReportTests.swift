import Foundation
import Logging
import XCTest
@testable import PosternCore

/// `postern report`'s reckoning: the audit lines the gateway writes, joined and summed with known counts.
final class AuditReportTests: XCTestCase {
    /// Lines written by `AuditLog` itself (the format the gateway writes), into a temporary file.
    func writeLog(_ body: (AuditLog) -> Void) throws -> URL {
        let file = FileManager.default.temporaryDirectory.appendingPathComponent("postern-report-\(UUID().uuidString).jsonl")
        let log = try AuditLog.make(output: file.path)
        body(log)
        return file
    }

    func report(_ file: URL) throws -> AuditReport {
        var report = AuditReport()
        try AuditFileReader.forEachLine(path: file.path) { report.add(line: $0) }
        return report
    }

    func testOutcomesPerRecipientAndSummaryCounts() throws {
        let file = try writeLog { log in
            log.connection(session: "S1", listener: "device", kind: "device", client: "10.1.2.3", clientPort: 4000, proxyPeer: nil)
            log.accepted(session: "S1", queueID: "Q1", sender: "scan@chem.example.edu",
                         recipients: ["bob@example.edu", "x@gmail.com", "Bob@example.edu", "y@web.de"], size: 1000, listener: "device",
                         client: "10.1.2.3", messageID: "<m1@x>", login: nil, device: "chem-scanner-1", external: ["x@gmail.com", "y@web.de"])
            log.relay(queueID: "Q1", recipient: "bob@example.edu", upstream: "hub", reply: "250 ok", attempt: 1, outcome: "delivered")
            log.relay(queueID: "Q1", recipient: "x@gmail.com", upstream: "hub", reply: "550 5.1.1 unknown", attempt: 1, outcome: "failed")
            log.relay(queueID: "Q1", recipient: "y@web.de", upstream: "hub", reply: "451 later", attempt: 1, outcome: "deferred")
            log.relay(queueID: "Q1", recipient: "y@web.de", upstream: "hub", reply: "expired after 5 days", attempt: 9, outcome: "expired")
            log.accepted(session: "S2", queueID: "Q2", sender: "alice@example.edu", recipients: ["carol@chem.example.edu", "z@gmail.com"],
                         size: 5000, listener: "submission", client: "10.9.9.9", messageID: nil, login: "alice", external: ["z@gmail.com"])
            log.relay(queueID: "Q2", recipient: "z@gmail.com", upstream: "hub", reply: "451 later", attempt: 1, outcome: "deferred")
            log.accepted(session: "S3", queueID: "Q3", sender: "alice@example.edu", recipients: ["dave@example.edu"], size: 300,
                         listener: "submission", client: "10.9.9.9", messageID: nil, login: "alice", external: [])
            log.queueChange(action: "delete", queueID: "Q3", sender: "alice@example.edu", recipients: ["dave@example.edu"], actor: "root")
        }
        defer { try? FileManager.default.removeItem(at: file) }
        let report = try report(file)
        XCTAssertEqual(report.lines, 10)
        XCTAssertEqual(report.unreadableLines, 0)
        let rows = report.rows(AuditReport.Filter())
        XCTAssertEqual(rows.map(\.recipient), ["bob@example.edu", "x@gmail.com", "y@web.de", "carol@chem.example.edu", "z@gmail.com", "dave@example.edu"],
                       "one row per message and distinct recipient")
        XCTAssertEqual(rows.map(\.outcome), [.delivered, .bounced, .expired, .queued, .queued, .deleted])
        XCTAssertEqual(rows[2].attempts, 9)
        XCTAssertEqual(rows.map(\.external), [false, true, true, false, true, false])
        XCTAssertEqual(rows[0].device, "chem-scanner-1")

        let summary = AuditReportSummary(rows: rows)
        XCTAssertEqual(summary.messages, 3)
        XCTAssertEqual(summary.recipients, 6)
        XCTAssertEqual(summary.distinctRecipients, 6)
        XCTAssertEqual(summary.distinctDomains, 4)
        XCTAssertEqual(summary.internalRecipients, 3)
        XCTAssertEqual(summary.externalRecipients, 3)
        XCTAssertEqual(summary.messagesWithExternal, 2)
        XCTAssertEqual(summary.totalSize, 6300)
        XCTAssertEqual(summary.largestSize, 5000)
        XCTAssertEqual(summary.largestQueueID, "Q2")
        XCTAssertEqual(summary.outcomes, [.delivered: 1, .bounced: 1, .expired: 1, .queued: 2, .deleted: 1])
        XCTAssertEqual(summary.senders, [.init(name: "login alice", messages: 2, recipients: 3), .init(name: "device chem-scanner-1", messages: 1, recipients: 3)])
        let text = summary.text()
        XCTAssertTrue(text.contains("delivered 1, bounced 1, still queued 2, expired 1, deleted 1"), text)
        XCTAssertTrue(text.contains("Size:                   6300 bytes in all (6.3 kB), largest 5000 bytes (5.0 kB) in Q2\n"), text)
        XCTAssertEqual(AuditReportSummary.approximate(999), "999 bytes")
        XCTAssertEqual(AuditReportSummary.approximate(24_174_319_351), "24.2 GB")
        XCTAssertEqual(AuditReportSummary.approximate(.max), "9.2 EB")
    }

    func testFiltersPickMessagesAndRecipients() throws {
        let file = try writeLog { log in
            log.accepted(session: "S1", queueID: "Q1", sender: "scan@chem.example.edu", recipients: ["bob@example.edu", "x@gmail.com"], size: 10,
                         listener: "device", client: "10.1.2.3", messageID: nil, login: nil, device: "chem-scanner-1", external: ["x@gmail.com"])
            log.accepted(session: "S2", queueID: "Q2", sender: "alice@example.edu", recipients: ["z@gmail.com"], size: 20,
                         listener: "submission", client: "10.9.9.9", messageID: nil, login: "alice", external: ["z@gmail.com"])
            log.relay(queueID: "Q2", recipient: "z@gmail.com", upstream: "hub", reply: "250 ok", attempt: 1, outcome: "delivered")
        }
        defer { try? FileManager.default.removeItem(at: file) }
        let report = try report(file)
        func recipients(_ change: (inout AuditReport.Filter) -> Void) -> [String] {
            var filter = AuditReport.Filter()
            change(&filter)
            return report.rows(filter).map(\.recipient)
        }
        XCTAssertEqual(recipients { $0.devices = ["CHEM-scanner-1"] }, ["bob@example.edu", "x@gmail.com"])
        XCTAssertEqual(recipients { $0.logins = ["alice"] }, ["z@gmail.com"])
        XCTAssertEqual(recipients { $0.senders = ["Alice@example.edu"] }, ["z@gmail.com"])
        XCTAssertEqual(recipients { $0.externalOnly = true }, ["x@gmail.com", "z@gmail.com"])
        XCTAssertEqual(recipients { $0.recipientDomains = ["gmail.com"]; $0.devices = ["chem-scanner-1"] }, ["x@gmail.com"])
        XCTAssertEqual(recipients { $0.recipients = ["bob@example.edu"] }, ["bob@example.edu"])
        XCTAssertEqual(recipients { $0.queueIDs = ["Q2"] }, ["z@gmail.com"])
        XCTAssertEqual(recipients { $0.outcomes = [.delivered] }, ["z@gmail.com"])
        XCTAssertEqual(recipients { $0.outcomes = [.queued] }, ["bob@example.edu", "x@gmail.com"])
        let now = JSONLineLogHandler.timestamp()
        XCTAssertEqual(recipients { $0.until = "2000-01-01T00:00:00.000Z" }, [])
        XCTAssertEqual(recipients { $0.since = "2000-01-01T00:00:00.000Z"; $0.until = "2999-01-01T00:00:00.000Z" }.count, 3)
        XCTAssertEqual(recipients { $0.since = String(now.prefix(10)) }.count, 3)
    }

    /// Lines the report does not understand are counted, never trapped on: cut-off lines, other JSON, hostile
    /// escapes, numbers where strings belong, sizes past Int.
    func testHostileLinesAreCountedNotTrappedOn() {
        let lines = [
            #"{"event":"accepted","queue_id":"Q1","recipients":["<a@example.edu>"],"size":"99999999999999999999999","time":"2026-12-01T00:00:00.000Z"}"#,
            #"{"event":"accepted","queue_id":"Q2","recipients":["<b@example.edu>"],"size":"9223372036854775807","time":"2026-12-01T00:00:01.000Z"}"#,
            #"{"event":"accepted","queue_id":"Q3","recipients":["<c@example.edu>"],"size":"9223372036854775807","time":"2026-12-01T00:00:02.000Z"}"#,
            #"{"event":"accepted","queue_id":"Q4","recipients":"not a list","time":"x"}"#,
            #"{"event":"relay","queue_id":"Q1","recipient":"a@example.edu","outcome":"delivered","attempt":-5,"nested":{"a":[1,2,{"b":null}]}}"#,
            #"{"event":"accepted","queue_id":"Q5","sender":"\ud83d\ude00\u00e9\"\\\/","recipients":["<d@x>"]}"#,
            #"{"event":"accepted","queue_id":"Q6","sender":"\ud800","recipients":[]}"#,
            #"{"event":"accepted","queue_id":"#, "{", "", "[1,2]", #"{"event":"connection"}"#, #"{"a":1}{"b":2}"#, #"{"event":"relay""#,
            #"{"event":"accepted","queue_id":"Q7","sender":"\u12"}"#, String(repeating: "[", count: 100_000),
        ]
        var report = AuditReport()
        for line in lines { Array(line.utf8).withUnsafeBytes { report.add(line: $0) } }
        XCTAssertEqual(report.lines, lines.count)
        XCTAssertEqual(report.unreadableLines, 8, "all but Q1 to Q6 (values of the wrong type skipped), the relay line and the connection line")
        let rows = report.rows(AuditReport.Filter())
        XCTAssertEqual(rows.map(\.queueID), ["Q1", "Q2", "Q3", "Q5"])
        XCTAssertEqual(rows.first?.size, 0, "a size past Int counts as 0")
        XCTAssertEqual(rows.first?.outcome, .delivered)
        XCTAssertEqual(rows.first?.attempts, 0, "a number where a string belongs is skipped")
        XCTAssertEqual(rows.last?.sender, "😀é\"\\/")
        XCTAssertEqual(AuditReportSummary(rows: rows).totalSize, Int.max, "sums saturate")
    }

    func testTimesAsAnOfficerTypesThem() {
        XCTAssertEqual(AuditReport.logTime("2026-12-01"), "2026-12-01T00:00:00.000Z")
        XCTAssertEqual(AuditReport.logTime("2026-12-01T09:30"), "2026-12-01T09:30:00.000Z")
        XCTAssertEqual(AuditReport.logTime("2026-12-01 09:30:15Z"), "2026-12-01T09:30:15.000Z")
        XCTAssertEqual(AuditReport.logTime("2026-12-01T09:30:15.250Z"), "2026-12-01T09:30:15.250Z")
        for bad in ["2026-13-01", "2026-02-30", "2026-12-01T24:00", "yesterday", "2026-12-1", "", "2026-12-01T09:30:15.2"] {
            XCTAssertNil(AuditReport.logTime(bad), bad)
        }
        XCTAssertEqual(AuditReport.untilBound("2026-12-31"), "2027-01-01T00:00:00.000Z", "a bare day includes that day")
        XCTAssertEqual(AuditReport.untilBound("2026-12-31T12:00"), "2026-12-31T12:00:00.000Z")
    }

    func testCSVQuotesAndDefusesFormulas() {
        let row = AuditReport.Row(time: "t", queueID: "Q", session: "S", listener: "device", client: "c", device: "d", login: "",
                                  sender: "=HYPERLINK(\"x\")@evil", messageID: "", size: 1, recipient: "a,b@x", recipientDomain: "x",
                                  external: nil, outcome: .queued, outcomeTime: "", attempts: 0, upstream: "", lastReply: "line1\nline2")
        XCTAssertEqual(AuditReportDetail.csv(row), "t,Q,S,device,c,d,,\"'=HYPERLINK(\"\"x\"\")@evil\",,1,\"a,b@x\",x,,queued,,0,,\"line1\nline2\"\r\n")
        let json = AuditReportDetail.jsonLine(row)
        XCTAssertTrue(json.hasSuffix("\n"))
        let object = try? JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any]
        XCTAssertEqual(object?["size"] as? Int, 1)
        XCTAssertTrue(object?["external"] is NSNull)
        XCTAssertEqual(object?["last_reply"] as? String, "line1\nline2")
        XCTAssertEqual(Set(object?.keys.map { $0 } ?? []), Set(AuditReportDetail.columns))
    }
}
