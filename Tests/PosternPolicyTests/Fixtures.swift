import Foundation
import PosternPolicy
import PosternSMTP

/// Policy files written to a fresh temporary directory, in the shapes the shipped files use.
struct PolicyFixture {
    let directory: URL

    static let policyYAML = """
        timezone: Europe/Berlin
        internal-domains:
          - example.edu
          - "*.example.edu"
        sunset:
          global: 2027-08-31
          reminder-days: [30, 7, 1]
        listeners:
          submission: {enabled: true, max-message-size: 50M}
          submissions: {enabled: true}
          device: {enabled: true, max-message-size: 20M}
        service-accounts:
          - login: svc-helpdesk
            domains: [example.edu, "*.example.edu"]
          - login: svc-lists
            domains: [lists.example.edu]
            null-sender: true
        """

    static let departmentsYAML = """
        departments:
          - id: it
            name: IT Services
          - id: chem
            name: Chemistry
            contact: it-chem@chem.example.edu
            sunset: 2027-03-31
          - id: phys
            name: Physics
        """

    /// The devices of devices.d, by path in it (`department/id.yaml`).
    static let deviceFiles: [String: String] = [
        "it/demo-scanner.yaml": """
            id: demo-scanner
            department: it
            owner: it-helpdesk@example.edu
            location: loopback
            addresses: [127.0.0.1]
            senders: [scanner@example.edu]
            registered: 2026-01-15
            sunset: 2027-08-31
            """,
        "chem/chem-scanner-1.yaml": """
            # Chemistry's first scanner
            id: chem-scanner-1
            department: chem
            owner: j.doe@chem.example.edu
            addresses: [10.1.2.3]
            senders: [scan@chem.example.edu, lab.chem.example.edu]
            registered: 2023-09-12
            sunset: 2027-12-31
            max-message-size: 10M
            """,
        "phys/phys-plotter.yaml": """
            id: phys-plotter
            department: phys
            owner: m.curie@phys.example.edu
            addresses: ["2001:db8:2::40", 10.2.0.0/24]
            senders: ["*.phys.example.edu"]
            registered: 2025-02-10
            sunset: 2026-06-30
            """,
        "phys/phys-old.yaml": """
            id: phys-old
            department: phys
            owner: m.curie@phys.example.edu
            addresses: [10.2.9.9]
            senders: [phys.example.edu]
            registered: 2019-04-01
            sunset: 2025-12-31
            """,
    ]

    /// The same devices as the devices.yaml of earlier versions (for `postern devices migrate`).
    static let legacyDevicesYAML = """
        # keep this comment
        devices:
          - id: demo-scanner
            department: it
            owner: it-helpdesk@example.edu
            location: loopback
            addresses: [127.0.0.1]
            senders: [scanner@example.edu]
            registered: 2026-01-15
            sunset: 2027-08-31
          - id: chem-scanner-1
            department: chem
            owner: j.doe@chem.example.edu
            addresses: [10.1.2.3]
            senders: [scan@chem.example.edu, lab.chem.example.edu]
            registered: 2023-09-12
            sunset: 2027-12-31
            max-message-size: 10M
          - id: phys-plotter
            department: phys
            owner: m.curie@phys.example.edu
            addresses: ["2001:db8:2::40", 10.2.0.0/24]
            senders: ["*.phys.example.edu"]
            registered: 2025-02-10
            sunset: 2026-06-30
          - id: phys-old
            department: phys
            owner: m.curie@phys.example.edu
            addresses: [10.2.9.9]
            senders: [phys.example.edu]
            registered: 2019-04-01
            sunset: 2025-12-31
        """

    /// `devices`: device files by path in devices.d (`department/id.yaml`); `extraFiles`: other files by path in the
    /// policy directory.
    init(policy: String = Self.policyYAML, departments: String = Self.departmentsYAML, devices: [String: String] = Self.deviceFiles,
         extraFiles: [String: String] = [:]) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-policy-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("devices.d"), withIntermediateDirectories: true)
        try Data(policy.utf8).write(to: directory.appendingPathComponent("policy.yaml"))
        try Data(departments.utf8).write(to: directory.appendingPathComponent("departments.yaml"))
        for (path, text) in devices { try write(text, to: "devices.d/" + path) }
        for (path, text) in extraFiles { try write(text, to: path) }
    }

    /// The display path of a file in the policy directory, as issues name it.
    func display(_ path: String) -> String { directory.relativePath + "/" + path }

    func url(_ path: String) -> URL { directory.appendingPathComponent(path) }

    /// Writes `text` to `path` in the policy directory, in place (the file keeps its inode).
    func write(_ text: String, to path: String) throws {
        try FileManager.default.createDirectory(at: url(path).deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data(text.utf8).write(to: url(path))
    }

    func read(_ path: String) throws -> String { try String(contentsOf: url(path), encoding: .utf8) }

    func load() throws -> PolicySet { try PolicyLoader.load(directory: directory).get() }

    func errors() -> [PolicyIssue] {
        switch PolicyLoader.load(directory: directory) {
        case .success: return []
        case .failure(let e): return e.issues
        }
    }

    /// Every file under devices.d (path in it: contents), hidden ones included.
    func deviceTree() throws -> [String: String] {
        let root = url("devices.d")
        var out: [String: String] = [:]
        guard let walker = FileManager.default.enumerator(atPath: root.path) else { return out }
        for case let path as String in walker {
            var isDirectory: ObjCBool = false
            if FileManager.default.fileExists(atPath: root.appendingPathComponent(path).path, isDirectory: &isDirectory), !isDirectory.boolValue {
                out[path] = (try? String(contentsOf: root.appendingPathComponent(path), encoding: .utf8)) ?? "<unreadable>"
            }
        }
        return out
    }

    func remove() { try? FileManager.default.removeItem(at: directory) }
}

let berlin = TimeZone(identifier: "Europe/Berlin")!

/// An instant given as a wall-clock time in Berlin.
func berlinTime(_ date: String, _ hour: Int = 12, _ minute: Int = 0, _ second: Int = 0) -> Date {
    CalendarDate(date)!.startOfDay(in: berlin).addingTimeInterval(Double(hour * 3600 + minute * 60 + second))
}

func path(_ text: String) -> Mailbox { try! AddressParser.parsePath(Substring(text)) }
func reverse(_ text: String) -> ReversePath { try! AddressParser.parseReversePath(Substring(text)) }
