import Foundation
import PosternPolicy
import PosternSMTP
import Testing

@Suite struct DeviceDecisionTests {
    let policy: PolicySet
    let now = berlinTime("2026-11-24")

    init() throws {
        let fixture = try PolicyFixture()
        defer { fixture.remove() }
        policy = try fixture.load()
    }

    func decide(_ client: String, from: String? = nil, to: String? = nil, at: Date? = nil) -> Decision {
        policy.decide(DecisionInput(endpoint: .device, clientAddress: client, tls: false,
                                    sender: from.map(reverse), recipient: to.map(path), now: at ?? now))
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var name: String
        var client: String
        var from: String?
        var to: String?
        /// `nil`: accepted.
        var reply: String?
        var rule: String

        var testDescription: String { name }
    }

    static let cases: [Case] = [
        Case(name: "registered device, connection", client: "127.0.0.1", reply: nil,
             rule: "device demo-scanner: registered until 2027-08-31"),
        Case(name: "IPv4-mapped IPv6 is the IPv4 device", client: "::ffff:127.0.0.1", from: "<scanner@example.edu>", reply: nil,
             rule: "device demo-scanner: allowed sender scanner@example.edu"),
        Case(name: "unknown address", client: "127.0.0.2", reply: "554 5.7.1 127.0.0.2 is not a registered device",
             rule: "devices: no device registered for 127.0.0.2"),
        Case(name: "unknown address at MAIL re-checks the connection", client: "127.0.0.2", from: "<scanner@example.edu>",
             reply: "554 5.7.1 127.0.0.2 is not a registered device", rule: "devices: no device registered"),
        Case(name: "unknown IPv6 address", client: "2001:db8:2::41", reply: "554 5.7.1 2001:db8:2::41 is not a registered device",
             rule: "devices:"),
        Case(name: "IPv6 device", client: "2001:db8:2::40", from: "<plot@lab.phys.example.edu>", to: "<a@example.edu>",
             reply: "554 5.7.1 Device phys-plotter registration expired on 2026-06-30; use TLS submission on port 587",
             rule: "sunset: device phys-plotter 2026-06-30"),
        Case(name: "address inside a CIDR block", client: "10.2.0.77", reply: "554 5.7.1 Device phys-plotter registration expired on 2026-06-30; use TLS submission on port 587",
             rule: "sunset: device phys-plotter"),
        Case(name: "allowed sender address", client: "10.1.2.3", from: "<scan@chem.example.edu>", reply: nil,
             rule: "device chem-scanner-1: allowed sender scan@chem.example.edu"),
        Case(name: "sender domain compared case-insensitively", client: "10.1.2.3", from: "<scan@CHEM.Example.EDU>", reply: nil,
             rule: "allowed sender scan@chem.example.edu"),
        Case(name: "sender local part compared exactly", client: "10.1.2.3", from: "<Scan@chem.example.edu>",
             reply: "553 5.7.1 Sender <Scan@chem.example.edu> is not allowed for device chem-scanner-1",
             rule: "device chem-scanner-1: sender not in allowed senders"),
        Case(name: "allowed sender domain", client: "10.1.2.3", from: "<anyone@lab.chem.example.edu>", reply: nil,
             rule: "allowed sender lab.chem.example.edu"),
        Case(name: "sender domain rule is exact, not subdomains", client: "10.1.2.3", from: "<x@sub.lab.chem.example.edu>",
             reply: "553 5.7.1 Sender <x@sub.lab.chem.example.edu> is not allowed for device chem-scanner-1", rule: "sender not in"),
        Case(name: "sender not allowed", client: "127.0.0.1", from: "<boss@example.edu>",
             reply: "553 5.7.1 Sender <boss@example.edu> is not allowed for device demo-scanner", rule: "sender not in"),
        Case(name: "null sender from a device", client: "127.0.0.1", from: "<>",
             reply: "553 5.7.1 Sender <> is not allowed for device demo-scanner", rule: "sender not in"),
        Case(name: "relay hack in the sender", client: "10.1.2.3", from: "<u%ext.com@lab.chem.example.edu>",
             reply: "553 5.7.1 Sender <u%ext.com@lab.chem.example.edu> is not allowed for device chem-scanner-1", rule: "sender not in"),
        Case(name: "internal recipient", client: "127.0.0.1", from: "<scanner@example.edu>", to: "<staff@example.edu>", reply: nil,
             rule: "internal-domains: example.edu matches example.edu"),
        Case(name: "internal subdomain recipient", client: "127.0.0.1", from: "<scanner@example.edu>", to: "<x@chem.example.edu>",
             reply: nil, rule: "internal-domains: chem.example.edu matches *.example.edu"),
        Case(name: "external recipient", client: "10.1.2.3", from: "<scan@chem.example.edu>", to: "<x@gmail.com>",
             reply: "550 5.7.1 <x@gmail.com>: this endpoint accepts internal recipients only",
             rule: "internal-domains: gmail.com is not internal"),
        Case(name: "look-alike domain suffix", client: "127.0.0.1", from: "<scanner@example.edu>", to: "<x@notexample.edu>",
             reply: "550 5.7.1 <x@notexample.edu>: this endpoint accepts internal recipients only", rule: "notexample.edu is not internal"),
        Case(name: "internal name as a prefix of an external domain", client: "127.0.0.1", from: "<scanner@example.edu>",
             to: "<x@example.edu.evil.com>",
             reply: "550 5.7.1 <x@example.edu.evil.com>: this endpoint accepts internal recipients only", rule: "is not internal"),
        Case(name: "internal recipient via a domain-rule sender", client: "10.1.2.3", from: "<x@lab.chem.example.edu>",
             to: "<x@example.edu>",
             reply: nil, rule: "internal-domains"),
    ]

    @Test(arguments: cases)
    func deviceEndpointDecision(_ c: Case) {
        let d = decide(c.client, from: c.from, to: c.to)
        #expect(d.reply?.description == c.reply, "\(d)")
        #expect(d.rule.contains(c.rule), "rule was: \(d.rule)")
    }

    // MARK: Relay-hack address forms on the device endpoint

    /// What the parser does with the form, then what policy does with what the parser gives it.
    enum Expected: Sendable { case parserRefuses, isInternal, isExternal }

    static let hackForms: [(String, Expected)] = [
        ("<u%ext.com@example.edu>", .isExternal),
        ("<@example.edu:u@ext.com>", .isExternal),
        ("<@ext.com:u@example.edu>", .isExternal),        // any source route is refused, even towards an internal domain
        ("<\"u@ext.com\">", .parserRefuses),            // no domain at all: 501 from the session, policy never sees it
        ("<\"u@ext.com\"@example.edu>", .isExternal),
        ("<ext.com!u>", .parserRefuses),                 // no domain: 501
        ("<ext.com!u@example.edu>", .isExternal),
        ("<u@example.edu.>", .parserRefuses),            // RFC 5321 has no trailing dot; see the next test for policy's view
        ("<u@EXAMPLE.EDU>", .isInternal),
        ("<u@Chem.Example.Edu>", .isInternal),
        ("<u@[127.0.0.1]>", .isExternal),
        ("<u@[IPv6:::1]>", .isExternal),
    ]

    @Test(arguments: zip(hackForms.map(\.0), hackForms.map(\.1)))
    func relayHackForms(_ form: String, _ expected: Expected) {
        let parsed: Mailbox
        do {
            parsed = try AddressParser.parsePath(Substring(form))
        } catch {
            #expect(expected == .parserRefuses, "\(form) did not parse: \(error)")
            return
        }
        #expect(expected != .parserRefuses, "\(form) parsed as \(parsed)")
        let d = decide("127.0.0.1", from: "<scanner@example.edu>", to: form)
        switch expected {
        case .isInternal: #expect(d.isAccepted, "\(form): \(d)")
        case .isExternal, .parserRefuses:
            #expect(d.reply?.code == 550 && d.reply?.enhancedStatus == "5.7.1", "\(form): \(d)")
            #expect(d.reply?.lines.first?.hasSuffix(": this endpoint accepts internal recipients only") == true)
        }
    }

    @Test func trailingDotIsNormalisedAway() {
        // The parser refuses `example.edu.`; were a caller to build such a mailbox, policy judges the domain without the dot.
        let internalMailbox = Mailbox(localPart: "u", domain: .name("EXAMPLE.edu."))
        let d1 = policy.decide(DecisionInput(endpoint: .device, clientAddress: "127.0.0.1", tls: false,
                                             sender: reverse("<scanner@example.edu>"), recipient: internalMailbox, now: now))
        #expect(d1.isAccepted, "\(d1)")
        let external = Mailbox(localPart: "u", domain: .name("ext.com."))
        let d2 = policy.decide(DecisionInput(endpoint: .device, clientAddress: "127.0.0.1", tls: false,
                                             sender: reverse("<scanner@example.edu>"), recipient: external, now: now))
        #expect(d2.reply?.code == 550)
    }

    // MARK: Sunset

    @Test func deviceIsAcceptedOnItsLastValidDayInThePolicyTimeZone() {
        // chem-scanner-1's department (chem) ends on 2027-03-31 Berlin time, before the device's own 2027-12-31.
        let lastSecond = berlinTime("2027-03-31", 23, 59, 59)
        let d = decide("10.1.2.3", from: "<scan@chem.example.edu>", at: lastSecond)
        #expect(d.isAccepted, "\(d)")
        // 2027-03-31 23:59:59 in Berlin (CEST, +02:00) is 21:59:59 UTC.
        #expect(lastSecond == ISO8601DateFormatter().date(from: "2027-03-31T21:59:59Z"))
    }

    @Test func deviceIsRefusedFromTheFirstSecondAfterItsSunsetDay() {
        let firstRefused = berlinTime("2027-04-01", 0, 0, 0)
        #expect(firstRefused == ISO8601DateFormatter().date(from: "2027-03-31T22:00:00Z"))
        let d = decide("10.1.2.3", at: firstRefused)
        #expect(d.reply?.description == "554 5.7.1 Device chem-scanner-1 registration expired on 2027-03-31; use TLS submission on port 587")
        #expect(d.rule == "sunset: department chem 2027-03-31")
    }

    @Test func globalSunsetRefusesEveryDeviceAfterIt() {
        let d = decide("127.0.0.1", at: berlinTime("2027-09-01", 0, 0, 0))
        #expect(d.reply?.description == "554 5.7.1 Device demo-scanner registration expired on 2027-08-31; use TLS submission on port 587")
        // demo-scanner's own date equals the global one; the device's own rule is reported when they tie.
        #expect(d.rule.hasPrefix("sunset: "))
        let e = decide("10.2.0.1", at: berlinTime("2027-09-01", 0, 0, 0))
        #expect(e.reply?.code == 554)
    }

    @Test func globalSunsetIsNamedWhenItIsTheEarliest() throws {
        let fixture = try PolicyFixture(policy: PolicyFixture.policyYAML.replacingOccurrences(of: "global: 2027-08-31", with: "global: 2027-02-28"))
        defer { fixture.remove() }
        let p = try fixture.load()
        let d = p.decide(DecisionInput(endpoint: .device, clientAddress: "127.0.0.1", tls: false, now: berlinTime("2027-03-01", 0)))
        #expect(d.reply?.description == "554 5.7.1 Device demo-scanner registration expired on 2027-02-28; use TLS submission on port 587")
        #expect(d.rule == "sunset: global 2027-02-28")
    }

    @Test func expiredDeviceIsRefusedAtEveryStage() {
        for (from, to) in [(nil, nil), ("<x@phys.example.edu>", nil), ("<x@phys.example.edu>", "<y@example.edu>")] as [(String?, String?)] {
            let d = decide("10.2.9.9", from: from, to: to)
            #expect(d.reply?.description == "554 5.7.1 Device phys-old registration expired on 2025-12-31; use TLS submission on port 587")
        }
    }

    @Test(arguments: [
        ("2027-02-28", nil), ("2027-03-01", 30), ("2027-03-23", 30), ("2027-03-24", 7), ("2027-03-30", 1),
        ("2027-03-31", 1), ("2027-04-01", nil),
    ] as [(String, Int?)])
    func reminderThresholds(_ day: String, _ threshold: Int?) throws {
        let device = try #require(policy.device(forAddress: "10.1.2.3"))
        let reminder = policy.reminderDue(for: device, now: berlinTime(day))
        #expect(reminder?.thresholdDays == threshold, "\(day): \(String(describing: reminder))")
        if let reminder {
            #expect(reminder.sunset.description == "sunset: department chem 2027-03-31")
            #expect(reminder.owner == "j.doe@chem.example.edu")
            #expect(reminder.daysRemaining == CalendarDate(day)!.days(until: CalendarDate("2027-03-31")!))
        }
    }

    // MARK: Limits and listeners

    @Test func sizeLimitIsTheSmallerOfListenerAndDevice() throws {
        let chem = try #require(policy.device(forAddress: "10.1.2.3"))
        let demo = try #require(policy.device(forAddress: "127.0.0.1"))
        #expect(policy.messageSizeLimit(endpoint: .device, device: chem) == 10 << 20)
        #expect(policy.messageSizeLimit(endpoint: .device, device: demo) == 20 << 20)
        #expect(policy.messageSizeLimit(endpoint: .submission, device: nil) == 50 << 20)
        #expect(policy.messageSizeLimit(endpoint: .submissions, device: nil) == nil)
    }

    @Test func disabledEndpointRefusesEveryone() throws {
        let fixture = try PolicyFixture(policy: PolicyFixture.policyYAML.replacingOccurrences(
            of: "device: {enabled: true, max-message-size: 20M}", with: "device: {enabled: false}"))
        defer { fixture.remove() }
        let p = try fixture.load()
        #expect(!p.isEndpointEnabled(.device))
        #expect(p.isEndpointEnabled(.submission))
        let d = p.decide(DecisionInput(endpoint: .device, clientAddress: "127.0.0.1", tls: false, now: now))
        #expect(d.reply?.description == "554 5.7.1 The device endpoint is disabled by policy")
    }

    @Test func decisionsArePureFunctionsOfTheirInput() {
        let input = DecisionInput(endpoint: .device, clientAddress: "10.1.2.3", tls: false,
                                  sender: reverse("<scan@chem.example.edu>"), recipient: path("<x@gmail.com>"), now: now)
        #expect(policy.decide(input) == policy.decide(input))
    }

    // MARK: Duplicate recipients

    @Test func recipientsAreOneMailboxByTheWrittenRule() {
        func key(_ text: String) -> String { policy.recipientKey(path(text)) }
        // Internal domains: the directory matches mail without regard to case; one mailbox.
        #expect(key("<Bob@Example.EDU>") == key("<bob@example.edu>"))
        #expect(key("<BOB@chem.example.edu>") == key("<bob@CHEM.example.edu>"))
        #expect(key("<\"bob\"@example.edu>") == key("<bob@example.edu>"))
        #expect(key("<bob@example.edu>") != key("<rob@example.edu>"))
        // Other domains: only the domain's case is folded (RFC 5321 2.4 leaves the local part to them).
        #expect(key("<bob@GMAIL.com>") == key("<bob@gmail.com>"))
        #expect(key("<Bob@gmail.com>") != key("<bob@gmail.com>"))
        #expect(key("<bob@example.edu>") != key("<bob@example.edu.evil.com>"))
    }
}
