import Foundation
import PosternSMTP
import PosternSpool

/// One delivery attempt of one queued message, as decisions without I/O: which recipients go to which
/// upstream, what each upstream's answer means for each recipient, what expired, what to bounce and when
/// to try again. `Relay.process` carries it out (the pool, the spool, the DSN, the audit); tests drive it
/// with answers and a clock.
///
/// The rules (issue #13):
/// - one delivery per distinct recipient (`Relay.recipientKey`), and its result settles every copy of it in
///   the entry, so an entry that lists one twice is delivered once and a DSN names it once;
/// - a 2xx is delivered, a 5xx failed (bounced), anything else deferred;
/// - a recipient deferred by an upstream-wide failure (a throttle, an outage) goes again when that pause
///   ends, so the queue drains as soon as the upstream recovers; one deferred on its own waits for the
///   message's own backoff; the next attempt is the earlier of the two;
/// - an upstream that was paused before anything was sent is not an attempt: no counter moves;
/// - counters read from a state file (any Int) saturate rather than overflow.
struct DeliveryPlan: Sendable {
    /// What one upstream said, for every recipient handed to it.
    enum RecipientResult: Sendable, Hashable {
        case reply(SMTPReply)
        /// No reply: the connection or TLS failed.
        case local(String)

        var text: String {
            switch self {
            case .reply(let reply): return ExchangeOnlineReplies.annotated(reply)
            case .local(let reason): return reason
            }
        }
    }

    /// What came of handing a group of recipients to one upstream.
    enum Delivery: Sendable, Hashable {
        /// The upstream is backed off: nothing was sent, nothing counts as an attempt.
        case paused(until: Date)
        /// A result for every recipient handed in; `pauseEnds` when the failure was the upstream's
        /// (a throttle, an outage), which then decides when those recipients go again.
        case attempted([String: RecipientResult], pauseEnds: Date?)
    }

    /// The recipients that go to one upstream.
    struct Route: Sendable, Hashable {
        var upstream: String
        var recipients: [String]
    }

    let id: String
    let envelope: SpoolEnvelope
    let now: Date
    /// This attempt's number (the state's count plus one, saturating).
    let attempt: Int
    /// The entry's state as this attempt leaves it.
    private(set) var state: SpoolEntryState
    /// What happened to each recipient, for the log and the audit.
    private(set) var outcomes: [RelayOutcome] = []
    /// The recipients to name in a DSN.
    private(set) var failed: [DeliveryStatusNotification.FailedRecipient] = []
    /// Something was sent, or a delivery was found impossible: the attempt counts.
    private(set) var attempted = false
    /// The earliest end of an upstream-wide pause that holds a recipient of this message.
    private var pauseEnds: Date?
    /// A recipient was deferred for a reason of its own (or of this message's).
    private var deferredOnItsOwn = false

    init(id: String, envelope: SpoolEnvelope, state: SpoolEntryState, now: Date) {
        self.id = id
        self.envelope = envelope
        self.state = state
        self.now = now
        attempt = state.attempts == .max ? state.attempts : state.attempts + 1  // from the state file: any Int
    }

    /// The pending recipients, each distinct one once, grouped by the upstream `upstream(for:)` names, in
    /// the order of the upstreams' names.
    func routes(upstream: (String) -> String) -> [Route] {
        var byUpstream: [String: [String]] = [:]
        var seen = Set<String>()
        for recipient in state.pendingRecipients where seen.insert(Relay.recipientKey(recipient)).inserted {
            byUpstream[upstream(recipient), default: []].append(recipient)
        }
        return byUpstream.sorted { $0.key < $1.key }.map { Route(upstream: $0.key, recipients: $0.value) }
    }

    /// `route` names an upstream that is not configured: its recipients are deferred on their own.
    mutating func noSuchUpstream(_ route: Route) {
        for recipient in route.recipients {
            update(recipient, reply: "no upstream named \(route.upstream) is configured", upstream: route.upstream, state: .pending)
        }
        attempted = true
        deferredOnItsOwn = true
    }

    /// What `route`'s upstream did with its recipients; `remoteMTA` names it in a DSN.
    mutating func record(_ delivery: Delivery, for route: Route, remoteMTA: String) {
        switch delivery {
        case .paused(let until):
            pauseEnds = min(pauseEnds ?? until, until)
        case .attempted(let results, let upstreamPause):
            attempted = true
            for recipient in route.recipients {
                let result = results[recipient] ?? .local("no reply recorded for this recipient")
                let disposition: RelayOutcome.Disposition
                switch result {
                case .reply(let reply) where reply.isPositive:
                    disposition = .delivered
                    update(recipient, reply: reply.description, upstream: route.upstream, state: .delivered)
                case .reply(let reply) where reply.isPermanent:
                    disposition = .failed
                    update(recipient, reply: result.text, upstream: route.upstream, state: .failed)
                    failed.append(.init(address: recipient, status: reply.enhancedStatus ?? "5.0.0", diagnostic: reply.description, remoteMTA: remoteMTA))
                default:
                    disposition = .deferred
                    update(recipient, reply: result.text, upstream: route.upstream, state: .pending)
                    if let upstreamPause { pauseEnds = min(pauseEnds ?? upstreamPause, upstreamPause) } else { deferredOnItsOwn = true }
                }
                outcomes.append(RelayOutcome(queueID: id, recipient: recipient, upstream: route.upstream, disposition: disposition,
                                             reply: result.text, attempt: attempt, at: now, receivedAt: envelope.receivedAt))
            }
        }
    }

    /// Whether the message has been queued for `expiry` or longer.
    func isExpired(expiry: Duration) -> Bool {
        now.timeIntervalSince(envelope.receivedAt) >= expiry.seconds
    }

    /// Fails every recipient still pending (once per distinct recipient in the DSN) because the message
    /// has been queued for `expiry`.
    mutating func expire(expiry: Duration, upstream: (String) -> String) {
        var bounced = Set<String>()
        let hours = expiry.seconds / 3600
        let age = hours >= 1 ? "\(Int(hours)) hours" : "\(Int(expiry.seconds)) seconds"
        for index in state.recipients.indices where state.recipients[index].state == .pending {
            let recipient = state.recipients[index]
            state.recipients[index].state = .failed
            guard bounced.insert(Relay.recipientKey(recipient.address)).inserted else { continue }
            let reason = "message expired after \(age) in the queue; last error: \(recipient.lastReply ?? "none")"
            failed.append(.init(address: recipient.address, status: "4.4.7", diagnostic: reason, remoteMTA: nil))
            outcomes.append(RelayOutcome(queueID: id, recipient: recipient.address, upstream: recipient.upstream ?? upstream(recipient.address),
                                         disposition: .expired, reply: reason, attempt: attempt, at: now, receivedAt: envelope.receivedAt))
        }
    }

    /// Ends the attempt: counts it (if it was one) and sets the next attempt, the earlier of the pause that
    /// holds a recipient and the message's own backoff (`backoff(attempts)` seconds) when it needs one.
    /// Returns the state to record; `isFinished` when no recipient is pending.
    mutating func finish(backoff: (Int) -> TimeInterval) -> SpoolEntryState {
        if attempted {
            state.attempts = attempt
            state.lastAttempt = now
            state.interruptedDeliveries = nil  // this attempt ended normally
        }
        var next = pauseEnds
        if deferredOnItsOwn || next == nil {
            let own = now.addingTimeInterval(backoff(max(state.attempts, 1)))
            next = min(next ?? own, own)
        }
        state.nextAttempt = next ?? now
        return state
    }

    /// Records one recipient's result on every pending copy of it (see `Relay.recipientKey`).
    private mutating func update(_ recipient: String, reply: String, upstream: String, state newState: RecipientStatus.State) {
        let key = Relay.recipientKey(recipient)
        for index in state.recipients.indices where state.recipients[index].state == .pending && Relay.recipientKey(state.recipients[index].address) == key {
            if state.recipients[index].attempts < .max { state.recipients[index].attempts += 1 }  // from the state file: any Int
            state.recipients[index].lastReply = reply
            state.recipients[index].upstream = upstream
            state.recipients[index].state = newState
        }
    }
}
