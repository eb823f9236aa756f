import Foundation
import Logging
import NIOCore
import PosternCore
import PosternSpool
import XCTest

/// `postern queue` on an encrypted spool (#18), with the real binary: with the gateway's configuration (and so its
/// key file) it lists and shows as on a spool in the clear; with the spool alone, or with a key file that is not
/// private, it says the entries are encrypted and reveals nothing of them; `postern config` and `check` show it.
final class EncryptedQueueToolTests: XCTestCase {
    var work: URL!
    var config: URL { work.appendingPathComponent("postern.yaml") }
    var keyFile: URL { work.appendingPathComponent("spool-keys") }

    override func setUp() async throws {
        try Repo.ensureCertificates()
        work = FileManager.default.temporaryDirectory.appendingPathComponent("postern-sealedqueue-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: work, withIntermediateDirectories: true)
        try "# rotate: put a new key first\n2026-12 \(Data(repeating: 42, count: 32).base64EncodedString())\n".write(to: keyFile, atomically: true, encoding: .utf8)
        chmod(keyFile.path, 0o600)
        let certs = Repo.certs.path
        try """
            hostname: queue.test
            policies: \(Repo.policies.path)
            listeners:
              - { name: device, kind: device, listen: "127.0.0.1:1" }
            delivery:
              spool: { directory: spool, encrypt: { key-file: spool-keys } }
              relay:
                upstreams:
                  - { name: hub, host: 127.0.0.1, port: 9, tls: starttls, server-name: localhost, ca-file: \(certs)/ca.pem, certificate: \(certs)/client.pem, key: \(certs)/client.key }
            audit: { output: audit.jsonl }
            """.write(to: config, atomically: true, encoding: .utf8)
    }

    override func tearDown() {
        try? FileManager.default.removeItem(at: work)
    }

    func queue(_ arguments: [String]) throws -> Shell.Result {
        try Shell.run([Repo.posternBinary.path, "queue"] + arguments)
    }

    func testTheQueueToolOpensEntriesOnlyWithTheKey() async throws {
        let keys = try SpoolKeyRing(contentsOfFile: keyFile.path)
        let spool = try Spool(directory: work.appendingPathComponent("spool"), logger: Logger(label: "test"), keys: keys)
        let id = QueueID.make()
        let envelope = SpoolEnvelope(sender: "hr-scanner@example.edu", recipients: ["employee@example.edu"], receivedAt: Date().addingTimeInterval(-60),
                                     clientAddress: "127.0.0.1", listener: "device", messageID: "<payslip@test>")
        try await spool.enqueue(id: id, envelope: envelope, message: ByteBuffer(string: "Subject: Payslip November\r\n\r\nsalary\r\n"))
        await spool.shutdown()

        let list = try queue(["list", "--config", config.path])
        XCTAssertEqual(list.status, 0, list.output)
        XCTAssertTrue(list.output.contains("hr-scanner@example.edu"), list.output)
        XCTAssertTrue(list.output.contains("    -> employee@example.edu"), list.output)
        let show = try queue(["show", id, "--config", config.path])
        XCTAssertEqual(show.status, 0, show.output)
        XCTAssertTrue(show.output.contains("Subject: Payslip November"), show.output)

        // The spool alone: no key, nothing revealed.
        let bare = try queue(["list", "--spool", work.appendingPathComponent("spool").path])
        XCTAssertEqual(bare.status, 0, bare.output)
        XCTAssertTrue(bare.output.contains("\(id)  (encrypted, and cannot be opened here: the file is encrypted and spool encryption is not configured"), bare.output)
        XCTAssertFalse(bare.output.contains("hr-scanner") || bare.output.contains("employee"), bare.output)
        let bareShow = try queue(["show", id, "--spool", work.appendingPathComponent("spool").path])
        XCTAssertNotEqual(bareShow.status, 0, bareShow.output)
        XCTAssertTrue(bareShow.output.contains("is encrypted and cannot be opened here"), bareShow.output)
        XCTAssertFalse(bareShow.output.contains("Payslip"), bareShow.output)

        // A key file others may read is refused, by the queue tool and by check, with the fix.
        chmod(keyFile.path, 0o644)
        let open = try queue(["show", id, "--config", config.path])
        XCTAssertNotEqual(open.status, 0, open.output)
        XCTAssertTrue(open.output.contains("may be read by group or others (mode 644); chmod 600 it"), open.output)
        let check = try Shell.run([Repo.posternBinary.path, "check", "--config", config.path])
        XCTAssertEqual(check.status, 2, check.output)
        XCTAssertTrue(check.output.contains("postern.yaml:6: error: spool key file: \(keyFile.path) may be read by group or others"), check.output)
        chmod(keyFile.path, 0o600)

        let effective = try Shell.run([Repo.posternBinary.path, "config", "--config", config.path, "delivery.spool"])
        XCTAssertEqual(effective.output, "delivery.spool.directory = \(work.path)/spool\ndelivery.spool.encrypt.key-file = \(keyFile.path)\n")
    }
}
