import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A department's request to register a device; pending until a gateway admin approves or rejects it.
public struct RegistrationRequest: Codable, Sendable, Hashable {
    public enum Status: String, Codable, Sendable {
        case pending, approved, rejected
    }

    public var id: String
    public var department: String
    public var deviceID: String
    public var model: String
    public var location: String
    public var address: String
    public var sender: String
    public var contact: String
    /// YYYY-MM-DD, the requested last valid day.
    public var sunset: String
    public var justification: String
    public var requestedBy: String
    public var requestedAt: Date
    public var status: Status
    public var decidedBy: String?
    public var decidedAt: Date?
    public var reason: String?
}

/// Who is logged in to the registration page and what they may do.
public struct WebUser: Sendable, Hashable {
    public var login: String
    public var dn: String
    public var isAdmin: Bool
    /// Departments whose devices this user sees and registers (all of them for admins).
    public var departments: [String]

    public init(login: String, dn: String, isAdmin: Bool, departments: [String]) {
        self.login = login
        self.dn = dn
        self.isAdmin = isAdmin
        self.departments = departments
    }

    public func mayAct(for department: String) -> Bool { isAdmin || departments.contains(department) }
}

/// Maps directory group DNs to roles. A configured name without `=` matches a group's first RDN value
/// (`dept-it` matches `cn=dept-it,ou=groups,...`); a DN matches that DN. Case and spaces around `,`/`=` do not matter.
public struct RoleMap: Sendable {
    public var adminGroups: [String]
    public var departmentGroups: [String: [String]]

    public init(adminGroups: [String], departmentGroups: [String: [String]]) {
        self.adminGroups = adminGroups
        self.departmentGroups = departmentGroups
    }

    /// nil when the user has no role on the registration page.
    public func user(login: String, dn: String, groups: [String]) -> WebUser? {
        let isAdmin = adminGroups.contains { name in groups.contains { Self.matches(name, $0) } }
        let departments = departmentGroups.filter { _, names in names.contains { name in groups.contains { Self.matches(name, $0) } } }
            .keys.sorted()
        guard isAdmin || !departments.isEmpty else { return nil }
        return WebUser(login: login, dn: dn, isAdmin: isAdmin, departments: departments)
    }

    static func normalize(_ dn: String) -> [String] {
        dn.split(separator: ",", omittingEmptySubsequences: false).map { rdn in
            rdn.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }.joined(separator: "=")
        }
    }

    static func matches(_ configured: String, _ groupDN: String) -> Bool {
        let group = normalize(groupDN)
        if configured.contains("=") { return normalize(configured) == group }
        guard let first = group.first, let eq = first.firstIndex(of: "=") else { return false }
        return first[first.index(after: eq)...] == configured.trimmingCharacters(in: .whitespaces).lowercased()
    }
}

/// Pending and decided requests in one JSON file, read and rewritten whole under an advisory lock, replaced atomically.
public struct RequestStore: Sendable {
    public let directory: URL
    var file: URL { directory.appendingPathComponent("requests.json") }

    public init(directory: URL) throws {
        self.directory = directory
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    public func all() throws -> [RegistrationRequest] {
        try locked { try read() }
    }

    /// Runs `body` on the requests under the lock and writes them back if it returns normally.
    public func modify<T>(_ body: (inout [RegistrationRequest]) throws -> T) throws -> T {
        try locked {
            var requests = try read()
            let before = requests
            let result = try body(&requests)
            if requests != before { try write(requests) }
            return result
        }
    }

    private func read() throws -> [RegistrationRequest] {
        guard FileManager.default.fileExists(atPath: file.path) else { return [] }
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return try decoder.decode([RegistrationRequest].self, from: Data(contentsOf: file))
    }

    private func write(_ requests: [RegistrationRequest]) throws {
        let encoder = JSONEncoder()
        encoder.dateEncodingStrategy = .iso8601
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        // Foundation's atomic write: a temporary file renamed over the old one.
        try encoder.encode(requests).write(to: file, options: .atomic)
    }

    private func locked<T>(_ body: () throws -> T) throws -> T {
        let path = directory.appendingPathComponent(".requests.lock").path
        let fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw RegistrationFailure("cannot open \(path)") }
        defer { close(fd) }
        guard flock(fd, LOCK_EX) == 0 else { throw RegistrationFailure("cannot lock \(path)") }
        defer { flock(fd, LOCK_UN) }
        return try body()
    }
}

/// A refusal or failure shown to the user as a message (never a 500).
public struct RegistrationFailure: Error, Sendable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
