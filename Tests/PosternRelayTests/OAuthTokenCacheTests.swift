import Foundation
import NIOConcurrencyHelpers
import NIOHTTP1
import XCTest
@testable import PosternRelay

/// The access token cache without a network: when it fetches, what it shares, what a refused token does. The
/// real token endpoint is exercised by the integration tests (M365UpstreamTests).
final class OAuthTokenCacheTests: XCTestCase {
    final class Clock: Sendable {
        let box = NIOLockedValueBox(Date(timeIntervalSince1970: 1_800_000_000))
        func now() -> Date { box.withLockedValue { $0 } }
        func advance(_ seconds: TimeInterval) { box.withLockedValue { $0 += seconds } }
    }

    /// A token endpoint stand-in that numbers its tokens; `failing` makes it fail.
    final class Issuer: Sendable {
        let state = NIOLockedValueBox((issued: 0, failing: false, lifetime: 3600.0))
        func fetch() async -> Result<(token: String, lifetime: TimeInterval), UpstreamConnectionError> {
            try? await Task.sleep(for: .milliseconds(20))  // long enough for concurrent callers to overlap
            return state.withLockedValue { state in
                if state.failing { return .failure(.credentialsUnavailable("the token endpoint answered 503")) }
                state.issued += 1
                return .success(("token-\(state.issued)", state.lifetime))
            }
        }
    }

    func testATokenIsReusedUntilShortlyBeforeItExpires() async throws {
        let clock = Clock(), issuer = Issuer()
        let cache = OAuthTokenCache(now: clock.now) { await issuer.fetch() }
        let first = try await cache.token().get()
        XCTAssertEqual(first.token, "token-1")
        XCTAssertTrue(first.fresh)
        clock.advance(3299)
        let reused = try await cache.token().get()
        XCTAssertEqual(reused.token, "token-1")
        XCTAssertFalse(reused.fresh)
        clock.advance(1)  // 300 s before the hour: refreshed, never presented expired
        let refreshed = try await cache.token().get()
        XCTAssertEqual(refreshed.token, "token-2")
        XCTAssertTrue(refreshed.fresh)
        let fetches = await cache.fetches
        XCTAssertEqual(fetches, 2)
    }

    func testShortLivedTokensAreRefreshedATenthOfTheirLifeEarly() async throws {
        let clock = Clock(), issuer = Issuer()
        issuer.state.withLockedValue { $0.lifetime = 10 }
        let cache = OAuthTokenCache(now: clock.now) { await issuer.fetch() }
        _ = try await cache.token().get()
        clock.advance(8.9)
        let before = try await cache.token().get().token
        XCTAssertEqual(before, "token-1")
        clock.advance(0.2)
        let after = try await cache.token().get().token
        XCTAssertEqual(after, "token-2")
    }

    func testConcurrentCallersShareOneFetch() async throws {
        let issuer = Issuer()
        let cache = OAuthTokenCache { await issuer.fetch() }
        let tokens = await withTaskGroup(of: String?.self) { group in
            for _ in 0..<8 { group.addTask { try? await cache.token().get().token } }
            return await group.reduce(into: [String?]()) { $0.append($1) }
        }
        XCTAssertEqual(Set(tokens), ["token-1"])
        XCTAssertEqual(issuer.state.withLockedValue { $0.issued }, 1)
    }

    /// Sessions refused the same token cause one new fetch; one refused an older token gets the newer one as it is.
    func testARefusedTokenIsReplacedOnceHoweverManySessionsReportIt() async throws {
        let issuer = Issuer()
        let cache = OAuthTokenCache { await issuer.fetch() }
        let old = try await cache.token().get().token
        let replaced = try await cache.token(replacing: old).get()
        XCTAssertEqual(replaced.token, "token-2")
        XCTAssertTrue(replaced.fresh)
        let late = try await cache.token(replacing: old).get()
        XCTAssertEqual(late.token, "token-2", "already replaced")
        XCTAssertEqual(issuer.state.withLockedValue { $0.issued }, 2)
    }

    /// A failing endpoint is not cached: the next call tries again, and a token comes once it is back.
    func testAFailedFetchIsNotCached() async throws {
        let issuer = Issuer()
        issuer.state.withLockedValue { $0.failing = true }
        let cache = OAuthTokenCache { await issuer.fetch() }
        guard case .failure(.credentialsUnavailable(let why)) = await cache.token() else { return XCTFail("no token from a failing endpoint") }
        XCTAssertTrue(why.contains("503"), why)
        issuer.state.withLockedValue { $0.failing = false }
        let back = try await cache.token().get().token
        XCTAssertEqual(back, "token-1")
    }

    /// What the client makes of the endpoint's answers, and that a secret echoed in one never comes out.
    func testTokenResponsesAndErrorsAreReadAndSecretsScrubbed() {
        let client = OAuthTokenClient(credentials: OAuthClientCredentials(tokenEndpoint: "https://login.example.test/tenant/oauth2/v2.0/token?x=1",
                                                                          clientID: "app", clientAuthentication: .secret(.environment("X")),
                                                                          user: "relay@example.edu"))
        XCTAssertEqual(client.endpointName, "https://login.example.test/tenant/oauth2/v2.0/token")
        guard case .success(let ok) = client.interpret(status: .ok, body: Data(#"{"access_token":"abc","token_type":"Bearer","expires_in":"3599"}"#.utf8))
        else { return XCTFail() }
        XCTAssertEqual(ok.token, "abc")
        XCTAssertEqual(ok.lifetime, 3599)
        guard case .success(let clamped) = client.interpret(status: .ok, body: Data(#"{"access_token":"abc","token_type":"bearer","expires_in":1e300}"#.utf8))
        else { return XCTFail() }
        XCTAssertEqual(clamped.lifetime, 86_400)
        guard case .failure(.credentialsUnavailable(let mac)) = client.interpret(status: .ok, body: Data(#"{"access_token":"abc","token_type":"mac"}"#.utf8))
        else { return XCTFail() }
        XCTAssertTrue(mac.contains("not Bearer"), mac)
        let refusal = client.interpret(status: .unauthorized,
                                       body: Data(#"{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret provided: hunter2"}"#.utf8))
        guard case .failure(let error) = refusal, case .credentialsUnavailable(let text) = client.scrub(error, ["hunter2"]) else { return XCTFail() }
        XCTAssertEqual(text, "the token endpoint https://login.example.test/tenant/oauth2/v2.0/token answered 401: invalid_client: "
                       + "AADSTS7000215: Invalid client secret provided: (secret) (check the client id and the client secret or certificate)")
        XCTAssertEqual(OAuthTokenClient.formEncoded([("scope", "https://outlook.office365.com/.default"), ("client_secret", "a+b&c=d é")]),
                       "scope=https%3A%2F%2Foutlook.office365.com%2F.default&client_secret=a%2Bb%26c%3Dd%20%C3%A9")
    }
}
