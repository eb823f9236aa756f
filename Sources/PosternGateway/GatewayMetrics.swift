import Foundation
import NIOConcurrencyHelpers
import PosternListener
import PosternPolicy
import PosternSession
import Prometheus

/// The gateway's Prometheus metrics: one registry, one typed method per thing operators watch.
/// Label values are bounded (listener names, reply codes, rule categories, departments) so the
/// number of series stays small whatever clients send.
public final class GatewayMetrics: ConnectionMetrics, Sendable {
    public let registry: PrometheusCollectorRegistry
    /// For libraries that report through swift-metrics' API into the same registry.
    public let factory: PrometheusMetricsFactory

    private let queueDepth: Gauge
    private let queueOldestAge: Gauge
    private let queueHeld: Gauge
    private let intakeMessages: Gauge
    private let intakeBatches: Counter
    private let intakeRecords: Counter
    /// The spool's totals at the last refresh, for the counters' increments.
    private let intakeSeen = NIOLockedValueBox<(batches: Int, records: Int)>((0, 0))
    private let latency: ValueHistogram
    private let policyReloadSuccessful: Gauge
    private let policyReloadTime: Gauge
    /// Departments with a sunset gauge now; gauges of departments that drop out are unregistered.
    private let sunsetGauges = NIOLockedValueBox<[String: Gauge]>([:])
    private let policyInfo = NIOLockedValueBox<(fingerprint: String, gauge: Gauge)?>(nil)
    private let policyGeneration: Gauge

    /// Delivery latency buckets in seconds: from a quick relay to a message that waited hours in the queue.
    public static let latencyBuckets: [Double] = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 14_400, 86_400]

    public init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        factory = PrometheusMetricsFactory(registry: registry)
        queueDepth = registry.makeGauge(descriptor: Self.queueDepthName)
        queueOldestAge = registry.makeGauge(descriptor: Self.queueOldestName)
        queueHeld = registry.makeGauge(descriptor: Self.queueHeldName)
        intakeMessages = registry.makeGauge(descriptor: Self.intakeMessagesName)
        intakeBatches = registry.makeCounter(descriptor: Self.intakeBatchesName)
        intakeRecords = registry.makeCounter(descriptor: Self.intakeRecordsName)
        latency = registry.makeValueHistogram(descriptor: Self.latencyName, buckets: Self.latencyBuckets)
        policyReloadSuccessful = registry.makeGauge(descriptor: Self.policyReloadSuccessfulName)
        policyReloadSuccessful.set(Double(1))  // the policy in force at start was loaded, or the gateway would not have started
        policyReloadTime = registry.makeGauge(descriptor: Self.policyReloadTimeName)
        policyReloadTime.set(Date().timeIntervalSince1970)
        policyGeneration = registry.makeGauge(descriptor: Self.policyGenerationName)
    }

    // MARK: Hook points

    /// A client connection was accepted and greeted.
    public func connectionOpened(listener: String) {
        registry.makeCounter(descriptor: Self.connectionsName, labels: [("listener", listener)]).increment()
    }

    /// A client that sent commands without reading its replies was closed at its output bound.
    public func slowReaderClosed(listener: String) {
        registry.makeCounter(descriptor: Self.slowReadersName, labels: [("listener", listener)]).increment()
    }

    /// A TLS handshake finished (STARTTLS or implicit TLS), or failed.
    public func tlsHandshake(listener: String, success: Bool) {
        registry.makeCounter(descriptor: Self.tlsName, labels: [("listener", listener), ("result", success ? "success" : "failure")])
            .increment()
    }

    /// One SMTP AUTH attempt's outcome.
    public func auth(result: AuthOutcome) {
        auth(result: result.auditName)
    }

    /// One SMTP AUTH attempt's outcome by name (`success`, `invalid_credentials`, ...).
    public func auth(result: String) {
        registry.makeCounter(descriptor: Self.authName, labels: [("result", result)]).increment()
    }

    /// One log-in attempt on the registration page, by the same result names as `auth`.
    public func registrationLogin(result: String) {
        registry.makeCounter(descriptor: Self.registrationLoginName, labels: [("result", result)]).increment()
    }

    /// A policy decision at MAIL, RCPT or the end of DATA: `code` nil for an accept (counted as 250); `rule` is reduced
    /// to its category (the rule's first word, e.g. `devices`, `sunset`, `internal-domains`).
    public func decision(code: Int?, rule: String) {
        registry.makeCounter(descriptor: Self.decisionsName,
                             labels: [("code", "\(code ?? 250)"), ("rule", Self.ruleCategory(rule))]).increment()
    }

    /// A message was stored (queued or written to the outbox) and answered 250.
    public func messageAccepted(listener: String) {
        registry.makeCounter(descriptor: Self.acceptedName, labels: [("listener", listener)]).increment()
    }

    /// One relay attempt's outcome for one upstream: the reply code, or 0 when no reply came (connection failed).
    public func relayOutcome(upstream: String, code: Int) {
        registry.makeCounter(descriptor: Self.relayName, labels: [("upstream", upstream), ("code", "\(code)")]).increment()
    }

    /// Time from acceptance to the final relay outcome of a message.
    public func deliveryLatency(seconds: Double) {
        latency.record(seconds)
    }

    /// A message was taken out of delivery (`reason`: a bounded word, e.g. `interrupted`).
    public func messageHeld(reason: String) {
        registry.makeCounter(descriptor: Self.heldName, labels: [("reason", reason)]).increment()
    }

    public func setHeld(count: Int) {
        queueHeld.set(Double(count))
    }

    /// The spool's intake log: messages in it now, and its totals of batches and messages written (a counter moves
    /// by what the total grew since the last refresh).
    public func setIntake(messages: Int, batchesWritten: Int, messagesWritten: Int) {
        intakeMessages.set(Double(messages))
        let (batches, records) = intakeSeen.withLockedValue { seen -> (Int, Int) in
            let grown = (max(0, batchesWritten - seen.batches), max(0, messagesWritten - seen.records))
            seen = (max(seen.batches, batchesWritten), max(seen.records, messagesWritten))
            return grown
        }
        if batches > 0 { intakeBatches.increment(by: Int64(batches)) }
        if records > 0 { intakeRecords.increment(by: Int64(records)) }
    }

    public func setQueue(depth: Int, oldestAgeSeconds: Double) {
        queueDepth.set(Double(depth))
        queueOldestAge.set(oldestAgeSeconds)
    }

    /// Days until the department's next device sunset (0 on the last valid day).
    public func setDaysToNextSunset(department: String, days: Int) {
        let gauge = sunsetGauges.withLockedValue { gauges in
            if let gauge = gauges[department] { return gauge }
            let gauge = registry.makeGauge(descriptor: Self.sunsetName, labels: [("department", department)])
            gauges[department] = gauge
            return gauge
        }
        gauge.set(Double(days))
    }

    /// Sets every department's days to its next device sunset from the policy in force; departments
    /// with no device still in service lose their series.
    public func refreshSunsets(policy: PolicySet, now: Date) {
        let today = policy.today(now)
        var next: [String: Int] = [:]
        for device in policy.devices where device.revocation == nil {
            let days = today.days(until: policy.effectiveSunset(for: device).date)
            guard days >= 0 else { continue }
            next[device.department] = min(days, next[device.department] ?? .max)
        }
        for (department, days) in next { setDaysToNextSunset(department: department, days: days) }
        let gone = sunsetGauges.withLockedValue { gauges -> [Gauge] in
            let gone = gauges.filter { next[$0.key] == nil }
            for key in gone.keys { gauges[key] = nil }
            return Array(gone.values)
        }
        for gauge in gone { registry.unregisterGauge(gauge) }
    }

    /// A policy reload: applied, or refused (the previous policy stays in force). An alert on
    /// `postern_policy_last_reload_successful == 0` catches an edit that never took effect, as Prometheus's own
    /// `prometheus_config_last_reload_successful` does.
    public func policyReload(applied: Bool, at time: Date = Date()) {
        registry.makeCounter(descriptor: Self.policyReloadsName, labels: [("result", applied ? "applied" : "refused")]).increment()
        policyReloadSuccessful.set(Double(applied ? 1 : 0))
        policyReloadTime.set(time.timeIntervalSince1970)
    }

    /// The policy in force: `postern_policy_info{fingerprint="…"} 1` (one series; the old one goes when the
    /// fingerprint changes) and `postern_policy_generation`, so that one query shows nodes that disagree.
    public func setPolicyVersion(fingerprint: String, generation: Int) {
        let old = policyInfo.withLockedValue { info -> Gauge? in
            if info?.fingerprint == fingerprint { return nil }
            let previous = info?.gauge
            info = (fingerprint, registry.makeGauge(descriptor: Self.policyInfoName, labels: [("fingerprint", fingerprint)]))
            return previous
        }
        if let old { registry.unregisterGauge(old) }
        policyInfo.withLockedValue { $0?.gauge.set(1.0) }
        policyGeneration.set(Double(generation))
    }

    /// The Prometheus text exposition of everything in the registry.
    public func exposition() -> [UInt8] {
        registry.emitToBuffer()
    }

    /// `sunset: department chem 2026-06-30` → `sunset`; `internal-domains: x is not internal` → `internal-domains`.
    static func ruleCategory(_ rule: String) -> String {
        let word = rule.prefix { $0 != ":" && $0 != " " }.lowercased()
        let clean = word.filter { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "-" || $0 == "_") }
        return clean.isEmpty ? "other" : String(clean.prefix(32))
    }

    // MARK: Names

    private static func name(_ metric: String, unit: String = "", _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(namespace: "postern", metricName: metric, unitName: unit, helpText: help)
    }

    static var connectionsName: MetricNameDescriptor { name("connections", unit: "total", "Client connections accepted, by listener.") }
    static var slowReadersName: MetricNameDescriptor {
        name("slow_readers_closed", unit: "total", "Clients closed with 421 for sending commands without reading the replies, by listener.")
    }
    static var tlsName: MetricNameDescriptor { name("tls_handshakes", unit: "total", "TLS handshakes by listener and result.") }
    static var authName: MetricNameDescriptor { name("auth_attempts", unit: "total", "SMTP AUTH attempts by result.") }
    static var registrationLoginName: MetricNameDescriptor { name("registration_logins", unit: "total", "Registration page log-ins by result.") }
    static var decisionsName: MetricNameDescriptor { name("policy_decisions", unit: "total", "Policy decisions at MAIL, RCPT and end of DATA by reply code and rule category.") }
    static var acceptedName: MetricNameDescriptor { name("messages_accepted", unit: "total", "Messages stored and answered 250, by listener.") }
    static var relayName: MetricNameDescriptor { name("relay_outcomes", unit: "total", "Relay attempts by upstream and reply code (0: no reply).") }
    static var latencyName: MetricNameDescriptor { name("delivery_latency", unit: "seconds", "Time from acceptance to the final relay outcome.") }
    static var queueDepthName: MetricNameDescriptor { name("queue_depth", "Messages waiting in the spool.") }
    static var queueOldestName: MetricNameDescriptor { name("queue_oldest_age", unit: "seconds", "Age of the oldest message in the spool.") }
    static var queueHeldName: MetricNameDescriptor { name("queue_held", "Messages held out of delivery (postern queue list shows them).") }
    static var intakeMessagesName: MetricNameDescriptor {
        name("spool_intake_messages", "Messages in the spool's intake log: accepted in the last seconds, not yet delivered or made queue files.")
    }
    static var intakeBatchesName: MetricNameDescriptor { name("spool_intake_batches", unit: "total", "Batches written to the intake log, one fdatasync each.") }
    static var intakeRecordsName: MetricNameDescriptor {
        name("spool_intake_messages_written", unit: "total", "Messages written to the intake log (divided by the batches: the mean batch).")
    }
    static var heldName: MetricNameDescriptor { name("messages_held", unit: "total", "Messages taken out of delivery, by reason (interrupted: the gateway died delivering it twice).") }
    static var policyReloadsName: MetricNameDescriptor { name("policy_reloads", unit: "total", "Policy reloads by result (refused: the previous policy stays in force).") }
    static var policyReloadSuccessfulName: MetricNameDescriptor {
        name("policy_last_reload_successful", "1 when the last policy reload was applied, 0 when it was refused and an older policy is in force.")
    }
    static var policyReloadTimeName: MetricNameDescriptor {
        name("policy_last_reload_timestamp", unit: "seconds", "When the policy was last loaded or a reload refused (Unix time).")
    }
    static var policyInfoName: MetricNameDescriptor { name("policy_info", "The policy in force (always 1), by fingerprint; nodes that read the same policy files show the same.") }
    static var policyGenerationName: MetricNameDescriptor { name("policy_generation", "Policy loads applied since the process started (1 after the first).") }
    static var sunsetName: MetricNameDescriptor { name("sunset_days_remaining", "Days until the department's next device sunset.") }
}
