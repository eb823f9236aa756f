import NIOCore
import NIOPosix

/// The gateway's one event-loop group and what runs on which of its loops.
///
/// One loop only accepts SMTP connections (see `SMTPListener`); the others (`sessions`, one per core) serve them,
/// and the relay's upstream connections, the admin endpoint and the registration page run on the whole group. A
/// loop busy with sessions so never delays accepting a new client: the worst greeting under the slow-reader
/// attack (`SlowReaderTests`) was 15–55 ms accepting on session loops, 15–25 ms on a loop of its own.
struct GatewayLoops: Sendable {
    let group: MultiThreadedEventLoopGroup
    let accept: any EventLoop
    /// Not empty: `init` makes at least one.
    let sessions: [any EventLoop]

    init(sessionLoops: Int = System.coreCount) {
        group = MultiThreadedEventLoopGroup(numberOfThreads: max(1, sessionLoops) + 1)
        let loops = Array(group.makeIterator())
        accept = loops[0]
        sessions = Array(loops.dropFirst())
    }
}
