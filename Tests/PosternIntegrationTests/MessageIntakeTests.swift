import PosternSMTP
import XCTest
@testable import PosternListener

/// `MessageIntake` without a channel: what the framer holds in, what to do with it out.
final class MessageIntakeTests: XCTestCase {
    let limit = HeaderScanner.headerSectionLimit

    func testSmallMessageStaysInMemory() {
        var intake = MessageIntake()
        XCTAssertEqual(intake.inputTaken(stored: 10_000, rejected: false), .none)
        XCTAssertEqual(intake.inputTaken(stored: limit, rejected: false), .none)
        XCTAssertEqual(intake.phase, .inMemory)
    }

    func testLargeMessageIsStreamedInChunksAfterPolicyHasSeenTheHeaderSection() {
        var intake = MessageIntake()
        XCTAssertEqual(intake.inputTaken(stored: limit + 1, rejected: false), .decideOnHeaderSection)
        XCTAssertEqual(intake.headerDecided(accepted: true), .write)
        XCTAssertEqual(intake.phase, .streaming)
        XCTAssertEqual(intake.inputTaken(stored: MessageIntake.chunkSize - 1, rejected: false), .none)
        XCTAssertEqual(intake.inputTaken(stored: MessageIntake.chunkSize, rejected: false), .write)
    }

    func testOversizeWhileStreamingAbortsAndDropsTheRest() {
        var intake = MessageIntake()
        _ = intake.inputTaken(stored: limit + 1, rejected: false)
        _ = intake.headerDecided(accepted: true)
        XCTAssertEqual(intake.inputTaken(stored: 0, rejected: true), .abort)
        XCTAssertEqual(intake.phase, .dropping)
        XCTAssertEqual(intake.inputTaken(stored: 0, rejected: true), .none)
    }

    func testRefusedHeaderSectionDropsWithoutWriting() {
        var intake = MessageIntake()
        _ = intake.inputTaken(stored: limit + 1, rejected: false)
        XCTAssertEqual(intake.headerDecided(accepted: false), .drop)
        XCTAssertEqual(intake.inputTaken(stored: MessageIntake.chunkSize * 2, rejected: false), .drop)
        XCTAssertEqual(intake.writeFailed(), .none, "nothing was written")
    }

    func testFailedWriteAbortsOnce() {
        var intake = MessageIntake()
        _ = intake.inputTaken(stored: limit + 1, rejected: false)
        _ = intake.headerDecided(accepted: true)
        XCTAssertEqual(intake.writeFailed(), .abort)
        XCTAssertEqual(intake.writeFailed(), .none)
        XCTAssertEqual(intake.inputTaken(stored: 5, rejected: false), .drop)
    }
}
