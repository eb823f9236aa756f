import NIOCore

/// Outbound DATA encoding (RFC 5321 4.5.2): dot-stuffing and CRLF on every line.
public enum DotStuffing {
    /// Appends `message` to `out` with every line ending in CRLF (bare CR or LF become CRLF),
    /// leading dots doubled, and the terminating `.<CRLF>`.
    public static func encode(_ message: ByteBuffer, into out: inout ByteBuffer) {
        out.reserveCapacity(minimumWritableBytes: message.readableBytes + message.readableBytes / 64 + 8)
        var stuffer = DotStuffer()
        stuffer.encode(message, into: &out)
        stuffer.finish(into: &out)
    }
}

/// `DotStuffing` for a message that comes in chunks (a large one read from the spool while it is sent): the
/// same output as encoding the chunks joined, whatever the boundaries (a line's start, or a CR whose LF is in
/// the next chunk).
public struct DotStuffer: Sendable {
    private var atLineStart = true
    /// The last chunk ended with CR: an LF at the start of the next one belongs to it.
    private var pendingCR = false

    public init() {}

    /// Appends `chunk`, encoded, to `out`.
    public mutating func encode(_ chunk: ByteBuffer, into out: inout ByteBuffer) {
        chunk.withUnsafeReadableBytes { bytes in
            var i = 0
            let n = bytes.count
            if pendingCR, n > 0 {
                pendingCR = false
                if bytes[0] == 0x0A { i = 1 }
            }
            while i < n {
                if atLineStart && bytes[i] == UInt8(ascii: ".") {
                    out.writeInteger(UInt8(ascii: "."))
                }
                var j = i
                while j < n, bytes[j] != 0x0D, bytes[j] != 0x0A { j += 1 }
                if j > i {
                    out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[i..<j]))
                    atLineStart = false
                }
                if j == n { break }
                // Any of CRLF, CR, LF ends a line and is written as CRLF.
                if bytes[j] == 0x0D {
                    if j + 1 == n { pendingCR = true; i = n } else { i = bytes[j + 1] == 0x0A ? j + 2 : j + 1 }
                } else {
                    i = j + 1
                }
                out.writeStaticString("\r\n")
                atLineStart = true
            }
        }
    }

    /// Ends the last line if it is open, and writes the terminating `.<CRLF>`.
    public mutating func finish(into out: inout ByteBuffer) {
        if !atLineStart { out.writeStaticString("\r\n") }
        out.writeStaticString(".\r\n")
        atLineStart = true
        pendingCR = false
    }
}
