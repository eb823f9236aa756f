import Foundation
import Logging
import PosternCore
import PosternPolicy
import PosternSMTP

/// What a department contact typed into the registration form.
public struct RegistrationForm: Sendable, Hashable {
    public var department = ""
    public var deviceID = ""
    public var model = ""
    public var location = ""
    public var address = ""
    public var sender = ""
    /// As typed: recipient rules separated by spaces or commas; empty for any internal recipient.
    public var recipients = ""
    public var contact = ""
    public var sunset = ""
    public var justification = ""

    public init() {}

    /// The recipient rules typed, one per entry.
    public var recipientRules: [String] {
        recipients.split(whereSeparator: { $0 == " " || $0 == "," || $0 == "\n" || $0 == "\r" || $0 == "\t" }).map(String.init)
    }

    public init(fields: [String: String]) {
        func f(_ k: String) -> String { (fields[k] ?? "").trimmingCharacters(in: .whitespacesAndNewlines) }
        department = f("department")
        deviceID = f("device")
        model = f("model")
        location = f("location")
        address = f("address")
        sender = f("sender")
        recipients = f("recipients")
        contact = f("contact")
        sunset = f("sunset")
        justification = f("justification")
    }
}

/// Errors by form field name (`device`, `address`, ...); `form` for the whole form.
public struct FieldErrors: Error, Sendable, Hashable {
    public var messages: [String: String] = [:]
    public init(_ messages: [String: String] = [:]) { self.messages = messages }
    public var isEmpty: Bool { messages.isEmpty }
    public subscript(_ field: String) -> String? {
        get { messages[field] }
        set { messages[field] = newValue }
    }
}

/// One device as a department page shows it.
public struct DeviceRow: Sendable, Hashable {
    public var device: RegisteredDevice
    public var effectiveSunset: EffectiveSunset
    /// Days from today to the last valid day: 0 on the last day, negative once expired.
    public var daysLeft: Int
    public var isExpired: Bool { daysLeft < 0 }
    /// Within the largest reminder period and not yet expired.
    public var isDueSoon: Bool
}

/// The registration workflow without HTTP: requests, approval through `DeviceFilesEditor` (one device file each),
/// rejection, revocation, sunset extension; every change goes to the audit log with who did it.
///
/// Pages read the gateway's own `PolicyStore` (the policy in force, not the files parsed again per view); a change
/// the desk writes reloads the store at once, so the gateway and the next page both see it.
public final class RegistrationDesk: Sendable {
    public let configuration: RegistrationConfiguration
    public let policies: PolicyStore
    public var policyDirectory: URL { policies.directory }
    public let requests: RequestStore
    let audit: AuditLog
    let now: @Sendable () -> Date

    public init(configuration: RegistrationConfiguration, policies: PolicyStore, audit: AuditLog,
                now: @escaping @Sendable () -> Date = { Date() }) throws {
        self.configuration = configuration
        self.policies = policies
        self.requests = try RequestStore(directory: URL(fileURLWithPath: configuration.stateDirectory))
        self.audit = audit
        self.now = now
    }

    public func policy() throws -> PolicySet {
        policies.policy
    }

    /// After a change to the device files: the store reads them now rather than at its next poll.
    func policyChanged(_ what: String) {
        policies.reload(reason: "registration page: \(what)")
    }

    /// The latest sunset the rules allow for a department's devices: the earlier of the global and the department date.
    public func latestSunset(department: String, policy: PolicySet) -> CalendarDate? {
        DeviceFieldRules.latestSunset(department: policy.departments[department], globalSunset: policy.globalSunset)?.date
    }

    /// Departments the user may see, with their names, sorted by id.
    public func departments(for user: WebUser, policy: PolicySet) -> [Department] {
        policy.departments.values.filter { user.isAdmin || user.departments.contains($0.id) }.sorted { $0.id < $1.id }
    }

    public func rows(for user: WebUser, policy: PolicySet) -> [DeviceRow] {
        let today = policy.today(now())
        let window = policy.reminderDays.first ?? 0
        return policy.devices.filter { user.mayAct(for: $0.department) }.map { device in
            let sunset = policy.effectiveSunset(for: device)
            let left = today.days(until: sunset.date)
            return DeviceRow(device: device, effectiveSunset: sunset, daysLeft: left, isDueSoon: left >= 0 && left <= window)
        }
    }

    public func visibleRequests(for user: WebUser) throws -> [RegistrationRequest] {
        try requests.all().filter { user.mayAct(for: $0.department) }.sorted { $0.requestedAt > $1.requestedAt }
    }

    // MARK: Changes

    /// Validates the form and stores a pending request.
    public func submit(_ form: RegistrationForm, by user: WebUser) throws -> Result<RegistrationRequest, FieldErrors> {
        let policy = try policy()
        var errors = FieldErrors()
        if form.department.isEmpty || policy.departments[form.department] == nil {
            errors["department"] = "Choose a department."
        } else if !user.mayAct(for: form.department) {
            errors["department"] = "You may only register devices for your own department."
        }
        if form.deviceID.isEmpty {
            errors["device"] = "Give the device a name."
        } else if form.deviceID.range(of: #"^[a-z0-9][a-z0-9-]{1,62}$"#, options: .regularExpression) == nil {
            errors["device"] = "Use 2–63 lower-case letters, digits and dashes, starting with a letter or digit."
        } else if policy.device(id: form.deviceID) != nil {
            errors["device"] = "A device with this name is already registered."
        }
        check(text: form.model, field: "model", max: 200, "Give the make and model.", into: &errors)
        check(text: form.location, field: "location", max: 200, "Say where the device stands (building, room).", into: &errors)
        check(text: form.justification, field: "justification", max: 2000, "Explain why the device cannot use TLS with authentication.",
              multiline: true, into: &errors)
        if form.address.isEmpty {
            errors["address"] = "Give the device's IP address."
        } else if let message = addressProblem(form.address, policy: policy) {
            errors["address"] = message
        }
        // The same rules the policy loader applies to each device file (and so `devices add` and `postern check`).
        if form.sender.isEmpty {
            errors["sender"] = "Give the address the device sends as."
        } else if form.sender.contains("@"), !form.sender.hasPrefix("@"), let pattern = SenderPattern(form.sender) {
            if let department = policy.departments[form.department],
               let problem = DeviceFieldRules.senderProblem(pattern, department: department, internalDomains: policy.internalDomains) {
                errors["sender"] = "The \(problem)."
            }
        } else {
            errors["sender"] = "\(form.sender) is not one mail address; give one, e.g. scanner@dept.example.edu."
        }
        if form.recipients.count > 1000 {
            errors["recipients"] = "List at most a few rules (1000 characters)."
        } else if let problem = form.recipientRules.lazy.compactMap({ DeviceFieldRules.freeTextProblem($0) }).first {
            errors["recipients"] = "The recipient rules: \(problem)."
        } else if let problem = DeviceFieldRules.recipientsProblem(form.recipientRules, internalDomains: policy.internalDomains) {
            errors["recipients"] = "The \(problem)."
        }
        if form.contact.isEmpty {
            errors["contact"] = "Give the mail address that gets the decision and the sunset reminders."
        } else if (try? AddressParser.parseMailbox(form.contact)) == nil {
            errors["contact"] = "\(form.contact) is not a mail address; give one, e.g. it-helpdesk@example.edu."
        } else if let problem = DeviceFieldRules.contactProblem(form.contact, internalDomains: policy.internalDomains) {
            errors["contact"] = "The contact must be internal: \(problem)."
        }
        if form.sunset.isEmpty {
            errors["sunset"] = "Choose the last day the device may send."
        } else if let message = sunsetProblem(form.sunset, department: form.department, policy: policy) {
            errors["sunset"] = message
        }

        guard errors.isEmpty else { return .failure(errors) }
        let request = try requests.modify { all -> Result<RegistrationRequest, FieldErrors> in
            if all.contains(where: { $0.status == .pending && $0.deviceID == form.deviceID }) {
                return .failure(FieldErrors(["device": "A request for a device with this name is already pending."]))
            }
            if all.contains(where: { $0.status == .pending && $0.address == normalizedAddress(form.address) }) {
                return .failure(FieldErrors(["address": "A request for this address is already pending."]))
            }
            let request = RegistrationRequest(
                id: Self.newID(), department: form.department, deviceID: form.deviceID, model: form.model, location: form.location,
                address: normalizedAddress(form.address), sender: form.sender,
                recipients: form.recipientRules.isEmpty ? nil : form.recipientRules, contact: form.contact, sunset: form.sunset,
                justification: form.justification, requestedBy: user.login, requestedAt: now(), status: .pending)
            all.append(request)
            return .success(request)
        }
        if case .success(let r) = request {
            record("registration_requested", user, ["request": "\(r.id)", "device": "\(r.deviceID)", "department": "\(r.department)",
                                                    "address": "\(r.address)", "sender": "\(r.sender)", "sunset": "\(r.sunset)"])
        }
        return request
    }

    /// Writes the requested device's file through `DeviceFilesEditor.add` (validated, locked, atomic).
    public func approve(requestID: String, by user: WebUser) throws -> RegisteredDevice {
        guard user.isAdmin else { throw RegistrationFailure("Only gateway admins approve requests.") }
        let device = try requests.modify { all -> RegisteredDevice in
            guard let i = all.firstIndex(where: { $0.id == requestID }) else { throw RegistrationFailure("There is no such request.") }
            let r = all[i]
            guard r.status == .pending else { throw RegistrationFailure("Request \(r.deviceID) was already \(r.status.rawValue).") }
            // The rules may have changed since the request was made.
            let policy = try policy()
            if let message = addressProblem(r.address, policy: policy) { throw RegistrationFailure("\(r.deviceID): \(message)") }
            if let message = sunsetProblem(r.sunset, department: r.department, policy: policy) { throw RegistrationFailure("\(r.deviceID): \(message)") }
            let registration = DeviceRegistration(id: r.deviceID, department: r.department, owner: r.contact, location: r.location,
                                                  addresses: [r.address], senders: [r.sender], sunset: CalendarDate(r.sunset),
                                                  note: "model: \(r.model); web request \(r.id) by \(r.requestedBy), approved by \(user.login)",
                                                  recipients: r.recipients ?? [])
            switch DeviceFilesEditor.add(registration, directory: policyDirectory, now: now(), reader: policies.reader) {
            case .failure(let errors):
                throw RegistrationFailure("\(r.deviceID) was not registered: " + errors.issues.map(\.message).joined(separator: "; "))
            case .success(let device):
                all[i].status = .approved
                all[i].decidedBy = user.login
                all[i].decidedAt = now()
                return device
            }
        }
        policyChanged("\(device.id) approved")
        record("registration_approved", user, ["request": "\(requestID)", "device": "\(device.id)", "department": "\(device.department)",
                                               "address": "\(device.addresses.map(\.description).joined(separator: ","))",
                                               "sunset": "\(device.sunset)"])
        return device
    }

    /// Rejects a pending request with a reason, which is kept, shown in the history and mailed to the contact.
    /// A missing or unusable reason throws `FieldErrors` for `reason`.
    public func reject(requestID: String, reason: String, by user: WebUser) throws -> RegistrationRequest {
        guard user.isAdmin else { throw RegistrationFailure("Only gateway admins reject requests.") }
        let reason = reason.trimmingCharacters(in: .whitespacesAndNewlines)
        var errors = FieldErrors()
        check(text: reason, field: "reason", max: 500, "Give a reason; the contact gets it by mail.", multiline: true, into: &errors)
        guard errors.isEmpty else { throw errors }
        let request = try requests.modify { all -> RegistrationRequest in
            guard let i = all.firstIndex(where: { $0.id == requestID }) else { throw RegistrationFailure("There is no such request.") }
            guard all[i].status == .pending else { throw RegistrationFailure("Request \(all[i].deviceID) was already \(all[i].status.rawValue).") }
            all[i].status = .rejected
            all[i].decidedBy = user.login
            all[i].decidedAt = now()
            all[i].reason = reason
            return all[i]
        }
        record("registration_rejected", user, ["request": "\(request.id)", "device": "\(request.deviceID)", "department": "\(request.department)",
                                               "reason": "\(request.reason ?? "")"])
        return request
    }

    /// Marks the device's file revoked (`DeviceFilesEditor.revoke`): it stays, with the day, the admin and the reason,
    /// and the gateway refuses the device naming the revocation. A reason is required.
    public func revoke(deviceID: String, reason: String, by user: WebUser) throws -> RegisteredDevice {
        guard user.isAdmin else { throw RegistrationFailure("Only gateway admins revoke devices.") }
        let reason = reason.trimmingCharacters(in: .whitespacesAndNewlines)
        var errors = FieldErrors()
        check(text: reason, field: "reason", max: 500, "Give a reason; it stays in the device's file.", into: &errors)
        guard errors.isEmpty else { throw errors }
        switch DeviceFilesEditor.revoke(id: deviceID, by: user.login, reason: reason, directory: policyDirectory, now: now(), reader: policies.reader) {
        case .failure(let errors): throw RegistrationFailure("\(deviceID) was not revoked: " + errors.issues.map(\.message).joined(separator: "; "))
        case .success(let device):
            policyChanged("\(device.id) revoked")
            record("device_revoked", user, ["device": "\(device.id)", "department": "\(device.department)",
                                             "address": "\(device.addresses.map(\.description).joined(separator: ","))", "reason": "\(reason)"])
            return device
        }
    }

    /// Sets a device's own sunset; the date must be today or later and not later than the rules allow.
    public func extend(deviceID: String, to text: String, by user: WebUser) throws -> RegisteredDevice {
        guard user.isAdmin else { throw RegistrationFailure("Only gateway admins extend sunsets.") }
        let policy = try policy()
        guard let device = policy.device(id: deviceID) else { throw RegistrationFailure("\(deviceID) is not registered.") }
        if let message = sunsetProblem(text, department: device.department, policy: policy) { throw RegistrationFailure("\(deviceID): \(message)") }
        guard let date = CalendarDate(text) else { throw RegistrationFailure("\(deviceID): Give a date as YYYY-MM-DD.") }  // sunsetProblem checked it
        switch DeviceFilesEditor.setSunset(id: deviceID, date: date, directory: policyDirectory, now: now(), reader: policies.reader) {
        case .failure(let errors): throw RegistrationFailure("\(deviceID): " + errors.issues.map(\.message).joined(separator: "; "))
        case .success(let updated):
            policyChanged("\(deviceID) sunset changed")
            record("sunset_changed", user, ["device": "\(deviceID)", "department": "\(device.department)",
                                            "from": "\(device.sunset)", "to": "\(date)"])
            return updated
        }
    }

    // MARK: Validation

    func check(text: String, field: String, max: Int, _ message: String, multiline: Bool = false, into errors: inout FieldErrors) {
        if text.isEmpty {
            errors[field] = message
        } else if text.count > max {
            errors[field] = "At most \(max) characters."
        } else if let problem = DeviceFieldRules.freeTextProblem(text, allowLineBreaks: multiline) {
            errors[field] = "Plain text only: \(problem)."
        }
    }

    /// Why the approving admin should look at a request's sender twice: it is not in the department's own
    /// domains (the department lists none, so only the internal domains bound it). nil when it is.
    public func senderNote(_ request: RegistrationRequest, policy: PolicySet) -> String? {
        guard let department = policy.departments[request.department], let pattern = SenderPattern(request.sender),
              DeviceFieldRules.isOutsideOwnDomains(pattern, department: department) else { return nil }
        if department.domains.isEmpty {
            return "Not in a domain of \(department.name)'s own: departments.yaml lists none for \(department.id), so any internal address passes."
        }
        return "Not in \(department.name)'s domains (\(department.domains.map(\.description).joined(separator: ", ")))."
    }

    func normalizedAddress(_ text: String) -> String {
        IPAddress(text).map(\.description) ?? text
    }

    /// nil when the text is one address inside the campus ranges that no registered device already uses.
    func addressProblem(_ text: String, policy: PolicySet) -> String? {
        guard !text.contains("/"), let ip = IPAddress(text) else {
            return "Give one IPv4 or IPv6 address (no range)."
        }
        guard configuration.campusRanges.contains(where: { $0.contains(ip) }) else {
            return "\(ip) is outside the campus networks (\(configuration.campusRanges.map(\.description).joined(separator: ", ")))."
        }
        if let other = policy.device(forAddress: ip.description) {
            if let revocation = other.revocation {
                return "\(ip) belongs to device \(other.id), revoked on \(revocation.date); its file must be deleted before the address is used again."
            }
            return "\(ip) is already used by device \(other.id)."
        }
        return nil
    }

    /// The same rules and words as `postern devices add` and the policy files (`CalendarDate.parse`,
    /// `DeviceFieldRules.sunsetProblem`), as a sentence.
    func sunsetProblem(_ text: String, department: String, policy: PolicySet) -> String? {
        guard !text.isEmpty else { return "Give a date as YYYY-MM-DD." }
        let problem: String?
        switch CalendarDate.parse(text) {
        case .failure(let failure): problem = failure.message
        case .success(let date):
            problem = DeviceFieldRules.sunsetProblem(date, department: policy.departments[department], globalSunset: policy.globalSunset,
                                                     today: policy.today(now()))
        }
        return problem.map { $0.prefix(1).uppercased() + $0.dropFirst() + "." }
    }

    func record(_ event: String, _ user: WebUser, _ fields: Logger.Metadata) {
        var fields = fields
        fields["actor"] = "\(user.login)"
        fields["role"] = "\(user.isAdmin ? "admin" : "department")"
        audit.event(event, fields)
    }

    static func newID() -> String {
        var g = SystemRandomNumberGenerator()
        return (0..<6).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
    }
}
