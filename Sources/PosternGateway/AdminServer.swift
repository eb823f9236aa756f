import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix

/// Where the admin HTTP endpoint listens (`admin: { listen: "127.0.0.1:9025" }`).
public struct AdminConfiguration: Sendable, Hashable {
    public static let defaultListen = "127.0.0.1:9025"
    public var host: String
    public var port: Int

    public init(host: String = "127.0.0.1", port: Int = 9025) {
        self.host = host
        self.port = port
    }
}

/// What the admin endpoint asks the rest of the process before it answers.
public struct AdminProbes: Sendable {
    /// Brings gauges up to date before a scrape: queue depth and oldest age, days to each department's sunset.
    public var refreshGauges: @Sendable (GatewayMetrics) async -> Void
    /// Why the spool cannot take mail now, or nil when it can.
    public var spoolProblem: @Sendable () async -> String?

    public init(refreshGauges: @escaping @Sendable (GatewayMetrics) async -> Void = { _ in },
                spoolProblem: @escaping @Sendable () async -> String? = { nil }) {
        self.refreshGauges = refreshGauges
        self.spoolProblem = spoolProblem
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

/// `GET /metrics` (Prometheus text) and `GET /health` (200 `ok`, or 503 with the reasons) over HTTP/1.1.
final class AdminServer: Sendable {
    private let channel: any Channel

    var localAddress: SocketAddress? { channel.localAddress }

    private init(channel: any Channel) {
        self.channel = channel
    }

    struct Context: Sendable {
        var metrics: GatewayMetrics
        var probes: AdminProbes
        /// Why the SMTP side is not healthy (listeners not bound, shutting down), or nil.
        var gatewayProblem: @Sendable () -> String?
        var logger: Logger
    }

    static func bind(_ configuration: AdminConfiguration, context: Context, group: any EventLoopGroup) async throws -> AdminServer {
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                channel.pipeline.configureHTTPServerPipeline().flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(AdminHTTPHandler(context: context))
                }
            }
            .bind(host: configuration.host, port: configuration.port)
            .get()
        context.logger.info("admin endpoint listening", metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "?")"])
        return AdminServer(channel: channel)
    }

    func close() async {
        channel.close(promise: nil)
        try? await channel.closeFuture.get()
    }
}

/// Answers one request at a time (the HTTP pipeline's pipelining assistance holds the next one back).
final class AdminHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let admin: AdminServer.Context
    private var head: HTTPRequestHead?

    init(context: AdminServer.Context) {
        self.admin = context
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: context)
        }
    }

    private struct Response: Sendable {
        var status: HTTPResponseStatus
        var contentType = "text/plain; charset=utf-8"
        var body: [UInt8]
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        guard head.method == .GET || head.method == .HEAD else {
            send(Response(status: .methodNotAllowed, body: Array("only GET\n".utf8)), for: head, context: context)
            return
        }
        let admin = self.admin
        let work: @Sendable () async -> Response
        switch path {
        case "/metrics":
            work = {
                await admin.probes.refreshGauges(admin.metrics)
                return Response(status: .ok, contentType: "text/plain; version=0.0.4; charset=utf-8", body: admin.metrics.exposition())
            }
        case "/health":
            work = {
                var problems: [String] = []
                if let problem = admin.gatewayProblem() { problems.append(problem) }
                if let problem = await admin.probes.spoolProblem() { problems.append("spool: \(problem)") }
                return problems.isEmpty ? Response(status: .ok, body: Array("ok\n".utf8))
                    : Response(status: .serviceUnavailable, body: Array((problems.joined(separator: "\n") + "\n").utf8))
            }
        default:
            send(Response(status: .notFound, body: Array("not found; try /metrics or /health\n".utf8)), for: head, context: context)
            return
        }
        let handler = NIOLoopBound(self, eventLoop: context.eventLoop)
        let boundContext = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.eventLoop.makeFutureWithTask(work).whenSuccess { response in
            handler.value.send(response, for: head, context: boundContext.value)
        }
    }

    private func send(_ response: Response, for request: HTTPRequestHead, context: ChannelHandlerContext) {
        guard context.channel.isActive else { return }
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: response.contentType)
        headers.add(name: "Content-Length", value: "\(response.body.count)")
        headers.add(name: "Cache-Control", value: "no-store")
        let keepAlive = request.isKeepAlive
        if !keepAlive { headers.add(name: "Connection", value: "close") }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: request.version, status: response.status, headers: headers))), promise: nil)
        if request.method != .HEAD {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: response.body)))), promise: nil)
        }
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            if !keepAlive { channel.close(promise: nil) }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        context.close(promise: nil)
    }
}
