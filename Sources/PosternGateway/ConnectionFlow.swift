import NIOCore

/// Backpressure and fairness for one client connection, as rules apart from the channel: when the handler
/// may read from the socket, when it may handle what it read, and when a client that sends without reading
/// its replies is cut off. `SMTPServerHandler` keeps one, tells it what happened, and does what it says.
///
/// Twenty clients that sent HELP and NOOP in a loop and never read their replies once took both cores and
/// held a new client's 220 for over 5 s: every read was answered in full, whatever the client had left
/// unread. These rules bound what one connection can make the gateway do and hold:
/// - input is handled `commandsPerTurn` commands at a time, then the event loop serves other connections;
/// - nothing more is read from the socket while complete input is buffered, or while output is held;
/// - output is held at `writeBufferWaterMark` (and the kernel's part at `socketSendBuffer`): past the high
///   mark the channel is not writable and input waits;
/// - a client that has reached that bound and has still sent more is writing without reading: it gets
///   `421 4.7.0` and is closed. Avoiding that deadlock is the client's job (RFC 2920 3.1: a client that does
///   not read while it writes keeps each pipelined group, which ends at DATA, within the TCP window); the
///   bound, some 200 KB of unread replies with the kernel's part, is far beyond any conforming group.
struct ConnectionFlow: Sendable, Hashable {
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

    enum Next: Sendable, Hashable {
        /// Complete input is buffered and may be handled: take another turn after other connections had theirs.
        case continueLater
        /// The output bound is reached and the client has sent more: close it with 421.
        case cutOff
        /// Nothing to do until bytes arrive, the channel is writable again, or what holds input ends.
        case wait
    }

    /// AUTH, delivery or a STARTTLS handshake is under way: input waits for its result.
    var waiting = false
    /// A TLS handshake is under way: its records must keep flowing whatever else holds input.
    var handshaking = false
    /// The greeting is held back (early-talker check): what arrives is only looked at, not handled.
    var greetingHeld = false
    /// A closing reply was written; nothing more is read or handled.
    var closing = false
    /// The channel is below its high water mark (or back below the low one).
    var writable = true
    /// The framers cannot go on without more bytes: nothing complete is buffered.
    var needsInput = true

    /// Whether buffered input may be handled now.
    var mayHandleInput: Bool { !closing && !waiting && !greetingHeld && writable }

    /// Whether a read may go to the socket now.
    var mayRead: Bool {
        if closing { return false }
        if handshaking { return true }
        return !waiting && writable && needsInput
    }

    /// What to do after a turn, or when something that held input ends, with `bufferedBytes` of input unhandled.
    /// A client is not cut off while AUTH or delivery is under way: their results must still reach the session.
    func next(bufferedBytes: Int) -> Next {
        if closing { return .wait }
        if !writable && bufferedBytes > 0 && !waiting && !handshaking { return .cutOff }
        if mayHandleInput && !needsInput && bufferedBytes > 0 { return .continueLater }
        return .wait
    }

    /// Whether a connection that has not been writable for `stallTimeout` is cut off now.
    var stalled: Bool { !closing && !writable && !waiting && !handshaking }
}
