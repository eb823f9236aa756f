import NIOCore

/// Reads the DATA section of a message (RFC 5321 4.1.1.4, 4.5.2) from a byte stream.
///
/// End of data is recognised only as `<CRLF>.<CRLF>`: a line holding a single dot, ended by CRLF,
/// whose preceding line also ended with a real CRLF. Every other variant (`<LF>.<LF>`, `<CR>.<CR>`,
/// `<LF>.<CRLF>`, ...) is content, so a pipelined second message can never be smuggled past it
/// (SEC Consult, "SMTP smuggling", 2023).
///
/// Bare CR or LF taints the message (refused with 550 5.6.0 at the end) unless `normalizeBareLF` is set,
/// in which case bare LF is stored as CRLF; bare CR is always refused. Lines over 998 octets and messages
/// over the size limit are also refused at the end; their bytes stop being stored as soon as they go
/// over, so memory stays bounded by `maxMessageSize`. A receiver that streams the message to disk takes
/// the stored bytes as they come (`takeStored`), so memory stays bounded by what it lets pile up.
public struct DataFramer: Sendable {
    public enum Outcome: Sendable, Hashable {
        /// The message, with CRLF line ends and dot-stuffing removed.
        case message(ByteBuffer)
        case rejected(Rejection)
    }

    public enum Rejection: Sendable, Hashable {
        case bareLineEnding
        case lineTooLong
        case tooBig

        public var reply: SMTPReply {
            switch self {
            case .bareLineEnding: return .bareLineEnding
            case .lineTooLong: return .textLineTooLong
            case .tooBig: return .messageTooBig
            }
        }
    }

    private enum State: Sendable {
        /// At the start of a line.
        case lineStart
        /// Saw a dot at the start of a line.
        case dotAtLineStart
        /// Saw `.` then CR at the start of a line.
        case dotCR
        /// Inside a line.
        case inLine
        /// Saw CR inside a line (or after a stuffed dot).
        case sawCR
    }

    public let maxMessageSize: Int
    public let maxLineLength: Int
    public let normalizeBareLF: Bool

    private var state: State = .lineStart
    /// Whether the line we are at the start of followed a real CRLF (the DATA command's CRLF counts).
    private var lineStartAfterCRLF = true
    private var lineLength = 0
    private var rejection: Rejection?
    private var body: ByteBuffer
    private let allocator: ByteBufferAllocator
    /// Octets received in the body, whether stored or not.
    public private(set) var receivedOctets = 0

    public init(maxMessageSize: Int, maxLineLength: Int = 998, normalizeBareLF: Bool = false, allocator: ByteBufferAllocator = ByteBufferAllocator()) {
        self.maxMessageSize = maxMessageSize
        self.maxLineLength = maxLineLength
        self.normalizeBareLF = normalizeBareLF
        self.allocator = allocator
        self.body = allocator.buffer(capacity: min(maxMessageSize, 16 * 1024))
    }

    /// The body bytes stored since the last `takeStored` (dot-unstuffed, CRLF line ends).
    public var storedBytes: Int { body.readableBytes }

    /// Whether the message will be refused at its end (too big, a line too long, a bare line ending): from
    /// then on nothing is stored, and what a receiver already wrote elsewhere can go.
    public var isRejected: Bool { rejection != nil }

    /// Hands out the body bytes stored so far; the message's end (`feed`'s `.message`) then holds only what
    /// came after.
    public mutating func takeStored() -> ByteBuffer {
        let taken = body
        body = allocator.buffer(capacity: min(maxMessageSize, max(16 * 1024, taken.readableBytes)))
        return taken
    }

    /// Consumes bytes from `buffer` up to and including the end of data. Returns nil while the end
    /// has not been seen (all of `buffer` was consumed); bytes after the end stay in `buffer`.
    public mutating func feed(_ buffer: inout ByteBuffer) -> Outcome? {
        var consumed = 0
        let outcome: Outcome? = buffer.withUnsafeReadableBytes { bytes -> Outcome? in
            var i = 0
            let n = bytes.count
            while i < n {
                switch state {
                case .inLine:
                    // Fast path: copy a run of ordinary bytes at once.
                    var j = i
                    while j < n {
                        let b = bytes[j]
                        if b == 0x0D || b == 0x0A { break }
                        j += 1
                    }
                    if j > i {
                        append(UnsafeRawBufferPointer(rebasing: bytes[i..<j]))
                        i = j
                    }
                    guard i < n else { break }
                    let b = bytes[i]
                    i += 1
                    if b == 0x0D {
                        state = .sawCR
                    } else {
                        bareLF()
                    }
                case .sawCR:
                    let b = bytes[i]
                    if b == 0x0A {
                        i += 1
                        endLine(afterCRLF: true)
                    } else {
                        // Bare CR: refused in every mode. Reprocess this byte inside the line.
                        taint(.bareLineEnding)
                        state = .inLine
                    }
                case .lineStart:
                    let b = bytes[i]
                    if b == UInt8(ascii: ".") {
                        i += 1
                        state = .dotAtLineStart
                    } else {
                        state = .inLine
                    }
                case .dotAtLineStart:
                    let b = bytes[i]
                    if b == 0x0D {
                        i += 1
                        state = .dotCR
                    } else if b == 0x0A {
                        // `.` + bare LF: never the end of data. Content (an empty line once unstuffed).
                        i += 1
                        bareLF()
                    } else {
                        // A stuffed dot: drop it, the rest of the line is content.
                        state = .inLine
                    }
                case .dotCR:
                    let b = bytes[i]
                    if b == 0x0A && lineStartAfterCRLF {
                        i += 1
                        consumed = i
                        return finish()
                    } else if b == 0x0A {
                        // `<LF>.<CRLF>`: the line before ended in a bare LF, so this is no terminator.
                        i += 1
                        endLine(afterCRLF: true)
                    } else {
                        taint(.bareLineEnding)
                        state = .inLine
                    }
                }
            }
            consumed = n
            return nil
        }
        buffer.moveReaderIndex(forwardBy: consumed)
        return outcome
    }

    private mutating func append(_ bytes: UnsafeRawBufferPointer) {
        // The reason is the limit the byte stream crossed first, so it does not depend on how the bytes
        // arrived: a run that crosses both at once is judged as if it came byte by byte.
        let roomInLine = maxLineLength - lineLength
        let roomInMessage = maxMessageSize - receivedOctets
        lineLength += bytes.count
        receivedOctets += bytes.count
        switch (bytes.count > roomInLine, bytes.count > roomInMessage) {
        case (true, true): taint(roomInLine <= roomInMessage ? .lineTooLong : .tooBig)
        case (true, false): taint(.lineTooLong)
        case (false, true): taint(.tooBig)
        case (false, false): break
        }
        if rejection == nil { body.writeBytes(bytes) }
    }

    private mutating func bareLF() {
        if normalizeBareLF {
            endLine(afterCRLF: false)
        } else {
            taint(.bareLineEnding)
            endLine(afterCRLF: false)
        }
    }

    private mutating func endLine(afterCRLF: Bool) {
        receivedOctets += 2
        if receivedOctets > maxMessageSize { taint(.tooBig) }
        if rejection == nil { body.writeStaticString("\r\n") }
        lineLength = 0
        lineStartAfterCRLF = afterCRLF
        state = .lineStart
    }

    private mutating func taint(_ reason: Rejection) {
        guard rejection == nil else { return }
        rejection = reason
        body.clear()  // keep nothing of a refused message
    }

    private mutating func finish() -> Outcome {
        if let rejection { return .rejected(rejection) }
        return .message(body)
    }
}
