import XCTest

/// Basics a postmaster expects of the `postern` command itself, with the real binary.
final class CLIBasicsTests: XCTestCase {
    func testVersionIsPrinted() throws {
        let result = try Shell.run([Repo.posternBinary.path, "--version"])
        XCTAssertEqual(result.status, 0, result.output)
        XCTAssertNotNil(result.output.range(of: #"^\d+\.\d+\.\d+\n$"#, options: .regularExpression), result.output)
    }
}
