import PosternCore
import Testing
import Yams

/// One size vocabulary for postern.yaml and the policy files.
struct ByteSizeTests {
    static let forms: [(String, Int)] = [
        ("26214400", 26_214_400), ("0", 0), ("512K", 512 * 1024), ("512k", 512 * 1024), ("25M", 25 << 20), ("25m", 25 << 20),
        ("1G", 1 << 30), ("25MB", 25 << 20), ("25MiB", 25 << 20), ("25mib", 25 << 20), ("512KB", 512 << 10), ("26_214_400", 26_214_400),
        ("9223372036854775807", Int.max), ("8589934591G", 8_589_934_591 << 30),
    ]

    @Test(arguments: forms)
    func everyFormIsRead(text: String, bytes: Int) {
        #expect(ByteSize.parse(text) == bytes, "\(text)")
    }

    static let notSizes: [String] = [
        "", "M", "KB", "25 M", " 25M", "-5M", "+5M", "1.5M", "25X", "25B", "25T", "_25", "25_", "2__5", "0x10", "٣M",
        // Beyond Int, as digits or once multiplied: an error to report, never a trap.
        "99999999999999999999G", "99999999999999999999", "9223372036854775808", "8589934592G", "9999999999999999M",
    ]

    @Test(arguments: notSizes)
    func anythingElseIsNoSize(text: String) {
        #expect(ByteSize.parse(text) == nil, "\(text)")
    }

    @Test func sizesAreWrittenInTheShortestForm() {
        #expect(ByteSize.describe(25 << 20) == "25M")
        #expect(ByteSize.describe(1 << 30) == "1G")
        #expect(ByteSize.describe(1024) == "1K")
        #expect(ByteSize.describe(1000) == "1000")
        #expect(ByteSize.describe(0) == "0")
    }

    @Test func theReaderReportsABadSizeWithItsLineAndTheForms() throws {
        var reader = ConfigReader(file: "postern.yaml")
        let root = reader.document("limits:\n  a: 25M\n  b: 99999999999999999999G\n  c: 512\n  d: [1]\n")
        let limits = try #require(root?.mapping?["limits"]?.mapping)
        #expect(reader.size(limits["a"], "a", range: 1024...(1 << 30)) == 25 << 20)
        #expect(reader.size(limits["b"], "b", range: 1024...(1 << 30)) == nil)
        #expect(reader.size(limits["c"], "c", range: 1024...(1 << 30)) == nil)
        #expect(reader.size(limits["d"], "d", range: 1024...(1 << 30)) == nil)
        #expect(reader.issues.map(\.description) == [
            "postern.yaml:3: b must be a size, not '99999999999999999999G' (fix: write bytes, or a whole number with K, M or G, e.g. 25M, from 1K to 1G)",
            "postern.yaml:4: c must be from 1K to 1G, not 512 (fix: write a size from 1K to 1G)",
            "postern.yaml:5: d must be a size, not 'a list or mapping' (fix: write bytes, or a whole number with K, M or G, e.g. 25M, from 1K to 1G)",
        ])
    }
}
