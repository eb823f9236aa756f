import NIOCore
import NIOPosix
import PosternTestSupport
import XCTest
@testable import PosternRelay

/// A failed connection to an upstream reads as plain language (the queue's last reason, the logs), from the
/// error a real connect attempt gives, not the library's error value.
final class ConnectFailureTests: XCTestCase {
    struct Connected: Error { var what: String }

    func connectError(host: String, port: Int) async throws -> any Error {
        do {
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connectTimeout(.seconds(5)).connect(host: host, port: port).get()
            try? await channel.close()
            throw Connected(what: "\(host):\(port) accepted a connection")
        } catch let error as Connected {
            throw error
        } catch {
            return error
        }
    }

    func testRefusedConnectionSaysSoWithTheAddress() async throws {
        let port = freeLoopbackPort()
        let error = try await connectError(host: "127.0.0.1", port: port)
        let text = ConnectFailure.describe(error, host: "127.0.0.1", port: port)
        XCTAssertEqual(text, "127.0.0.1:\(port) refused the connection (nothing listens on that port)")
        XCTAssertEqual("\(UpstreamConnectionError.connectFailed(text))",
                       "connect failed: 127.0.0.1:\(port) refused the connection (nothing listens on that port)")
    }

    func testEveryAddressOfANameIsNamedOnce() async throws {
        // localhost is 127.0.0.1 and ::1 in /etc/hosts here; each address tried gets its own reason.
        let port = freeLoopbackPort()
        let error = try await connectError(host: "localhost", port: port)
        let text = ConnectFailure.describe(error, host: "localhost", port: port)
        XCTAssertTrue(text.contains("127.0.0.1:\(port) refused the connection"), text)
        XCTAssertFalse(text.contains("SingleConnectionFailure"), text)
        XCTAssertFalse(text.contains("errno"), text)
    }

    func testOtherErrorsKeepTheirAddress() {
        XCTAssertEqual(ConnectFailure.describe(ChannelError.connectTimeout(.seconds(10)), host: "m365.example", port: 25),
                       "m365.example:25 did not answer within 10 s (connect timeout)")
        XCTAssertEqual(ConnectFailure.describe(IOError(errnoCode: EHOSTUNREACH, reason: "connect"), host: "10.9.9.9", port: 25),
                       "10.9.9.9:25 cannot be reached (no route to host)")
    }
}
