import NIOCore

/// Splits a byte stream into command lines with a hard length limit.
///
/// Memory stays bounded: once a line exceeds the limit, its bytes are dropped as they arrive
/// until the next LF, and one `.tooLong` is reported for it. A 10 MB line without CRLF never
/// occupies more than `maxLength` bytes.
public struct LineFramer: Sendable {
    public enum Line: Sendable, Hashable {
        /// A line that ended in CRLF, without the CRLF.
        case line(String)
        /// A line that ended in a bare LF (no CR before it).
        case bareLF
        /// A line longer than the limit, already discarded.
        case tooLong
    }

    /// The limit includes the CRLF (RFC 5321 4.5.3.1.4: 512 octets for a command line).
    public var maxLength: Int
    private var discarding = false

    public init(maxLength: Int = 512) {
        self.maxLength = maxLength
    }

    /// Takes the next complete line off the front of `buffer`, or nil when more bytes are needed.
    /// When it returns nil, `buffer` holds at most `maxLength` bytes.
    public mutating func next(_ buffer: inout ByteBuffer) -> Line? {
        while true {
            let view = buffer.readableBytesView
            if let lf = view.firstIndex(of: UInt8(ascii: "\n")) {
                let length = lf - view.startIndex  // bytes before LF
                if discarding {
                    buffer.moveReaderIndex(forwardBy: length + 1)
                    discarding = false
                    return .tooLong
                }
                if length + 1 > maxLength {
                    buffer.moveReaderIndex(forwardBy: length + 1)
                    return .tooLong
                }
                let hasCR = length > 0 && view[lf - 1] == UInt8(ascii: "\r")
                guard hasCR else {
                    buffer.moveReaderIndex(forwardBy: length + 1)
                    return .bareLF
                }
                let text = buffer.readString(length: length - 1)!  // `!`: those bytes are in the buffer, before the LF
                buffer.moveReaderIndex(forwardBy: 2)
                return .line(text)
            }
            // No LF yet: refuse to hold more than the limit.
            if discarding || buffer.readableBytes > maxLength {
                buffer.moveReaderIndex(forwardBy: buffer.readableBytes)
                discarding = true
            }
            return nil
        }
    }
}
