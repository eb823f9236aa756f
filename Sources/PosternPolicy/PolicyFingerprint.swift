import Crypto
import NIOConcurrencyHelpers

/// The SHA-256 of a policy file's text, kept beside what was read from it.
public struct ContentDigest: Sendable, Hashable {
    /// The digest as four 64-bit words (big-endian), so that digests can be summed.
    let words: (UInt64, UInt64, UInt64, UInt64)

    public init(_ text: String) {
        var words: [UInt64] = [0, 0, 0, 0]
        for (index, byte) in SHA256.hash(data: Array(text.utf8)).enumerated() {
            words[index / 8] = words[index / 8] << 8 | UInt64(byte)
        }
        self.words = (words[0], words[1], words[2], words[3])
    }

    public static func == (a: ContentDigest, b: ContentDigest) -> Bool { a.words == b.words }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }
}

/// Works out a policy set's fingerprint once, when first asked (a scrape or a health check), not on the reload
/// path: with 100,000 devices it sums 100,000 digests, and a reload after one file changed takes well under a
/// millisecond without it (BENCHMARKS.md).
final class PolicyFingerprintCache: Sendable {
    private let value = NIOLockedValueBox<String?>(nil)

    func get(_ make: () -> String) -> String {
        if let known = value.withLockedValue({ $0 }) { return known }
        let made = make()
        value.withLockedValue { $0 = made }
        return made
    }
}

extension PolicySet {
    /// What the policy in force was read from, as 16 hex digits: the same on every node that loaded the same
    /// policy.yaml, departments.yaml and device files, whatever order it read them in or when.
    ///
    /// The device files' digests (each over the file's path in devices.d and its text) are added word by word with
    /// wrapping arithmetic, so the sum does not depend on the order of the files; the sum, the device count and the
    /// digest of the two top files are then hashed again. A comment edited in one file changes it, as it should:
    /// the nodes then do not read the same files.
    public var fingerprint: String {
        fingerprintCache.get {
            var sum: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
            for entry in devices.entries {
                guard let digest = entry.sourceDigest?.words else { continue }
                sum = (sum.0 &+ digest.0, sum.1 &+ digest.1, sum.2 &+ digest.2, sum.3 &+ digest.3)
            }
            let top = topFilesDigest?.words ?? (0, 0, 0, 0)
            var bytes: [UInt8] = []
            for word in [top.0, top.1, top.2, top.3, sum.0, sum.1, sum.2, sum.3, UInt64(devices.count)] {
                for shift in stride(from: 56, through: 0, by: -8) { bytes.append(UInt8(truncatingIfNeeded: word >> UInt64(shift))) }
            }
            return SHA256.hash(data: bytes).prefix(8).map { byte in
                let hex = String(byte, radix: 16)
                return hex.count == 1 ? "0" + hex : hex
            }.joined()
        }
    }
}
