import Foundation
import NIOCore
import PosternCore
import XCTest
#if canImport(Glibc)
import Glibc
#endif

/// The one durable write: the new file whole, or the old one untouched and no temporary file left.
final class DurableFileTests: XCTestCase {
    var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-durable-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    var target: String { directory.appendingPathComponent("state.json").path }

    func names() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: directory.path).sorted()
    }

    func inode(_ path: String) -> UInt {
        var info = stat()
        return stat(path, &info) == 0 ? UInt(info.st_ino) : 0
    }

    func testWriteReplacesTheFileWithANewOneAndLeavesNoTemporaryFile() throws {
        try DurableFile.write(to: target) { output throws(DurableWriteError) in try output.write(Array("old".utf8)) }
        let before = inode(target)
        try DurableFile.write(to: target) { output throws(DurableWriteError) in
            try output.write(ByteBuffer(string: "new "))
            try output.write(Data("content".utf8))
        }
        XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "new content")
        XCTAssertNotEqual(inode(target), before, "a new file renamed over the old one, not the old one rewritten")
        XCTAssertEqual(try names(), ["state.json"])
        var info = stat()
        XCTAssertEqual(stat(target, &info), 0)
        XCTAssertEqual(info.st_mode & 0o777, 0o600)
    }

    func testAFailingWriteLeavesTheOldFileAndNoTemporaryFile() throws {
        try DurableFile.write(to: target) { output throws(DurableWriteError) in try output.write(Array("old".utf8)) }
        let failure = DurableWriteError(operation: "encode", path: target, code: EIO)
        XCTAssertThrowsError(try DurableFile.write(to: target) { output throws(DurableWriteError) in
            try output.write(Array(repeating: UInt8(ascii: "x"), count: 100_000))
            throw failure
        }) { error in
            XCTAssertEqual(error as? DurableWriteError, failure)
        }
        XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "old")
        XCTAssertEqual(try names(), ["state.json"])
    }

    /// A real write(2) failure: the file size limit (RLIMIT_FSIZE) makes it return EFBIG part way through.
    func testAWriteTheSystemRefusesLeavesTheOldFileAndNoTemporaryFile() throws {
        try DurableFile.write(to: target) { output throws(DurableWriteError) in try output.write(Array("old".utf8)) }
        signal(SIGXFSZ, SIG_IGN)  // else the process is killed instead of the write failing
        var saved = rlimit()
        XCTAssertEqual(getrlimit(Int32(RLIMIT_FSIZE.rawValue), &saved), 0)
        var limited = saved
        limited.rlim_cur = 64 * 1024
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &limited), 0)
        let result = Result { () throws(DurableWriteError) in
            try DurableFile.write(to: target) { output throws(DurableWriteError) in
                try output.write(Array(repeating: UInt8(ascii: "x"), count: 1 << 20))
            }
        }
        XCTAssertEqual(setrlimit(Int32(RLIMIT_FSIZE.rawValue), &saved), 0)
        guard case .failure(let error) = result else { return XCTFail("a 1 MiB write under a 64 KiB file size limit succeeded") }
        XCTAssertEqual(error.operation, "write")
        XCTAssertEqual(error.code, EFBIG)
        XCTAssertFalse(error.isOutOfSpace)
        XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "old")
        XCTAssertEqual(try names(), ["state.json"])
    }

    func testAFailedRenameLeavesNoTemporaryFile() throws {
        // The target is a non-empty directory: rename(2) cannot replace it.
        try FileManager.default.createDirectory(atPath: target + "/inside", withIntermediateDirectories: true)
        XCTAssertThrowsError(try DurableFile.write(to: target) { output throws(DurableWriteError) in try output.write(Array("new".utf8)) }) { error in
            XCTAssertEqual((error as? DurableWriteError)?.operation, "rename")
        }
        XCTAssertEqual(try names(), ["state.json"])
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: target), ["inside"])
    }

    func testAnotherWritersTemporaryFileIsNotTouched() throws {
        let temporary = directory.appendingPathComponent("busy.tmp").path
        try Data("theirs".utf8).write(to: URL(fileURLWithPath: temporary))
        XCTAssertThrowsError(try DurableFile.write(to: target, temporary: temporary) { output throws(DurableWriteError) in
            try output.write(Array("mine".utf8))
        }) { error in
            XCTAssertEqual((error as? DurableWriteError)?.code, EEXIST)
        }
        XCTAssertEqual(try String(contentsOfFile: temporary, encoding: .utf8), "theirs")
        XCTAssertFalse(FileManager.default.fileExists(atPath: target))
    }

    func testAReusedFileIsOverwrittenAndCutToLength() throws {
        let free = directory.appendingPathComponent("free").path
        try Data(repeating: UInt8(ascii: "z"), count: 4096).write(to: URL(fileURLWithPath: free))
        let reused = inode(free)
        try DurableFile.write(to: target, temporary: directory.appendingPathComponent("t").path, reusing: free) { output throws(DurableWriteError) in
            try output.write(Array("short".utf8))
        }
        XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "short")
        XCTAssertEqual(inode(target), reused, "the free file's inode, not a new one")
        XCTAssertEqual(try names(), ["state.json"])

        // A reuse whose file is gone creates a new one.
        try DurableFile.write(to: target, reusing: free) { output throws(DurableWriteError) in try output.write(Array("again".utf8)) }
        XCTAssertEqual(try String(contentsOfFile: target, encoding: .utf8), "again")
    }

    func testAMissingDirectoryIsAnErrorWithThePath() {
        let missing = directory.appendingPathComponent("no/such/dir/file").path
        XCTAssertThrowsError(try DurableFile.write(to: missing) { _ throws(DurableWriteError) in }) { error in
            XCTAssertEqual((error as? DurableWriteError)?.code, ENOENT)
            XCTAssertTrue("\(error)".contains("no/such/dir"), "\(error)")
        }
        XCTAssertThrowsError(try DurableFile.syncDirectory(directory.appendingPathComponent("nope").path))
    }
}
