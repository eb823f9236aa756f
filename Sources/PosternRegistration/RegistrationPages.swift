import Foundation
import Hummingbird
import NIOCore
import PosternPolicy

/// The pages: what each template gets. Every value goes through Mustache's `{{…}}`, which escapes it for HTML.
extension RegistrationServer {
    enum RequestAction { case approve, reject }
    enum DeviceAction { case sunset, revoke }

    func render(_ template: String, _ context: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        let html = templates.render(context, withTemplate: template) ?? "template \(template) missing"
        return Response(status: status, headers: [.contentType: "text/html; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    /// A page with the header's and footer's context: the university, help and contact, who is logged in, the
    /// notice or problem a POST left, and `nav` (the header link to mark as the current page).
    func page(_ template: String, title: String, _ s: WebSession?, flash: Flash? = nil, nav: String = "", _ extra: [String: Any],
              status: HTTPResponse.Status = .ok) -> Response {
        let c = desk.configuration
        var context: [String: Any] = ["title": title, "nav": [nav: true],
                                      "site": ["university": c.universityName, "help": c.helpURL, "contact": c.contact]]
        if let s {
            context["user"] = ["login": s.user.login, "role": s.user.isAdmin ? "gateway admin" : "contact for \(s.user.departments.joined(separator: ", "))"]
            context["csrf"] = s.csrf
            context["admin"] = s.user.isAdmin
        }
        if let notice = flash?.notice { context["notice"] = notice }
        if let problem = flash?.problem { context["problem"] = problem }
        context.merge(extra) { _, new in new }
        return render(template, context, status: status)
    }

    func loginPage(login: String = "", problem: String? = nil, status: HTTPResponse.Status = .ok) -> Response {
        let csrf = randomToken()
        var response = page("login", title: "Log in", nil, flash: Flash(problem: problem), ["csrf": csrf, "login": login], status: status)
        response.setCookie(Cookie(name: Self.loginCookie, value: csrf, path: "/login", secure: true, httpOnly: true, sameSite: .strict))
        return response
    }

    func message(_ s: WebSession, title: String, text: String, status: HTTPResponse.Status) -> Response {
        page("message", title: title, s, ["message": text], status: status)
    }

    func helpPage(_ s: WebSession?) -> Response {
        let policy = try? desk.policy()
        return page("help", title: "Help", s, nav: "help", [
            "campusRanges": desk.configuration.campusRanges.map(\.description).joined(separator: ", "),
            "internalDomains": policy?.internalDomains.map(\.description).joined(separator: ", ") ?? "",
            "latest": policy?.globalSunset?.description ?? "",
        ])
    }

    func registerPage(_ s: WebSession, flash: Flash?) -> Response {
        guard let policy = try? desk.policy() else { return message(s, title: "Unavailable", text: "The policy files do not load.", status: .serviceUnavailable) }
        let departments = desk.departments(for: s.user, policy: policy)
        var form = flash?.form ?? RegistrationForm()
        if form.department.isEmpty { form.department = departments.first?.id ?? "" }
        // A fresh form suggests the latest date the rules allow; a refused one keeps what was typed, even nothing.
        if flash?.form == nil { form.sunset = desk.latestSunset(department: form.department, policy: policy)?.description ?? "" }
        let latest = departments.compactMap { d in desk.latestSunset(department: d.id, policy: policy).map { (d, $0) } }
        func each<T>(_ values: [(Department, T)], _ text: (T) -> String) -> String {
            values.count == 1 ? values.map { text($0.1) }.joined() : values.map { "\($0.0.id): \(text($0.1))" }.joined(separator: "; ")
        }
        let senderDomains = departments.map { d in (d, DeviceFieldRules.senderDomains(department: d, internalDomains: policy.internalDomains)) }
        let errors = flash?.errors ?? FieldErrors()
        var context: [String: Any] = [
            "departments": departments.map { ["id": $0.id, "name": $0.name, "selected": $0.id == form.department] as [String: Any] },
            "form": ["deviceID": form.deviceID, "model": form.model, "location": form.location, "address": form.address,
                     "sender": form.sender, "recipients": form.recipients, "contact": form.contact, "sunset": form.sunset, "justification": form.justification],
            "errors": errors.messages,
            "devicePlaceholder": "\(form.department.isEmpty ? "dept" : form.department)-scanner-1",
            "campusRanges": desk.configuration.campusRanges.map(\.description).joined(separator: ", "),
            "senderDomains": each(senderDomains) { $0.map(\.description).joined(separator: ", ") },
            "internalDomains": policy.internalDomains.map(\.description).joined(separator: ", "),
            "recipientExample": departments.first?.domains.first?.domain ?? policy.internalDomains.first?.domain ?? "example.edu",
            "latest": each(latest) { $0.description },
            "sunsetMin": policy.today(desk.now()).description,
            "sunsetMax": latest.map(\.1).max()?.description ?? "",
        ]
        if !errors.isEmpty { context["problem"] = "The request was not sent; see the fields marked below." }
        return page("register", title: "Register a device", s, flash: flash, nav: "register", context)
    }

    /// The pending requests (with Approve and Reject links for admins) and each department's devices.
    func devicesPage(_ s: WebSession, flash: Flash? = nil) -> Response {
        let policy: PolicySet
        do {
            policy = try desk.policy()
        } catch {
            return message(s, title: "Unavailable", text: "\(error)", status: .serviceUnavailable)
        }
        let rows = desk.rows(for: s.user, policy: policy)
        let departments = desk.departments(for: s.user, policy: policy).map { d -> [String: Any] in
            let devices = rows.filter { $0.device.department == d.id }.map { row -> [String: Any] in
                let revocation = row.device.revocation
                let days = revocation.map { "on \($0.date) by \($0.by): \($0.reason)" }
                    ?? (row.isExpired ? "expired \(-row.daysLeft) day\(row.daysLeft == -1 ? "" : "s") ago"
                        : row.daysLeft == 0 ? "today is the last day" : "\(row.daysLeft) day\(row.daysLeft == 1 ? "" : "s") left")
                return ["id": row.device.id, "location": row.device.location, "owner": row.device.owner,
                        "addresses": row.device.addresses.map(\.description).joined(separator: ", "),
                        "senders": row.device.senders.map(\.description).joined(separator: ", "),
                        "sunset": row.effectiveSunset.date.description, "sunsetSource": Self.source(row.effectiveSunset),
                        "daysText": days, "revoked": revocation != nil,
                        "statusText": revocation != nil ? "revoked" : row.isExpired ? "expired" : row.isDueSoon ? "ends soon" : "active",
                        "rowClass": revocation != nil || row.isExpired ? "expired" : row.isDueSoon ? "due-soon" : "ok"]
            }
            return ["id": d.id, "name": d.name, "devices": devices,
                    "latest": desk.latestSunset(department: d.id, policy: policy)?.description ?? "no date",
                    "reminderDays": policy.reminderDays.first ?? 0]
        }
        let visible = (try? desk.visibleRequests(for: s.user)) ?? []
        let pending = visible.filter { $0.status == .pending }.map { requestContext($0, policy: policy) }
        let decided = visible.count - pending.count
        return page("devices", title: "Devices", s, flash: flash, nav: "devices", [
            "departments": departments, "requests": pending, "hasRequests": !pending.isEmpty,
            "decidedText": decided == 0 ? "" : "\(decided) decided request\(decided == 1 ? " is" : "s are") in the history.",
        ])
    }

    /// The confirmation page for approving, or the reason form for rejecting, one pending request (admins only).
    func decisionPage(_ s: WebSession, requestID: String, action: RequestAction, flash: Flash?) throws -> Response {
        guard s.user.isAdmin else { throw RegistrationFailure("Only gateway admins \(action == .approve ? "approve" : "reject") requests.") }
        let r = try desk.request(id: requestID, for: s.user)
        guard r.status == .pending else { throw RegistrationFailure("Request \(r.deviceID) was already \(r.status.rawValue).") }
        let policy = try? desk.policy()
        return page("decision", title: action == .approve ? "Approve \(r.deviceID)" : "Reject \(r.deviceID)", s, flash: flash, nav: "devices", [
            "request": requestContext(r, policy: policy), "approve": action == .approve, "reject": action == .reject,
            "reason": flash?.reason ?? "", "errors": flash?.errors.messages ?? [:],
        ])
    }

    /// The form for a new last day, or the confirmation page for revoking, of one registered device (admins only).
    func devicePage(_ s: WebSession, deviceID: String, action: DeviceAction, flash: Flash?) throws -> Response {
        guard s.user.isAdmin else { throw RegistrationFailure("Only gateway admins \(action == .sunset ? "change sunsets" : "revoke devices").") }
        let policy = try desk.policy()
        guard let device = policy.device(id: deviceID) else { throw RegistrationFailure("\(deviceID) is not registered.") }
        if let revocation = device.revocation {
            throw RegistrationFailure("\(device.id) was revoked on \(revocation.date) by \(revocation.by): \(revocation.reason)")
        }
        let sunset = policy.effectiveSunset(for: device)
        return page("device", title: action == .sunset ? "Last day of \(device.id)" : "Revoke \(device.id)", s, flash: flash, nav: "devices", [
            "device": ["id": device.id, "department": policy.departments[device.department]?.name ?? device.department, "location": device.location,
                       "owner": device.owner, "addresses": device.addresses.map(\.description).joined(separator: ", "),
                       "senders": device.senders.map(\.description).joined(separator: ", "), "sunset": device.sunset.description,
                       "recipients": device.recipients.isEmpty ? "any university address" : PolicySet.recipientsText(device),
                       "effectiveSunset": sunset.date.description, "sunsetSource": Self.source(sunset)],
            "changeSunset": action == .sunset, "revoke": action == .revoke,
            "sunsetMin": policy.today(desk.now()).description,
            "sunsetMax": desk.latestSunset(department: device.department, policy: policy)?.description ?? "",
            "reason": flash?.reason ?? "", "errors": flash?.errors.messages ?? [:],
        ])
    }

    /// Decided requests, searchable by device, department, contact and status.
    func historyPage(_ s: WebSession, search: HistorySearch, flash: Flash?) throws -> Response {
        let policy = try? desk.policy()
        let found = try desk.history(for: s.user, matching: search)
        let shown = found.prefix(200)
        let departments = (policy.map { desk.departments(for: s.user, policy: $0) } ?? []).map {
            ["id": $0.id, "name": $0.name, "selected": $0.id == search.department] as [String: Any]
        }
        let count = found.count == 0 ? (search.isEmpty ? "No request has been decided yet." : "No decided request matches.")
            : "\(found.count) decided request\(found.count == 1 ? "" : "s")\(search.isEmpty ? "" : " match")\(found.count > shown.count ? "; the latest \(shown.count) are shown" : "")."
        return page("history", title: "History", s, flash: flash, nav: "history", [
            "search": ["device": search.device, "contact": search.contact, "approved": search.status == "approved", "rejected": search.status == "rejected"],
            "departmentOptions": departments, "filtered": !search.isEmpty, "countText": count,
            "rows": shown.map { requestContext($0, policy: policy) }, "hasRows": !shown.isEmpty,
        ])
    }

    func requestContext(_ r: RegistrationRequest, policy: PolicySet?) -> [String: Any] {
        let zone = policy?.timeZone ?? TimeZone(identifier: "UTC") ?? .current
        var item: [String: Any] = ["senderClass": "", "id": r.id, "deviceID": r.deviceID, "department": r.department,
                                   "departmentName": policy?.departments[r.department]?.name ?? r.department, "model": r.model,
                                   "location": r.location, "address": r.address, "sender": r.sender, "contact": r.contact, "sunset": r.sunset,
                                   "justification": r.justification, "requestedBy": r.requestedBy, "requestedAt": Self.when(r.requestedAt, zone),
                                   "status": r.status.rawValue]
        if let recipients = r.recipients, !recipients.isEmpty { item["recipients"] = recipients.joined(separator: " ") }
        if let d = r.decidedBy { item["decidedBy"] = d }
        if let at = r.decidedAt { item["decidedAt"] = Self.when(at, zone) }
        // For the tables: the day kept on one line (a hyphen is a line break opportunity), the time after it.
        for (key, date) in [("requested", Optional(r.requestedAt)), ("decided", r.decidedAt)] {
            guard let text = date.map({ Self.when($0, zone) }), let space = text.firstIndex(of: " ") else { continue }
            item[key + "Day"] = String(text[..<space])
            item[key + "Time"] = String(text[text.index(after: space)...])
        }
        if let reason = r.reason { item["reason"] = reason }
        if let policy, let note = desk.senderNote(r, policy: policy) {
            // For the approver: the sender is not in the department's own domains.
            item["senderClass"] = "outside-domains"
            item["senderNote"] = note
        }
        return item
    }

    /// A time as the policy's time zone shows it, to the minute.
    static func when(_ date: Date, _ zone: TimeZone) -> String {
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.timeZone = zone
        formatter.dateFormat = "yyyy-MM-dd HH:mm"
        return formatter.string(from: date)
    }

    static func source(_ s: EffectiveSunset) -> String {
        switch s.source {
        case .global: return "global rule"
        case .department(let d): return "department \(d)"
        case .device: return "device"
        }
    }

    func csv(_ s: WebSession) throws -> Response {
        let policy = try desk.policy()
        var lines = ["device,department,owner,location,addresses,senders,registered,sunset,effective_sunset,sunset_rule,days_left,status"]
        for row in desk.rows(for: s.user, policy: policy) {
            let d = row.device
            let fields = [d.id, d.department, d.owner, d.location, d.addresses.map(\.description).joined(separator: " "),
                          d.senders.map(\.description).joined(separator: " "), d.registered.description, d.sunset.description,
                          row.effectiveSunset.date.description, Self.source(row.effectiveSunset), "\(row.daysLeft)",
                          d.revocation != nil ? "revoked" : row.isExpired ? "expired" : row.isDueSoon ? "reminder" : "active"]
            lines.append(fields.map(Self.csvField).joined(separator: ","))
        }
        return Response(status: .ok,
                        headers: [.contentType: "text/csv; charset=utf-8", .contentDisposition: "attachment; filename=\"postern-devices.csv\""],
                        body: .init(byteBuffer: ByteBuffer(string: lines.joined(separator: "\r\n") + "\r\n")))
    }

    /// RFC 4180 quoting; a leading `=`, `+`, `-` or `@` is defused so spreadsheets do not run it as a formula.
    static func csvField(_ value: String) -> String {
        var v = value
        if let first = v.first, "=+-@".contains(first) { v = "'" + v }
        guard v.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" }) else { return v }
        return "\"" + v.replacingOccurrences(of: "\"", with: "\"\"") + "\""
    }
}
