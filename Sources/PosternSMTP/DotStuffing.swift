import NIOCore

/// Outbound DATA encoding (RFC 5321 4.5.2): dot-stuffing and CRLF on every line.
public enum DotStuffing {
    /// Appends `message` to `out` with every line ending in CRLF (bare CR or LF become CRLF),
    /// leading dots doubled, and the terminating `.<CRLF>`.
    public static func encode(_ message: ByteBuffer, into out: inout ByteBuffer) {
        out.reserveCapacity(minimumWritableBytes: message.readableBytes + message.readableBytes / 64 + 8)
        message.withUnsafeReadableBytes { bytes in
            var atLineStart = true
            var i = 0
            let n = bytes.count
            while i < n {
                if atLineStart && bytes[i] == UInt8(ascii: ".") {
                    out.writeInteger(UInt8(ascii: "."))
                }
                var j = i
                while j < n, bytes[j] != 0x0D, bytes[j] != 0x0A { j += 1 }
                if j > i { out.writeBytes(UnsafeRawBufferPointer(rebasing: bytes[i..<j])) }
                if j == n { atLineStart = false; i = j; break }
                // Any of CRLF, CR, LF ends a line and is written as CRLF.
                if bytes[j] == 0x0D && j + 1 < n && bytes[j + 1] == 0x0A { i = j + 2 } else { i = j + 1 }
                out.writeStaticString("\r\n")
                atLineStart = true
            }
            if !atLineStart { out.writeStaticString("\r\n") }
        }
        out.writeStaticString(".\r\n")
    }
}
