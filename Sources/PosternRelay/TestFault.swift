import Foundation

/// A fault injected by tests of the real binary, in debug builds only: with
/// `POSTERN_TEST_CRASH_AFTER_DELIVERY_TO=<address>` in its environment, the process traps once the
/// upstream has accepted a message for that recipient and before the relay records it: the
/// worst moment, the one a trap in the relay used to hit (a duplicate recipient), which
/// delivers the message again at every restart unless the delivery ledger holds it.
enum TestFault {
    #if DEBUG
    static let crashRecipient = ProcessInfo.processInfo.environment["POSTERN_TEST_CRASH_AFTER_DELIVERY_TO"]
    #endif

    static func afterUpstreamReplies(_ outcomes: [RelayOutcome]) {
        #if DEBUG
        // Reachable only from a test's environment variable in a debug build; release builds have no such switch.
        if let crashRecipient, outcomes.contains(where: { $0.disposition == .delivered && $0.recipient == crashRecipient }) {
            fatalError("test fault: crash after the upstream accepted a message for \(crashRecipient)")
        }
        #endif
    }
}
