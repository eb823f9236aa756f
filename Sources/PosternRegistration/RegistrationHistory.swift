import Foundation

/// What the history page searches for: parts of the device name and the contact address (any case), a department
/// id and a status; an empty field matches everything.
public struct HistorySearch: Sendable, Hashable {
    public var device = ""
    public var department = ""
    public var contact = ""
    /// `approved`, `rejected`, or empty for both.
    public var status = ""

    public init(device: String = "", department: String = "", contact: String = "", status: String = "") {
        self.device = device
        self.department = department
        self.contact = contact
        self.status = status
    }

    /// From the page's query string (`?device=…&department=…&contact=…&status=…`).
    public init(query: [String: String]) {
        func f(_ key: String) -> String { String((query[key] ?? "").trimmingCharacters(in: .whitespacesAndNewlines).prefix(200)) }
        self.init(device: f("device"), department: f("department"), contact: f("contact"), status: f("status"))
    }

    public var isEmpty: Bool { device.isEmpty && department.isEmpty && contact.isEmpty && status.isEmpty }

    public func matches(_ r: RegistrationRequest) -> Bool {
        (device.isEmpty || r.deviceID.localizedCaseInsensitiveContains(device))
            && (department.isEmpty || r.department == department)
            && (contact.isEmpty || r.contact.localizedCaseInsensitiveContains(contact))
            && (status.isEmpty || r.status.rawValue == status)
    }
}

extension RegistrationDesk {
    /// Requests that wait for a decision and that the user may see, newest first.
    public func pendingRequests(for user: WebUser) throws -> [RegistrationRequest] {
        try visibleRequests(for: user).filter { $0.status == .pending }
    }

    /// Decided requests that the user may see and that match `search`, the latest decision first.
    public func history(for user: WebUser, matching search: HistorySearch) throws -> [RegistrationRequest] {
        try visibleRequests(for: user).filter { $0.status != .pending && search.matches($0) }
            .sorted { ($0.decidedAt ?? $0.requestedAt) > ($1.decidedAt ?? $1.requestedAt) }
    }

    /// One request the user may see.
    public func request(id: String, for user: WebUser) throws -> RegistrationRequest {
        guard let r = try requests.all().first(where: { $0.id == id }), user.mayAct(for: r.department) else {
            throw RegistrationFailure("There is no such request.")
        }
        return r
    }
}
