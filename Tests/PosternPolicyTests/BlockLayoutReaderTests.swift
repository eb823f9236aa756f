import Foundation
@testable import PosternPolicy
import Testing

/// The restricted-layout reader must build libyaml's tree exactly, or give up and leave the text to libyaml.
@Suite struct BlockLayoutReaderTests {
    static let policies = LoaderTests.shippedPolicies

    /// The fast reader's tree, or nil when it gives up.
    static func fast(_ text: String) -> YAMLNode? {
        var text = text
        return text.withUTF8 { BlockLayoutReader.compose($0) }
    }

    static func libyaml(_ text: String) -> Result<YAMLNode?, YAMLSyntaxError> {
        Result { () throws(YAMLSyntaxError) -> YAMLNode? in try YAMLTree.composeWithLibYAML(text) }
    }

    /// A readable form with every value and line, so that two trees compare as text.
    static func dump(_ node: YAMLNode?) -> String {
        guard let node else { return "nil" }
        switch node {
        case .scalar(let s, let line): return "\(line):\(s.debugDescription)"
        case .sequence(let items, let line): return "\(line):[\(items.map { dump($0) }.joined(separator: ", "))]"
        case .mapping(let pairs, let line): return "\(line):{\(pairs.map { "\(dump($0.key)): \(dump($0.value))" }.joined(separator: ", "))}"
        }
    }

    /// Either the fast reader gives up, or libyaml accepts the text and builds the same tree.
    static func expectAgreement(_ text: String, sourceLocation: SourceLocation = #_sourceLocation) {
        guard let fast = fast(text) else { return }
        switch libyaml(text) {
        case .success(let tree):
            #expect(dump(fast) == dump(tree), "\(text.debugDescription)", sourceLocation: sourceLocation)
        case .failure(let error):
            Issue.record("fast reader accepted what libyaml refuses (\(error.line): \(error.problem)): \(text.debugDescription)",
                         sourceLocation: sourceLocation)
        }
    }

    @Test(arguments: [PolicyLoader.devicesFile, PolicyLoader.departmentsFile])
    func shippedFilesTakeTheFastPathAndMatchLibYAML(_ name: String) throws {
        let text = try String(contentsOf: Self.policies.appendingPathComponent(name), encoding: .utf8)
        let fast = try #require(Self.fast(text))
        #expect(Self.dump(fast) == Self.dump(try Self.libyaml(text).get()))
    }

    @Test func fixtureAndGeneratedLayoutsTakeTheFastPath() throws {
        var generated = "devices:\n"
        for i in 0..<50 {
            generated += "  - id: dev-\(i)\n    department: it\n    owner: it-helpdesk@example.edu\n    addresses: [10.0.\(i).1, \"2001:db8::\(i)\"]\n"
            generated += "    senders: [dev\(i)@example.edu]\n    registered: 2026-01-15\n    sunset: 2027-08-31\n"
        }
        let registration = DeviceRegistration(id: "chem-mfp-2", department: "chem", owner: "j.doe@chem.example.edu",
                                              location: "Building B, room \"2.17\" \\ lab", addresses: ["10.1.2.40", "2001:db8:1::40/126"],
                                              senders: ["mfp2@chem.example.edu", "*.chem.example.edu"], maxMessageSize: "10M", maxRate: "60/hour",
                                              note: "asset #4711")
        let rendered = DevicesFileEditor.appending(
            entry: DevicesFileEditor.render(registration, registered: CalendarDate("2026-01-15")!, sunset: CalendarDate("2027-08-31")!),
            to: PolicyFixture.devicesYAML)
        for text in [generated, rendered, PolicyFixture.devicesYAML, PolicyFixture.departmentsYAML,
                     "devices: []\n", "devices:\n- id: a\n  addresses:\n  - 10.0.0.1\n  senders: [a@b.c]\n"] {
            let fast = try #require(Self.fast(text), "\(text)")
            #expect(Self.dump(fast) == Self.dump(try Self.libyaml(text).get()), "\(text)")
        }
    }

    /// Texts the fast reader must leave to libyaml (which may accept them, with a meaning of its own, or refuse them).
    static let outsideTheLayout = [
        "", "# only a comment\n", "devices:\n", "devices:\n  - id: a\n    location: two\n      lines\n",
        "devices:\n  - id: &x a\n", "devices:\n  - id: *x\n", "devices:\n  - id: !tag a\n", "devices:\n\t- id: a\n",
        "devices:\r\n  - id: a\r\n", "devices:\n  - id: 'a'\n", "devices:\n  - id: \"a\\nb\"\n", "devices:\n  - id: \"a\n    b\"\n",
        "devices:\n  - id: a\n    addresses: [10.0.0.1,\n      10.0.0.2]\n", "devices:\n  - id: a b: c\n", "devices:\n  - id: a:\n",
        "devices:\n  - id : a\n", "devices:\n  - {id: a}\n", "devices:\n  - id: a\n    x: |\n      text\n", "---\ndevices: []\n",
        "devices: []\n---\nother: 1\n", "%YAML 1.1\n---\ndevices: []\n", "devices:\n  - id: a\n   department: it\n",
        "devices:\n  - id: a\n     department: it\n", "devices:\n  - id: Gebäude\n", "\u{FEFF}devices: []\n", "devices:\n  - id: a\u{2028}b\n",
        "devices:\n  - id: a\n    addresses: [fe80::]\n", "devices:\n  - id: a\n    addresses: [::1]\n",
        "devices:\n  - id: a\n    addresses: [\"a\" b]\n", "devices:\n  - id: a\n    addresses: [\"a\\x41\"]\n", "devices:\n  - id: a\n    addresses: [a, ]\n", "devices:\n  - id: a\n    addresses: [a]x\n",
        "devices:\n  - id: a\n    addresses: [[a]]\n", "devices:\n  - id: a\n    addresses:\n    - x: y\n", "devices:\n  - id: a\n    note:\n",
        "devices:\n  - id: a\n    note: a#b\n", "devices:\n  -\n", "devices:\n  - # c\n", "devices:\n  - - a\n", "devices:\n  - id: \"a\"b\n",
        "devices:\n  - id: a\n  - [b]\n", "key:value\n", "  devices: []\n", "devices: [] x\n", "devices:\n  - id: a\n    department: -x\n",
        "devices:\n  - id: \u{7F}\n", "devices:\n  - id: a\n  other: b\n", "devices:\n  - id: a\n    " + String(repeating: "k", count: 200) + ": v\n",
    ]

    @Test func textOutsideTheLayoutIsLeftToLibYAML() {
        for text in Self.outsideTheLayout {
            #expect(Self.fast(text) == nil, "\(text.debugDescription)")
        }
    }

    @Test func layoutDetailsMatchLibYAML() {
        let texts = [
            "devices:\n  - id: a   # trailing comment\n    addresses: [ 10.0.0.1 ,10.0.0.2 ]  # c\n    senders: []\n",
            "devices:\n\n  # comment between\n  - id: a\n\n    senders:   [x@y.z]\n    location: Building B, room 1.2 (lab)\n",
            "devices:\n  - id: a\n    addresses: [2001:db8::10, 10.0.0.0/8, \"::ffff:1.2.3.4\" , \"::1\"]\n",
            "devices:\n  - id: a\n    location: nurses' station \"B\"\n    senders: [o'brien@x.y]\n",
            "devices:\n  - id: a\n    note: \"with \\\"quotes\\\" and \\\\ and # and : \"  # c\n    location: \"\"\n",
            "devices:\n  -   id: a\n      department: it\n",
            "devices:\n  - id: a\n    senders:\n      - x@y.z\n      - \"*.y.z\"\n    sunset: 2027-01-01\n  - id: b\n",
            "devices:\n- id: a\n  senders:\n  - x@y.z\nother: 1\n",
            "a: 1\nb: x:y\nc: 12:30\nd: a!b&c*d|e>f%g@h`i?j,k\n", "devices: [a b, c]\n", "k: v\nk: w\n",
            "devices:\n  - id: a\n    k-1_x.y: v\n", "devices:\n  - a\n  - \"b\"\n  - c d\n",
        ]
        for text in texts {
            #expect(Self.fast(text) != nil, "\(text.debugDescription)")
            Self.expectAgreement(text)
        }
    }

    /// Random edits of real files, weighted to YAML's significant characters: the fast reader gives up or agrees.
    @Test func editedFilesAgreeWithLibYAML() throws {
        let base = [try String(contentsOf: Self.policies.appendingPathComponent(PolicyLoader.devicesFile), encoding: .utf8),
                    PolicyFixture.devicesYAML, PolicyFixture.departmentsYAML]
        let alphabet = Array(" \n-:#[],\"'\\&*!|>{}?%@`.\tab01x\r")
        var state: UInt64 = 0x9E3779B97F4A7C15
        func next(_ n: Int) -> Int {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Int((state >> 33) % UInt64(n))
        }
        var accepted = 0
        for round in 0..<3000 {
            var chars = Array(base[round % base.count])
            for _ in 0...next(3) {
                let at = next(chars.count)
                switch next(4) {
                case 0: chars.remove(at: at)
                case 1: chars.insert(alphabet[next(alphabet.count)], at: at)
                case 2: chars[at] = alphabet[next(alphabet.count)]
                default: chars.insert(contentsOf: Array(repeating: " ", count: 1 + next(3)), at: at)
                }
            }
            let text = String(chars)
            if Self.fast(text) != nil { accepted += 1 }
            Self.expectAgreement(text)
        }
        // The edits must leave enough texts inside the layout for the comparison to mean something.
        #expect(accepted > 300, "only \(accepted) edited texts took the fast path")
    }

    @Test func loaderReportsTheSameIssuesWithoutTheFastPath() throws {
        // An entry the fast reader takes, with errors the loader must still report at their lines.
        let devices = PolicyFixture.devicesYAML + "\n  - id: bad\n    department: nowhere\n    owner: nobody\n    addresses: [10.9.9.300]\n" +
            "    senders: []\n    registered: 2026-13-01\n    sunset: 2027-01-01\n"
        #expect(Self.fast(devices) != nil)
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        let viaFast = fixture.errors().map { "\($0.line): \($0.message) (fix: \($0.fix))" }
        #expect(viaFast.count >= 5, "\(viaFast)")
        // The same text with a comment made of a non-ASCII character is outside the layout: libyaml reads it.
        let slow = try PolicyFixture(devices: "# Geräte\n" + devices.replacingOccurrences(of: "# keep this comment\n", with: ""))
        defer { slow.remove() }
        #expect(Self.fast("# Geräte\n" + devices) == nil)
        #expect(slow.errors().map { "\($0.line): \($0.message) (fix: \($0.fix))" } == viaFast)
    }
}
