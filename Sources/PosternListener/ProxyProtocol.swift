import NIOCore
import PosternSMTP

/// Reads the PROXY header of a connection from a trusted load balancer, then hands the connection,
/// with the reported client address, to `install` and removes itself. No header in time: closed.
final class ProxyProtocolHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private var buffer = ByteBuffer()
    private let peer: String
    private let install: (any Channel, _ client: String, _ port: Int) throws -> Void
    private var timeout: Scheduled<Void>?
    private var done = false

    init(peer: String, install: @escaping (any Channel, String, Int) throws -> Void) {
        self.peer = peer
        self.install = install
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timeout = context.eventLoop.scheduleTask(in: .seconds(10)) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return context.fireChannelRead(data) }
        var bytes = unwrapInboundIn(data)
        buffer.writeBuffer(&bytes)
        do {
            guard let header = try ProxyHeader.parse(&buffer) else { return }
            done = true
            timeout?.cancel()
            let (client, port): (String, Int)
            switch header {
            case .proxied(let address, let p): (client, port) = (address, p)
            case .local: (client, port) = (peer, context.channel.remoteAddress?.port ?? 0)
            }
            try install(context.channel, client, port)
            let rest = buffer
            buffer = ByteBuffer()
            // What came after the header in the same read is the client's: passed on before this handler
            // leaves (a context that has left the pipeline passes nothing on).
            if rest.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(rest)) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        } catch {
            context.close(promise: nil)
        }
    }
}

extension ProxyProtocolHandler {
    typealias InboundOut = ByteBuffer
}
