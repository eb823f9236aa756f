import NIOCore

/// One client connection around its `SMTPSession`, as a state machine in the manner of NIO's
/// `NIOTypedHTTPServerUpgraderStateMachine`: `SMTPServerHandler` tells it what happened (the channel became
/// active or writable, bytes or a read request arrived, a timer fired, AUTH or a delivery answered, shutdown
/// began) and does what the returned action says. The session decides what the client is told; this
/// decides when input is read and handled, when the greeting goes out, and when the connection is closed.
///
/// Backpressure and fairness (issue #13: twenty clients that sent HELP and NOOP in a loop and never read
/// their replies once took both cores and held a new client's 220 for over 5 s):
/// - input is handled `commandsPerTurn` commands at a time, then the event loop serves other connections
///   (`TurnQueue`);
/// - nothing more is read from the socket while complete input is buffered, while output is held, or while
///   AUTH, a delivery, a chunk of a streamed message's write or a TLS handshake is under way (the handshake's
///   own records always flow);
/// - output is held at `writeBufferWaterMark` (and the kernel's part at `socketSendBuffer`): past the high
///   mark the channel is not writable and input waits;
/// - a client that has reached that bound and has still sent more is writing without reading: it gets
///   `421 4.7.0` and is closed, and so is one that stays at the bound for `stallTimeout`. Avoiding that
///   deadlock is the client's job (RFC 2920 3.1: a client that does not read while it writes keeps each
///   pipelined group, which ends at DATA, within the TCP window); the bound, some 200 KB of unread replies
///   with the kernel's part, is far beyond any conforming group.
///
/// Every event can arrive in every state (a timer that fires after the close, a directory that answers a
/// session closed meanwhile): each gets an action, `.none` where there is nothing to do, never a trap.
struct ServerConnectionStateMachine: Sendable {
    /// Commands (or DATA chunks, one read each) handled in one turn. The largest reply (EHLO, HELP) is
    /// under 200 octets, so a turn writes at most a few KiB, far below the high water mark.
    static let commandsPerTurn = 8

    /// What the channel may hold of replies the client has not read before it is marked not writable.
    /// The kernel holds at most `socketSendBuffer` more, and the client's own receive window more again.
    static let writeBufferWaterMark = ChannelOptions.Types.WriteBufferWaterMark(low: 16 * 1024, high: 64 * 1024)

    /// SO_SNDBUF for client connections. Replies are small, so this costs no throughput; without it Linux
    /// grows each send buffer to megabytes (`tcp_wmem`) for a client that never reads them.
    static let socketSendBuffer = 32 * 1024

    /// How long a connection may stay not writable with nothing more sent before it is cut off anyway.
    static let stallTimeout: TimeAmount = .seconds(10)

    /// How long a closing reply may take to be written before the connection is closed without it.
    static let closeGrace: TimeAmount = .seconds(2)

    /// What is kept of an early talker's bytes (a line's worth) until it is refused.
    static let earlyTalkerBytes = 512

    /// What holds input while the session waits for something other than the client.
    enum Wait: Sendable, Hashable {
        case authentication
        case delivery
        /// A chunk of a message streamed to the delivery target is being written (`MessageIntake`).
        case messageWrite
        /// After STARTTLS's 220: the handshake's records must keep flowing whatever else holds input.
        case tlsHandshake
    }

    enum State: Sendable, Hashable {
        /// The handler is in place and the channel not active yet: nothing said.
        case connecting
        /// The 220 is held back (greeting delay): what arrives is kept, a line's worth, and not handled.
        case greetingHeld
        /// Commands are taken, except while `wait` holds them.
        case serving(wait: Wait?)
        /// A closing reply is written or on its way: nothing more is read, handled or answered.
        case closing
        /// The channel is gone.
        case closed
    }

    /// What a turn of the event loop is doing for this connection.
    struct Turn: Sendable, Hashable {
        /// Input is being handled; writability changes wait for the end of the turn.
        var running = false
        /// Another turn is queued on the event loop's `TurnQueue`.
        var queued = false
        /// Commands taken in this turn.
        var taken = 0
        /// The framers ran out of complete input in this turn.
        var ranOut = false
    }

    private(set) var state: State = .connecting
    /// The channel is below its high water mark (or back below the low one).
    private(set) var writable: Bool
    /// The framers cannot go on without more bytes: nothing complete is buffered.
    private(set) var needsInput = true
    /// A read was asked for while reads were held; it goes to the socket when they may.
    private(set) var readPending = false
    /// Shutdown came while a message was being received or answered: close once it is answered.
    private(set) var closeWhenAnswered = false
    /// The stall timer is running (see `stallTimeout`).
    private(set) var stallTimerArmed = false
    private(set) var turn = Turn()

    init(writable: Bool = true) {
        self.writable = writable
    }

    // MARK: What the state allows

    var isClosed: Bool { state == .closed }

    /// AUTH, a delivery or a TLS handshake is under way.
    var waiting: Bool {
        if case .serving(let wait) = state { return wait != nil }
        return false
    }

    /// Whether buffered input may be handled now.
    var mayHandleInput: Bool {
        switch state {
        case .connecting, .serving(wait: nil): return writable
        case .greetingHeld, .serving, .closing, .closed: return false
        }
    }

    /// Whether a read may go to the socket now.
    var mayRead: Bool {
        switch state {
        case .closing, .closed: return false
        case .serving(wait: .tlsHandshake): return true
        case .serving(wait: .some): return false
        case .connecting, .greetingHeld, .serving(wait: nil): return writable && needsInput
        }
    }

    /// Whether replies may still be written (a closing reply is written on its own).
    var mayWrite: Bool {
        switch state {
        case .closing, .closed: return false
        case .connecting, .greetingHeld, .serving: return true
        }
    }

    // MARK: The greeting

    enum GreetingAction: Sendable, Hashable {
        /// Write the 220 now.
        case greet
        /// Start the greeting delay; call `greetingDelayEnded` when it is over.
        case holdGreeting
        case none
    }

    /// The channel is active (or the handler was added to an active one, after a PROXY header).
    mutating func channelActive(greetingDelay: Bool) -> GreetingAction {
        guard case .connecting = state else { return .none }
        if greetingDelay {
            state = .greetingHeld
            return .holdGreeting
        }
        state = .serving(wait: nil)
        return .greet
    }

    enum GreetingDelayAction: Sendable, Hashable {
        /// Write the 220 and handle what is buffered.
        case greetAndTakeInput
        /// The client talked before the greeting (RFC 5321 4.3.1 lets it wait; one that does not is a spam bot
        /// or a pipelining attack, Postfix postscreen's "pregreet"): drop its bytes and close with 554.
        case refuseEarlyTalker
        case none
    }

    mutating func greetingDelayEnded(bufferedBytes: Int) -> GreetingDelayAction {
        guard case .greetingHeld = state else { return .none }
        if bufferedBytes > 0 { return .refuseEarlyTalker }
        state = .serving(wait: nil)
        return .greetAndTakeInput
    }

    // MARK: Input

    enum InputAction: Sendable, Hashable {
        /// Buffer the bytes and take a turn.
        case takeInput
        /// The greeting is held: keep the last `earlyTalkerBytes` of what arrived, handle nothing, read no more.
        case keepEarlyTalkerBytes
        /// Closing: the bytes are dropped.
        case discard
    }

    mutating func bytesArrived() -> InputAction {
        switch state {
        case .closing, .closed:
            return .discard
        case .greetingHeld:
            needsInput = false
            return .keepEarlyTalkerBytes
        case .connecting, .serving:
            needsInput = false  // until the framers have looked at it
            return .takeInput
        }
    }

    /// The pipeline asks for a read. True: pass it on now; false: it is held until reads may go on.
    mutating func readRequested() -> Bool {
        if mayRead { return true }
        readPending = true
        return false
    }

    // MARK: Turns

    /// A turn begins. False when one is already running (called again from within it, as an action that
    /// completed at once does): that turn goes on.
    mutating func turnStarted() -> Bool {
        guard !turn.running, state != .closed else { return false }
        turn.running = true
        turn.taken = 0
        turn.ranOut = false
        return true
    }

    /// Whether the turn may take another command (or DATA chunk) from the buffered input.
    mutating func mayTakeCommand() -> Bool {
        guard turn.running, mayHandleInput, turn.taken < Self.commandsPerTurn else { return false }
        turn.taken += 1
        return true
    }

    /// The framers need more bytes than are buffered.
    mutating func inputRanOut() {
        turn.ranOut = true
    }

    /// The turn's replies are flushed; `bufferedBytes` of input are left. Call `proceed` next.
    mutating func turnEnded(bufferedBytes: Int) {
        needsInput = turn.ranOut || bufferedBytes == 0
        turn.running = false
    }

    enum ProceedAction: Sendable, Hashable {
        /// Complete input is buffered: take another turn in the event loop's next round.
        case takeTurnLater
        /// The output bound is reached and the client has sent more: close it with 421 4.7.0.
        case cutOff
        /// Pass on the read that was held.
        case read
        /// Nothing until bytes arrive, the channel is writable again, or what holds input ends.
        case none
    }

    /// After a turn, or a writability change outside one, with `bufferedBytes` of input unhandled. A client
    /// is not cut off while AUTH, a delivery or a handshake is under way: their results must still reach
    /// the session.
    mutating func proceed(bufferedBytes: Int) -> ProceedAction {
        switch state {
        case .closing, .closed: return .none
        case .connecting, .greetingHeld, .serving: break
        }
        if !writable && bufferedBytes > 0 && !waiting { return .cutOff }
        if mayHandleInput && !needsInput && bufferedBytes > 0 {
            // Complete input is buffered, so reads are held (`needsInput` is false): no read to pass on.
            guard !turn.queued else { return .none }
            turn.queued = true
            return .takeTurnLater
        }
        if readPending && mayRead {
            readPending = false
            return .read
        }
        return .none
    }

    /// The queued turn is due. False when the connection is gone.
    mutating func queuedTurnDue() -> Bool {
        turn.queued = false
        return state != .closed
    }

    // MARK: Writability and the stall timer

    enum StallTimerChange: Sendable, Hashable {
        case arm
        case cancel
        case none
    }

    /// The channel's writability changed. `proceed`: call `proceed` now (outside a turn; a turn decides at its end).
    mutating func writabilityChanged(to writable: Bool) -> (stallTimer: StallTimerChange, proceed: Bool) {
        self.writable = writable
        var change = StallTimerChange.none
        if writable {
            if stallTimerArmed { change = .cancel }
            stallTimerArmed = false
        } else if !stallTimerArmed, mayWrite {
            stallTimerArmed = true
            change = .arm
        }
        return (change, !turn.running)
    }

    enum StallAction: Sendable, Hashable {
        /// Not writable for `stallTimeout` and nothing under way: close with 421 4.7.0.
        case cutOff
        /// Still not writable, but AUTH, a delivery or a handshake is under way: look again later.
        case rearm
        case none
    }

    mutating func stallTimerFired() -> StallAction {
        stallTimerArmed = false
        guard mayWrite, !writable else { return .none }
        if waiting {
            stallTimerArmed = true
            return .rearm
        }
        return .cutOff
    }

    // MARK: Waiting for the directory, the delivery target, the handshake

    mutating func startWaiting(for wait: Wait) {
        guard case .serving = state else { return }
        state = .serving(wait: wait)
    }

    /// What the session waited for has come. True: give it to the session and take a turn; false: the
    /// connection is closing or gone, and nobody is there to answer.
    mutating func waitEnded() -> Bool {
        guard case .serving = state else { return false }
        state = .serving(wait: nil)
        return true
    }

    // MARK: Replies and closing

    /// A reply was queued for the client. True: shutdown is waiting for this answer; close now.
    func replyQueued(sessionInData: Bool) -> Bool {
        closeWhenAnswered && !sessionInData && mayWrite
    }

    /// A closing reply is being written; the connection closes when it is (or after `closeGrace`).
    mutating func closeStarted() {
        guard state != .closed else { return }
        state = .closing
    }

    /// The read idle timeout fired. True: close with 421 4.4.2. A delivery under way answers soon: not then.
    func idleTimedOut(sessionInData: Bool) -> Bool {
        guard mayWrite else { return false }
        return !(sessionInData && waiting)
    }

    enum QuiesceAction: Sendable, Hashable {
        /// Close now with 421 4.3.2.
        case close
        /// A message is being received or answered, or AUTH is under way: close after its answer.
        case closeWhenAnswered
        case none
    }

    /// Shutdown began (`ChannelShouldQuiesceEvent`).
    mutating func quiesce(sessionInData: Bool) -> QuiesceAction {
        guard mayWrite else { return .none }
        if sessionInData || waiting {
            closeWhenAnswered = true
            return .closeWhenAnswered
        }
        return .close
    }

    /// The channel is gone (inactive, or the handler removed).
    mutating func channelInactive() {
        state = .closed
        stallTimerArmed = false
    }
}
