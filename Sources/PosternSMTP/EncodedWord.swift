import Foundation

/// RFC 2047 encoded words (`=?charset?B|Q?text?=`), decoded for display names only.
enum EncodedWord {
    /// The decoded text of an atom that is one encoded word; nil when it is not one.
    static func decode(_ atom: [UInt8]) -> String? {
        guard atom.count >= 8, atom.starts(with: [0x3D, 0x3F]), atom.suffix(2).elementsEqual([0x3F, 0x3D]) else { return nil }
        let inner = atom[2..<(atom.count - 2)]
        let parts = inner.split(separator: UInt8(ascii: "?"), maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty else { return nil }
        // RFC 2231: charset*language
        let charset = String(decoding: parts[0].prefix { $0 != UInt8(ascii: "*") }, as: UTF8.self).lowercased()
        let text = Array(parts[2])
        let bytes: [UInt8]
        switch parts[1].first.map({ $0 | 0x20 }) {
        case UInt8(ascii: "b") where parts[1].count == 1:
            // Clients forgive missing padding; so must a check of what they show.
            var padded = text.filter { $0 != UInt8(ascii: "=") }
            while padded.count % 4 != 0 { padded.append(UInt8(ascii: "=")) }
            guard let data = Data(base64Encoded: Data(padded), options: .ignoreUnknownCharacters) else { return nil }
            bytes = Array(data)
        case UInt8(ascii: "q") where parts[1].count == 1:
            var out: [UInt8] = []
            var i = 0
            while i < text.count {
                let c = text[i]
                if c == UInt8(ascii: "_") {
                    out.append(0x20)
                } else if c == UInt8(ascii: "="), i + 2 < text.count, let hi = hex(text[i + 1]), let lo = hex(text[i + 2]) {
                    out.append(hi << 4 | lo)
                    i += 2
                } else {
                    out.append(c)
                }
                i += 1
            }
            bytes = out
        default:
            return nil
        }
        if charset == "utf-8" || charset == "utf8" || charset == "us-ascii" {
            return String(decoding: bytes, as: UTF8.self)
        }
        // Other charsets as Latin-1: exact for ISO 8859-1, and right for the ASCII range of the rest,
        // which is where an address in a display name would be.
        return String(String.UnicodeScalarView(bytes.map { UnicodeScalar($0) }))
    }

    /// Text with every encoded word in it decoded, leniently (mail clients decode words that RFC 2047 would
    /// not allow where they stand, such as inside quotes or next to other text); white space between two
    /// encoded words is dropped (RFC 2047 6.2).
    static func decodeAll(in bytes: [UInt8]) -> String {
        var out = ""
        var pending: [UInt8] = []
        var afterEncoded = false
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "="), let (text, next) = word(in: bytes, at: i) {
                if afterEncoded && pending.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { pending.removeAll() }
                out += String(decoding: pending, as: UTF8.self) + text
                pending.removeAll()
                afterEncoded = true
                i = next
                continue
            }
            pending.append(bytes[i])
            i += 1
        }
        return out + String(decoding: pending, as: UTF8.self)
    }

    /// The encoded word starting at `start`, decoded, and the index after it.
    static func word(in bytes: [UInt8], at start: Int) -> (String, Int)? {
        guard start + 1 < bytes.count, bytes[start + 1] == UInt8(ascii: "?") else { return nil }
        // =? charset ? encoding ? text ?=, without white space; RFC 2047 keeps a word within 75 octets.
        var question = 0
        var j = start + 2
        while j + 1 < bytes.count, j - start < 256, bytes[j] > 0x20 {
            if bytes[j] == UInt8(ascii: "?") {
                question += 1
                if question >= 3, bytes[j + 1] == UInt8(ascii: "=") {
                    guard let text = decode(Array(bytes[start...(j + 1)])) else { return nil }
                    return (text, j + 2)
                }
            }
            j += 1
        }
        return nil
    }

    static func hex(_ b: UInt8) -> UInt8? {
        switch b {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return b - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return b - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return b - UInt8(ascii: "A") + 10
        default: return nil
        }
    }
}
