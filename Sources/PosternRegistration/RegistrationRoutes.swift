import Foundation
import Hummingbird

/// The page's routes. Every GET shows something and changes nothing; every POST needs the session's CSRF token,
/// does one thing and answers 303 to a GET page that shows the outcome (post/redirect/get). Approve, reject and
/// revoke are POSTs from a confirmation page (a GET) that says what will happen; the lists only link to it.
extension RegistrationServer {
    func addRoutes(to router: Router<RegistrationRequestContext>) {
        router.get("/") { [self] request, _ in
            sessions.session(request.cookies[Self.sessionCookie]?.value) == nil ? redirect("/login") : redirect("/devices")
        }
        router.get("/login") { [self] _, _ in loginPage() }
        router.post("/login") { [self] request, context in await handleLogin(request, client: context.remoteAddress?.ipAddress ?? "unknown") }
        router.post("/logout") { [self] request, _ in await logout(request) }
        router.get("/help") { [self] request, _ in helpPage(sessions.session(request.cookies[Self.sessionCookie]?.value)) }

        router.get("/devices") { [self] request, _ in withSessionGET(request) { s, flash in devicesPage(s, flash: flash) } }
        router.get("/devices.csv") { [self] request, _ in
            guard let s = sessions.session(request.cookies[Self.sessionCookie]?.value) else { return redirect("/login") }
            return (try? csv(s)) ?? message(s, title: "Unavailable", text: "The policy files do not load.", status: .serviceUnavailable)
        }
        router.get("/history") { [self] request, _ in withSessionGET(request) { s, flash in
            try historyPage(s, search: HistorySearch(query: Dictionary(request.uri.queryParameters.map { (String($0.key), String($0.value)) },
                                                                        uniquingKeysWith: { first, _ in first })), flash: flash)
        } }

        router.get("/register") { [self] request, _ in withSessionGET(request) { s, flash in registerPage(s, flash: flash) } }
        router.post("/register") { [self] request, _ in await withSession(request, back: "/register") { s, fields in
            let form = RegistrationForm(fields: fields)
            switch try desk.submit(form, by: s.user) {
            case .failure(let errors):
                return Outcome(location: "/register", flash: Flash(form: form, errors: errors))
            case .success(let r):
                let name = (try? desk.policy().departments[r.department]?.name) ?? nil
                let sent = await notifier?.requestArrived(r, departmentName: name ?? r.department)
                return Outcome(location: "/devices", flash: Flash(notice: "Request for \(r.deviceID) submitted; it is pending until a gateway admin approves it."
                                                                  + mailNote(sent, to: "the gateway admins")))
            }
        } }

        router.get("/requests/:id/approve") { [self] request, context in withSessionGET(request) { s, flash in
            try decisionPage(s, requestID: context.parameters.get("id") ?? "", action: .approve, flash: flash)
        } }
        router.post("/requests/:id/approve") { [self] request, context in await withSession(request) { s, _ in
            let id = context.parameters.get("id") ?? ""
            let device = try desk.approve(requestID: id, by: s.user)
            var sent: RegistrationNotifier.Sent?
            let decided = try? desk.request(id: id, for: s.user)
            if let decided { sent = await notifier?.requestDecided(decided) }
            return Outcome(location: "/devices", flash: Flash(notice: "Approved: \(device.id) is registered and the gateway accepts it from "
                                                              + device.addresses.map(\.description).joined(separator: ", ") + "."
                                                              + mailNote(sent, to: decided?.contact ?? "the contact")))
        } }
        router.get("/requests/:id/reject") { [self] request, context in withSessionGET(request) { s, flash in
            try decisionPage(s, requestID: context.parameters.get("id") ?? "", action: .reject, flash: flash)
        } }
        router.post("/requests/:id/reject") { [self] request, context in await withSession(request) { s, fields in
            let id = context.parameters.get("id") ?? ""
            do {
                let r = try desk.reject(requestID: id, reason: fields["reason"] ?? "", by: s.user)
                let sent = await notifier?.requestDecided(r)
                return Outcome(location: "/devices", flash: Flash(notice: "Rejected the request for \(r.deviceID)." + mailNote(sent, to: r.contact)))
            } catch let errors as FieldErrors {
                // The request exists and is the user's to decide, or `reject` had thrown a `RegistrationFailure`.
                return Outcome(location: "/requests/\(Self.pathSegment(id))/reject", flash: Flash(form: nil, errors: errors, reason: fields["reason"]))
            }
        } }

        router.get("/devices/:id/sunset") { [self] request, context in withSessionGET(request) { s, flash in
            try devicePage(s, deviceID: context.parameters.get("id") ?? "", action: .sunset, flash: flash)
        } }
        router.post("/devices/:id/extend") { [self] request, context in
            let id = context.parameters.get("id") ?? ""
            return await withSession(request, back: "/devices/\(Self.pathSegment(id))/sunset") { s, fields in
                let d = try desk.extend(deviceID: id, to: (fields["sunset"] ?? "").trimmingCharacters(in: .whitespaces), by: s.user)
                return Outcome(location: "/devices", flash: Flash(notice: "The sunset of \(d.id) is now \(d.sunset)."))
            }
        }
        router.get("/devices/:id/revoke") { [self] request, context in withSessionGET(request) { s, flash in
            try devicePage(s, deviceID: context.parameters.get("id") ?? "", action: .revoke, flash: flash)
        } }
        router.post("/devices/:id/revoke") { [self] request, context in await withSession(request) { s, _ in
            let d = try desk.revoke(deviceID: context.parameters.get("id") ?? "", by: s.user)
            return Outcome(location: "/devices", flash: Flash(notice: "Revoked \(d.id); the gateway no longer accepts it."))
        } }
    }

    func logout(_ request: Request) async -> Response {
        let token = request.cookies[Self.sessionCookie]?.value
        var response = await withSession(request) { _, _ in Outcome(location: "/login", flash: Flash()) }
        guard response.status == .seeOther else { return response }
        sessions.end(token)
        response.setCookie(Cookie(name: Self.sessionCookie, value: "", maxAge: 0, path: "/", secure: true, httpOnly: true, sameSite: .strict))
        return response
    }

    /// What the notice adds about the notification mail.
    func mailNote(_ sent: RegistrationNotifier.Sent?, to whom: String) -> String {
        switch sent {
        case .queued?: return " A mail tells \(whom)."
        case .notQueued(let why)?: return " The notification mail to \(whom) could not be queued (\(why)); please tell them yourself."
        case nil: return ""
        }
    }

    /// A path parameter as it may go back into a Location header: ids are letters, digits and dashes.
    static func pathSegment(_ id: String) -> String {
        id.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("A"..."Z").contains($0) || ("0"..."9").contains($0) || $0 == "-" })
            && !id.isEmpty && id.count <= 64 ? id : "-"
    }
}
