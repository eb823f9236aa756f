import NIOConcurrencyHelpers
import NIOCore

/// Connections on one event loop that have input left after their turn (see `ServerConnectionStateMachine.commandsPerTurn`).
///
/// They are served in rounds, one turn per connection each, with a short pause before each round. The pause
/// is what lets the loop poll its sockets: NIO runs every task that is ready before it polls again, so turns
/// that queued themselves straight after each other (`execute`) would keep a loop busy with a few flooding
/// connections from accepting, greeting and reading anyone else until they ran dry. With one round task per
/// loop, the loop polls between rounds however many connections wait; and a round that has taken `slice`
/// leaves the rest of its connections for the next one, so what else the loop has to do (a new client's
/// greeting, a delivery's reply) waits at most that long.
final class TurnQueue {
    /// Long enough to outlast the step from the end of a round to NIO's next look at its task queue, so that
    /// the next round is not due yet and the loop polls first; short enough not to slow a pipelining client
    /// (a 100-recipient transaction takes 13 turns).
    static let pause: TimeAmount = .microseconds(100)
    /// The longest a round goes on before the loop gets back to its tasks and sockets.
    static let slice: TimeAmount = .milliseconds(2)

    let eventLoop: any EventLoop
    private var waiting: [() -> Void] = []
    /// The next round is scheduled, or this one is running (it schedules the next when it ends).
    private var roundPending = false

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Runs `turn` in the next round. Call on `eventLoop`.
    func enqueue(_ turn: @escaping () -> Void) {
        waiting.append(turn)
        guard !roundPending else { return }
        roundPending = true
        scheduleRound()
    }

    /// The pause counts from now: a round scheduled while one runs would be due before that one ends.
    private func scheduleRound() {
        let queue = NIOLoopBound(self, eventLoop: eventLoop)
        eventLoop.scheduleTask(in: Self.pause) { queue.value.runRound() }
    }

    private func runRound() {
        let round = waiting
        waiting.removeAll(keepingCapacity: true)
        let end = NIODeadline.now() + Self.slice
        // A turn that leaves input again enqueues itself for the next round.
        for (served, turn) in round.enumerated() {
            turn()
            if NIODeadline.now() > end {
                // Those not served yet go first next time.
                waiting = Array(round[(served + 1)...]) + waiting
                break
            }
        }
        if waiting.isEmpty {
            roundPending = false
        } else {
            scheduleRound()
        }
    }
}

/// One `TurnQueue` per event loop, made on first use; all listeners of a gateway share it.
final class TurnQueues: Sendable {
    private let queues = NIOLockedValueBox<[ObjectIdentifier: NIOLoopBound<TurnQueue>]>([:])

    init() {}

    /// The queue of `eventLoop`. Call on `eventLoop`.
    func queue(on eventLoop: any EventLoop) -> TurnQueue {
        queues.withLockedValue { queues in
            let key = ObjectIdentifier(eventLoop)
            if let bound = queues[key], bound.eventLoop === eventLoop { return bound.value }
            let queue = TurnQueue(eventLoop: eventLoop)
            queues[key] = NIOLoopBound(queue, eventLoop: eventLoop)
            return queue
        }
    }
}
