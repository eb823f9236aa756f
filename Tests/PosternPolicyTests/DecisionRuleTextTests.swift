import Foundation
import PosternPolicy
import PosternSMTP
import Testing

/// Accept rules are kept as facts and written on demand; the text must be what the audit log always showed.
@Suite struct DecisionRuleTextTests {
    let policy: PolicySet
    let now = berlinTime("2026-11-24")

    init() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        policy = try fixture.load()
    }

    func device(_ client: String, from: String? = nil, to: String? = nil) -> Decision {
        policy.decide(DecisionInput(endpoint: .device, client: ClientAddress(client), tls: false,
                                    sender: from.map(reverse), recipient: to.map(path), now: now))
    }

    func submission(_ endpoint: PolicyEndpoint = .submission, login: String, addresses: [String] = [], from: String? = nil,
                    to: String? = nil) -> Decision {
        policy.decide(DecisionInput(endpoint: endpoint, clientAddress: "192.0.2.50", tls: true,
                                    identity: SubmitterIdentity(login: login, addresses: addresses),
                                    sender: from.map(reverse), recipient: to.map(path), now: now))
    }

    @Test func deviceAcceptRulesReadAsBefore() {
        // Each date source of the effective sunset: the device's own, its department's, the global one.
        #expect(device("10.1.2.3").rule == "device chem-scanner-1: registered until 2027-03-31 (sunset: department chem 2027-03-31)")
        #expect(device("127.0.0.1").rule == "device demo-scanner: registered until 2027-08-31 (sunset: device demo-scanner 2027-08-31)")
        #expect(device("10.1.2.3", from: "<scan@chem.example.edu>").rule == "device chem-scanner-1: allowed sender scan@chem.example.edu")
        #expect(device("10.1.2.3", from: "<x@lab.chem.example.edu>").rule == "device chem-scanner-1: allowed sender lab.chem.example.edu")
        #expect(device("10.1.2.3", from: "<scan@chem.example.edu>", to: "<a@chem.example.edu>").rule
            == "internal-domains: chem.example.edu matches *.example.edu")
        #expect(device("::ffff:10.1.2.3", from: "<scan@chem.example.edu>", to: "<a@Example.EDU>").rule
            == "internal-domains: example.edu matches example.edu")
    }

    @Test func globalSunsetIsNamedWhenItIsTheEarliest() throws {
        let fixture = try PolicyFixture(policy: PolicyFixture.policyYAML.replacingOccurrences(of: "global: 2027-08-31", with: "global: 2027-02-28"))
        defer { fixture.remove() }
        let p = try fixture.load()
        let d = p.decide(DecisionInput(endpoint: .device, clientAddress: "127.0.0.1", tls: false, now: now))
        #expect(d.rule == "device demo-scanner: registered until 2027-02-28 (sunset: global 2027-02-28)")
    }

    @Test func submissionAcceptRulesReadAsBefore() {
        #expect(submission(.submissions, login: "alice").rule == "submissions: TLS connection")
        #expect(submission(login: "alice", addresses: ["Alice@Example.EDU"], from: "<Alice@example.edu>").rule
            == "sender: Alice@Example.EDU owned by user alice")
        #expect(submission(login: "svc-lists", from: "<>").rule == "service-account svc-lists: null sender allowed")
        #expect(submission(login: "svc-helpdesk", from: "<x@a.example.edu>").rule == "service-account svc-helpdesk: domain *.example.edu")
        #expect(submission(.submissions, login: "svc-helpdesk", from: "<x@a.example.edu>", to: "<y@gmail.com>").rule
            == "submissions: authenticated users may send to any recipient")
    }

    @Test func decisionsCompareByReplyAndRuleText() {
        let lazy = device("10.1.2.3", from: "<scan@chem.example.edu>")
        let spelled = Decision.accept("device chem-scanner-1: allowed sender scan@chem.example.edu")
        #expect(lazy == spelled)
        #expect(lazy.hashValue == spelled.hashValue)
        #expect(lazy != Decision.accept("device chem-scanner-1: allowed sender other@chem.example.edu"))
        var edited = lazy
        edited.rule = "changed"
        #expect(edited.rule == "changed" && edited.isAccepted)
        #expect(lazy.description == "accept [device chem-scanner-1: allowed sender scan@chem.example.edu]")
    }

    @Test func clientAddressIsParsedOnceAndQuotedAsGiven() {
        let client = ClientAddress("::ffff:10.1.2.3")
        #expect(client.ip == IPAddress("10.1.2.3"))
        var input = DecisionInput(endpoint: .device, client: client, tls: false, now: now)
        #expect(input.clientAddress == "::ffff:10.1.2.3")
        input.clientAddress = "10.9.9.9"
        #expect(input.client.ip == IPAddress("10.9.9.9"))
        #expect(policy.decide(input).reply?.description == "554 5.7.1 10.9.9.9 is not a registered device")
        #expect(ClientAddress("unknown").ip == nil)
        #expect(policy.decide(DecisionInput(endpoint: .device, clientAddress: "unknown", tls: false, now: now)).rule
            == "devices: no device registered for unknown")
    }
}
