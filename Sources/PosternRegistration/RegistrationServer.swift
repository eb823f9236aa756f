import Foundation
import Hummingbird
import HummingbirdTLS
import Logging
import Mustache
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NIOSSL
import PosternCore
import PosternDirectory
import PosternPolicy
import ServiceLifecycle

/// The HTTPS registration web application: a ServiceLifecycle `Service` run beside the gateway.
public final class RegistrationServer: Service, Sendable {
    public static let sessionCookie = "postern_session"
    static let loginCookie = "postern_login"

    let desk: RegistrationDesk
    /// The gateway's own password checks and throttle (`postern serve` hands over the gateway's instance).
    let login: DirectoryLogin
    /// Answer a right password of an account without a role with 403 instead of the wrong-password page.
    let revealNotAuthorized: Bool
    /// Counts a log-in attempt by result (`success`, `invalid_credentials`, ...): the gateway's metrics.
    let countLogin: @Sendable (String) -> Void
    /// The gateway's event loops (one group in the process).
    let eventLoopGroup: any EventLoopGroup
    let roles: RoleMap
    let sessions: SessionStore
    let templates: MustacheLibrary
    let logger: Logger
    let tlsConfiguration: TLSConfiguration
    private let boundPort = NIOLockedValueBox<Int?>(nil)
    private let started = NIOLockedValueBox<[CheckedContinuation<Int, Never>]>([])

    public init(desk: RegistrationDesk, login: DirectoryLogin, revealNotAuthorized: Bool = false,
                countLogin: @escaping @Sendable (String) -> Void = { _ in }, eventLoopGroup: any EventLoopGroup, logger: Logger) async throws {
        self.desk = desk
        self.login = login
        self.revealNotAuthorized = revealNotAuthorized
        self.countLogin = countLogin
        self.eventLoopGroup = eventLoopGroup
        self.roles = RoleMap(adminGroups: desk.configuration.adminGroups, departmentGroups: desk.configuration.departmentGroups,
                             groupBase: desk.configuration.groupBase)
        self.sessions = SessionStore(lifetime: TimeInterval(desk.configuration.sessionLifetime.components.seconds))
        self.logger = logger
        guard let directory = Bundle.module.resourceURL?.appendingPathComponent("Templates").path else {
            throw RegistrationFailure("the registration templates are missing from the bundle")
        }
        self.templates = try await MustacheLibrary(directory: directory)
        self.tlsConfiguration = try ServerTLS.configuration(desk.configuration.tls)
    }

    /// The port the server listens on, once it does (useful with port 0).
    public func port() async -> Int {
        if let p = boundPort.withLockedValue({ $0 }) { return p }
        return await withCheckedContinuation { c in
            let ready: Int? = boundPort.withLockedValue { p in
                if p == nil { started.withLockedValue { $0.append(c) } }
                return p
            }
            if let ready { c.resume(returning: ready) }
        }
    }

    public func run() async throws {
        let router = Router(context: RegistrationRequestContext.self)
        router.add(middleware: SecurityHeaders())
        router.get("/") { [self] request, _ in
            sessions.session(request.cookies[Self.sessionCookie]?.value) == nil ? redirect("/login") : redirect("/devices")
        }
        router.get("/login") { [self] _, _ in loginPage() }
        router.post("/login") { [self] request, context in await handleLogin(request, client: context.remoteAddress?.ipAddress ?? "unknown") }
        router.post("/logout") { [self] request, _ in await withSession(request) { s, _, token in
            sessions.end(token)
            var r = redirect("/login")
            r.setCookie(Cookie(name: Self.sessionCookie, value: "", maxAge: 0, path: "/", secure: true, httpOnly: true, sameSite: .strict))
            return r
        } }
        router.get("/devices") { [self] request, _ in withSessionGET(request) { s in devicesPage(s) } }
        router.get("/devices.csv") { [self] request, _ in withSessionGET(request) { s in try csv(s) } }
        router.get("/register") { [self] request, _ in withSessionGET(request) { s in registerPage(s, form: nil, errors: FieldErrors()) } }
        router.post("/register") { [self] request, _ in await withSession(request) { s, fields, _ in
            let form = RegistrationForm(fields: fields)
            switch try desk.submit(form, by: s.user) {
            case .failure(let errors): return registerPage(s, form: form, errors: errors, status: .unprocessableContent)
            case .success(let r): return devicesPage(s, notice: "Request for \(r.deviceID) submitted; it is pending until a gateway admin approves it.")
            }
        } }
        router.post("/requests/:id/approve") { [self] request, context in await withSession(request) { s, _, _ in
            let id = context.parameters.get("id") ?? ""
            let device = try desk.approve(requestID: id, by: s.user)
            return devicesPage(s, notice: "Approved: \(device.id) is registered and the gateway accepts it from \(device.addresses.map(\.description).joined(separator: ", ")).")
        } }
        router.post("/requests/:id/reject") { [self] request, context in await withSession(request) { s, fields, _ in
            let r = try desk.reject(requestID: context.parameters.get("id") ?? "", reason: fields["reason"] ?? "", by: s.user)
            return devicesPage(s, notice: "Rejected the request for \(r.deviceID).")
        } }
        router.post("/devices/:id/revoke") { [self] request, context in await withSession(request) { s, _, _ in
            let d = try desk.revoke(deviceID: context.parameters.get("id") ?? "", by: s.user)
            return devicesPage(s, notice: "Revoked \(d.id); the gateway no longer accepts it.")
        } }
        router.post("/devices/:id/extend") { [self] request, context in await withSession(request) { s, fields, _ in
            let d = try desk.extend(deviceID: context.parameters.get("id") ?? "", to: (fields["sunset"] ?? "").trimmingCharacters(in: .whitespaces), by: s.user)
            return devicesPage(s, notice: "The sunset of \(d.id) is now \(d.sunset).")
        } }

        let configuration = desk.configuration
        let app = Application(
            router: router,
            server: try .tls(.http1(), tlsConfiguration: tlsConfiguration),
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: nil),
            onServerRunning: { [boundPort, started, logger] channel in
                let port = channel.localAddress?.port ?? 0
                boundPort.withLockedValue { $0 = port }
                for c in started.withLockedValue({ w in defer { w = [] }; return w }) { c.resume(returning: port) }
                logger.notice("registration page listening", metadata: ["address": "https://\(configuration.host):\(port)/"])
            },
            eventLoopGroupProvider: .shared(eventLoopGroup),
            logger: logger)
        try await app.run()
    }

    // MARK: Request plumbing

    /// GET pages need a session; without one the browser goes to the login page.
    func withSessionGET(_ request: Request, _ body: (WebSession) throws -> Response) -> Response {
        guard let s = sessions.session(request.cookies[Self.sessionCookie]?.value) else { return redirect("/login") }
        do {
            return try body(s)
        } catch {
            return message(s, title: "Something went wrong", text: "\(error)", status: .serviceUnavailable)
        }
    }

    /// POSTs need a session and its CSRF token; failures render as pages, never as a 500.
    func withSession(_ request: Request, _ body: (WebSession, [String: String], String?) throws -> Response) async -> Response {
        let token = request.cookies[Self.sessionCookie]?.value
        guard let s = sessions.session(token) else { return redirect("/login") }
        guard let fields = await formFields(request) else {
            return message(s, title: "Bad request", text: "The form could not be read.", status: .badRequest)
        }
        guard sameToken(fields["csrf"], s.csrf) else {
            logger.notice("CSRF token mismatch", metadata: ["login": "\(s.user.login)", "path": "\(request.uri.path)"])
            return message(s, title: "Forbidden", text: "The form's security token did not match. Reload the page and try again.", status: .forbidden)
        }
        do {
            return try body(s, fields, token)
        } catch let failure as RegistrationFailure {
            return devicesPage(s, problem: failure.description, status: .conflict)
        } catch {
            return devicesPage(s, problem: "\(error)", status: .conflict)
        }
    }

    func formFields(_ request: Request) async -> [String: String]? {
        guard let buffer = try? await request.body.collect(upTo: 64 * 1024) else { return nil }
        let text = String(buffer: buffer)
        if text.isEmpty { return [:] }
        return try? URLEncodedFormDecoder().decode([String: String].self, from: text)
    }

    /// Logs in through the gateway's `DirectoryLogin`: its throttle, and one answer for a wrong password and
    /// for a right one without a role (the audit log tells them apart).
    func handleLogin(_ request: Request, client: String) async -> Response {
        guard let fields = await formFields(request) else { return loginPage(problem: "The form could not be read.", status: .badRequest) }
        // Login CSRF: the form must carry the value of the cookie set with it (double submit).
        guard sameToken(fields["csrf"], request.cookies[Self.loginCookie]?.value) else {
            return loginPage(problem: "The form's security token did not match. Please try again.", status: .forbidden)
        }
        let name = (fields["login"] ?? "").trimmingCharacters(in: .whitespaces)
        let roles = self.roles
        let result = await login.authenticate(login: name, password: fields["password"] ?? "", client: client) { identity in
            roles.user(login: identity.login, dn: identity.dn, groups: identity.groups) != nil
        }
        countLogin(result.label)
        switch result {
        case .success(let identity):
            guard let user = roles.user(login: identity.login, dn: identity.dn, groups: identity.groups) else {
                // `authorize` said yes to the same question a moment ago; answer as for no role.
                return loginFailed(name, client: client, result: result, dn: identity.dn)
            }
            let (token, _) = sessions.create(user)
            desk.audit.event("registration_login", ["actor": "\(user.login)", "role": "\(user.isAdmin ? "admin" : "department")",
                                                                    "dn": "\(identity.dn)", "client": "\(client)"])
            var response = redirect("/devices")
            response.setCookie(Cookie(name: Self.sessionCookie, value: token, path: "/", secure: true, httpOnly: true, sameSite: .strict))
            response.setCookie(Cookie(name: Self.loginCookie, value: "", maxAge: 0, path: "/login", secure: true, httpOnly: true, sameSite: .strict))
            return response
        case .notAuthorized(let identity):
            return loginFailed(name, client: client, result: result, dn: identity.dn)
        case .invalidCredentials, .throttled, .unavailable:
            return loginFailed(name, client: client, result: result, dn: nil)
        }
    }

    /// Audits a failed login and answers it.
    func loginFailed(_ name: String, client: String, result: LoginResult, dn: String?) -> Response {
        var fields: Logger.Metadata = ["login": "\(name)", "client": "\(client)", "result": "\(result.label)"]
        if let dn { fields["dn"] = "\(dn)" }
        desk.audit.event("registration_login_failed", fields)
        switch result {
        case .notAuthorized where revealNotAuthorized:
            return loginPage(login: name, problem: "Your account is not a department contact or gateway admin.", status: .forbidden)
        case .throttled(let retryAfter):
            let seconds = max(1, Int(retryAfter.components.seconds) + (retryAfter.components.attoseconds > 0 ? 1 : 0))
            var response = loginPage(login: name, problem: "Too many failed log-ins for this account or from your address; try again in \((seconds + 59) / 60) minute\(seconds > 60 ? "s" : "").",
                                     status: .tooManyRequests)
            response.headers[.retryAfter] = "\(seconds)"
            return response
        case .unavailable:
            return loginPage(login: name, problem: "The directory is not reachable; try again in a minute.", status: .serviceUnavailable)
        case .success, .invalidCredentials, .notAuthorized:
            return loginPage(login: name, problem: "Wrong user name or password.", status: .unauthorized)
        }
    }

    // MARK: Pages

    func render(_ template: String, _ context: [String: Any], status: HTTPResponse.Status = .ok) -> Response {
        let html = templates.render(context, withTemplate: template) ?? "template \(template) missing"
        return Response(status: status, headers: [.contentType: "text/html; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: html)))
    }

    func userContext(_ s: WebSession) -> [String: Any] {
        ["login": s.user.login, "role": s.user.isAdmin ? "gateway admin" : "contact for \(s.user.departments.joined(separator: ", "))",
         "csrf": s.csrf, "admin": s.user.isAdmin]
    }

    func loginPage(login: String = "", problem: String? = nil, status: HTTPResponse.Status = .ok) -> Response {
        let csrf = randomToken()
        var context: [String: Any] = ["title": "Log in", "csrf": csrf, "login": login]
        if let problem { context["problem"] = problem }
        var response = render("login", context, status: status)
        response.setCookie(Cookie(name: Self.loginCookie, value: csrf, path: "/login", secure: true, httpOnly: true, sameSite: .strict))
        return response
    }

    func message(_ s: WebSession, title: String, text: String, status: HTTPResponse.Status) -> Response {
        render("message", ["title": title, "message": text, "user": userContext(s), "csrf": s.csrf], status: status)
    }

    func registerPage(_ s: WebSession, form: RegistrationForm?, errors: FieldErrors, status: HTTPResponse.Status = .ok) -> Response {
        guard let policy = try? desk.policy() else { return message(s, title: "Unavailable", text: "The policy files do not load.", status: .serviceUnavailable) }
        let departments = desk.departments(for: s.user, policy: policy)
        var form = form ?? RegistrationForm()
        if form.department.isEmpty { form.department = departments.first?.id ?? "" }
        if form.sunset.isEmpty, form.deviceID.isEmpty { form.sunset = desk.latestSunset(department: form.department, policy: policy)?.description ?? "" }
        let latest = departments.map { d in "\(desk.latestSunset(department: d.id, policy: policy)?.description ?? "–") (\(d.id))" }.joined(separator: ", ")
        var context: [String: Any] = [
            "title": "Register a device", "user": userContext(s), "csrf": s.csrf, "latest": latest,
            "departments": departments.map { ["id": $0.id, "name": $0.name, "selected": $0.id == form.department] as [String: Any] },
            "form": ["deviceID": form.deviceID, "model": form.model, "location": form.location, "address": form.address,
                     "sender": form.sender, "contact": form.contact, "sunset": form.sunset, "justification": form.justification],
            "errors": errors.messages,
        ]
        if !errors.isEmpty { context["problem"] = "The request was not submitted; see the fields marked below." }
        return render("register", context, status: status)
    }

    func devicesPage(_ s: WebSession, notice: String? = nil, problem: String? = nil, status: HTTPResponse.Status = .ok) -> Response {
        let policy: PolicySet
        do {
            policy = try desk.policy()
        } catch {
            return message(s, title: "Unavailable", text: "\(error)", status: .serviceUnavailable)
        }
        let rows = desk.rows(for: s.user, policy: policy)
        let departments = desk.departments(for: s.user, policy: policy).map { d -> [String: Any] in
            let devices = rows.filter { $0.device.department == d.id }.map { row -> [String: Any] in
                let days = row.isExpired ? "expired \(-row.daysLeft) day\(row.daysLeft == -1 ? "" : "s") ago" : "\(row.daysLeft)"
                return ["id": row.device.id, "location": row.device.location, "owner": row.device.owner,
                        "addresses": row.device.addresses.map(\.description).joined(separator: ", "),
                        "senders": row.device.senders.map(\.description).joined(separator: ", "),
                        "sunset": row.effectiveSunset.date.description, "sunsetSource": Self.source(row.effectiveSunset),
                        "daysText": days, "rowClass": row.isExpired ? "expired" : row.isDueSoon ? "due-soon" : "ok"]
            }
            return ["id": d.id, "name": d.name, "devices": devices,
                    "latest": desk.latestSunset(department: d.id, policy: policy)?.description ?? "no date",
                    "reminderDays": policy.reminderDays.first ?? 0]
        }
        let formatter = ISO8601DateFormatter()
        let requests = ((try? desk.visibleRequests(for: s.user)) ?? []).map { r -> [String: Any] in
            var item: [String: Any] = ["senderClass": "", "id": r.id, "deviceID": r.deviceID, "department": r.department, "model": r.model, "location": r.location,
                                       "address": r.address, "sender": r.sender, "contact": r.contact, "sunset": r.sunset,
                                       "justification": r.justification, "requestedBy": r.requestedBy,
                                       "requestedAt": formatter.string(from: r.requestedAt), "status": r.status.rawValue,
                                       "actionable": s.user.isAdmin && r.status == .pending]
            if let d = r.decidedBy { item["decidedBy"] = d }
            if let reason = r.reason { item["reason"] = reason }
            if let note = desk.senderNote(r, policy: policy) {
                // For the approver: the sender is not in the department's own domains.
                item["senderClass"] = "outside-domains"
                item["senderNote"] = note
            }
            return item
        }
        var context: [String: Any] = ["title": "Devices", "user": userContext(s), "csrf": s.csrf, "admin": s.user.isAdmin,
                                      "departments": departments, "requests": requests, "hasRequests": !requests.isEmpty]
        if let notice { context["notice"] = notice }
        if let problem { context["problem"] = problem }
        return render("devices", context, status: status)
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
                          row.isExpired ? "expired" : row.isDueSoon ? "reminder" : "active"]
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

func redirect(_ location: String) -> Response {
    Response(status: .seeOther, headers: [.location: location])
}

/// No framing, no caching, scripts and styles from nowhere but the page itself.
struct SecurityHeaders: RouterMiddleware {
    typealias Context = RegistrationRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        do {
            response = try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            response = Response(status: .notFound, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: "Not found\n")))
        } catch {
            response = Response(status: .badRequest, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(string: "Bad request\n")))
        }
        response.headers[.contentSecurityPolicy] = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
        // `!`: constant names that are valid header names.
        response.headers[.init("X-Frame-Options")!] = "DENY"
        response.headers[.cacheControl] = "no-store"
        response.headers[.init("Referrer-Policy")!] = "no-referrer"
        response.headers[.strictTransportSecurity] = "max-age=31536000"
        return response
    }
}
