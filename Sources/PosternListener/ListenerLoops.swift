import Dispatch
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// The process's one event-loop group and what runs on which of its loops.
///
/// One loop only accepts SMTP connections (see `SMTPListener`); the others (`sessions`, one per core) serve them
/// and the relay's upstream connections. A loop busy with sessions so never delays accepting a new client: the
/// worst greeting under the slow-reader attack (`SlowReaderTests`) was 15–55 ms accepting on session loops,
/// 15–25 ms on a loop of its own. The admin endpoint and the registration page, which take little traffic, run
/// on one session loop (`services`).
public struct ListenerLoops: Sendable {
    public let group: MultiThreadedEventLoopGroup
    public let accept: any EventLoop
    /// Not empty: `init` makes at least one.
    public let sessions: [any EventLoop]
    /// The session loops as a group, for code that picks a loop with `next()` (the relay).
    public let sessionGroup: any EventLoopGroup
    /// For the HTTP servers (admin endpoint, registration page).
    public var services: any EventLoop { sessions[sessions.count - 1] }

    public init(sessionLoops: Int = System.coreCount) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, sessionLoops) + 1)
        let loops = Array(group.makeIterator())
        accept = loops[0]
        sessions = Array(loops.dropFirst())
        sessionGroup = LoopSubset(sessions)
    }
}

/// Some loops of a `MultiThreadedEventLoopGroup` as a group of their own, handed out in turn by `next()`. NIO's
/// bootstraps take only a whole `MultiThreadedEventLoopGroup` or one of its loops, so users pass them `next()`.
/// It owns none of the loops: the group they belong to shuts them down.
final class LoopSubset: EventLoopGroup, Sendable {
    private let loops: [any EventLoop]
    private let turn = NIOLockedValueBox(0)

    /// `loops` is not empty.
    init(_ loops: [any EventLoop]) {
        self.loops = loops
    }

    func next() -> any EventLoop {
        loops[turn.withLockedValue { turn in
            defer { turn = (turn + 1) % loops.count }
            return turn
        }]
    }

    func any() -> any EventLoop {
        loops.first { $0.inEventLoop } ?? next()
    }

    func makeIterator() -> EventLoopIterator {
        EventLoopIterator(loops)
    }

    func shutdownGracefully(queue: DispatchQueue, _ callback: @escaping @Sendable ((any Error)?) -> Void) {
        queue.async { callback(EventLoopError.unsupportedOperation) }
    }
}
