import Foundation
import Logging
import NIOCore
import NIOPosix
import XCTest
import PosternCore
@testable import PosternSpool

/// The intake log (`SpoolIntake`): batches made durable together, read back, finished, moved into `queue/`, and
/// what a crash leaves recovered: whole records not done become queue files, done ones do not, a cut-off record
/// at the end is kept aside, and hostile segment bytes never trap.
final class SpoolIntakeTests: XCTestCase {
    var root: URL!
    let logger = Logger(label: "intake-test")

    override func setUp() {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("postern-intake-\(UUID().uuidString)")
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: root)
    }

    func envelope(_ n: Int) -> SpoolEnvelope { Self.envelope(n) }
    func body(_ n: Int) -> ByteBuffer { Self.body(n) }

    static func envelope(_ n: Int) -> SpoolEnvelope {
        SpoolEnvelope(sender: "scanner\(n)@example.edu", recipients: ["r\(n)@example.edu"], receivedAt: Date(timeIntervalSince1970: 1_700_000_000),
                      clientAddress: "192.0.2.7", listener: "device")
    }

    static func body(_ n: Int) -> ByteBuffer { ByteBuffer(string: "Subject: \(n)\r\n\r\n" + String(repeating: "b", count: n % 700) + "\r\n") }

    func files(_ sub: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(sub).path)) ?? []).sorted()
    }

    /// A log as a crashed gateway leaves it: records appended, some finished, nothing moved or removed.
    func crashedLog(count: Int, finished: Set<Int>) throws -> (directory: SpoolDirectory, ids: [String]) {
        let directory = SpoolDirectory(root: root)
        try directory.createDirectories()
        let intake = SpoolIntake(directory: directory, logger: logger)
        var ids: [String] = []
        for n in 0..<count {
            let id = QueueID.make()
            try intake.append(id: id, envelope: envelope(n), messageSize: body(n).readableBytes,
                              image: MessageFileWriter.image(envelope: envelope(n), message: body(n), keys: nil))
            ids.append(id)
        }
        for n in finished { XCTAssertTrue(intake.finish(ids[n])) }
        return (directory, ids)
    }

    func segmentPath() throws -> String {
        let logs = files("intake").filter { $0.hasSuffix(".log") }
        XCTAssertEqual(logs.count, 1)
        return root.appendingPathComponent("intake/\(try XCTUnwrap(logs.first))").path
    }

    func testRecoveryMovesWholeRecordsThatAreNotDoneIntoTheQueue() async throws {
        let (_, ids) = try crashedLog(count: 12, finished: [0, 5, 11])
        let spool = try Spool(directory: root, logger: logger)
        let expected = ids.enumerated().filter { ![0, 5, 11].contains($0.offset) }.map(\.element)
        XCTAssertEqual(spool.directory.listIDs(), expected.sorted())
        XCTAssertEqual(spool.depth, expected.count)
        XCTAssertEqual(files("intake"), [])
        XCTAssertEqual(files("corrupt"), [])
        for (n, id) in ids.enumerated() where expected.contains(id) {
            let read = try spool.directory.readEntry(id: id)
            XCTAssertEqual(read.message, body(n))
            XCTAssertEqual(read.entry.envelope, envelope(n))
        }
        await spool.shutdown()
    }

    func testACutOffLastRecordIsKeptAsideAndTheWholeOnesRecovered() async throws {
        let (_, ids) = try crashedLog(count: 5, finished: [])
        let path = try segmentPath()
        // A batch the crash cut short: its frame promises more than was written.
        let torn = Array("POSTERN-INTAKE 1 \(QueueID.make()) 4096\nPOSTERN-SPOOL 2 0000".utf8)
        let handle = try XCTUnwrap(FileHandle(forWritingAtPath: path))
        handle.seekToEndOfFile()
        handle.write(Data(torn))
        try handle.close()
        let spool = try Spool(directory: root, logger: logger)
        XCTAssertEqual(spool.directory.listIDs(), ids.sorted())
        XCTAssertEqual(files("intake"), [])
        XCTAssertEqual(files("corrupt").count, 1)
        XCTAssertTrue(files("corrupt")[0].hasPrefix("intake-"), "\(files("corrupt"))")
        await spool.shutdown()
    }

    func testARecordAlreadyMovedIsNotWrittenAgainAndADamagedOneIsQuarantined() async throws {
        let (directory, ids) = try crashedLog(count: 3, finished: [])
        // ids[0] became a queue file before the crash (its done line lost): the queue file stays as it is.
        let marker = Array("kept".utf8)
        let image = try MessageFileWriter.image(envelope: envelope(0), message: ByteBuffer(bytes: marker), keys: nil)
        try directory.writeDurably(directory.messagePath(ids[0]), tmpName: "x") { output throws(DurableWriteError) in try output.write(image) }
        // ids[1]'s body damaged in the segment: it is recovered as a queue file, then fails its checksum.
        let path = try segmentPath()
        var bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
        let records = SpoolIntake.parse(bytes).records
        XCTAssertEqual(records.map(\.id), ids)
        let header = try SpoolDirectory.parseHeader(Array(records[1].image))
        bytes[records[1].image.startIndex + header.messageStart + 3] ^= 0x20
        try Data(bytes).write(to: URL(fileURLWithPath: path))

        let spool = try Spool(directory: root, logger: logger)
        XCTAssertEqual(spool.directory.listIDs(), [ids[0], ids[2]].sorted())
        XCTAssertEqual(try spool.directory.readMessage(id: ids[0]).message, ByteBuffer(bytes: marker))
        XCTAssertEqual(files("corrupt").filter { $0.hasPrefix(ids[1]) }.count, 1)
        await spool.shutdown()
    }

    func testHostileSegmentBytesNeverTrap() throws {
        let id = QueueID.make()
        let cases: [String] = [
            "POSTERN-INTAKE 1 \(id) 9223372036854775807\nx",
            "POSTERN-INTAKE 1 \(id) 99999999999999999999999999\nx",
            "POSTERN-INTAKE 1 \(id) -5\nx",
            "POSTERN-INTAKE 1 \(id) 0\n",
            "POSTERN-INTAKE 1 ../../etc/passwd 1\nx",
            "POSTERN-INTAKE 1  \(id) 1\nx",
            "POSTERN-INTAKE 2 \(id) 1\nx",
            String(repeating: "A", count: 500),
            "\n\n\n",
        ]
        for text in cases {
            let (records, trailing) = SpoolIntake.parse(Array(text.utf8))
            XCTAssertEqual(records.count, 0, text)
            XCTAssertEqual(trailing, text.utf8.count, text)
        }
        // And through recovery: the segment is kept aside, nothing is queued, nothing traps.
        let directory = SpoolDirectory(root: root)
        try directory.createDirectories()
        for (n, text) in cases.enumerated() {
            try Data(text.utf8).write(to: URL(fileURLWithPath: "\(directory.intakePath)/\(SpoolIntake.segmentName(UInt64(n + 1))).log"))
        }
        XCTAssertEqual(SpoolIntake.recover(directory, logger: logger), 0)
        XCTAssertEqual(directory.listIDs(), [])
        XCTAssertEqual(files("intake"), [])
        XCTAssertEqual(files("corrupt").count, cases.count)
    }

    /// A batch whose write fails half-way (the file size limit: EFBIG after a short write) is cut off again, and
    /// every writer in it hears of it (no `250` for any); the writes after it go on in the same segment, and a
    /// restart finds exactly the messages that were acknowledged.
    func testAFailedBatchIsCutOffAndEveryWriterInItIsRefused() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let acknowledged = QueueID.make()
        try await spool.enqueue(id: acknowledged, envelope: envelope(0), message: body(0))
        let segment = try segmentPath()
        func size() -> Int {
            var st = stat()
            return stat(segment, &st) == 0 ? Int(st.st_size) : -1
        }
        let before = size()
        signal(SIGXFSZ, SIG_IGN)
        var original = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &original)
        var limited = original
        limited.rlim_cur = rlim_t(before + 100)  // less than one record: any batch stops part-way
        setrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &limited)
        // Half of them as the listener stores messages (a future on an event loop, no I/O thread of their own).
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        let refused = await withTaskGroup(of: Bool.self) { group in
            for n in 1...24 {
                let loop = loops.next()
                group.addTask {
                    do {
                        if n % 2 == 0 {
                            try await spool.enqueue(id: QueueID.make(), envelope: Self.envelope(n), message: Self.body(n), on: loop).get()
                        } else {
                            try await spool.enqueue(id: QueueID.make(), envelope: Self.envelope(n), message: Self.body(n))
                        }
                        return false
                    } catch {
                        return true
                    }
                }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        setrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &original)
        signal(SIGXFSZ, SIG_DFL)
        XCTAssertEqual(refused, 24)
        XCTAssertEqual(size(), before, "cut back to the last whole batch")
        XCTAssertEqual(spool.depth, 1)
        XCTAssertEqual(spool.intakeCount, 1)

        let later = QueueID.make()
        try await spool.enqueue(id: later, envelope: envelope(99), message: body(99), on: loops.next()).get()
        XCTAssertEqual(try segmentPath(), segment, "the same segment takes the next batch")
        let records = SpoolIntake.parse([UInt8](try Data(contentsOf: URL(fileURLWithPath: segment))))
        XCTAssertEqual(records.records.map(\.id), [acknowledged, later])
        XCTAssertEqual(records.trailing, 0)
        await spool.shutdown()
        let reopened = try Spool(directory: root, logger: logger)
        XCTAssertEqual(reopened.directory.listIDs(), [acknowledged, later].sorted())
        XCTAssertEqual(files("corrupt"), [])
        await reopened.shutdown()
        try await loops.shutdownGracefully()
    }

    /// The relay's way with a record: claimed (a second claim fails), its state written (which makes it a queue
    /// file first), or delivered (finished); upkeep moves the others, skipping a claimed one.
    func testAClaimedRecordIsMovedOnlyByItsHolderAndStateMakesItAQueueFile() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let deferred = QueueID.make(), delivered = QueueID.make(), idle = QueueID.make()
        for (n, id) in [deferred, delivered, idle].enumerated() {
            try await spool.enqueue(id: id, envelope: envelope(n), message: body(n))
        }
        XCTAssertEqual(spool.intakeCount, 3)
        let lock = try XCTUnwrap(spool.lock(id: deferred))
        XCTAssertNil(spool.lock(id: deferred), "a second holder")
        await spool.maintainIntake(everything: true)
        XCTAssertTrue(spool.intake.contains(deferred), "upkeep skips a claimed record")
        XCTAssertTrue(spool.directory.contains(id: idle))
        XCTAssertTrue(spool.directory.contains(id: delivered))

        var state = SpoolEntryState.initial(for: envelope(0))
        state.attempts = 1
        state.recipients[0].lastReply = "451 4.4.1 try later"
        try await spool.writeState(id: deferred, state)
        lock.release()
        XCTAssertFalse(spool.intake.contains(deferred))
        XCTAssertEqual(try spool.directory.readEntry(id: deferred).entry.state, state)
        XCTAssertEqual(try spool.directory.readEntry(id: deferred).message, body(0))

        try spool.removeNow(id: delivered)
        XCTAssertEqual(spool.depth, 2)
        await spool.maintainIntake()
        XCTAssertEqual(files("intake"), [], "the segment goes once nothing lives in it")
        await spool.shutdown()
        let reopened = try Spool(directory: root, logger: logger)
        XCTAssertEqual(reopened.directory.listIDs(), [deferred, idle].sorted())
        await reopened.shutdown()
    }

    /// Many writers, the relay finishing and deferring, and upkeep, all at once; then a stop without the settling
    /// shutdown (the log as a crash leaves it) and recovery: every message that was not finished is queued once.
    func testConcurrentAppendsFinishesAndUpkeepLoseNothing() async throws {
        let directory = SpoolDirectory(root: root)
        try directory.createDirectories()
        let intake = SpoolIntake(directory: directory, logger: logger)
        let count = 400
        let finishedIDs = try await withThrowingTaskGroup(of: String?.self) { group in
            for n in 0..<count {
                group.addTask {
                    let id = QueueID.make()
                    try intake.append(id: id, envelope: Self.envelope(n), messageSize: Self.body(n).readableBytes,
                                      image: MessageFileWriter.image(envelope: Self.envelope(n), message: Self.body(n), keys: nil))
                    switch n % 4 {
                    case 0: return intake.finish(id) ? id : nil
                    case 1: if case .claimed = intake.claim(id) { try intake.materialize([id], claimed: true); intake.release(id) }
                    case 2: intake.maintain(everything: n % 8 == 2)
                    default: break
                    }
                    return nil
                }
            }
            var finished: Set<String> = []
            for try await id in group { if let id { finished.insert(id) } }
            return finished
        }
        XCTAssertEqual(finishedIDs.count, count / 4)
        let live = Set(intake.snapshot().map(\.id))
        let queued = Set(directory.listIDs())
        XCTAssertTrue(live.isDisjoint(with: finishedIDs))
        XCTAssertTrue(queued.isDisjoint(with: finishedIDs))
        XCTAssertEqual(live.count + queued.count + finishedIDs.count, count, "every message is in exactly one place")

        // The crash: recovery from the files alone.
        XCTAssertEqual(SpoolIntake.recover(directory, logger: logger), live.count)
        XCTAssertEqual(Set(directory.listIDs()), live.union(queued))
        XCTAssertEqual(files("intake"), [])
        for id in directory.listIDs() { XCTAssertNoThrow(try directory.readMessage(id: id)) }
    }

    /// The listener's path: 600 messages from four event loops at once, each future completing only once its batch is
    /// durable and readable; they share far fewer batches than messages, and all are there after a restart.
    func testMessagesFromEventLoopsShareBatchesAndAllSurviveARestart() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let loops = MultiThreadedEventLoopGroup(numberOfThreads: 4)
        let ids = (0..<600).map { _ in QueueID.make() }
        let futures = ids.enumerated().map { n, id in
            let loop = loops.next()
            return loop.flatSubmit {
                spool.enqueue(id: id, envelope: Self.envelope(n), message: Self.body(n), on: loop).map { spool.contains(id: id) }
            }
        }
        for future in futures {
            let readable = try await future.get()
            XCTAssertTrue(readable, "readable once acknowledged")
        }
        XCTAssertEqual(spool.intakeCount, ids.count)
        let written = spool.intake.written
        XCTAssertEqual(written.records, ids.count)
        XCTAssertLessThan(written.batches, ids.count, "batched")
        print("intake: \(written.records) messages in \(written.batches) batches")
        await spool.shutdown()
        let reopened = try Spool(directory: root, logger: logger)
        XCTAssertEqual(reopened.directory.listIDs(), ids.sorted())
        for (n, id) in ids.enumerated() where n % 97 == 0 { XCTAssertEqual(try reopened.directory.readMessage(id: id).message, body(n)) }
        await reopened.shutdown()
        try await loops.shutdownGracefully()
    }

    /// `postern queue`'s view with a gateway running: records in the log are listed (read only), and a settle
    /// without a running owner moves them itself.
    func testTheQueueToolSeesTheLogAndSettlesItWhenNoGatewayRuns() throws {
        let (directory, ids) = try crashedLog(count: 4, finished: [2])
        let listed = directory.intakeEntries()
        XCTAssertEqual(listed.map(\.id), [ids[0], ids[1], ids[3]])
        XCTAssertEqual(try listed[1].read.get().entry.envelope, envelope(1))
        XCTAssertTrue(directory.isInIntake(id: ids[3]))
        XCTAssertFalse(directory.isInIntake(id: ids[2]))
        directory.settleIntake(logger: logger, timeout: 0)
        XCTAssertEqual(directory.listIDs(), [ids[0], ids[1], ids[3]].sorted())
        XCTAssertEqual(directory.intakeEntries().count, 0)
    }
}
