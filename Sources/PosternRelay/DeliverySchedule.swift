import Foundation
import HeapModule

/// Which queued messages are due when, and which are being delivered. Not thread-safe: the relay
/// keeps it under a lock.
///
/// Every operation is logarithmic in the queue's depth (a min-heap of due dates): with a backlog of
/// tens of thousands, picking the next messages on every completion must not walk the whole queue.
/// The dictionary is the truth; the heap may hold stale entries (an id rescheduled or dropped),
/// which are skipped when they reach the top and purged when they outnumber the live ones.
struct DeliverySchedule {
    struct Due: Comparable {
        var date: Date
        var id: String
        static func < (a: Due, b: Due) -> Bool { a.date == b.date ? a.id < b.id : a.date < b.date }
    }

    private(set) var due: [String: Date] = [:]
    private(set) var inFlight: Set<String> = []
    private var heap = Heap<Due>()

    var queuedCount: Int { due.count }
    /// Heap entries, live and stale.
    var heapCount: Int { heap.count }
    func isKnown(_ id: String) -> Bool { due[id] != nil || inFlight.contains(id) }

    /// Schedules (or reschedules) `id`; ignored while it is in flight: the delivery in progress
    /// reschedules it when it ends.
    mutating func schedule(_ id: String, at date: Date) {
        guard !inFlight.contains(id), due[id] != date else { return }
        due[id] = date
        heap.insert(Due(date: date, id: id))
        compactIfStale()
    }

    /// Reschedules after a delivery attempt, ending the in-flight mark.
    mutating func finish(_ id: String, next date: Date?) {
        inFlight.remove(id)
        if let date { schedule(id, at: date) }
    }

    /// Forgets an id that is no longer queued.
    mutating func drop(_ id: String) {
        due.removeValue(forKey: id)
    }

    /// Marks up to `limit` of the earliest due ids (due date, then id) as in flight and returns them.
    mutating func takeDue(now: Date, limit: Int) -> [String] {
        var taken: [String] = []
        while taken.count < limit, let top = heap.min, top.date <= now {
            heap.removeMin()
            guard due[top.id] == top.date else { continue }  // stale
            due.removeValue(forKey: top.id)
            inFlight.insert(top.id)
            taken.append(top.id)
        }
        return taken
    }

    /// The earliest due date among the queued ids, if any.
    mutating func nextDue() -> Date? {
        while let top = heap.min {
            if due[top.id] == top.date { return top.date }
            heap.removeMin()
        }
        return nil
    }

    private mutating func compactIfStale() {
        guard heap.count > 1024, heap.count > 2 * due.count else { return }
        heap = Heap(due.map { Due(date: $0.value, id: $0.key) })
    }
}
