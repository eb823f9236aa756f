import Foundation
import Logging
import NIOCore
import NIOPosix
import PosternCore
import XCTest
@testable import PosternSpool

/// Spool encryption at rest (#18): message files sealed with the current key (format 3), read back whole, in
/// chunks at any offset, after a restart and after a key rotation; a file without its key is left alone, never
/// quarantined; a changed byte is corrupt; files in the clear stay readable with encryption on.
final class EncryptedSpoolTests: XCTestCase {
    var root: URL!
    let logger = Logger(label: "spool-seal-test")
    let loop = MultiThreadedEventLoopGroup.singleton.next()
    let old = try? SpoolKeyRing(keys: [("2026-12", Array(repeating: 7, count: 32))])
    let rotated = try? SpoolKeyRing(keys: [("2027-01", Array(repeating: 9, count: 32)), ("2026-12", Array(repeating: 7, count: 32))])
    let marker = "CONFIDENTIAL-PAYSLIP-4711"

    override func setUp() {
        root = FileManager.default.temporaryDirectory.appendingPathComponent("postern-sealed-\(UUID().uuidString)")
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: root)
    }

    func envelope(_ id: String) -> SpoolEnvelope {
        SpoolEnvelope(sender: "payroll@example.edu", recipients: ["employee@example.edu"], receivedAt: Date(timeIntervalSince1970: 1_700_000_000),
                      clientAddress: "192.0.2.7", listener: "device", messageID: "<\(id)@example.edu>")
    }

    func files(_ sub: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(sub).path)) ?? []).sorted()
    }

    func stored(_ id: String) throws -> Data {
        try Data(contentsOf: root.appendingPathComponent("queue/\(id).msg"))
    }

    /// A message of about 2.6 MB: many sealed chunks, read for delivery from the file.
    func large() -> ByteBuffer {
        var buffer = ByteBuffer(string: "Subject: \(marker)\r\n\r\n")
        for i in 0..<40_000 { buffer.writeString("line \(i) \(marker) of the scan\r\n") }
        return buffer
    }

    func testSealedMessagesReadBackWholeInChunksAndAfterARestart() async throws {
        let keys = try XCTUnwrap(old)
        var spool = try Spool(directory: root, logger: logger, keys: keys)
        // One written whole (the in-memory path), one streamed in uneven pieces.
        let small = QueueID.make(), big = QueueID.make()
        try await spool.enqueue(id: small, envelope: envelope(small), message: ByteBuffer(string: "Subject: \(marker)\r\n\r\nbody\r\n"))
        let whole = large()
        let stream = spool.startMessage(id: big)
        var offset = 0
        for piece in [1, 70_000, 300_000, 5, 1 << 21] where offset < whole.readableBytes {
            let end = min(whole.readableBytes, offset + piece)
            try await stream.append(whole.getSlice(at: offset, length: end - offset) ?? ByteBuffer(), on: loop).get()
            offset = end
        }
        try await stream.append(whole.getSlice(at: offset, length: whole.readableBytes - offset) ?? ByteBuffer(), on: loop).get()
        try await stream.commit(envelope: envelope(big), on: loop).get()

        // The small one is in the intake log first: sealed there too.
        let segments = files("intake").filter { $0.hasSuffix(".log") }
        XCTAssertEqual(segments.count, 1)
        let segment = try Data(contentsOf: root.appendingPathComponent("intake/\(segments[0])"))
        XCTAssertNotNil(segment.range(of: Data("POSTERN-SPOOL 3 ".utf8)))
        for secret in [marker, "payroll@example.edu", "employee@example.edu", "192.0.2.7"] {
            XCTAssertNil(segment.range(of: Data(secret.utf8)), "\(secret) in the clear in the intake log")
        }
        await spool.maintainIntake(everything: true)

        // On disk: format 3, and neither the body nor the envelope's addresses in the clear.
        for id in [small, big] {
            let bytes = try stored(id)
            XCTAssertTrue(bytes.starts(with: Data("POSTERN-SPOOL 3 ".utf8)))
            for secret in [marker, "payroll@example.edu", "employee@example.edu", "192.0.2.7"] {
                XCTAssertNil(bytes.range(of: Data(secret.utf8)), "\(secret) in the clear in \(id)")
            }
        }
        XCTAssertEqual(try spool.directory.readMessage(id: big).message, whole)
        XCTAssertEqual(try spool.directory.readEnvelope(id: big).messageSize, whole.readableBytes)
        XCTAssertEqual(try spool.directory.readEnvelope(id: small).envelope, envelope(small))

        // For delivery: from the file, read at offsets that straddle sealed chunks.
        let maybe = await spool.readForDelivery(id: big)
        let read = try XCTUnwrap(maybe)
        XCTAssertEqual(read.entry.envelope, envelope(big))
        guard case .file(let file) = read.message else { return XCTFail("a large message is read in chunks") }
        XCTAssertEqual(file.messageLength, whole.readableBytes)
        for (at, count) in [(0, 10), (65_530, 20), (65_536, 65_536), (131_000, 300_000), (whole.readableBytes - 7, 100)] {
            let part = try await spool.read(file, from: at, count: count)
            XCTAssertEqual(part, whole.getSlice(at: at, length: min(count, whole.readableBytes - at)), "at \(at)")
        }
        file.close()
        await spool.shutdown()

        // A restart recovers both (in chunks, checksums), with the keys.
        spool = try Spool(directory: root, logger: logger, keys: keys)
        XCTAssertEqual(spool.depth, 2)
        XCTAssertEqual(files("corrupt"), [])
        await spool.shutdown()
    }

    func testAfterARotationOldFilesOpenAndNewOnesUseTheNewKey() async throws {
        let first = QueueID.make()
        var spool = try Spool(directory: root, logger: logger, keys: try XCTUnwrap(old))
        try await spool.enqueue(id: first, envelope: envelope(first), message: ByteBuffer(string: "Subject: a\r\n\r\nold key\r\n"))
        await spool.shutdown()

        spool = try Spool(directory: root, logger: logger, keys: try XCTUnwrap(rotated))
        XCTAssertEqual(spool.depth, 1)
        XCTAssertEqual(String(buffer: try spool.directory.readMessage(id: first).message), "Subject: a\r\n\r\nold key\r\n")
        let second = QueueID.make()
        try await spool.enqueue(id: second, envelope: envelope(second), message: ByteBuffer(string: "Subject: b\r\n\r\nnew key\r\n"))
        await spool.maintainIntake(everything: true)
        XCTAssertNotNil(try stored(second).range(of: Data("2027-01".utf8)), "sealed with the new first key")
        await spool.shutdown()

        // The old ring alone cannot open the new file: it stays where it is, undelivered, not quarantined.
        spool = try Spool(directory: root, logger: logger, keys: try XCTUnwrap(old))
        XCTAssertEqual(spool.depth, 1)
        XCTAssertEqual(files("queue").filter { $0.hasSuffix(".msg") }.count, 2)
        XCTAssertEqual(files("corrupt"), [])
        XCTAssertThrowsError(try spool.directory.readMessage(id: second)) { error in
            guard case .locked(let why)? = error as? SpoolDirectory.ReadError else { return XCTFail("\(error)") }
            XCTAssertTrue(why.contains("2027-01"), why)
        }
        await spool.shutdown()

        // Without encryption configured at all: the same, with the reason.
        spool = try Spool(directory: root, logger: logger)
        XCTAssertEqual(spool.depth, 0)
        XCTAssertEqual(files("corrupt"), [])
        XCTAssertThrowsError(try spool.directory.readEntry(id: first)) { error in
            XCTAssertEqual(error as? SpoolDirectory.ReadError,
                           .locked("the file is encrypted and spool encryption is not configured (delivery.spool.encrypt)"))
        }
        await spool.shutdown()
    }

    func testAChangedByteIsCorruptAndFilesInTheClearStayReadable() async throws {
        // A file written before encryption was turned on.
        var spool = try Spool(directory: root, logger: logger)
        let clear = QueueID.make()
        try await spool.enqueue(id: clear, envelope: envelope(clear), message: ByteBuffer(string: "Subject: c\r\n\r\nin the clear\r\n"))
        await spool.shutdown()

        spool = try Spool(directory: root, logger: logger, keys: try XCTUnwrap(old))
        XCTAssertEqual(String(buffer: try spool.directory.readMessage(id: clear).message), "Subject: c\r\n\r\nin the clear\r\n")
        let sealed = QueueID.make()
        try await spool.enqueue(id: sealed, envelope: envelope(sealed), message: large())
        await spool.shutdown()

        // One byte of the ciphertext changed, and the file's checksum made to match: only the seal catches it.
        let path = root.appendingPathComponent("queue/\(sealed).msg")
        var bytes = [UInt8](try Data(contentsOf: path))
        let header = try SpoolDirectory.parseHeader(bytes)
        bytes[header.messageStart + 100_000] ^= 1
        let sum = bytes[header.messageStart..<header.messageStart + header.messageLength + header.envelopeLength].withUnsafeBytes { SpoolDirectory.fnv1a64($0) }
        let line = MessageFileWriter.headerLine(messageLength: header.messageLength, checksum: sum, envelopeLength: header.envelopeLength, sealed: true)
        bytes.replaceSubrange(0..<line.count, with: line)
        try Data(bytes).write(to: path)
        XCTAssertThrowsError(try SpoolDirectory(root: root, keys: old).readMessage(id: sealed)) { error in
            guard case .corrupt(let why)? = error as? SpoolDirectory.ReadError else { return XCTFail("\(error)") }
            XCTAssertTrue(why.contains("does not authenticate"), why)
        }
        // Delivery reads it in chunks: the damaged chunk is refused there, and the entry moved aside.
        spool = try Spool(directory: root, logger: logger, keys: try XCTUnwrap(old))
        let maybe = await spool.readForDelivery(id: sealed)
        let read = try XCTUnwrap(maybe, "the stored bytes match their checksum: the entry is read")
        guard case .file(let file) = read.message else { return XCTFail("a large message is read in chunks") }
        do {
            _ = try await spool.read(file, from: 65_536, count: 65_536)
            XCTFail("a changed chunk was returned")
        } catch {
            XCTAssertEqual(error as? SpoolDirectory.ReadError, .corrupt("sealed data is damaged or was changed: chunk 1 does not authenticate"))
        }
        let first = try await spool.read(file, from: 0, count: 10)
        XCTAssertEqual(first.readableBytes, 10, "the chunks before it open")
        file.close()
        await spool.shutdown()
    }
}
