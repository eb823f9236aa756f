import Foundation
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Where the admin HTTP endpoint listens (`admin: { listen: "127.0.0.1:9025" }`).
public struct AdminConfiguration: Sendable, Hashable {
    public var host: String
    public var port: Int
    /// On a graceful shutdown, how long `/health` says `draining` (503) while the listeners still accept
    /// (`admin: { drain-notice-seconds: 3 }`); 0, the default, stops accepting at once. Behind a load balancer,
    /// make it longer than the balancer's check interval times its fall count.
    public var drainNoticeSeconds: Int64

    public init(host: String = "127.0.0.1", port: Int = 9025, drainNoticeSeconds: Int64 = 0) {
        self.host = host
        self.port = port
        self.drainNoticeSeconds = drainNoticeSeconds
    }
}

/// What the admin endpoint asks the rest of the process before it answers.
public struct AdminProbes: Sendable {
    /// Brings gauges up to date before a scrape: queue depth and oldest age, days to each department's sunset.
    public var refreshGauges: @Sendable (GatewayMetrics) async -> Void
    /// Why the spool cannot take mail now, or nil when it can.
    public var spoolProblem: @Sendable () async -> String?
    /// The policy in force as `/health` names it (`policy 3f2a… generation 2`), or nil.
    public var policyVersion: @Sendable () -> String?

    public init(refreshGauges: @escaping @Sendable (GatewayMetrics) async -> Void = { _ in },
                spoolProblem: @escaping @Sendable () async -> String? = { nil },
                policyVersion: @escaping @Sendable () -> String? = { nil }) {
        self.refreshGauges = refreshGauges
        self.spoolProblem = spoolProblem
        self.policyVersion = policyVersion
    }
}

/// Health checks behind the admin endpoint's `/health`: the gateway passes them in as `AdminProbes.spoolProblem`.
public enum HealthProbe {
    /// Creates, writes and removes a file in `path`: nil when that works, else why not.
    /// (A permission check alone says nothing when running as root.)
    public static func directoryWritable(_ path: String) -> String? {
        let file = path + "/.postern-health-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(file, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        guard fd >= 0 else { return "\(path) is not writable: \(String(cString: strerror(errno)))" }
        defer { unlink(file) }
        let written = write(fd, "ok", 2)
        let error = errno
        close(fd)
        return written == 2 ? nil : "\(path) is not writable: \(String(cString: strerror(error)))"
    }
}

/// `GET /metrics` (Prometheus text) and `GET /health` (200 `ok`, or 503 with the reasons: `draining` first while
/// the gateway shuts down, so that a load balancer's check takes the node out), `HEAD` for both. The health body's
/// last line names the policy in force (`policy FINGERPRINT generation N`): a balancer matches on the status only.
///
/// Served with Hummingbird, as the registration page is: one HTTP stack in the process, with its request limits,
/// keep-alive and HEAD handling, on the gateway's event loops. A scrape's work is a few gauges and the
/// exposition text; nothing here needs a hand-written HTTP handler.
final class AdminServer: Sendable {
    /// The application in a group of its own, so that `close` can shut it down gracefully (cancelling it would
    /// cut off a scrape in progress).
    private let services: ServiceGroup
    private let server: Task<Void, any Error>
    let port: Int

    private init(services: ServiceGroup, server: Task<Void, any Error>, port: Int) {
        self.services = services
        self.server = server
        self.port = port
    }

    struct Context: Sendable {
        var metrics: GatewayMetrics
        var probes: AdminProbes
        /// Why the SMTP side is not healthy (listeners not bound, shutting down), or nil.
        var gatewayProblem: @Sendable () -> String?
        var logger: Logger
    }

    /// Binds the endpoint and serves it until `close`; throws when it cannot bind.
    static func start(_ configuration: AdminConfiguration, context: Context, group: any EventLoopGroup) async throws -> AdminServer {
        let router = Router()
        router.get("metrics") { _, _ in
            await context.probes.refreshGauges(context.metrics)
            return response(.ok, ByteBuffer(bytes: context.metrics.exposition()), contentType: "text/plain; version=0.0.4; charset=utf-8")
        }
        router.get("health") { _, _ in
            var problems: [String] = []
            if let problem = context.gatewayProblem() { problems.append(problem) }
            if let problem = await context.probes.spoolProblem() { problems.append("spool: \(problem)") }
            let version = context.probes.policyVersion().map { $0 + "\n" } ?? ""
            return problems.isEmpty ? response(.ok, ByteBuffer(string: "ok\n" + version))
                : response(.serviceUnavailable, ByteBuffer(string: problems.joined(separator: "\n") + "\n" + version))
        }
        let bound = group.next().makePromise(of: Int.self)
        let answered = NIOLockedValueBox(false)
        @Sendable func settle(_ result: Result<Int, any Error>) {
            guard answered.withLockedValue({ done in defer { done = true }; return !done }) else { return }
            bound.completeWith(result)
        }
        let application = Application(
            router: router,
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: nil),
            onServerRunning: { channel in
                settle(.success(channel.localAddress?.port ?? 0))
                context.logger.info("admin endpoint listening", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
            },
            eventLoopGroupProvider: .shared(group), logger: context.logger)
        let services = ServiceGroup(configuration: .init(services: [application], logger: context.logger))
        let server = Task {
            do {
                try await services.run()
                settle(.failure(CancellationError()))
            } catch {
                settle(.failure(error))
                throw error
            }
        }
        do {
            return AdminServer(services: services, server: server, port: try await bound.futureResult.get())
        } catch {
            server.cancel()
            throw error
        }
    }

    private static func response(_ status: HTTPResponse.Status, _ body: ByteBuffer, contentType: String = "text/plain; charset=utf-8") -> Response {
        Response(status: status, headers: [.contentType: contentType, .cacheControl: "no-store"], body: .init(byteBuffer: body))
    }

    func close() async {
        await services.triggerGracefulShutdown()
        _ = await server.result
    }
}
