import Foundation
import PosternPolicy
import PosternSMTP
import Testing

@Suite struct SubmissionDecisionTests {
    let policy: PolicySet
    let now = berlinTime("2026-11-24")
    let alice = SubmitterIdentity(login: "alice", addresses: ["Alice.Smith@Example.EDU", "alice@chem.example.edu"], groups: ["staff"])

    init() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        policy = try fixture.load()
    }

    func decide(_ endpoint: PolicyEndpoint = .submission, tls: Bool = true, identity: SubmitterIdentity?, from: String?,
                to: String? = nil) -> Decision {
        policy.decide(DecisionInput(endpoint: endpoint, clientAddress: "192.0.2.50", tls: tls, identity: identity,
                                    sender: from.map(reverse), recipient: to.map(path), now: now))
    }

    @Test(arguments: [PolicyEndpoint.submission, .submissions])
    func ownAddressIsAcceptedWithDomainComparedCaseInsensitively(_ endpoint: PolicyEndpoint) {
        let d = decide(endpoint, identity: alice, from: "<Alice.Smith@example.edu>")
        #expect(d.isAccepted, "\(d)")
        #expect(d.rule == "sender: Alice.Smith@Example.EDU owned by user alice")
        #expect(decide(endpoint, identity: alice, from: "<alice@CHEM.example.edu>").isAccepted)
    }

    @Test(arguments: ["<alice.smith@example.edu>", "<bob@example.edu>", "<alice@example.edu>", "<Alice.Smith@gmail.com>",
                      "<@example.edu:Alice.Smith@example.edu>", "<Alice.Smith@[192.0.2.1]>"])
    func senderNotOwnedIsRefused(_ sender: String) {
        let d = decide(identity: alice, from: sender)
        #expect(d.reply?.description == "553 5.7.1 Sender address not owned by user", "\(sender): \(d)")
        #expect(d.rule == "sender: not an address of user alice")
    }

    @Test func nullSenderIsRefusedForUsers() {
        let d = decide(identity: alice, from: "<>")
        #expect(d.reply?.code == 553)
        #expect(d.reply?.enhancedStatus == "5.7.1")
    }

    @Test func serviceAccountMaySendAsAnyAddressOfItsDomains() {
        let svc = SubmitterIdentity(login: "svc-helpdesk", addresses: ["helpdesk@example.edu"], groups: [])
        #expect(decide(identity: svc, from: "<helpdesk@example.edu>").isAccepted)
        let d = decide(identity: svc, from: "<Prof.X@Physics.Example.edu>")
        #expect(d.isAccepted, "\(d)")
        #expect(d.rule == "service-account svc-helpdesk: domain *.example.edu")
        #expect(decide(identity: svc, from: "<x@gmail.com>").reply?.description == "553 5.7.1 Sender address not owned by user")
        #expect(decide(identity: svc, from: "<x%gmail.com@example.edu>").reply?.code == 553)
        #expect(decide(identity: svc, from: "<>").reply?.code == 553)
    }

    @Test func serviceAccountWithNullSenderMaySendBounces() {
        let lists = SubmitterIdentity(login: "svc-lists", addresses: [], groups: [])
        #expect(decide(identity: lists, from: "<>").isAccepted)
        #expect(decide(identity: lists, from: "<owner-physics@lists.example.edu>").isAccepted)
        #expect(!decide(identity: lists, from: "<x@example.edu>").isAccepted)
    }

    @Test func anyRecipientIsAcceptedForAnAuthenticatedUser() {
        for rcpt in ["<x@gmail.com>", "<y@example.edu>", "<z@[192.0.2.7]>"] {
            let d = decide(identity: alice, from: "<alice@chem.example.edu>", to: rcpt)
            #expect(d.isAccepted, "\(rcpt): \(d)")
        }
        // The sender is re-judged at RCPT too.
        #expect(decide(identity: alice, from: "<bob@example.edu>", to: "<x@gmail.com>").reply?.code == 553)
    }

    @Test func withoutTLSTheSubmissionEndpointsRefuse() {
        let d = decide(tls: false, identity: alice, from: "<alice@chem.example.edu>")
        #expect(d.reply == .mustStartTLS)
    }

    @Test func withoutIdentityMailIsRefused() {
        #expect(decide(identity: nil, from: nil).isAccepted)  // the connection itself is fine
        #expect(decide(identity: nil, from: "<alice@chem.example.edu>").reply?.description == "530 5.7.0 Authentication required")
    }
}
