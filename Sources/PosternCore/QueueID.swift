import Foundation
import NIOConcurrencyHelpers

/// The id a message is known by from its `250 ... queued as` on: in the spool's file names, the outbox's, the
/// audit log and every `postern queue` command. Unique, sortable by arrival, safe in a file name.
public enum QueueID {
    private static let counter = NIOLockedValueBox<UInt32>(0)

    /// Microseconds since 1970 in base 36 (12 characters), a counter (4) and random bits (4):
    /// `0MFX3Q8K2A7F0001K3ZQ`. Ids made in the same microsecond differ in the counter (it wraps after 36⁴).
    public static func make(now: Date = Date()) -> String {
        let micros = UInt64(max(0, now.timeIntervalSince1970) * 1_000_000)
        let count = counter.withLockedValue { value -> UInt32 in value &+= 1; return value }
        return padded(String(micros, radix: 36, uppercase: true), 12)
            + padded(String(count % 1_679_616, radix: 36, uppercase: true), 4)
            + padded(String(UInt32.random(in: 0..<1_679_616), radix: 36, uppercase: true), 4)
    }

    /// Whether `id` is safe as a file name and not a path: 1 to 64 ASCII letters, digits, `-` and `_`.
    /// (Ids from earlier versions, with a `-`, pass; a queue file's name is checked with this before use.)
    public static func isValid(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 64 && id.utf8.allSatisfy { b in
            (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A) || b == UInt8(ascii: "-") || b == UInt8(ascii: "_")
        }
    }

    private static func padded(_ digits: String, _ width: Int) -> String {
        digits.count >= width ? digits : String(repeating: "0", count: width - digits.count) + digits
    }
}
