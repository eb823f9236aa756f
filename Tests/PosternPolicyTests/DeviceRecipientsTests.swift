import Foundation
import PosternPolicy
import PosternSMTP
import Testing

/// A device's `recipients:` rule narrows the internal recipients it may send to, refused at RCPT with
/// `550 5.7.1` naming the rule; without one, any internal recipient is accepted as before.
@Suite struct DeviceRecipientsTests {
    let policy: PolicySet
    let now = berlinTime("2026-11-24")

    init() throws {
        var devices = PolicyFixture.deviceFiles
        devices["chem/chem-scanner-1.yaml"] = devices["chem/chem-scanner-1.yaml"]?
            .replacingOccurrences(of: "max-message-size: 10M", with: "recipients: [owner, \"*@lab.chem.example.edu\", Bob@Example.EDU]")
        let fixture = try PolicyFixture(devices: devices)
        defer { fixture.remove() }
        policy = try fixture.load()
    }

    func decide(_ client: String, to: String) -> Decision {
        policy.decide(DecisionInput(endpoint: .device, clientAddress: client, tls: false,
                                    sender: reverse("<scan@chem.example.edu>"), recipient: path(to), now: now))
    }

    @Test(arguments: [
        ("<j.doe@chem.example.edu>", "device chem-scanner-1: recipients: owner (j.doe@chem.example.edu)"),
        ("<J.Doe@CHEM.example.edu>", "device chem-scanner-1: recipients: owner (j.doe@chem.example.edu)"),
        ("<anyone@lab.chem.example.edu>", "device chem-scanner-1: recipients: *@lab.chem.example.edu"),
        ("<bob@example.edu>", "device chem-scanner-1: recipients: bob@example.edu"),
    ])
    func recipientsTheRuleNamesAreAccepted(_ recipient: String, _ rule: String) {
        let decision = decide("10.1.2.3", to: recipient)
        #expect(decision.reply == nil, "\(decision)")
        #expect(decision.rule == rule)
    }

    @Test(arguments: ["<carol@example.edu>", "<x@sub.lab.chem.example.edu>", "<j.doe@lab.chem.example.edu.evil>", "<\"j.doe\"@example.edu>"])
    func otherInternalRecipientsAreRefusedNamingTheRule(_ recipient: String) {
        let decision = decide("10.1.2.3", to: recipient)
        let mailbox = path(recipient)
        if policy.isInternal(mailbox) {
            #expect(decision.reply?.description == "550 5.7.1 <\(mailbox)>: device chem-scanner-1 may send only to j.doe@chem.example.edu (owner), *@lab.chem.example.edu, bob@example.edu (its recipients rule)")
            #expect(decision.rule.hasPrefix("device chem-scanner-1: recipients j.doe@chem.example.edu (owner), *@lab.chem.example.edu, bob@example.edu do not include"))
        } else {
            #expect(decision.reply?.description.hasPrefix("550 5.7.1 <\(mailbox)>: this endpoint accepts internal recipients only") == true,
                    "an external recipient stays refused as external: \(decision)")
        }
    }

    @Test func aDeviceWithoutTheRuleSendsToAnyInternalRecipient() {
        let decision = policy.decide(DecisionInput(endpoint: .device, clientAddress: "127.0.0.1", tls: false,
                                                   sender: reverse("<scanner@example.edu>"), recipient: path("<carol@chem.example.edu>"), now: now))
        #expect(decision.reply == nil)
        #expect(decision.rule == "internal-domains: chem.example.edu matches *.example.edu")
    }

    @Test func rulesAreWrittenAndReadInEveryForm() {
        #expect(RecipientPattern("owner") == .owner)
        #expect(RecipientPattern("OWNER") == .owner)
        #expect(RecipientPattern("*@chem.example.edu")?.description == "*@chem.example.edu")
        #expect(RecipientPattern("@chem.example.edu")?.description == "*@chem.example.edu")
        #expect(RecipientPattern("chem.example.edu")?.description == "*@chem.example.edu")
        #expect(RecipientPattern("*.chem.example.edu")?.description == "*@*.chem.example.edu")
        #expect(RecipientPattern("Bob@Example.EDU")?.description == "bob@example.edu")
        for bad in ["", "bob@", "@", "*@", "*@*@x.edu", "a b@x.edu", "\"q\"@x.edu", "x@[10.0.0.1]", "owner@"] {
            #expect(RecipientPattern(bad) == nil, "\(bad)")
        }
    }
}
