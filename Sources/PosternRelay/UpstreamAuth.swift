import Foundation

/// Where a secret comes from: a file (its first line) or an environment variable. The configuration names the
/// place, never the secret, so configurations, their descriptions and errors can be printed.
public enum UpstreamSecret: Sendable, Hashable, CustomStringConvertible {
    case file(String)
    case environment(String)

    public var description: String {
        switch self {
        case .file(let path): return "the file \(path)"
        case .environment(let name): return "the environment variable \(name)"
        }
    }

    /// The secret: the file's first line or the variable's value, without surrounding white space.
    func read() throws(UpstreamConnectionError) -> String {
        let text: String?
        switch self {
        case .file(let path): text = try? String(contentsOfFile: path, encoding: .utf8)
        case .environment(let name): text = ProcessInfo.processInfo.environment[name]
        }
        let secret = text?.split(whereSeparator: \.isNewline).first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
        guard !secret.isEmpty else { throw .credentialsUnavailable("cannot read the secret from \(self) (missing or empty)") }
        return secret
    }
}

/// SMTP AUTH towards an upstream, sent only once TLS is up (`UpstreamSession`).
public enum UpstreamAuth: Sendable, Hashable {
    /// A password, for Microsoft's High Volume Email account or a mail hub that wants one.
    case password(PasswordMechanism, username: String, password: UpstreamSecret)
    /// XOAUTH2 with an access token from the OAuth 2.0 client-credentials grant.
    case xoauth2(OAuthClientCredentials)

    /// The SASL mechanism's name as EHLO offers it.
    public var mechanism: String {
        switch self {
        case .password(let mechanism, _, _): return mechanism.rawValue.uppercased()
        case .xoauth2: return "XOAUTH2"
        }
    }

    /// Who authenticates: the login or the mailbox.
    public var username: String {
        switch self {
        case .password(_, let username, _): return username
        case .xoauth2(let credentials): return credentials.user
        }
    }
}

public enum PasswordMechanism: String, Sendable, Hashable {
    case plain
    case login
}

/// The client-credentials grant (RFC 6749 4.4) against a token endpoint such as Entra ID's
/// `https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token`.
public struct OAuthClientCredentials: Sendable, Hashable {
    /// How the client proves itself to the token endpoint.
    public enum ClientAuthentication: Sendable, Hashable {
        /// `client_secret` in the request body.
        case secret(UpstreamSecret)
        /// A `private_key_jwt` client assertion (RFC 7523) signed with this key, naming this certificate's thumbprint.
        case certificate(certificateFile: String, keyFile: String)
    }

    public static let defaultScope = "https://outlook.office365.com/.default"

    public var tokenEndpoint: String
    public var clientID: String
    public var clientAuthentication: ClientAuthentication
    public var scope: String
    /// The mailbox to authenticate as (XOAUTH2's `user=`).
    public var user: String
    /// Trust roots for the token endpoint's certificate; nil for the system's.
    public var caFile: String?

    public init(tokenEndpoint: String, clientID: String, clientAuthentication: ClientAuthentication, scope: String = Self.defaultScope,
                user: String, caFile: String? = nil) {
        self.tokenEndpoint = tokenEndpoint
        self.clientID = clientID
        self.clientAuthentication = clientAuthentication
        self.scope = scope
        self.user = user
        self.caFile = caFile
    }
}

/// What `UpstreamSession` sends for AUTH: a mechanism, a name and the secret (a password or an access token).
/// Its description never shows the secret.
struct UpstreamCredential: Sendable, Hashable, CustomStringConvertible {
    var mechanism: String
    var username: String
    var secret: String
    /// Obtained for this connection (a token just fetched, a password just read): a rejection of it is final.
    /// A cached token that is rejected is fetched anew once (it may have been revoked).
    var fresh: Bool

    var description: String { "\(mechanism) credential for \(username) (secret not shown)" }
}
