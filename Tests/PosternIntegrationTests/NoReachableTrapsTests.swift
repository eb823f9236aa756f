import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import PosternCore
import PosternSMTP
import PosternSession
import PosternSpool
import XCTest
import PosternGateway
@testable import PosternListener

/// Input, configuration and queue files that used to reach a trap (issue #13), fed to the real channel
/// handler, the real configuration reader and the real `postern` binary.
final class NoReachableTrapsTests: XCTestCase {
    // MARK: The channel handler

    struct NoDelivery: DeliveryTarget {
        func makeQueueID() -> String { "Q1" }
        func accept(queueID: String, envelope: Envelope, message: ByteBuffer) async -> DeliveryOutcome {
            .temporaryFailure(SMTPReply(451, "4.3.0", "not stored"))
        }
    }

    /// A directory that answers after `delay`.
    struct SlowAuthenticator: SubmissionAuthenticator {
        var delay: Duration
        func authenticate(_ credentials: Credentials, client: String) async -> AuthOutcome {
            try? await Task.sleep(for: delay)
            return .invalidCredentials
        }
    }

    /// A client that reads nothing: writes are kept and never complete, so a close that waits for its
    /// reply to be written leaves the channel open. The held writes fail when the channel goes.
    final class StalledWrites: ChannelOutboundHandler, RemovableChannelHandler, @unchecked Sendable {
        typealias OutboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        private let box = NIOLockedValueBox("")
        private var held: [EventLoopPromise<Void>] = []
        var written: String { box.withLockedValue { $0 } }

        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            let buffer = unwrapOutboundIn(data)
            box.withLockedValue { $0 += String(buffer: buffer) }
            if let promise { held.append(promise) }
        }

        func flush(context: ChannelHandlerContext) {}

        func handlerRemoved(context: ChannelHandlerContext) {
            for promise in held { promise.fail(ChannelError.ioOnClosedChannel) }
            held = []
        }
    }

    /// A listener on a free loopback port whose connections get `handlers` and then an `SMTPServerHandler`
    /// for a submissions session with TLS already up (AUTH allowed), on `environment`.
    func serve(group: EventLoopGroup, authenticator: (any SubmissionAuthenticator)?,
               handlers: @escaping @Sendable () -> [any ChannelHandler] = { [] }) async throws -> Channel {
        let environment = ConnectionEnvironment(target: NoDelivery(), authenticator: authenticator, tls: TLSContextBox(nil),
                                                logger: Logger(label: "handler-test"), audit: AuditLog.disabled, now: { Date() },
                                                metrics: GatewayMetrics())
        return try await ServerBootstrap(group: group)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let configuration = SessionConfiguration(hostname: "gw.test", listenerName: "sub", kind: .submissions, authAvailable: true)
                    var session = SMTPSession(configuration: configuration,
                                              facts: ConnectionFacts(listenerName: "sub", kind: .submissions, clientAddress: "127.0.0.1", sessionID: "t"),
                                              rules: AcceptingRules())
                    session.tlsEstablished(TLSInfo(version: "TLSv1.3"))
                    for handler in handlers() { try channel.pipeline.syncOperations.addHandler(handler) }
                    try channel.pipeline.syncOperations.addHandler(SMTPServerHandler(session: session, environment: environment))
                }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    /// The session says AUTH is available but no authenticator is wired in: `454 4.7.0`, and the
    /// session goes on (it used to be a `preconditionFailure`).
    func testAuthWithoutAnAuthenticatorAnswers454() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let server = try await serve(group: group, authenticator: nil)
        let port = try XCTUnwrap(server.localAddress?.port)
        let script = """
            import socket, sys
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            s.sendall(b"EHLO client\\r\\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\\r\\nQUIT\\r\\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk: break
                data += chunk
            print(data.decode())
            """
        let result = try Shell.python(script, ["\(port)"])
        try await server.close()
        try await group.shutdownGracefully()
        XCTAssertTrue(result.output.contains("454 4.7.0 Temporary authentication failure"), result.output)
        XCTAssertTrue(result.output.contains("221 2.0.0 Bye"), result.output)
    }

    /// The idle timeout closes a session while the directory still checks its AUTH, and its 421 cannot
    /// be written (the client reads nothing): the directory's answer then arrived for a closed session
    /// and trapped. Now it is audited and dropped; nothing more is written.
    func testDirectoryAnswerAfterTheIdleTimeoutClosedTheSessionDoesNotTrap() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let stalled = StalledWrites()
        let server = try await serve(group: group, authenticator: SlowAuthenticator(delay: .milliseconds(800))) {
            [stalled, IdleStateHandler(readTimeout: .milliseconds(200))]
        }
        let port = try XCTUnwrap(server.localAddress?.port)
        let script = """
            import socket, sys, time
            s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5)
            s.sendall(b"EHLO client\\r\\nAUTH PLAIN AGFsaWNlAHNlY3JldA==\\r\\n")
            time.sleep(1.6)
            print("client done")
            s.close()
            """
        let result = try Shell.python(script, ["\(port)"])
        try await Task.sleep(for: .milliseconds(200))
        try await server.close()
        try await group.shutdownGracefully()
        XCTAssertTrue(result.output.contains("client done"), result.output)
        let written = stalled.written
        XCTAssertTrue(written.hasPrefix("220 gw.test ESMTP Postern\r\n250-gw.test\r\n"), written)
        XCTAssertTrue(written.hasSuffix("421 4.4.2 Idle timeout, closing transmission channel\r\n"), "nothing after the 421: \(written)")
    }

    // MARK: postern.yaml

    /// Numbers from postern.yaml feed `TimeAmount.seconds`, `Duration * 3600`, `*= 3`, nanosecond
    /// conversions: out of range they are refused with the file, the line and the range to use.
    func testOutOfRangeNumbersInTheConfigurationAreRefusedWithFileLineAndFix() throws {
        let yaml = """
            hostname: gw.test
            limits:
              idle-timeout-seconds: 9223372036854775807
              greeting-delay-ms: 99999999999999999999
              max-message-size: -1
            listeners:
              - name: dev
                kind: device
                listen: 127.0.0.1:0
                max-message-size: 99999999999999999999G
            delivery:
              spool: spool
              relay:
                upstreams:
                  - {name: hub, host: 127.0.0.1, port: 2526, ca-file: ca.pem, certificate: c.pem, key: k.pem}
                retry:
                  initial-seconds: 9223372036854775807
                  expire-hours: 99999999999999999999
                  scan-seconds: 0
            directory:
              uris: [ldap://ldap.test]
              bind-dn: cn=gw
              bind-password-env: X
              search-base: dc=test
              throttle:
                lockout-after: 9223372036854775807
            """
        XCTAssertThrowsError(try GatewayConfiguration.parse(yaml, file: "/etc/postern/postern.yaml")) { error in
            let issues = (error as? ConfigErrors)?.issues.map(\.description) ?? []
            for expected in [
                "/etc/postern/postern.yaml:3: limits.idle-timeout-seconds must be between 1 and 3600, not 9223372036854775807 (fix: write a whole number from 1 to 3600)",
                "/etc/postern/postern.yaml:4: limits.greeting-delay-ms must be between 0 and 30000, not 99999999999999999999 (fix: write a whole number from 0 to 30000)",
                "/etc/postern/postern.yaml:5: limits.max-message-size must be a size, not '-1' (fix: write bytes, or a whole number with K, M or G, e.g. 25M, from 1K to 1G)",
                "/etc/postern/postern.yaml:10: listener max-message-size must be a size, not '99999999999999999999G' (fix: write bytes, or a whole number with K, M or G, e.g. 25M, from 1K to 1G)",
                "/etc/postern/postern.yaml:17: initial-seconds must be between 1 and 86400, not 9223372036854775807 (fix: write a whole number from 1 to 86400)",
                "/etc/postern/postern.yaml:18: expire-hours must be between 1 and 720, not 99999999999999999999 (fix: write a whole number from 1 to 720)",
                "/etc/postern/postern.yaml:19: scan-seconds must be between 1 and 3600, not 0 (fix: write a whole number from 1 to 3600)",
                "/etc/postern/postern.yaml:26: lockout-after must be between 1 and 1000, not 9223372036854775807 (fix: write a whole number from 1 to 1000)",
            ] {
                XCTAssertTrue(issues.contains(expected), "missing \(expected) in:\n\(issues.joined(separator: "\n"))")
            }
        }
    }

    func testNonNumbersInTheConfigurationAreStillNotWholeNumbers() throws {
        let yaml = """
            limits: {idle-timeout-seconds: soon}
            listeners: [{name: dev, kind: device, listen: "127.0.0.1:0"}]
            """
        XCTAssertThrowsError(try GatewayConfiguration.parse(yaml, file: "p.yaml")) { error in
            let issues = (error as? ConfigErrors)?.issues.map(\.description) ?? []
            XCTAssertEqual(issues, ["p.yaml:1: limits.idle-timeout-seconds must be a whole number (fix: write a whole number from 1 to 3600)"])
        }
    }

    // MARK: The postern binary

    /// A queue entry whose dates no Int or time_t holds: `postern queue list` turned the age into an Int.
    func testQueueListAndShowSurviveAnEntryWithDatesOutOfRange() async throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("postern-hostile-spool-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let spool = try Spool(directory: root, logger: Logger(label: "test"))
        let id = QueueID.make()
        let envelope = SpoolEnvelope(sender: "alice@example.edu", recipients: ["bob@example.org"], receivedAt: Date(timeIntervalSince1970: -1e300),
                                     clientAddress: "192.0.2.1", listener: "submission")
        try await spool.enqueue(id: id, envelope: envelope, message: ByteBuffer(string: "Subject: old\r\n\r\nbody\r\n"))
        var state = SpoolEntryState.initial(for: envelope)
        state.attempts = Int.max
        state.nextAttempt = Date(timeIntervalSince1970: 1e300)
        try spool.directory.writeState(id: id, state)
        await spool.shutdown()

        let list = try Shell.run([Repo.posternBinary.path, "queue", "list", "--spool", root.path])
        XCTAssertEqual(list.status, 0, list.output)
        XCTAssertTrue(list.output.contains("\(id)  queued") && list.output.contains("  alice@example.edu\n    -> bob@example.org"), list.output)
        XCTAssertTrue(list.output.contains("1 message(s) queued"), list.output)
        let show = try Shell.run([Repo.posternBinary.path, "queue", "show", id, "--spool", root.path])
        XCTAssertEqual(show.status, 0, show.output)
        XCTAssertTrue(show.output.contains("Queue-ID: \(id)") && show.output.contains("Attempts: 9223372036854775807"), show.output)
    }

    /// `postern sink --listen` with a port no socket has: not a trap, it turned out (NIO resolves the
    /// port as a service name: 99999 was bound as 34463, -1 failed at start), but a wrong port; now
    /// refused before the sink starts.
    func testSinkRefusesAListenPortOutOfRange() throws {
        for listen in ["127.0.0.1:99999", "127.0.0.1:-1"] {
            let result = try Shell.run([Repo.posternBinary.path, "sink", "--listen", listen, "--cert", Repo.certs.appendingPathComponent("server.pem").path,
                                        "--key", Repo.certs.appendingPathComponent("server.key").path, "--ca", Repo.certs.appendingPathComponent("ca.pem").path,
                                        "--discard"], timeout: 20)
            XCTAssertEqual(result.status, 64, result.output)
            XCTAssertTrue(result.output.contains("--listen must be ADDR:PORT with a port from 0 to 65535"), result.output)
        }
    }

    /// `postern devices expiring --within` with a number of weeks whose days overflow.
    func testDevicesExpiringRefusesAPeriodThatOverflows() throws {
        let result = try Shell.run([Repo.posternBinary.path, "devices", "expiring", "--policies", Repo.policies.path, "--within", "2000000000000000000w"])
        XCTAssertEqual(result.status, 64, result.output)
        XCTAssertTrue(result.output.contains("--within '2000000000000000000w'"), result.output)
    }
}
