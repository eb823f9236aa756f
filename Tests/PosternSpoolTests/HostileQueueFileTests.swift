import Foundation
import NIOCore
import XCTest
import PosternCore
@testable import PosternSpool

/// Queue, state and ledger files with numbers that used to reach a trap (issue #13): read as corrupt
/// and moved aside, or counted without overflow.
extension SpoolTests {
    /// Header lengths near Int.max: their sum (`Header.fileSize`) used to overflow.
    func testHeaderClaimingLengthsNearIntMaxIsMovedAsideNotTrapped() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let good = QueueID.make()
        try await spool.enqueue(id: good, envelope: envelope(), message: message())
        await spool.shutdown()
        let dir = SpoolDirectory(root: root)
        let headers = ["POSTERN-SPOOL 1 9223372036854775807 9223372036854775807 0\n{}",
                       "POSTERN-SPOOL 1 9223372036854775800 10 0\n{}",
                       "POSTERN-SPOOL 1 2 9223372036854775807 0\n{}"]
        var hostile: [String] = []
        for text in headers {
            let id = QueueID.make()
            hostile.append(id)
            try Data(text.utf8).write(to: URL(fileURLWithPath: dir.messagePath(id)))
        }
        for id in hostile {
            XCTAssertThrowsError(try dir.readEnvelope(id: id)) { XCTAssertEqual($0 as? SpoolDirectory.ReadError, .corrupt("header lengths out of range")) }
            XCTAssertThrowsError(try dir.readMessage(id: id)) { XCTAssertEqual($0 as? SpoolDirectory.ReadError, .corrupt("header lengths out of range")) }
        }

        // Recovery reads whole messages: the three go to corrupt/, the good one stays.
        let recovered = try Spool(directory: root, logger: logger)
        XCTAssertEqual(files("queue"), ["\(good).msg"])
        XCTAssertEqual(files("corrupt").count, 3, "\(files("corrupt"))")
        XCTAssertEqual(recovered.depth, 1)

        // A scan reads headers and envelopes only: the same for a file that appears while running.
        let late = QueueID.make()
        try Data(headers[0].utf8).write(to: URL(fileURLWithPath: dir.messagePath(late)))
        let entries = await recovered.scan()
        XCTAssertEqual(entries.map(\.id), [good])
        XCTAssertEqual(files("corrupt").count, 4)
        await recovered.shutdown()
    }

    /// A state file whose count of interrupted deliveries is Int.max, for an entry the process died
    /// delivering: counting one more used to overflow at start. Now it is held like any other.
    func testInterruptionCountAtIntMaxHoldsTheEntryNotTrapped() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let id = QueueID.make()
        try await spool.enqueue(id: id, envelope: envelope(), message: message())
        var state = SpoolEntryState.initial(for: envelope())
        state.attempts = Int.max
        state.interruptedDeliveries = Int.max
        try spool.directory.writeState(id: id, state)
        await spool.shutdown()
        // The process died while delivering it: its mark is in the ledger.
        try Data("\(id)\n".utf8).write(to: root.appendingPathComponent("delivering"))

        let recovered = try Spool(directory: root, logger: logger)
        XCTAssertEqual(recovered.heldAtStart.map(\.id), [id])
        XCTAssertEqual(recovered.directory.listIDs(in: .hold), [id])
        XCTAssertEqual(recovered.depth, 0)
        let held = try recovered.directory.readEntry(id: id, in: .hold).entry.state
        XCTAssertEqual(held.interruptedDeliveries, Int.max)
        XCTAssertEqual(held.attempts, Int.max)
        await recovered.shutdown()
    }
}
