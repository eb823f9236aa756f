import Foundation
import Hummingbird
import NIOConcurrencyHelpers
import NIOCore

/// The registration page's request context: Hummingbird's basic one and the client's address, which the
/// login throttle and the audit log key on.
public struct RegistrationRequestContext: RequestContext, RemoteAddressRequestContext {
    public var coreContext: CoreRequestContextStorage
    public let remoteAddress: SocketAddress?

    public init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        remoteAddress = source.channel.remoteAddress
    }
}

/// One logged-in browser.
struct WebSession: Sendable {
    var user: WebUser
    var csrf: String
    var expires: Date
    /// What the last POST left for the page it redirected to (post/redirect/get); shown once.
    var flash: Flash?
}

/// What a POST's outcome leaves for the GET page it redirects to: a notice or a problem, and for a form that
/// was refused, what was typed and the message for each field.
struct Flash: Sendable {
    var notice: String?
    var problem: String?
    var form: RegistrationForm?
    var errors = FieldErrors()
    /// A refused rejection's reason, to fill the field again.
    var reason: String?

    init(notice: String? = nil, problem: String? = nil) {
        self.notice = notice
        self.problem = problem
    }

    init(form: RegistrationForm?, errors: FieldErrors, reason: String? = nil) {
        self.form = form
        self.errors = errors
        self.reason = reason
    }
}

/// Sessions in memory, by an unguessable token; a restart logs everyone out.
final class SessionStore: Sendable {
    private let sessions = NIOLockedValueBox<[String: WebSession]>([:])
    let lifetime: TimeInterval

    init(lifetime: TimeInterval) { self.lifetime = lifetime }

    func create(_ user: WebUser) -> (token: String, session: WebSession) {
        let token = randomToken(), session = WebSession(user: user, csrf: randomToken(), expires: Date().addingTimeInterval(lifetime))
        sessions.withLockedValue { all in
            all = all.filter { $0.value.expires > Date() }
            all[token] = session
        }
        return (token, session)
    }

    /// The live session for a cookie's token. `takingFlash`: its flash goes with it and leaves the store, so a
    /// reload shows the plain page.
    func session(_ token: String?, takingFlash: Bool = false) -> WebSession? {
        guard let token else { return nil }
        return sessions.withLockedValue { all in
            guard let s = all[token] else { return nil }
            guard s.expires > Date() else {
                all[token] = nil
                return nil
            }
            if takingFlash { all[token]?.flash = nil }
            return s
        }
    }

    func setFlash(_ token: String?, _ flash: Flash) {
        guard let token else { return }
        sessions.withLockedValue { all in all[token]?.flash = flash }
    }

    func end(_ token: String?) {
        guard let token else { return }
        _ = sessions.withLockedValue { $0.removeValue(forKey: token) }
    }
}

func randomToken() -> String {
    var g = SystemRandomNumberGenerator()
    return (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &g)) }.joined()
}

/// Constant-time comparison, so a CSRF token cannot be guessed byte by byte.
func sameToken(_ a: String?, _ b: String?) -> Bool {
    guard let a, let b, !a.isEmpty, a.utf8.count == b.utf8.count else { return false }
    return zip(a.utf8, b.utf8).reduce(UInt8(0)) { $0 | ($1.0 ^ $1.1) } == 0
}
