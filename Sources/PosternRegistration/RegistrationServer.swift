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
    /// Mail to the admins on a request and to the contact on a decision; nil: none is sent.
    let notifier: RegistrationNotifier?
    let roles: RoleMap
    let sessions: SessionStore
    let templates: MustacheLibrary
    let logger: Logger
    let tlsConfiguration: TLSConfiguration
    private let boundPort = NIOLockedValueBox<Int?>(nil)
    private let started = NIOLockedValueBox<[CheckedContinuation<Int, Never>]>([])

    public init(desk: RegistrationDesk, login: DirectoryLogin, revealNotAuthorized: Bool = false,
                countLogin: @escaping @Sendable (String) -> Void = { _ in }, notifier: RegistrationNotifier? = nil,
                eventLoopGroup: any EventLoopGroup, logger: Logger) async throws {
        self.desk = desk
        self.notifier = notifier
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
        addRoutes(to: router)

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

    /// GET pages need a session; without one the browser goes to the login page. The page gets what the last
    /// POST left for it (once: a reload shows the plain page).
    func withSessionGET(_ request: Request, _ body: (WebSession, Flash?) throws -> Response) -> Response {
        let token = request.cookies[Self.sessionCookie]?.value
        guard let s = sessions.session(token, takingFlash: true) else { return redirect("/login") }
        do {
            return try body(s, s.flash)
        } catch let failure as RegistrationFailure {
            // A page about a request or device that is gone, decided, or not the user's: the list says why.
            // (The list itself does not throw.)
            sessions.setFlash(token, Flash(problem: failure.description))
            return redirect("/devices")
        } catch {
            return message(s, title: "Something went wrong", text: "\(error)", status: .serviceUnavailable)
        }
    }

    /// Where a POST sends the browser (303, post/redirect/get) and what the page there shows.
    struct Outcome {
        var location: String
        var flash: Flash
    }

    /// POSTs need a session and its CSRF token. Whatever the action does, refuses or throws, the answer is a
    /// 303 to a GET page that shows the outcome, so a reload never repeats it; `back` is that page for a
    /// refusal thrown as `RegistrationFailure`. Only a form that cannot be read (400) or a token that does not
    /// match (403) is answered directly: nothing was done.
    func withSession(_ request: Request, back: String = "/devices", _ body: (WebSession, [String: String]) async throws -> Outcome) async -> Response {
        let token = request.cookies[Self.sessionCookie]?.value
        guard let s = sessions.session(token) else { return redirect("/login") }
        guard let fields = await formFields(request) else {
            return message(s, title: "Bad request", text: "The form could not be read.", status: .badRequest)
        }
        guard sameToken(fields["csrf"], s.csrf) else {
            logger.notice("CSRF token mismatch", metadata: ["login": "\(s.user.login)", "path": "\(request.uri.path)"])
            return message(s, title: "Forbidden", text: "The form's security token did not match. Reload the page and try again.", status: .forbidden)
        }
        let outcome: Outcome
        do {
            outcome = try await body(s, fields)
        } catch let failure as RegistrationFailure {
            outcome = Outcome(location: back, flash: Flash(problem: failure.description))
        } catch {
            outcome = Outcome(location: back, flash: Flash(problem: "\(error)"))
        }
        sessions.setFlash(token, outcome.flash)
        return redirect(outcome.location)
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
