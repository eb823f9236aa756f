import NIOCore

/// Reads single header fields from a message's header section without parsing the body.
public enum HeaderScanner {
    /// What is read of a header section at most: what policy and the Message-ID are read from, and what a
    /// message streamed to disk must have arrived before policy decides. One octet more than the originator
    /// parser reads, so that it still sees a header section too long to check as too long.
    public static let headerSectionLimit = OriginatorParser.maxHeaderSection + 1

    /// The header section of `message` with the empty line that ends it, or its first `limit` octets when
    /// no empty line comes before (a message without a body: all of it).
    public static func headerSection(of message: ByteBuffer, limit: Int = headerSectionLimit) -> ByteBuffer {
        let bytes = message.readableBytesView.prefix(limit)
        if bytes.starts(with: [13, 10]) { return message.getSlice(at: message.readerIndex, length: 2) ?? ByteBuffer() }
        var i = bytes.startIndex
        while i + 3 < bytes.endIndex {
            if bytes[i + 3] != 10 { i += bytes[i + 3] == 13 ? 1 : 4; continue }
            if bytes[i] == 13, bytes[i + 1] == 10, bytes[i + 2] == 13 {
                return message.getSlice(at: message.readerIndex, length: i + 4 - bytes.startIndex) ?? ByteBuffer()
            }
            i += 1
        }
        return message.getSlice(at: message.readerIndex, length: bytes.count) ?? ByteBuffer()
    }

    /// The Message-ID field's value (unfolded, trimmed), if the header section has one.
    public static func messageID(in message: ByteBuffer, limit: Int = 64 * 1024) -> String? {
        field("message-id", in: message, limit: limit)
    }

    public static func field(_ lowercasedName: String, in message: ByteBuffer, limit: Int) -> String? {
        // Only the header section is decoded: it ends at the first empty line (CRLF CRLF). Splitting
        // the whole message into Character-based lines cost more than the rest of a delivery's parsing.
        let bytes = message.readableBytesView.prefix(limit)
        var end = bytes.endIndex
        if bytes.starts(with: [13, 10]) { return nil }
        var i = bytes.startIndex
        while i + 3 < bytes.endIndex {
            if bytes[i + 3] != 10 { i += bytes[i + 3] == 13 ? 1 : 4; continue }
            if bytes[i] == 13, bytes[i + 1] == 10, bytes[i + 2] == 13 { end = i + 2; break }
            i += 1
        }
        let text = String(decoding: bytes[bytes.startIndex..<end], as: UTF8.self)
        var lines: [Substring] = []
        for line in text.split(separator: "\r\n", omittingEmptySubsequences: false) {
            if line.isEmpty { break }  // end of the header section
            lines.append(line)
        }
        var value: String?
        for line in lines {
            if let first = line.first, first == " " || first == "\t" {
                value? += " " + line.drop { $0 == " " || $0 == "\t" }
                continue
            }
            if value != nil { break }
            guard let colon = line.firstIndex(of: ":") else { continue }
            if line[..<colon].lowercased().trimmingCharacters() == lowercasedName {
                value = String(line[line.index(after: colon)...].trimmingCharacters())
            }
        }
        return value.map { $0.trimmingCharacters() }
    }
}

private extension StringProtocol {
    func trimmingCharacters() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
