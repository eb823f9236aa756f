import Foundation
import XCTest
@testable import PosternCore

/// `audit.rotate`: rotation by size under concurrent writers loses and splits no line, rotated files are gzip and
/// read back by the report's reader, and files past `keep-days` are deleted.
final class AuditRotationTests: XCTestCase {
    var directory: URL!
    var file: URL { directory.appendingPathComponent("audit.jsonl") }

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-rotation-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: directory)
    }

    /// Every line of the log, plain and gzip files alike, in the report's file order.
    func allLines() throws -> [String] {
        var lines: [String] = []
        for path in AuditFileSet(path: file.path).all() {
            try AuditFileReader.forEachLine(path: path) { lines.append(String(decoding: $0, as: UTF8.self)) }
        }
        return lines
    }

    func testRotationUnderConcurrentWritersLosesAndSplitsNoLine() throws {
        let log = try AuditLog.make(output: file.path, retention: AuditRetention(rotateBytes: 16 << 10))
        let writers = 8, perWriter = 2_000
        DispatchQueue.concurrentPerform(iterations: writers) { writer in
            for i in 0..<perWriter {
                log.relay(queueID: "W\(writer)-\(i)", recipient: "r\(i)@example.edu", upstream: "hub",
                          reply: "250 2.0.0 " + String(repeating: "x", count: i % 97), attempt: 1, outcome: "delivered")
            }
        }
        log.sink?.settle()
        let rotated = AuditFileSet(path: file.path).rotated()
        XCTAssertGreaterThan(rotated.count, 20, "about 2.5 MB of lines in 16 KiB files")
        XCTAssertTrue(rotated.allSatisfy { $0.path.hasSuffix(".gz") }, "every rotated file compressed: \(rotated.map(\.path).prefix(3))")
        XCTAssertEqual(rotated.map(\.stamp), rotated.map(\.stamp).sorted())
        let lines = try allLines()
        XCTAssertEqual(lines.count, writers * perWriter, "no line lost or duplicated")
        var seen = Set<String>()
        for line in lines {
            let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], "a whole JSON line: \(line.prefix(80))")
            let id = try XCTUnwrap(object["queue_id"] as? String)
            XCTAssertTrue(seen.insert(id).inserted, id)
        }
        // Each writer's lines stay in its order across files.
        for writer in 0..<writers {
            let mine = lines.compactMap { line -> Int? in
                guard let range = line.range(of: "\"queue_id\":\"W\(writer)-") else { return nil }
                return Int(line[range.upperBound...].prefix { $0.isNumber })
            }
            XCTAssertEqual(mine, Array(0..<perWriter), "writer \(writer)")
        }
        // Every file but the current one stays near the size (one line over at most).
        var info = stat()
        for (path, _) in rotated.dropLast() {
            var plain = 0
            try AuditFileReader.forEachLine(path: path) { plain += $0.count + 1 }
            XCTAssertLessThanOrEqual(plain, 16 << 10, path)
            XCTAssertEqual(stat(path, &info), 0)
        }
    }

    func testKeepDaysDeletesRotatedFilesWhoseNewestLineIsOlderAndTheReportReadsWhatIsKept() throws {
        let log = try AuditLog.make(output: file.path, retention: AuditRetention(keepDays: 30))
        let now = Date()
        // Rotated files of 40, 31, 29 and 1 days ago, as rotation names them, two of them compressed.
        var expected: [String] = []
        for (n, days) in [40, 31, 28, 1].enumerated() {
            let stamp = AuditFileSet.stamp(for: now.addingTimeInterval(-Double(days) * 86_400))
            let path = file.path + "." + stamp
            try Data("{\"event\":\"old\",\"n\":\"\(days)\"}\n".utf8).write(to: URL(fileURLWithPath: path))
            if n % 2 == 1 { JSONLineSink.compress(path) }
            if days < 30 { expected.append("{\"event\":\"old\",\"n\":\"\(days)\"}") }
        }
        XCTAssertEqual(AuditFileSet(path: file.path).rotated().count, 4)
        log.event("today", [:])
        let deleted = log.maintain(now: now)
        XCTAssertEqual(deleted.count, 2, "\(deleted)")
        let kept = AuditFileSet(path: file.path).rotated()
        XCTAssertEqual(kept.count, 2)
        XCTAssertTrue(kept[1].path.hasSuffix(".gz"))
        let lines = try allLines()
        XCTAssertEqual(Array(lines.prefix(2)), expected, "the report reads exactly the kept files, oldest first")
        XCTAssertEqual(lines.count, 3)
        XCTAssertTrue(lines[2].contains("\"event\":\"today\""))

        // The next day the current file rotates (its first line is from an earlier day) and stays until 30 days on.
        XCTAssertEqual(log.maintain(now: now.addingTimeInterval(86_400 + 60)), [])
        log.sink?.settle()
        XCTAssertEqual(AuditFileSet(path: file.path).rotated().count, 3)
        XCTAssertEqual(log.maintain(now: now.addingTimeInterval(31 * 86_400 + 120)).count, 3, "all rotated files past 30 days")
        XCTAssertEqual(AuditFileSet(path: file.path).rotated().count, 0)
    }

    func testStampsSortInTimeOrderAndReadBack() {
        let date = Date(timeIntervalSince1970: 1_796_117_400.123)  // 2026-12-01T09:30:00.123Z
        let stamp = AuditFileSet.stamp(for: date)
        XCTAssertEqual(stamp, "20261201T093000.123Z")
        XCTAssertEqual(AuditFileSet.date(ofStamp: stamp)?.timeIntervalSince1970, 1_796_117_400)
        let set = AuditFileSet(path: "/var/log/postern/audit.jsonl")
        XCTAssertEqual(set.stamp(ofRotated: "audit.jsonl.20261201T093000.123Z.gz"), "20261201T093000.123Z")
        XCTAssertEqual(set.stamp(ofRotated: "audit.jsonl.20261201T093000.123Z-0001"), "20261201T093000.123Z-0001")
        XCTAssertNil(set.stamp(ofRotated: "audit.jsonl.bak"))
        XCTAssertNil(set.stamp(ofRotated: ".audit.jsonl.20261201T093000.123Z.gz.x1.tmp"))
        XCTAssertNil(set.stamp(ofRotated: "other.jsonl.20261201T093000.123Z"))
    }

    func testAGzipFileThatIsCutOffIsAnErrorNotATrap() throws {
        let path = file.path + ".20261201T000000.000Z"
        try Data(String(repeating: "{\"event\":\"x\"}\n", count: 1000).utf8).write(to: URL(fileURLWithPath: path))
        JSONLineSink.compress(path)
        let gz = try Data(contentsOf: URL(fileURLWithPath: path + ".gz"))
        try gz.prefix(gz.count / 2).write(to: URL(fileURLWithPath: path + ".gz"))
        var count = 0
        XCTAssertThrowsError(try AuditFileReader.forEachLine(path: path + ".gz") { _ in count += 1 })
        try Data("not gzip at all".utf8).write(to: URL(fileURLWithPath: path + ".gz"))
        XCTAssertThrowsError(try AuditFileReader.forEachLine(path: path + ".gz") { _ in count += 1 })
    }
}
