import ArgumentParser
import Foundation
import Logging
import PosternPolicy
import PosternSMTP
#if canImport(Glibc)
import Glibc
#endif

struct PolicyBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "policy",
        abstract: "Times the device policy decision with N registered devices (one file each in devices.d), the cold load, and reloads: after one device file changed, with nothing changed, after an edit of policy.yaml, and on SIGHUP.",
        discussion: """
            The device files are generated under --work-directory (one directory per department of the given \
            departments.yaml) and deleted at the end. Reloads after a change are PolicyStore.reloadIfChanged, what the \
            policy watcher does: the entries the watch of devices.d saw change are looked at (inotify), and only \
            changed files read. A SIGHUP reload (PolicyStore.reload) lists every directory and stats every file.
            """)

    @Option(help: "Directory with the policy.yaml and departments.yaml to use.") var policies = "policies"
    @Option var devices = 100_000
    @Option(help: "Where the generated policy directory goes (deleted at the end).") var workDirectory = "/var/tmp"
    @Option(help: "Decisions timed (per kind).") var iterations = 1_000_000
    @Option(help: "Reloads timed (per kind).") var reloads = 10
    @Option(help: "Give up after this many seconds.") var timeout = 600

    func validate() throws {
        // `% devices`, `/ iterations` and the reload percentiles need at least one of each.
        guard devices >= 1, iterations >= 1, reloads >= 1 else { throw ValidationError("--devices, --iterations and --reloads must be at least 1") }
    }

    /// The shipped departments' own domains (IT Services has none: any internal domain).
    static let departments = [("it", "example.edu"), ("chem", "chem.example.edu"), ("phys", "phys.example.edu"),
                              ("lib", "library.example.edu"), ("med", "med.example.edu")]

    /// Device i sits at 10.(i>>16).(i>>8 & 255).(i & 255), counting from 1 so that no address is 10.0.0.0.
    static func address(_ i: Int) -> String { let n = i + 1; return "10.\((n >> 16) & 255).\((n >> 8) & 255).\(n & 255)" }

    static func deviceFile(_ i: Int, sender: String? = nil, registered: String = "2026-01-15") -> (department: String, name: String, text: String) {
        let (department, domain) = departments[i % departments.count]
        let text = "id: dev-\(i)\ndepartment: \(department)\nowner: it-helpdesk@example.edu\nlocation: Building \(i / 100), room \(i % 100)\n"
            + "addresses: [\(address(i))]\nsenders: [\(sender ?? "dev\(i)@\(domain)")]\nregistered: \(registered)\nsunset: 2027-08-31\n"
        return (department, "dev-\(i).yaml", text)
    }

    func run() async throws {
        armWatchdog(seconds: timeout, what: "the policy benchmark")
        let fm = FileManager.default
        let dir = URL(fileURLWithPath: workDirectory).appendingPathComponent("postern-policy-bench-\(getpid())")
        try fm.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? fm.removeItem(at: dir) }
        for name in [PolicyLoader.policyFile, PolicyLoader.departmentsFile] {
            try fm.copyItem(at: URL(fileURLWithPath: policies).appendingPathComponent(name), to: dir.appendingPathComponent(name))
        }
        let devicesDir = dir.appendingPathComponent(PolicyLoader.devicesDirectory)
        for (department, _) in Self.departments {
            try fm.createDirectory(at: devicesDir.appendingPathComponent(department), withIntermediateDirectories: true)
        }
        func write(_ file: (department: String, name: String, text: String), replacing: Bool = true) throws {
            let url = devicesDir.appendingPathComponent(file.department).appendingPathComponent(file.name)
            // Replacing, as the editor writes: a new file renamed over the old one. Otherwise in place, as some editors do.
            let path = replacing ? url.deletingLastPathComponent().appendingPathComponent(".\(file.name).tmp").path : url.path
            let fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0o644)
            guard fd >= 0 else { throw ValidationError("open \(path): errno \(errno)") }
            let written = file.text.utf8.withContiguousStorageIfAvailable { Glibc.write(fd, $0.baseAddress, $0.count) } ?? -1
            close(fd)
            guard written == file.text.utf8.count else { throw ValidationError("write \(path): errno \(errno)") }
            if replacing, rename(path, url.path) != 0 { throw ValidationError("rename \(path): errno \(errno)") }
        }
        let clock = ContinuousClock()
        func ms(_ d: Duration) -> Double { Double(d.components.seconds) * 1e3 + Double(d.components.attoseconds) / 1e15 }
        let generateStart = clock.now
        for i in 0..<devices { try write(Self.deviceFile(i), replacing: false) }
        let generateMs = ms(clock.now - generateStart)
        // Files modified within two seconds of a scan are read again at the next one (their fingerprint could hide a
        // second change): let the generated ones age past that, as files that were not just written would be.
        try await Task.sleep(for: .seconds(3))

        var logger = Logger(label: "bench")
        logger.logLevel = .critical
        let loadStart = clock.now
        let loadCPUStart = Self.processCPU()
        let store = try PolicyStore(directory: dir, logger: logger)
        let coldCPUMs = (Self.processCPU() - loadCPUStart) / 1e6
        let coldMs = ms(clock.now - loadStart)
        let policy = store.policy
        guard policy.devices.count == devices else { throw ValidationError("loaded \(policy.devices.count) devices, expected \(devices)") }

        // Inputs prepared up front so that only the decision is timed.
        let now = ISO8601DateFormatter().date(from: "2026-06-01T12:00:00Z") ?? Date()
        let distinct = 4096
        let recipient = try AddressParser.parseMailbox("bob@example.edu")
        var connInputs: [DecisionInput] = [], rcptInputs: [DecisionInput] = []
        var state: UInt64 = 0x9E3779B97F4A7C15
        for _ in 0..<distinct {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let i = Int((state >> 33) % UInt64(devices))
            let sender = ReversePath.mailbox(try AddressParser.parseMailbox("dev\(i)@\(Self.departments[i % Self.departments.count].1)"))
            // The gateway parses the client address once per connection (PolicyRules.forConnection), not per decision.
            let client = ClientAddress(Self.address(i))
            connInputs.append(DecisionInput(endpoint: .device, client: client, tls: false, now: now))
            rcptInputs.append(DecisionInput(endpoint: .device, client: client, tls: false, sender: sender, recipient: recipient, now: now))
        }
        func time(_ inputs: [DecisionInput]) -> (ns: Double, cpuNs: Double, accepted: Int) {
            var accepted = 0
            for k in 0..<min(iterations, 10_000) where policy.decide(inputs[k % distinct]).isAccepted { accepted += 1 }  // warm-up
            accepted = 0
            // A synchronous loop: the task stays on one thread throughout.
            let start = clock.now
            let cpuStart = threadCPU()
            for k in 0..<iterations where policy.decide(inputs[k % distinct]).isAccepted { accepted += 1 }
            let cpu = threadCPU() - cpuStart
            return (ms(clock.now - start) * 1e6 / Double(iterations), cpu / Double(iterations), accepted)
        }
        let conn = time(connInputs)
        let rcpt = time(rcptInputs)
        guard conn.accepted == iterations, rcpt.accepted == iterations else {
            throw ValidationError("some decisions refused (connect \(conn.accepted), rcpt \(rcpt.accepted) of \(iterations))")
        }

        // Reloads as the gateway makes them, each after the files were changed (outside the timing): through the
        // watch (what the policy watcher does when a file changes) and looking at every file (SIGHUP).
        var counts: [PolicyLoadCounts] = []
        func timeReloads(_ count: Int, everything: Bool, change: ((Int) throws -> Void)?, check: ((Int) -> Bool)? = nil) throws -> [Double] {
            var times: [Double] = []
            for k in 0..<count {
                try change?(k)
                let start = clock.now
                let errors = everything ? store.reload(reason: "benchmark") : store.reloadIfChanged()
                times.append(ms(clock.now - start))
                if let errors { throw ValidationError("reload refused: \(errors)") }
                counts.append(store.reader.lastCounts)
                if let check, !check(k) { throw ValidationError("reload \(k) did not show the change") }
            }
            return times.sorted()
        }
        // What a department's change does, in turn: a device registered (a new file renamed into place, as the
        // editor writes), one edited in place (another sender), one revoked (its file removed).
        var removed: Set<Int> = []
        var edited: [Int: Int] = [:]  // reload k -> device i
        func oneChange(_ k: Int, base: Int) throws {
            switch k % 3 {
            case 0:
                let i = devices + base + k
                var file = Self.deviceFile(i)
                file.text = file.text.replacingOccurrences(of: "addresses: [\(Self.address(i))]", with: "addresses: [10.254.\(((base + k) >> 8) & 255).\((base + k) & 255)]")
                try write(file)
                edited[base + k] = i
            case 1:
                var i = ((base + k) * 7919) % devices
                while removed.contains(i) { i = (i + 1) % devices }
                try write(Self.deviceFile(i, sender: "scan\(base + k)@\(Self.departments[i % Self.departments.count].1)"), replacing: false)
                edited[base + k] = i
            default:
                var i = ((base + k) * 104_729) % devices
                while removed.contains(i) { i = (i + 1) % devices }
                removed.insert(i)
                let file = Self.deviceFile(i)
                try fm.removeItem(at: devicesDir.appendingPathComponent(file.department).appendingPathComponent(file.name))
                edited[base + k] = i
            }
        }
        func changeSeen(_ k: Int, base: Int) -> Bool {
            guard let i = edited[base + k] else { return false }
            let device = store.policy.device(id: "dev-\(i)")
            switch k % 3 {
            case 0: return device != nil
            case 1: return device?.senders.first?.description.hasPrefix("scan\(base + k)@") == true
            default: return device == nil
            }
        }
        _ = try timeReloads(1, everything: true, change: nil)  // the files read again after the first load's scan, if any
        counts = []
        let oneMs = try timeReloads(reloads, everything: false, change: { try oneChange($0, base: 0) }, check: { changeSeen($0, base: 0) })
        let oneCounts = counts
        // Nothing changed: what every poll of the watcher costs.
        counts = []
        let unchangedMs = try timeReloads(reloads, everything: false, change: nil)
        let unchangedCounts = counts
        // policy.yaml edited without changing what the device rules depend on.
        let policyText = try String(contentsOf: dir.appendingPathComponent(PolicyLoader.policyFile), encoding: .utf8)
        let policyMs = try timeReloads(reloads, everything: false) { k in
            try (policyText + "\n# edit \(k)\n").write(to: dir.appendingPathComponent(PolicyLoader.policyFile), atomically: true, encoding: .utf8)
        }
        // SIGHUP after one device file changed: every file listed and `stat`ed, the changed one read.
        counts = []
        let fullMs = try timeReloads(reloads, everything: true, change: { try oneChange($0, base: reloads) }, check: { changeSeen($0, base: reloads) })
        let fullCounts = counts
        // The floor of any reload that looks at every file: one listing per directory and one stat per file.
        let floorStart = clock.now
        let statted = try Self.listAndStat(devicesDir.path)
        let floorMs = ms(clock.now - floorStart)
        let expected = devices + 2 * ((reloads + 2) / 3) - 2 * (reloads / 3)
        guard statted == expected else { throw ValidationError("found \(statted) device files, expected \(expected)") }

        func p50(_ ms: [Double]) -> Double { ms[ms.count / 2] }  // `validate` makes reloads >= 1
        func mean(_ values: [Int]) -> Double { values.isEmpty ? 0 : Double(values.reduce(0, +)) / Double(values.count) }
        print(String(format: "RESULT label=policy devices=%d departments=%d iterations=%d decide_connect_ns=%.0f decide_rcpt_ns=%.0f decide_connect_cpu_ns=%.0f decide_rcpt_cpu_ns=%.0f generate_ms=%.0f cold_load_ms=%.1f cold_load_cpu_ms=%.1f reload_one_p50_ms=%.1f reload_one_max_ms=%.1f reloads=%d one_stats=%.1f one_parsed=%.1f one_patched=%d one_full_scans=%d reload_unchanged_p50_ms=%.1f reload_unchanged_max_ms=%.1f unchanged_stats=%.1f reload_policy_p50_ms=%.1f reload_sighup_one_p50_ms=%.1f reload_sighup_one_max_ms=%.1f sighup_stats=%.0f sighup_parsed=%.1f sighup_patched=%d scan_floor_ms=%.1f",
                     devices, Self.departments.count, iterations, conn.ns, rcpt.ns, conn.cpuNs, rcpt.cpuNs, generateMs, coldMs, coldCPUMs, p50(oneMs), oneMs.last ?? 0, reloads,
                     mean(oneCounts.map(\.filesStatted)), mean(oneCounts.map(\.filesParsed)), oneCounts.filter(\.catalogPatched).count,
                     oneCounts.filter(\.everyDeviceFile).count, p50(unchangedMs), unchangedMs.last ?? 0, mean(unchangedCounts.map(\.filesStatted)),
                     p50(policyMs), p50(fullMs), fullMs.last ?? 0, mean(fullCounts.map(\.filesStatted)), mean(fullCounts.map(\.filesParsed)),
                     fullCounts.filter(\.catalogPatched).count, floorMs))
    }

    /// This thread's CPU time, in ns: on a machine shared with other work, wall time also counts the time the
    /// thread waited for a CPU.
    func threadCPU() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
        return Double(ts.tv_sec) * 1e9 + Double(ts.tv_nsec)
    }

    /// The process's CPU time (user and system, every thread), in ns: the cold load reads on several threads.
    static func processCPU() -> Double {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func ns(_ t: timeval) -> Double { Double(t.tv_sec) * 1e9 + Double(t.tv_usec) * 1e3 }
        return ns(usage.ru_utime) + ns(usage.ru_stime)
    }

    /// readdir of each department directory and fstatat of each file in it, as directly as C would: what any scan of
    /// devices.d costs at the least. Returns the number of files.
    static func listAndStat(_ path: String) throws -> Int {
        guard let top = opendir(path) else { throw ValidationError("opendir \(path)") }
        defer { closedir(top) }
        var files = 0
        while let entry = readdir(top) {
            guard entry.pointee.d_type == DT_DIR else { continue }
            let name = withUnsafePointer(to: &entry.pointee.d_name) { $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) } }
            guard !name.hasPrefix("."), let dir = opendir(path + "/" + name) else { continue }
            defer { closedir(dir) }
            let fd = dirfd(dir)
            var info = stat()
            while let file = readdir(dir) {
                let ok = withUnsafePointer(to: &file.pointee.d_name) {
                    $0.withMemoryRebound(to: CChar.self, capacity: 256) { $0.pointee != CChar(UInt8(ascii: ".")) && fstatat(fd, $0, &info, AT_SYMLINK_NOFOLLOW) == 0 }
                }
                if ok { files += 1 }
            }
        }
        return files
    }
}
