import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternCore
import XCTest
@testable import PosternSpool

/// Issue #20: messages written into the spool while they arrive, and what a crash or an abort leaves.
final class StreamedSpoolTests: XCTestCase {
    var root: URL!
    let logger = Logger(label: "spool-test")
    let loop = MultiThreadedEventLoopGroup.singleton.next()

    override func setUp() {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("postern-spool-\(UUID().uuidString)")
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: root)
    }

    func envelope(_ id: String) -> SpoolEnvelope {
        SpoolEnvelope(sender: "alice@example.edu", recipients: ["bob@example.edu"], receivedAt: Date(timeIntervalSince1970: 1_700_000_000),
                      clientAddress: "192.0.2.7", listener: "device", messageID: "<\(id)@example.edu>")
    }

    func files(_ sub: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(sub).path)) ?? []).sorted()
    }

    /// Chunks of a message of `count` chunks, each different.
    func chunk(_ i: Int) -> ByteBuffer {
        ByteBuffer(string: (i == 0 ? "Subject: streamed\r\n\r\n" : "") + String(repeating: "line \(i) of the message\r\n", count: 10_000))
    }

    func testStreamedMessageIsReadBackWholeAndInChunks() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let id = QueueID.make()
        let stream = spool.startMessage(id: id)
        var whole = ByteBuffer()
        for i in 0..<8 {
            var part = chunk(i)
            try await stream.append(part, on: loop).get()
            whole.writeBuffer(&part)
        }
        XCTAssertEqual(files("queue"), [], "nothing is queued before the commit")
        XCTAssertEqual(files("tmp"), ["\(id).msg"])
        try await stream.commit(envelope: envelope(id), on: loop).get()
        XCTAssertEqual(files("tmp"), [])
        XCTAssertEqual(files("queue"), ["\(id).msg"])
        XCTAssertEqual(spool.depth, 1)
        let maybe = await spool.readForDelivery(id: id)
        let read = try XCTUnwrap(maybe)
        XCTAssertEqual(read.entry.envelope, envelope(id))
        guard case .file(let file) = read.message else { return XCTFail("a large message is read in chunks") }
        var back = ByteBuffer()
        var offset = 0
        while offset < file.messageLength {
            var part = try await spool.read(file, from: offset, count: 100_000)
            offset += part.readableBytes
            back.writeBuffer(&part)
        }
        file.close()
        XCTAssertEqual(back, whole)
        XCTAssertEqual(try spool.directory.readMessage(id: id).message, whole)
        await spool.shutdown()
    }

    func testAbortRemovesThePartialFile() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let stream = spool.startMessage(id: QueueID.make())
        try await stream.append(chunk(0), on: loop).get()
        XCTAssertEqual(files("tmp").count, 1)
        stream.abort()
        let deadline = Date().addingTimeInterval(5)
        while !files("tmp").isEmpty && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        XCTAssertEqual(files("tmp"), [])
        XCTAssertEqual(files("queue"), [])
        // An append after the abort writes nothing.
        XCTAssertThrowsError(try stream.append(chunk(1), on: loop).wait())
        XCTAssertEqual(files("tmp"), [])
        await spool.shutdown()
    }

    /// A crash in the middle of a message leaves a partial file in tmp/: recovery removes it and keeps every
    /// whole message, streamed or not, and a message in the old format (1) is still read.
    func testRecoveryWithPartialFilesPresent() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let whole = QueueID.make(), partial = QueueID.make(), small = QueueID.make()
        let complete = spool.startMessage(id: whole)
        for i in 0..<5 { try await complete.append(chunk(i), on: loop).get() }
        try await complete.commit(envelope: envelope(whole), on: loop).get()
        try await spool.enqueue(id: small, envelope: envelope(small), message: ByteBuffer(string: "Subject: small\r\n\r\nhi\r\n"))
        let cut = spool.startMessage(id: partial)
        for i in 0..<3 { try await cut.append(chunk(i), on: loop).get() }
        await spool.shutdown()  // the process "dies": no commit, no abort
        XCTAssertEqual(files("tmp"), ["\(partial).msg"])
        // A format-1 file, as an older gateway wrote it.
        let old = QueueID.make()
        let json = try JSONEncoder.spool.encode(envelope(old))
        let body = Array("Subject: old\r\n\r\nbody\r\n".utf8)
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in body { hash ^= UInt64(b); hash &*= 0x100_0000_01b3 }
        var file = Array("POSTERN-SPOOL 1 \(json.count) \(body.count) \(String(hash, radix: 16))\n".utf8)
        file += json
        file += body
        try Data(file).write(to: root.appendingPathComponent("queue/\(old).msg"))

        let recovered = try Spool(directory: root, logger: logger)
        XCTAssertEqual(files("tmp"), [], "the partial file is removed")
        XCTAssertEqual(files("queue"), [whole, small, old].sorted().map { "\($0).msg" })
        XCTAssertEqual(files("corrupt"), [])
        XCTAssertEqual(recovered.depth, 3)
        let maybeOld = await recovered.readForDelivery(id: old)
        let read = try XCTUnwrap(maybeOld)
        guard case .inMemory(let message) = read.message else { return XCTFail("small: read whole") }
        XCTAssertEqual(message, ByteBuffer(bytes: body))
        XCTAssertEqual(read.entry.envelope, envelope(old))
        let maybeBig = await recovered.readForDelivery(id: whole)
        let big = try XCTUnwrap(maybeBig)
        XCTAssertEqual(big.entry.messageSize, (0..<5).reduce(0) { $0 + chunk($1).readableBytes })
        if case .file(let f) = big.message { f.close() } else { XCTFail("large: read in chunks") }
        await recovered.shutdown()
    }

    /// A flipped byte in a streamed message's envelope is caught by the checksum (format 2 covers it).
    func testCorruptStreamedFileIsMovedAside() async throws {
        let spool = try Spool(directory: root, logger: logger)
        let id = QueueID.make()
        let stream = spool.startMessage(id: id)
        for i in 0..<5 { try await stream.append(chunk(i), on: loop).get() }
        try await stream.commit(envelope: envelope(id), on: loop).get()
        await spool.shutdown()
        let path = root.appendingPathComponent("queue/\(id).msg")
        var bytes = try Data(contentsOf: path)
        let at = try XCTUnwrap(bytes.lastRange(of: Data("bob".utf8))).lowerBound
        bytes[at] = UInt8(ascii: "r")
        try bytes.write(to: path)
        let recovered = try Spool(directory: root, logger: logger)
        XCTAssertEqual(files("queue"), [])
        XCTAssertEqual(files("corrupt").count, 1)
        await recovered.shutdown()
    }
}
