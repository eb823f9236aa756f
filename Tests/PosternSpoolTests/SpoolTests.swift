import Foundation
import Logging
import NIOCore
import XCTest
import PosternCore
@testable import PosternSpool

final class SpoolTests: XCTestCase {
    var root: URL!
    let logger = Logger(label: "spool-test")

    override func setUp() {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("postern-spool-\(UUID().uuidString)")
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: root)
    }

    func envelope(_ recipients: [String] = ["a@example.edu", "b@example.org"]) -> SpoolEnvelope {
        SpoolEnvelope(sender: "alice@example.edu", recipients: recipients, receivedAt: Date(timeIntervalSince1970: 1_700_000_000.25),
                      clientAddress: "192.0.2.7", listener: "submission", login: "alice", messageID: "<m1@example.edu>", bodyType: "8BITMIME")
    }

    func message(_ text: String = "Subject: hi\r\n\r\nbody\r\n") -> ByteBuffer { ByteBuffer(string: text) }

    func files(_ sub: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(sub).path)) ?? []).sorted()
    }

    func testEnqueuedMessageIsReadBackWithEnvelopeAndInitialState() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let id = QueueID.make()
        try await spool.enqueue(id: id, envelope: envelope(), message: message())
        XCTAssertEqual(spool.depth, 1)
        // In the intake log first: read back from there, then from its queue file once moved.
        XCTAssertEqual(files("queue"), [])
        XCTAssertEqual(files("intake"), ["0000000000000001.done", "0000000000000001.log"])
        for place in ["intake", "queue"] {
            if place == "queue" {
                await spool.maintainIntake(everything: true)
                XCTAssertEqual(files("queue"), ["\(id).msg"])
            }
            XCTAssertEqual(files("tmp"), [])
            let read = await spool.read(id: id)
            XCTAssertEqual(read?.entry.envelope, envelope(), place)
            XCTAssertEqual(read?.message, message(), place)
            XCTAssertEqual(read?.entry.state.pendingRecipients, ["a@example.edu", "b@example.org"], place)
        }
        // The segment, empty now and closed, goes at the next upkeep.
        await spool.maintainIntake()
        XCTAssertEqual(files("intake"), [])
        await spool.shutdown()
    }

    func testConcurrentEnqueuesAllBecomeDurable() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let count = 300
        let envelope = envelope()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for i in 0..<count {
                group.addTask { try await spool.enqueue(id: QueueID.make(), envelope: envelope, message: ByteBuffer(string: "Subject: \(i)\r\n\r\nx\r\n")) }
            }
            try await group.waitForAll()
        }
        XCTAssertEqual(spool.depth, count)
        XCTAssertEqual(spool.intakeCount, count)
        // A second owner of a spool in use is refused: its delivery ledger would mix with ours.
        XCTAssertThrowsError(try Spool(directory: root, logger: logger))
        await spool.shutdown()
        XCTAssertEqual(files("intake"), [], "a stopped spool leaves queue files only")
        XCTAssertEqual(files("queue").filter { $0.hasSuffix(".msg") }.count, count)
        let reopened = try Spool(directory: root, logger: logger)
        XCTAssertEqual(reopened.depth, count)
        await reopened.shutdown()
    }

    func testStateIsReplacedAtomicallyAndRemovalDeletesBothFiles() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let id = QueueID.make()
        try await spool.enqueue(id: id, envelope: envelope(), message: message())
        var state = SpoolEntryState.initial(for: envelope())
        state.attempts = 2
        state.recipients[0].state = .delivered
        state.nextAttempt = Date(timeIntervalSince1970: 1_800_000_000)
        try await spool.writeState(id: id, state)
        let read = await spool.read(id: id)
        XCTAssertEqual(read?.entry.state, state)
        XCTAssertEqual(read?.entry.state.pendingRecipients, ["b@example.org"])
        try await spool.remove(id: id)
        XCTAssertEqual(files("queue"), [])
        XCTAssertEqual(spool.depth, 0)
        await spool.shutdown()
    }

    // A crash while writing leaves a temp file; one between removing message and state leaves an
    // orphaned state file. Recovery removes both and keeps every whole message.
    func testRecoveryRemovesHalfWrittenFilesAndKeepsWholeMessages() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let id = QueueID.make()
        try await spool.enqueue(id: id, envelope: envelope(), message: message())
        await spool.shutdown()
        let dir = SpoolDirectory(root: root)
        try Data("POSTERN-SPOOL 1 100 5 0\n{\"sen".utf8).write(to: URL(fileURLWithPath: dir.tmpPath + "/X1.msg"))
        try Data("{}".utf8).write(to: URL(fileURLWithPath: dir.queuePath + "/GONE.state"))

        let recovered = try Spool(directory: root, logger: logger)
        XCTAssertEqual(files("tmp"), [])
        XCTAssertEqual(files("queue"), ["\(id).msg"])
        XCTAssertEqual(recovered.depth, 1)
        XCTAssertEqual(files("corrupt"), [])
        let read = await recovered.read(id: id)
        XCTAssertEqual(read?.message, message())
        await recovered.shutdown()
    }

    func testTruncatedAndCorruptQueueFilesAreMovedAsideNotDeleted() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let good = QueueID.make(), truncated = QueueID.make(), flipped = QueueID.make(), garbage = QueueID.make()
        for id in [good, truncated, flipped, garbage] {
            try await spool.enqueue(id: id, envelope: envelope(), message: message("Subject: \(id)\r\n\r\nsome body text\r\n"))
        }
        await spool.shutdown()
        let dir = SpoolDirectory(root: root)
        let truncatedPath = dir.queuePath + "/\(truncated).msg"
        XCTAssertEqual(truncate(truncatedPath, 60), 0)
        var bytes = try Data(contentsOf: URL(fileURLWithPath: dir.queuePath + "/\(flipped).msg"))
        bytes[bytes.count - 3] ^= 0x20
        try bytes.write(to: URL(fileURLWithPath: dir.queuePath + "/\(flipped).msg"))
        try Data("not a spool file".utf8).write(to: URL(fileURLWithPath: dir.queuePath + "/\(garbage).msg"))
        try Data("stray".utf8).write(to: URL(fileURLWithPath: dir.queuePath + "/core.1234"))

        let recovered = try Spool(directory: root, logger: logger)
        XCTAssertEqual(files("queue"), ["\(good).msg"])
        XCTAssertEqual(recovered.depth, 1)
        let aside = files("corrupt")
        XCTAssertEqual(aside.count, 4, "\(aside)")
        for name in ["\(truncated).msg", "\(flipped).msg", "\(garbage).msg", "core.1234"] {
            XCTAssertTrue(aside.contains { $0.hasPrefix(name + ".") }, "\(name) not kept in corrupt/: \(aside)")
        }
        await recovered.shutdown()
    }

    func testCorruptStateFileIsMovedAsideAndAllRecipientsAreRetried() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let id = QueueID.make()
        try await spool.enqueue(id: id, envelope: envelope(), message: message())
        try Data("{\"attempts\":".utf8).write(to: URL(fileURLWithPath: SpoolDirectory(root: root).queuePath + "/\(id).state"))
        await spool.shutdown()
        let recovered = try Spool(directory: root, logger: logger)
        let entries = await recovered.scan()
        XCTAssertEqual(entries.map(\.id), [id])
        XCTAssertEqual(entries.first?.state.pendingRecipients.count, 2)
        XCTAssertEqual(files("corrupt").count, 1)
        await recovered.shutdown()
    }

    /// At delivery, small and large alike: a corrupt state file is moved aside and every recipient tried again; the
    /// message stays queued (it used to be moved aside with its state when it was small).
    func testACorruptStateFileAtDeliveryKeepsTheMessageInDelivery() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let small = QueueID.make(), large = QueueID.make()
        let bodies = [small: message(), large: ByteBuffer(string: "Subject: big\r\n\r\n" + String(repeating: "z", count: 2 << 20) + "\r\n")]
        for (id, body) in bodies { try await spool.enqueue(id: id, envelope: envelope(), message: body) }
        await spool.maintainIntake(everything: true)
        for id in [small, large] {
            try Data("{\"attempts\":".utf8).write(to: URL(fileURLWithPath: spool.directory.queuePath + "/\(id).state"))
            let read = await spool.readForDelivery(id: id)
            XCTAssertEqual(read?.entry.state.pendingRecipients, ["a@example.edu", "b@example.org"], id)
            XCTAssertEqual(read?.message.size, bodies[id]?.readableBytes, id)
            if case .file(let file)? = read?.message { file.close() }
            XCTAssertTrue(spool.directory.contains(id: id), id)
        }
        XCTAssertEqual(files("corrupt").filter { $0.contains(".state.") }.count, 2)
        XCTAssertEqual(files("corrupt").filter { $0.contains(".msg") }, [])
        await spool.shutdown()
    }

    func testUnwritableSpoolReportsAnErrorAndLaterWritesStillWork() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let dir = SpoolDirectory(root: root)
        // Root ignores permissions; replacing tmp/ and intake/ with files makes every write fail for anyone.
        for path in [dir.tmpPath, dir.intakePath] {
            try FileManager.default.removeItem(atPath: path)
            try Data().write(to: URL(fileURLWithPath: path))
        }
        do {
            try await spool.enqueue(id: QueueID.make(), envelope: envelope(), message: message())
            XCTFail("enqueue into an unwritable spool succeeded")
        } catch {
            guard case .unwritable = error else { return XCTFail("expected .unwritable, got \(error)") }
        }
        XCTAssertEqual(spool.depth, 0)
        for path in [dir.tmpPath, dir.intakePath] { try FileManager.default.removeItem(atPath: path) }
        try dir.createDirectories()
        try await spool.enqueue(id: QueueID.make(), envelope: envelope(), message: message())
        XCTAssertEqual(spool.depth, 1)
        await spool.shutdown()
    }

    func testEntryLockExcludesASecondHolderUntilReleased() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let id = QueueID.make()
        try await spool.enqueue(id: id, envelope: envelope(), message: message())
        let first = try XCTUnwrap(spool.lock(id: id))
        XCTAssertNil(spool.lock(id: id))
        first.release()
        let second = spool.lock(id: id)
        XCTAssertNotNil(second)
        second?.release()
        XCTAssertNil(spool.lock(id: "NOPE"))
        await spool.shutdown()
    }

    func testNoSpaceMapsToFullAndOtherErrorsToUnwritable() {
        XCTAssertEqual(SpoolDirectory.error("write", ENOSPC), .full)
        XCTAssertEqual(SpoolDirectory.error("write", EDQUOT), .full)
        guard case .unwritable(let text) = SpoolDirectory.error("open x", EACCES) else { return XCTFail() }
        XCTAssertTrue(text.contains("open x"))
    }
}

final class SpoolFileReuseTests: XCTestCase {
    var root: URL!
    let logger = Logger(label: "spool-reuse-test")

    override func setUp() {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("postern-spool-reuse-\(UUID().uuidString)")
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: root)
    }

    func inode(_ path: String) -> UInt64? {
        var st = stat()
        return stat(path, &st) == 0 ? UInt64(st.st_ino) : nil
    }

    func envelope(_ n: Int) -> SpoolEnvelope {
        SpoolEnvelope(sender: "s\(n)@example.edu", recipients: ["r\(n)@example.edu"], receivedAt: Date(timeIntervalSince1970: 1_700_000_000),
                      clientAddress: "192.0.2.7", listener: "device", login: nil, messageID: nil, bodyType: nil)
    }

    /// A delivered message's file is renamed into free/ and the next message overwrites it: same
    /// inode, and a shorter message after a longer one reads back exactly (cut to length, checksum good).
    func testRemovedFileIsReusedAndCutToLength() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let first = QueueID.make()
        let long = ByteBuffer(string: "Subject: long\r\n\r\n" + String(repeating: "x", count: 50_000) + "\r\n")
        try await spool.enqueue(id: first, envelope: envelope(1), message: long)
        // Reuse is for queue files: those moved out of the intake log (and streamed ones).
        await spool.maintainIntake(everything: true)
        let firstInode = inode(spool.directory.messagePath(first))
        XCTAssertNotNil(firstInode)
        try await spool.remove(id: first)
        XCTAssertFalse(spool.directory.contains(id: first))
        XCTAssertEqual(spool.directory.freeNames(), [first])
        XCTAssertEqual(spool.depth, 0)

        let second = QueueID.make()
        let short = ByteBuffer(string: "Subject: short\r\n\r\nhi\r\n")
        try await spool.enqueue(id: second, envelope: envelope(2), message: short)
        await spool.maintainIntake(everything: true)
        XCTAssertEqual(inode(spool.directory.messagePath(second)), firstInode)
        XCTAssertEqual(spool.directory.freeNames(), [])
        let read = await spool.read(id: second)
        XCTAssertEqual(read?.message, short)
        XCTAssertEqual(read?.entry.envelope, envelope(2))
        var st = stat()
        XCTAssertEqual(stat(spool.directory.messagePath(second), &st), 0)
        XCTAssertLessThan(Int(st.st_size), 1000)
        await spool.shutdown()
    }

    /// A scan reads header and envelope only; an envelope longer than the first read (many
    /// recipients) is read in full, and a truncated file is moved aside, not returned.
    func testScanReadsLongEnvelopesAndSetsTruncatedFilesAside() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let recipients = (0..<300).map { "recipient-number-\($0)@department.example.edu" }
        let id = QueueID.make()
        let long = SpoolEnvelope(sender: "a@example.edu", recipients: recipients, receivedAt: Date(timeIntervalSince1970: 1_700_000_000),
                                 clientAddress: "192.0.2.7", listener: "submission", login: "a", messageID: nil, bodyType: nil)
        try await spool.enqueue(id: id, envelope: long, message: ByteBuffer(string: "Subject: many\r\n\r\nbody\r\n"))
        let broken = QueueID.make()
        try await spool.enqueue(id: broken, envelope: envelope(1), message: ByteBuffer(string: "Subject: cut\r\n\r\n" + String(repeating: "y", count: 5000)))
        await spool.maintainIntake(everything: true)
        XCTAssertEqual(truncate(spool.directory.messagePath(broken), 300), 0)
        let entries = await spool.scan()
        XCTAssertEqual(entries.map(\.id), [id])
        XCTAssertEqual(entries.first?.envelope, long)
        XCTAssertFalse(spool.directory.contains(id: broken))
        XCTAssertEqual(spool.depth, 1)
        await spool.shutdown()
    }

    /// free/ files survive a restart and are reused; a file someone removed from free/ meanwhile
    /// just means a new file is created.
    func testFreeFilesAreAdoptedAfterRestartAndMissingOnesTolerated() async throws {
        var spool = try Spool(directory: root, logger: logger)
        var ids: [String] = []
        for n in 0..<3 {
            let id = QueueID.make()
            try await spool.enqueue(id: id, envelope: envelope(n), message: ByteBuffer(string: "Subject: \(n)\r\n\r\nbody\r\n"))
            ids.append(id)
        }
        await spool.maintainIntake(everything: true)
        for id in ids { try await spool.remove(id: id) }
        XCTAssertEqual(Set(spool.directory.freeNames()), Set(ids))
        await spool.shutdown()

        spool = try Spool(directory: root, logger: logger)
        unlink("\(spool.directory.freePath)/\(ids[2])")  // gone: enqueue creates a new file instead
        for n in 0..<4 {
            let id = QueueID.make()
            let body = ByteBuffer(string: "Subject: again \(n)\r\n\r\nbody\r\n")
            try await spool.enqueue(id: id, envelope: envelope(n), message: body)
            await spool.maintainIntake(everything: true)
            let read = await spool.read(id: id)
            XCTAssertEqual(read?.message, body)
        }
        XCTAssertEqual(spool.directory.freeNames(), [])
        XCTAssertEqual(spool.depth, 4)
        await spool.shutdown()
    }
}
