import Foundation
import PosternCore
import PosternDirectory
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
    /// The device's `recipients:` rules (`owner`, an address, `*@a.domain`); nil or empty: any internal recipient.
    public var recipients: [String]? = nil
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

/// Maps directory group DNs to roles. A configured full DN matches that DN (case and spaces around `,`/`=` do
/// not matter); a bare name (`dept-it`) matches the group of that first RDN value directly under the directory's
/// `group-base`, and nothing without one (`GroupReference`), so that a same-named group in an OU users manage
/// does not make its members admins.
public struct RoleMap: Sendable {
    public var adminGroups: [GroupReference]
    public var departmentGroups: [String: [GroupReference]]

    public init(adminGroups: [String], departmentGroups: [String: [String]], groupBase: String?) {
        self.adminGroups = adminGroups.map { GroupReference($0, base: groupBase) }
        self.departmentGroups = departmentGroups.mapValues { $0.map { GroupReference($0, base: groupBase) } }
    }

    /// nil when the user has no role on the registration page.
    public func user(login: String, dn: String, groups: [String]) -> WebUser? {
        let isAdmin = adminGroups.contains { reference in groups.contains { reference.matches($0) } }
        let departments = departmentGroups.filter { _, references in references.contains { reference in groups.contains { reference.matches($0) } } }
            .keys.sorted()
        guard isAdmin || !departments.isEmpty else { return nil }
        return WebUser(login: login, dn: dn, isAdmin: isAdmin, departments: departments)
    }
}

/// Pending and decided requests in one JSON file, read and rewritten whole under an advisory lock, replaced durably
/// (`DurableFile`: a crash leaves the old list or the new one).
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
        let data = try encoder.encode(requests)
        try DurableFile.write(to: file.path) { output throws(DurableWriteError) in try output.write(data) }
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
