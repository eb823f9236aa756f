import PosternCore
import Testing
import Yams

/// The config reader's checks: unknown keys with "did you mean", twice-given keys, types, every issue with line and fix.
struct ConfigReaderTests {
    @Test func anUnknownKeyNamesTheNearestKnownOne() throws {
        var reader = ConfigReader(file: "postern.yaml")
        let root = reader.document("hostname: x\nlistners: []\nzzzzzz: 1\n")
        let map = reader.mapping(root, known: ["hostname", "listeners", "limits"], context: "top level")
        #expect(map.keys.sorted() == ["hostname"])
        #expect(reader.issues.map(\.description) == [
            "postern.yaml:2: top level: unknown key 'listners' (fix: did you mean 'listeners'? known keys: hostname, limits, listeners)",
            "postern.yaml:3: top level: unknown key 'zzzzzz' (fix: known keys: hostname, limits, listeners)",
        ])
    }

    @Test func suggestionsAreOnlyForTypos() {
        #expect(Suggestions.closest("locaton", in: ["location", "owner"]) == "location")
        #expect(Suggestions.closest("INTERNAL-DOMAIN", in: ["internal-domains"]) == "internal-domains")
        #expect(Suggestions.closest("colour", in: ["location", "owner"]) == nil)
        #expect(Suggestions.closest("x", in: [String]()) == nil)
    }

    @Test func wrongTypesAndDuplicatesEachGetAnIssueWithAFix() throws {
        var reader = ConfigReader(file: "f.yaml")
        let root = reader.document("a: [1]\nb: maybe\nc: 70000\nd: x\nd: y\ne: nope\n")
        // Yams refuses a mapping with a key twice; the reader reports it at its line.
        #expect(root == nil)
        #expect(reader.issues.count == 1)
        #expect(reader.issues.first?.message.contains("not valid YAML") == true)

        var second = ConfigReader(file: "f.yaml")
        let map = second.mapping(second.document("a: [1]\nb: maybe\nc: 70000\ne: nope\n"), known: ["a", "b", "c", "e"], context: "top")
        #expect(second.string(map["a"], "a") == nil)
        #expect(second.bool(map["b"], "b") == nil)
        #expect(second.int(map["c"], "c", range: 1...65535) == nil)
        #expect(second.listenAddress(map["e"], "e", example: "127.0.0.1:25") == nil)
        #expect(second.issues.map(\.line) == [1, 2, 3, 4])
        #expect(second.issues.allSatisfy { !$0.fix.isEmpty })
    }

    @Test func listenAddressesTakeIPv4IPv6AndNames() {
        #expect(ConfigReader.hostPort("127.0.0.1:25")! == ("127.0.0.1", 25))
        #expect(ConfigReader.hostPort("[::1]:587")! == ("::1", 587))
        #expect(ConfigReader.hostPort("localhost:0")! == ("localhost", 0))
        for bad in ["127.0.0.1", ":25", "[::1]25", "host:65536", "host:-1", "host:x"] {
            #expect(ConfigReader.hostPort(bad) == nil, "\(bad)")
        }
    }

    @Test func issuesSortByFileThenLine() {
        let errors = ConfigErrors(sorting: [ConfigIssue(file: "b", line: 1, message: "m", fix: "f"), ConfigIssue(file: "a", line: 9, message: "m", fix: "f"),
                                            ConfigIssue(file: "a", line: 2, message: "m", fix: "f")])
        #expect(errors.issues.map { "\($0.file):\($0.line)" } == ["a:2", "a:9", "b:1"])
        #expect(errors.issues[0].warningDescription == "a:2: warning: m (fix: f)")
    }
}
