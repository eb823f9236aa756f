import PosternSMTP
import XCTest

/// Inputs the fuzzer (Sources/PosternFuzz) found, kept as regressions.
final class FuzzFindingTests: XCTestCase {
    /// A general address literal took any bytes after its tag, bare CR and control characters included.
    func testGeneralAddressLiteralRefusesSpacesAndControlCharacters() throws {
        for bad in ["<a@[x:\u{1} y]>", "<a@[x:\r]>", "<a@[tag:a b]>", "<a@[tag:\u{0}]>", "<a@[tag:\u{7F}]>"] {
            XCTAssertThrowsError(try AddressParser.parsePath(Substring(bad)), bad.debugDescription)
        }
        let good = try AddressParser.parsePath("<a@[x400:c=gb;a=x]>")
        XCTAssertEqual(good.domain, .literal("x400:c=gb;a=x"))
    }
}
