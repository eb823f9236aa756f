import Foundation
import NIOCore

/// One upstream's credentials for AUTH: a password read from its file or variable each time (so a rotated
/// secret is picked up without a restart), or an access token from the upstream's `OAuthTokenCache`. Shared
/// by the upstream's connections (`UpstreamPool`) and used by `postern probe`.
public final class UpstreamAuthenticator: Sendable {
    public let auth: UpstreamAuth
    let tokens: OAuthTokenCache?

    public init(auth: UpstreamAuth, now: @escaping @Sendable () -> Date = { Date() }) {
        self.auth = auth
        if case .xoauth2(let credentials) = auth {
            let client = OAuthTokenClient(credentials: credentials, now: now)
            tokens = OAuthTokenCache(now: now) { await client.fetch() }
        } else {
            tokens = nil
        }
    }

    /// A credential for AUTH; `replacing` one the upstream refused.
    func credential(replacing rejected: UpstreamCredential? = nil) async throws(UpstreamConnectionError) -> UpstreamCredential {
        switch auth {
        case .password(let mechanism, let username, let password):
            return UpstreamCredential(mechanism: mechanism.rawValue.uppercased(), username: username, secret: try password.read(), fresh: true)
        case .xoauth2(let credentials):
            guard let tokens else { throw .credentialsUnavailable("no token cache") }
            switch await tokens.token(replacing: rejected?.secret) {
            case .success(let (token, fresh)):
                return UpstreamCredential(mechanism: "XOAUTH2", username: credentials.user, secret: token, fresh: fresh)
            case .failure(let error):
                throw error
            }
        }
    }

    /// Access tokens fetched so far (nil without OAuth).
    public var tokenFetches: Int? {
        get async { await tokens?.fetches }
    }
}

extension UpstreamConnection {
    /// Authenticates the session set up by `connect`, as `UpstreamSession` says: the credential, at most one fresh
    /// one after a refusal of a cached one, and the reply. Throws why it failed; the connection is then closed.
    func authenticate(with authenticator: UpstreamAuthenticator) async throws(UpstreamConnectionError) -> SMTPReplySummary {
        var session = self.session.withLockedValue { $0 }
        do {
            var credential = try await authenticator.credential()
            var action = session.authenticate(with: credential)
            var last: String?
            while true {
                switch action {
                case .sendCredentials(let line):
                    let replies = try await exchange(ByteBuffer(string: line), expecting: 1)
                    last = replies.last?.description
                    action = session.receive(replies)
                case .retryWithFreshCredential:
                    credential = try await authenticator.credential(replacing: credential)
                    action = session.authenticate(with: credential)
                case .authenticated:
                    self.session.withLockedValue { $0 = session }
                    return SMTPReplySummary(text: last ?? "235")
                case .fail(let error):
                    throw error
                case .send, .startTLS, .ready, .sendMessage, .finished:
                    throw UpstreamConnectionError.protocolState("\(action.name) during AUTH")
                }
            }
        } catch let error as UpstreamConnectionError {
            channel.close(promise: nil)
            throw error
        } catch {
            channel.close(promise: nil)
            throw .connectFailed("\(error)")
        }
    }
}

/// The upstream's final answer to AUTH, as text (`235 2.7.0 Authentication successful`).
public struct SMTPReplySummary: Sendable, Hashable {
    public var text: String
}
