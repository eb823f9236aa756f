import NIOConcurrencyHelpers
import NIOCore

/// Connections on one event loop that have input left after their turn (see `ConnectionFlow.commandsPerTurn`).
///
/// They are served in rounds, one turn per connection each, with a short pause before each round. The pause
/// is what lets the loop poll its sockets: NIO runs every task that is ready before it polls again, so turns
/// that queued themselves straight after each other (`execute`) would keep a loop busy with a few flooding
/// connections from accepting, greeting and reading anyone else until they ran dry. With one round task per
/// loop, the loop polls between rounds however many connections wait.
final class TurnQueue {
    /// Long enough to outlast the step from the end of a round to NIO's next look at its task queue, so that
    /// the next round is not due yet and the loop polls first; short enough not to slow a pipelining client
    /// (a 100-recipient transaction takes 7 turns).
    static let pause: TimeAmount = .microseconds(100)

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
        // A turn that leaves input again enqueues itself for the next round.
        for turn in round { turn() }
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
