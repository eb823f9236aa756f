import AsyncHTTPClient
import Crypto
import ExtrasBase64
import Foundation
import JWTKit
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import SwiftASN1
import X509

/// The OAuth 2.0 client-credentials grant (RFC 6749 4.4) against one token endpoint, with AsyncHTTPClient: the
/// client proves itself with a secret (`client_secret`) or with a `private_key_jwt` assertion (RFC 7523, signed
/// by JWTKit; Entra ID's certificate credential). What it says when it fails names the endpoint and the
/// endpoint's error, never the secret, the assertion or a token: those pass through `scrub` before they can
/// reach a log, the queue or the audit.
struct OAuthTokenClient: Sendable {
    let credentials: OAuthClientCredentials
    var timeout: TimeAmount = .seconds(15)
    var now: @Sendable () -> Date = { Date() }

    /// The process's one HTTP client for token requests, never shut down (like `HTTPClient.shared`). Unlike the
    /// shared one it does not keep retrying a connection the endpoint refuses until the deadline: a token endpoint
    /// that is down is answered at once, the mail deferred, and the relay's backoff decides when to ask again.
    static let http: HTTPClient = {
        var configuration = HTTPClient.Configuration()
        configuration.connectionPool.retryConnectionEstablishment = false
        configuration.timeout = HTTPClient.Configuration.Timeout(connect: .seconds(10), read: .seconds(15))
        configuration.redirectConfiguration = .disallow
        return HTTPClient(eventLoopGroupProvider: .singleton, configuration: configuration)
    }()

    /// Asks the token endpoint for a token.
    func fetch() async -> Result<(token: String, lifetime: TimeInterval), UpstreamConnectionError> {
        var secrets: [String] = []
        do {
            let form = try await formFields(secrets: &secrets)
            var request = HTTPClientRequest(url: credentials.tokenEndpoint)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/x-www-form-urlencoded")
            request.headers.add(name: "Accept", value: "application/json")
            request.body = .bytes(ByteBuffer(string: Self.formEncoded(form)))
            if let caFile = credentials.caFile {
                var tls = TLSConfiguration.makeClientConfiguration()
                tls.minimumTLSVersion = .tlsv12
                tls.trustRoots = .file(caFile)
                request.tlsConfiguration = tls
            }
            let response = try await Self.http.execute(request, timeout: timeout)
            let body = try await response.body.collect(upTo: 256 * 1024)
            return interpret(status: response.status, body: Data(body.readableBytesView)).mapError { scrub($0, secrets) }
        } catch let error as UpstreamConnectionError {
            return .failure(scrub(error, secrets))
        } catch {
            return .failure(scrub(.credentialsUnavailable("the token endpoint \(endpointName) \(Self.reason(error))"), secrets))
        }
    }

    /// `https://host/path` without query or fragment, for messages.
    var endpointName: String {
        guard let url = URL(string: credentials.tokenEndpoint), let host = url.host else { return "(unparsable URL)" }
        return "https://\(host)\(url.port.map { ":\($0)" } ?? "")\(url.path)"
    }

    /// The request's fields: the grant, the client, the scope, and the client's proof.
    func formFields(secrets: inout [String]) async throws -> [(String, String)] {
        var fields = [("grant_type", "client_credentials"), ("client_id", credentials.clientID), ("scope", credentials.scope)]
        switch credentials.clientAuthentication {
        case .secret(let source):
            let secret = try source.read()
            secrets.append(secret)
            fields.append(("client_secret", secret))
        case .certificate(let certificateFile, let keyFile):
            let assertion = try await clientAssertion(certificateFile: certificateFile, keyFile: keyFile)
            secrets.append(assertion)
            fields.append(("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"))
            fields.append(("client_assertion", assertion))
        }
        return fields
    }

    /// The claims of a client assertion (RFC 7523 3; Entra ID's "certificate credentials"): the client as issuer
    /// and subject, the token endpoint as audience, a unique id, and a few minutes of validity.
    struct ClientAssertion: JWTPayload {
        var aud: AudienceClaim
        var iss: IssuerClaim
        var sub: SubjectClaim
        var jti: IDClaim
        var nbf: NotBeforeClaim
        var iat: IssuedAtClaim
        var exp: ExpirationClaim

        func verify(using algorithm: some JWTAlgorithm) async throws {
            try exp.verifyNotExpired()
        }
    }

    /// Signs a client assertion with the certificate's key: RS256 for an RSA key (what Entra ID takes), ES256 for
    /// a P-256 key. The header names the certificate by its SHA-1 and SHA-256 thumbprints (`x5t`, `x5t#S256`).
    func clientAssertion(certificateFile: String, keyFile: String) async throws -> String {
        let certificatePEM: String
        let keyPEM: String
        do {
            certificatePEM = try String(contentsOfFile: certificateFile, encoding: .utf8)
            keyPEM = try String(contentsOfFile: keyFile, encoding: .utf8)
        } catch {
            throw UpstreamConnectionError.credentialsUnavailable("cannot read the client certificate or key (\(certificateFile), \(keyFile))")
        }
        let der: [UInt8]
        do {
            let certificate = try Certificate(pemEncoded: certificatePEM)
            var serializer = DER.Serializer()
            try serializer.serialize(certificate)
            der = serializer.serializedBytes
        } catch {
            throw UpstreamConnectionError.credentialsUnavailable("\(certificateFile) holds no PEM certificate")
        }
        let keys = JWTKeyCollection()
        if let rsa = try? Insecure.RSA.PrivateKey(pem: keyPEM) {
            await keys.add(rsa: rsa, digestAlgorithm: .sha256)
        } else if let ec = try? ES256PrivateKey(pem: keyPEM) {
            await keys.add(ecdsa: ec)
        } else {
            throw UpstreamConnectionError.credentialsUnavailable("\(keyFile) holds no RSA (2048 bits or more) or P-256 private key")
        }
        var header = JWTHeader()
        header.typ = "JWT"
        header.x5t = Base64.encodeToString(bytes: Array(Insecure.SHA1.hash(data: der)), options: [.base64UrlAlphabet, .omitPaddingCharacter])
        header.x5tS256 = Base64.encodeToString(bytes: Array(SHA256.hash(data: der)), options: [.base64UrlAlphabet, .omitPaddingCharacter])
        // Whole seconds: NumericDate may carry a fraction (RFC 7519 2), but verifiers compare with whole seconds
        // and take an `iat` a fraction ahead of theirs for one from the future.
        let issued = Date(timeIntervalSince1970: now().timeIntervalSince1970.rounded(.down))
        let claims = ClientAssertion(aud: .init(value: [credentials.tokenEndpoint]), iss: .init(value: credentials.clientID),
                                     sub: .init(value: credentials.clientID), jti: .init(value: UUID().uuidString),
                                     nbf: .init(value: issued.addingTimeInterval(-60)), iat: .init(value: issued),
                                     exp: .init(value: issued.addingTimeInterval(300)))
        do {
            return try await keys.sign(claims, header: header)
        } catch {
            throw UpstreamConnectionError.credentialsUnavailable("cannot sign the client assertion with \(keyFile): \(error)")
        }
    }

    struct TokenResponse: Decodable {
        var access_token: String?
        var token_type: String?
        var expires_in: Lifetime?
        var error: String?
        var error_description: String?

        /// `expires_in` is a number in RFC 6749, a string in some servers' answers.
        struct Lifetime: Decodable {
            var seconds: Double?
            init(from decoder: any Decoder) throws {
                let container = try decoder.singleValueContainer()
                seconds = (try? container.decode(Double.self)) ?? (try? container.decode(String.self)).flatMap(Double.init)
            }
        }
    }

    /// What the endpoint's answer means: a bearer token and its lifetime, or why there is none.
    func interpret(status: HTTPResponseStatus, body: Data) -> Result<(token: String, lifetime: TimeInterval), UpstreamConnectionError> {
        let response = try? JSONDecoder().decode(TokenResponse.self, from: body)
        guard status == .ok else {
            var reason = "the token endpoint \(endpointName) answered \(status.code)"
            if let error = response?.error { reason += ": \(error)" }
            if let description = response?.error_description { reason += ": \(description.prefix(300))" }
            if status == .unauthorized || response?.error == "invalid_client" {
                reason += " (check the client id and the client secret or certificate)"
            }
            return .failure(.credentialsUnavailable(reason))
        }
        guard let response, let token = response.access_token, !token.isEmpty,
              token.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            return .failure(.credentialsUnavailable("the token endpoint \(endpointName) answered 200 without an access token"))
        }
        guard response.token_type?.lowercased() == "bearer" else {
            return .failure(.credentialsUnavailable("the token endpoint \(endpointName) gave a token of type \(response.token_type ?? "(none)"), not Bearer"))
        }
        // Out-of-range lifetimes (from the network: any number) are clamped: a second to a day.
        let lifetime = min(max(response.expires_in?.seconds ?? 3600, 1), 86_400)
        return .success((token, lifetime.isFinite ? lifetime : 3600))
    }

    /// `application/x-www-form-urlencoded`: every byte outside the unreserved set percent-encoded.
    static func formEncoded(_ fields: [(String, String)]) -> String {
        var allowed = CharacterSet.alphanumerics
        allowed.insert(charactersIn: "-._~")
        allowed = allowed.intersection(CharacterSet(charactersIn: Unicode.Scalar(0)...Unicode.Scalar(127)))
        func encode(_ text: String) -> String { text.addingPercentEncoding(withAllowedCharacters: allowed) ?? "" }
        return fields.map { "\(encode($0.0))=\(encode($0.1))" }.joined(separator: "&")
    }

    /// Why the request did not get an answer, in the relay's words.
    static func reason(_ error: any Error) -> String {
        if let error = error as? HTTPClientError {
            if error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout { return "did not answer in time (\(error))" }
            return "could not be asked (\(error))"
        }
        if error is NIOSSLError || error is BoringSSLError { return "failed the TLS handshake (\(error))" }
        if error is NIOConnectionError { return "could not be reached: " + ConnectFailure.describe(error, host: "", port: 0) }
        return ConnectFailure.reason(error)
    }

    /// `error` with every secret of the request replaced, whatever part of the answer may have echoed one.
    func scrub(_ error: UpstreamConnectionError, _ secrets: [String]) -> UpstreamConnectionError {
        guard case .credentialsUnavailable(var text) = error else { return error }
        for secret in secrets where !secret.isEmpty { text = text.replacingOccurrences(of: secret, with: "(secret)") }
        return .credentialsUnavailable(text)
    }
}
