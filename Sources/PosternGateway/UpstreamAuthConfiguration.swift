import Foundation
import PosternCore
import PosternRelay
import Yams

/// An upstream's `auth:` block and `accepted-domains:` list in postern.yaml (issue #17), read beside the rest of
/// the upstream by `parseRelay`:
///
/// ```yaml
/// auth: { mechanism: plain, username: hve-scanner@example.edu, password-file: /etc/postern/hve-password }
/// auth:
///   mechanism: xoauth2
///   token-endpoint: https://login.microsoftonline.com/<tenant-id>/oauth2/v2.0/token
///   client-id: 00000000-0000-0000-0000-000000000000
///   client-secret-file: /etc/postern/oauth-secret     # or client-secret-env, or client-certificate + client-key
///   scope: https://outlook.office365.com/.default      # the default
///   user: scanner-relay@example.edu                    # the mailbox to authenticate as
/// accepted-domains: [example.edu]
/// ```
///
/// Secrets are never in this file: a path or a variable name stands for each.
extension GatewayConfiguration {
    /// The keys an upstream may have besides the connection's own.
    static let upstreamAuthKeys: Set<String> = ["auth", "accepted-domains"]

    static let authKeys: Set<String> = ["mechanism", "username", "password-file", "password-env", "token-endpoint", "client-id",
                                        "client-secret-file", "client-secret-env", "client-certificate", "client-key", "scope", "user",
                                        "ca-file"]

    /// Reads `auth:` and `accepted-domains:` of one upstream into `upstream`.
    static func parseUpstreamAuth(_ fields: [String: Node], into upstream: inout UpstreamConfiguration, reader: inout ConfigReader,
                                  resolve: (String) -> String) {
        if let node = fields["accepted-domains"] {
            for entry in reader.sequence(node, "accepted-domains") {
                guard let domain = reader.string(entry, "accepted-domains")?.lowercased() else { continue }
                guard isDomainName(domain) else {
                    reader.issue(entry, "accepted-domains: '\(domain)' is not a domain name", fix: "the tenant's accepted domains, e.g. example.edu")
                    continue
                }
                upstream.acceptedDomains.append(domain)
            }
        }
        guard let node = fields["auth"] else { return }
        let map = reader.mapping(node, known: authKeys, context: "upstream \(upstream.name) auth")
        guard let mechanism = reader.string(map["mechanism"], "auth.mechanism")?.lowercased() else {
            reader.issue(node, "upstream \(upstream.name): auth needs a mechanism", fix: "mechanism: plain, login or xoauth2")
            return
        }
        func refuse(_ keys: [String], for what: String) {
            for key in keys where map[key] != nil {
                reader.issue(map[key], "auth.\(key) does not belong to mechanism \(what)", fix: "remove it, or choose the mechanism it belongs to")
            }
        }
        switch mechanism {
        case "plain", "login":
            refuse(["token-endpoint", "client-id", "client-secret-file", "client-secret-env", "client-certificate", "client-key", "scope",
                    "user", "ca-file"], for: mechanism)
            guard let username = reader.string(map["username"], "auth.username"), !username.isEmpty else {
                reader.issue(node, "auth.username is missing", fix: "the account to log in as, e.g. the HVE account's address")
                return
            }
            guard let secret = secretSource(file: map["password-file"], env: map["password-env"], what: "password", node: node,
                                            reader: &reader, resolve: resolve) else { return }
            upstream.auth = .password(mechanism == "plain" ? .plain : .login, username: username, password: secret)
        case "xoauth2":
            refuse(["username", "password-file", "password-env"], for: mechanism)
            guard let endpoint = reader.string(map["token-endpoint"], "auth.token-endpoint") else {
                reader.issue(node, "auth.token-endpoint is missing", fix: "https://login.microsoftonline.com/<tenant-id>/oauth2/v2.0/token")
                return
            }
            guard let url = URL(string: endpoint), url.scheme?.lowercased() == "https", !(url.host ?? "").isEmpty else {
                reader.issue(map["token-endpoint"], "auth.token-endpoint must be an https:// URL, not '\(endpoint)'",
                             fix: "https://login.microsoftonline.com/<tenant-id>/oauth2/v2.0/token")
                return
            }
            guard let clientID = reader.string(map["client-id"], "auth.client-id"), !clientID.isEmpty else {
                reader.issue(node, "auth.client-id is missing", fix: "the app registration's Application (client) ID")
                return
            }
            guard let user = reader.string(map["user"], "auth.user"), user.contains("@") else {
                reader.issue(map["user"] ?? node, "auth.user must be the mailbox to authenticate as", fix: "e.g. scanner-relay@example.edu")
                return
            }
            let clientAuthentication: OAuthClientCredentials.ClientAuthentication
            let certificate = reader.string(map["client-certificate"], "auth.client-certificate")
            let key = reader.string(map["client-key"], "auth.client-key")
            if certificate != nil || key != nil {
                guard let certificate, let key, map["client-secret-file"] == nil, map["client-secret-env"] == nil else {
                    reader.issue(node, "auth: give client-certificate and client-key together, and no client secret with them",
                                 fix: "a certificate (private_key_jwt) or a secret, not both")
                    return
                }
                for (field, path) in [("client-certificate", certificate), ("client-key", key)] where !FileManager.default.isReadableFile(atPath: resolve(path)) {
                    reader.issue(map[field], "cannot read \(resolve(path))", fix: "check the path and that the gateway's user may read it")
                }
                clientAuthentication = .certificate(certificateFile: resolve(certificate), keyFile: resolve(key))
            } else {
                guard let secret = secretSource(file: map["client-secret-file"], env: map["client-secret-env"], what: "client-secret",
                                                node: node, reader: &reader, resolve: resolve) else { return }
                clientAuthentication = .secret(secret)
            }
            let scope = reader.string(map["scope"], "auth.scope") ?? OAuthClientCredentials.defaultScope
            let caFile = reader.string(map["ca-file"], "auth.ca-file").map(resolve)
            if let caFile, !FileManager.default.isReadableFile(atPath: caFile) { reader.issue(map["ca-file"], "cannot read \(caFile)", fix: "check the path and that the gateway's user may read it") }
            upstream.auth = .xoauth2(OAuthClientCredentials(tokenEndpoint: endpoint, clientID: clientID, clientAuthentication: clientAuthentication,
                                                            scope: scope, user: user, caFile: caFile))
        default:
            reader.issue(map["mechanism"], "unknown auth mechanism '\(mechanism)'", fix: "plain, login or xoauth2")
        }
    }

    /// Exactly one of `<what>-file` and `<what>-env`.
    private static func secretSource(file: Node?, env: Node?, what: String, node: Node, reader: inout ConfigReader,
                                     resolve: (String) -> String) -> UpstreamSecret? {
        switch (reader.string(file, "auth.\(what)-file"), reader.string(env, "auth.\(what)-env")) {
        case (let path?, nil):
            let resolved = resolve(path)
            if !FileManager.default.isReadableFile(atPath: resolved) { reader.issue(file, "cannot read \(resolved)", fix: "check the path and that the gateway's user may read it") }
            return .file(resolved)
        case (nil, let name?):
            return .environment(name)
        default:
            reader.issue(node, "auth needs exactly one of \(what)-file and \(what)-env", fix: "the secret never goes into this file")
            return nil
        }
    }

    static func isDomainName(_ text: String) -> Bool {
        let labels = text.split(separator: ".", omittingEmptySubsequences: false)
        return labels.count >= 2 && text.count <= 253 && labels.allSatisfy { label in
            !label.isEmpty && label.count <= 63 && !label.hasPrefix("-") && !label.hasSuffix("-")
                && label.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
        }
    }
}
