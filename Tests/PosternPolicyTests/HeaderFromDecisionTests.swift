import Foundation
import PosternPolicy
import PosternSMTP
import Testing

/// The header From policy as a pure decision, and the device field rules.
@Suite struct HeaderFromDecisionTests {
    let policy: PolicySet
    let now = berlinTime("2026-11-24")
    let alice = SubmitterIdentity(login: "alice", addresses: ["alice@example.edu", "a.smith@example.edu"])

    init() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        policy = try fixture.load()
    }

    func decide(_ header: String, endpoint: PolicyEndpoint = .submission, client: String = "192.0.2.50", identity: SubmitterIdentity? = nil,
                from: String = "<alice@example.edu>", policy: PolicySet? = nil) -> HeaderFromDecision {
        let input = DecisionInput(endpoint: endpoint, clientAddress: client, tls: endpoint != .device,
                                  identity: endpoint == .device ? nil : (identity ?? alice), sender: reverse(from), now: now)
        return (policy ?? self.policy).decideHeaderFrom(input, originators: OriginatorParser.parse(Array((header + "\r\nbody\r\n").utf8)))
    }

    @Test(arguments: ["From: alice@example.edu\r\n", "From: Alice <a.smith@EXAMPLE.edu>\r\nSender: alice@example.edu\r\n",
                      "From: \"alice@example.edu\" <alice@example.edu>\r\n"])
    func ownAddressesAreAccepted(_ header: String) {
        let d = decide(header)
        #expect(d.decision.isAccepted, "\(d)")
        #expect(d.addedField == nil)
        #expect(d.decision.rule.hasPrefix("header-from: From: "))
    }

    @Test(arguments: [
        ("From: president@example.edu\r\n", "550 5.7.1 From: header address <president@example.edu> is not one you may send as"),
        ("From: alice@example.edu\r\nSender: hr@example.edu\r\n", "550 5.7.1 Sender: header address <hr@example.edu> is not one you may send as"),
        ("From: \"President <president@example.edu>\" <alice@example.edu>\r\n",
         "550 5.7.1 From: header display name shows the address <president@example.edu>, which is not one you may send as"),
        ("From: Alice <alice@example.edu\r\n", "550 5.7.1 From: header cannot be parsed (no > after the address)"),
        ("X\r\n", "550 5.7.1 From: header cannot be checked: header line 1 is neither a field nor a continuation"),
    ])
    func othersAreRefusedNamingTheHeader(_ header: String, _ reply: String) {
        #expect(decide(header).decision.reply?.description == reply)
    }

    @Test func aMissingFromIsTheEnvelopeSendersAndRefusedWithTheNullSender() {
        let added = decide("Subject: cron\r\n")
        #expect(added.decision.isAccepted)
        #expect(added.addedField == "From: alice@example.edu\r\n")
        let lists = SubmitterIdentity(login: "svc-lists", addresses: [])
        let bounce = decide("Subject: bounce\r\n", identity: lists, from: "<>")
        #expect(bounce.decision.reply?.description == "550 5.7.1 Message has no From: header")
        #expect(decide("From: owner@lists.example.edu\r\n", identity: lists, from: "<>").decision.isAccepted, "a service account's domain")
    }

    @Test func devicesAreHeldToTheirAllowedSenders() {
        #expect(decide("From: Scanner <scanner@example.edu>\r\n", endpoint: .device, client: "127.0.0.1", from: "<scanner@example.edu>").decision.isAccepted)
        let chem = decide("From: anyone@lab.chem.example.edu\r\n", endpoint: .device, client: "10.1.2.3", from: "<scan@chem.example.edu>")
        #expect(chem.decision.isAccepted, "a domain sender covers any address in it")
        let d = decide("From: president@example.edu\r\n", endpoint: .device, client: "127.0.0.1", from: "<scanner@example.edu>")
        #expect(d.decision.rule == "header-from: From: president@example.edu refused (device demo-scanner: sender not in allowed senders)")
    }

    @Test func warnAcceptsAndOffDoesNotLook() throws {
        let text = PolicyFixture.policyYAML
            .replacingOccurrences(of: "submission: {enabled: true, max-message-size: 50M}", with: "submission: {enabled: true, max-message-size: 50M, header-from: warn}")
            .replacingOccurrences(of: "submissions: {enabled: true}", with: "submissions: {enabled: true, header-from: off}")
        let fixture = try PolicyFixture(policy: text)
        defer { fixture.remove() }
        let modes = try fixture.load()
        let warned = decide("From: president@example.edu\r\n", policy: modes)
        #expect(warned.decision.isAccepted)
        #expect(warned.decision.rule.hasPrefix("header-from (warn, not enforced): header-from: From: president@example.edu refused"))
        let unchanged = decide("Subject: x\r\n", policy: modes)
        #expect(unchanged.addedField == nil, "warn leaves the message as it came")
        let off = decide("garbage\r\n", endpoint: .submissions, policy: modes)
        #expect(off.decision.isAccepted)
        #expect(modes.headerFromMode(.device) == .enforce)
        let bad = try PolicyFixture(policy: PolicyFixture.policyYAML.replacingOccurrences(of: "submissions: {enabled: true}", with: "submissions: {header-from: strict}"))
        defer { bad.remove() }
        #expect(bad.errors().map(\.message) == ["'strict' is not a header-from mode"])
    }

    @Test func serviceAccountLoginsCompareWithoutCase() throws {
        let text = PolicyFixture.policyYAML.replacingOccurrences(of: "login: svc-helpdesk", with: "login: SVC-Helpdesk")
        let fixture = try PolicyFixture(policy: text)
        defer { fixture.remove() }
        let d = try fixture.load().decide(DecisionInput(endpoint: .submission, clientAddress: "192.0.2.1", tls: true,
                                                        identity: SubmitterIdentity(login: "svc-helpdesk", addresses: []),
                                                        sender: reverse("<x@example.edu>"), now: now))
        #expect(d.isAccepted, "\(d)")
    }
}

@Suite struct DeviceFieldRulesTests {
    let internalDomains = ["example.edu", "*.example.edu"].compactMap(DomainPattern.init)

    func department(_ domains: [String]) -> Department {
        Department(id: "chem", name: "Chemistry", contact: nil, sunset: nil, domains: domains.compactMap(DomainPattern.init))
    }

    @Test func sendersLieInTheDepartmentsDomainsOrTheInternalOnes() throws {
        let chem = department(["chem.example.edu", "*.chem.example.edu"])
        for ok in ["scan@chem.example.edu", "x@lab.chem.example.edu", "chem.example.edu", "*.chem.example.edu", "*.lab.chem.example.edu"] {
            #expect(DeviceFieldRules.senderProblem(try #require(SenderPattern(ok)), department: chem, internalDomains: internalDomains) == nil, "\(ok)")
        }
        for bad in ["dean@med.example.edu", "scan@example.edu", "payroll@gmail.com", "*.example.edu", "example.edu"] {
            #expect(DeviceFieldRules.senderProblem(try #require(SenderPattern(bad)), department: chem, internalDomains: internalDomains) != nil, "\(bad)")
        }
        let it = department([])
        #expect(DeviceFieldRules.senderProblem(try #require(SenderPattern("dean@chem.example.edu")), department: it, internalDomains: internalDomains) == nil)
        #expect(DeviceFieldRules.isOutsideOwnDomains(try #require(SenderPattern("dean@chem.example.edu")), department: it))
        #expect(!DeviceFieldRules.isOutsideOwnDomains(try #require(SenderPattern("dean@chem.example.edu")), department: chem))
        #expect(DeviceFieldRules.senderProblem(try #require(SenderPattern("payroll@gmail.com")), department: it, internalDomains: internalDomains)
                == "sender payroll@gmail.com is outside the internal domains (example.edu, *.example.edu)")
    }

    @Test func contactsAreInternalAndFreeTextIsPlain() {
        #expect(DeviceFieldRules.contactProblem("j.doe@chem.example.edu", internalDomains: internalDomains) == nil)
        #expect(DeviceFieldRules.contactProblem("x@gmail.com", internalDomains: internalDomains) != nil)
        #expect(DeviceFieldRules.contactProblem("not an address", internalDomains: internalDomains) != nil)
        #expect(DeviceFieldRules.freeTextProblem("Building B, room 2.041 – Müller's lab") == nil)
        for bad in ["a\u{0}b", "a\tb", "a\nb", "a\u{7F}", "a\u{85}b", "a\u{9B}", "a\u{2028}b", "a\u{2029}b", "\u{202E}abc", "\u{2066}x\u{2069}", "\u{200F}x", "\u{061C}"] {
            #expect(DeviceFieldRules.freeTextProblem(bad) != nil, "\(bad.debugDescription)")
        }
        #expect(DeviceFieldRules.freeTextProblem("line one\r\nline two", allowLineBreaks: true) == nil)
        #expect(DeviceFieldRules.freeTextProblem("line one\u{2028}line two", allowLineBreaks: true) != nil)
    }
}
