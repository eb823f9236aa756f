import PosternSMTP

/// Where one message's DATA goes while it arrives (issue #20), as a state machine in the manner of
/// `ServerConnectionStateMachine`: `SMTPServerHandler` says what the framer holds, this says what to do with it.
///
/// A message stays in memory while it is small (most are: a scan of a page, a notification), and is handed to
/// the delivery target whole at its end, as before. Once the framer holds more than the header section's limit
/// (`HeaderScanner.headerSectionLimit`), policy decides on the header section and the message is written to the
/// delivery target in chunks of `chunkSize` while the rest arrives: memory does not grow with the message. While
/// a chunk is being written nothing more is read from the client (backpressure: a disk slower than the client
/// holds the client, not memory). A message that will be refused (too big, a bare line ending, policy) is
/// dropped as it arrives, and what was written of it is removed.
struct MessageIntake: Sendable, Hashable {
    /// Bytes handed to the target at a time, once streaming.
    static let chunkSize = 256 * 1024

    enum Phase: Sendable, Hashable {
        /// Small so far: the framer keeps it.
        case inMemory
        /// Written to the target as it arrives.
        case streaming
        /// It will be refused, or writing it failed: the rest is read and dropped.
        case dropping
    }

    enum Action: Sendable, Hashable {
        case none
        /// Give policy the header section (`SMTPSession.headerSectionReceived`), then `headerDecided`.
        case decideOnHeaderSection
        /// Take the framer's bytes and write them to the target (one write at a time; input waits for it).
        case write
        /// Take the framer's bytes and drop them.
        case drop
        /// Remove what was written to the target; nothing more goes there.
        case abort
    }

    private(set) var phase = Phase.inMemory

    /// After the framer took input: it holds `stored` bytes, and `rejected` says the message will be refused.
    mutating func inputTaken(stored: Int, rejected: Bool) -> Action {
        switch phase {
        case .inMemory:
            // A refused message is dropped by the framer itself (it stores nothing more).
            if rejected { return .none }
            return stored > HeaderScanner.headerSectionLimit ? .decideOnHeaderSection : .none
        case .streaming:
            if rejected {
                phase = .dropping
                return .abort
            }
            return stored >= Self.chunkSize ? .write : .none
        case .dropping:
            return stored > 0 ? .drop : .none
        }
    }

    /// Policy's answer on the header section came. Accepted: write what is held; refused: drop it.
    mutating func headerDecided(accepted: Bool) -> Action {
        guard phase == .inMemory else { return .none }
        phase = accepted ? .streaming : .dropping
        return accepted ? .write : .drop
    }

    /// A write to the target failed: remove what was written, drop the rest.
    mutating func writeFailed() -> Action {
        guard phase == .streaming else { return .none }
        phase = .dropping
        return .abort
    }
}
