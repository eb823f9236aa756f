import ArgumentParser
import Foundation
import Logging
import PosternPolicy
import PosternSMTP

struct PolicyBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Times the device policy decision with N registered devices, and reloads of that policy (devices.yaml with one entry changed, with a comment changed, unchanged, with every entry changed, and read by libyaml).")

    @Option(help: "Directory with the policy.yaml and departments.yaml to use.") var policies = "policies"
    @Option var devices = 100_000
    @Option(help: "Decisions timed (per kind).") var iterations = 1_000_000
    @Option(help: "Reloads timed.") var reloads = 10
    @Option(help: "Give up after this many seconds.") var timeout = 300

    func validate() throws {
        // `% devices`, `/ iterations` and the reload percentiles need at least one of each.
        guard devices >= 1, iterations >= 1, reloads >= 1 else { throw ValidationError("--devices, --iterations and --reloads must be at least 1") }
    }

    func run() async throws {
        armWatchdog(seconds: timeout, what: "the policy benchmark")
        let fm = FileManager.default
        let dir = fm.temporaryDirectory.appendingPathComponent("postern-policy-bench-\(getpid())")
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? fm.removeItem(at: dir) }
        for name in [PolicyLoader.policyFile, PolicyLoader.departmentsFile] {
            try fm.copyItem(at: URL(fileURLWithPath: policies).appendingPathComponent(name), to: dir.appendingPathComponent(name))
        }
        // Device i sits at 10.(i>>16).(i>>8 & 255).(i & 255) + 1<<24 offset so no address is .0 of 10.0.0.0.
        func address(_ i: Int) -> String { let n = i + 1; return "10.\((n >> 16) & 255).\((n >> 8) & 255).\(n & 255)" }
        func entry(_ i: Int, registered: String = "2026-01-15") -> String {
            "  - id: dev-\(i)\n    department: it\n    owner: it-helpdesk@example.edu\n    addresses: [\(address(i))]\n"
                + "    senders: [dev\(i)@example.edu]\n    registered: \(registered)\n    sunset: 2027-08-31\n"
        }
        var entryTexts = (0..<devices).map { entry($0) }
        let yaml = "devices:\n" + entryTexts.joined()
        try yaml.write(to: dir.appendingPathComponent(PolicyLoader.devicesFile), atomically: true, encoding: .utf8)

        let clock = ContinuousClock()
        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        let loadStart = clock.now
        let store = try PolicyStore(directory: dir, logger: logger)
        let firstLoad = clock.now - loadStart
        let policy = store.policy
        guard policy.devices.count == devices else { throw ValidationError("loaded \(policy.devices.count) devices, expected \(devices)") }

        // Inputs prepared up front so that only the decision is timed.
        let now = ISO8601DateFormatter().date(from: "2026-06-01T12:00:00Z")!  // `!`: a constant, valid date
        let distinct = 4096
        let recipient = try AddressParser.parseMailbox("bob@example.edu")
        var connInputs: [DecisionInput] = [], rcptInputs: [DecisionInput] = []
        var state: UInt64 = 0x9E3779B97F4A7C15
        for _ in 0..<distinct {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let i = Int((state >> 33) % UInt64(devices))
            let sender = ReversePath.mailbox(try AddressParser.parseMailbox("dev\(i)@example.edu"))
            // The gateway parses the client address once per connection (PolicyRules.forConnection), not per decision.
            let client = ClientAddress(address(i))
            connInputs.append(DecisionInput(endpoint: .device, client: client, tls: false, now: now))
            rcptInputs.append(DecisionInput(endpoint: .device, client: client, tls: false, sender: sender, recipient: recipient, now: now))
        }
        func time(_ inputs: [DecisionInput]) -> (ns: Double, accepted: Int) {
            var accepted = 0
            for k in 0..<min(iterations, 10_000) where policy.decide(inputs[k % distinct]).isAccepted { accepted += 1 }  // warm-up
            accepted = 0
            let start = clock.now
            for k in 0..<iterations where policy.decide(inputs[k % distinct]).isAccepted { accepted += 1 }
            let d = clock.now - start
            let ns = Double(d.components.seconds) * 1e9 + Double(d.components.attoseconds) / 1e9
            return (ns / Double(iterations), accepted)
        }
        let conn = time(connInputs)
        let rcpt = time(rcptInputs)
        guard conn.accepted == iterations, rcpt.accepted == iterations else {
            throw ValidationError("some decisions refused (connect \(conn.accepted), rcpt \(rcpt.accepted) of \(iterations))")
        }

        // Reloads as the gateway makes them (PolicyStore.reload, on SIGHUP or a file change), each after
        // devices.yaml was written anew (outside the timing).
        let devicesURL = dir.appendingPathComponent(PolicyLoader.devicesFile)
        func timeReloads(_ count: Int, devicesText: ((Int) -> String)?) throws -> [Double] {
            var ms: [Double] = []
            for k in 0..<count {
                if let devicesText { try devicesText(k).write(to: devicesURL, atomically: true, encoding: .utf8) }
                let start = clock.now
                if let errors = store.reload(reason: "benchmark") { throw ValidationError("reload refused: \(errors)") }
                let d = clock.now - start
                ms.append(Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) / 1e15)
            }
            return ms.sorted()
        }
        // What a department's change does: each reload's file differs from the one before in one entry,
        // in turn a device registered (appended), one edited in place (another sender) and one removed.
        let entryMs = try timeReloads(reloads) { k in
            switch k % 3 {
            case 0: entryTexts.append("  - id: new-\(k)\n    department: it\n    owner: it-helpdesk@example.edu\n    addresses: [10.254.\((k >> 8) & 255).\(k & 255)]\n"
                                      + "    senders: [new\(k)@example.edu]\n    registered: 2026-06-01\n    sunset: 2027-08-31\n")
            case 1:
                let i = (k * 7919) % entryTexts.count
                entryTexts[i] = entryTexts[i].replacingOccurrences(of: "@example.edu]", with: "@example.edu, scan\(k)@example.edu]")
            default: entryTexts.remove(at: (k * 104_729) % entryTexts.count)
            }
            return "devices:\n" + entryTexts.joined()
        }
        let edited = "devices:\n" + entryTexts.joined()
        // Only a comment line differs from the file before: every entry is the same.
        let commentMs = try timeReloads(reloads) { edited + "# reload \($0)\n" }
        // The same files again (a SIGHUP, or an edit of policy.yaml only): devices.yaml is not read again.
        let unchangedMs = try timeReloads(reloads, devicesText: nil)
        // Every entry differs from the file before (another registration date each time): a cold parse.
        let coldMs = try timeReloads(reloads) { k in
            let date = "2026-02-\(k % 28 + 1 < 10 ? "0" : "")\(k % 28 + 1)"
            return "devices:\n" + (0..<devices).map { entry($0, registered: date) }.joined()
        }
        // devices.yaml outside the block layout the fast reader takes (a non-ASCII comment): libyaml reads it.
        let libyamlMs = try timeReloads(max(1, reloads / 3)) { "# Geräte\n" + yaml + "# reload \($0)\n" }
        let firstMs = Double(firstLoad.components.seconds) * 1e3 + Double(firstLoad.components.attoseconds) / 1e15
        func p50(_ ms: [Double]) -> Double { ms[ms.count / 2] }  // with `.last!` below: `validate` makes reloads >= 1
        print(String(format: "RESULT label=policy devices=%d iterations=%d decide_connect_ns=%.0f decide_rcpt_ns=%.0f first_load_ms=%.1f reload_p50_ms=%.1f reload_max_ms=%.1f reloads=%d reload_comment_p50_ms=%.1f reload_unchanged_p50_ms=%.1f reload_cold_p50_ms=%.1f reload_cold_max_ms=%.1f reload_libyaml_p50_ms=%.1f",
                     devices, iterations, conn.ns, rcpt.ns, firstMs, p50(entryMs), entryMs.last!, reloads,
                     p50(commentMs), p50(unchangedMs), p50(coldMs), coldMs.last!, p50(libyamlMs)))
    }
}
