import Crypto
import Foundation

/// Spool encryption at rest (issue #18, `spool: { encrypt: { key-file: ... } }`): a message file's bytes sealed
/// as a stream of AES-256-GCM chunks (swift-crypto), readable chunk by chunk, so a large message is neither sealed
/// nor opened whole in memory.
///
/// The construction is STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and its
/// Nonce-Reuse Misuse-Resistance", 2015), as age and Tink's streaming AEAD use it:
///
///     header  = "PSEAL1" | key id length (1 byte) | key id | salt (16 random bytes)
///     file key = HKDF-SHA256(the key ring's key named by the id, salt, "postern spool v1"), 32 bytes
///     chunk   = plaintext length (4 bytes, big-endian, at most `chunkSize`) | ciphertext | tag (16 bytes)
///     nonce   = 7 zero bytes | chunk counter (4 bytes, big-endian) | 1 for the last chunk, else 0
///     AAD     = header | the chunk's length field
///
/// Each file has its own key, derived from a random 128-bit salt, so nonces can count from zero in every file
/// and never repeat under one AES key (random 96-bit nonces under one key for millions of files would come
/// close to the birthday bound); age and Tink's streaming AEAD derive per-file keys the same way.
/// So a chunk cannot be changed, moved, dropped or taken from another file, the stream cannot be cut short
/// (the last chunk says it is the last) or extended, and the key id in the header says which key opens it:
/// after a key rotation, older files stay readable as long as the key file still lists their key.
public enum SpoolSealing {
    public static let magic: [UInt8] = Array("PSEAL1".utf8)
    /// Plaintext bytes per chunk: small enough to bound memory per open file, large enough that the 20 bytes a
    /// chunk adds are nothing.
    public static let chunkSize = 64 * 1024
    static let saltLength = 16
    static let info = Array("postern spool v1".utf8)

    /// One chunk's plaintext, or nil when it does not authenticate as chunk `counter` (the last one when `final`)
    /// of the stream with this header: both readers of the format, sequential and by chunk, open chunks here.
    static func openChunk(_ ciphertext: ArraySlice<UInt8>, tag: ArraySlice<UInt8>, key: SymmetricKey, header: [UInt8], lengthField: [UInt8],
                          counter: UInt32, final: Bool) -> [UInt8]? {
        let nonce = SealingStream.nonce(counter: counter, final: final)
        guard let box = try? AES.GCM.SealedBox(nonce: AES.GCM.Nonce(data: nonce), ciphertext: ciphertext, tag: tag),
              let plaintext = try? AES.GCM.open(box, using: key, authenticating: header + lengthField) else { return nil }
        return Array(plaintext)
    }

    /// The key of one file: HKDF over the ring's key with the file's salt.
    static func fileKey(_ master: SymmetricKey, salt: some DataProtocol) -> SymmetricKey {
        HKDF<SHA256>.deriveKey(inputKeyMaterial: master, salt: salt, info: info, outputByteCount: 32)
    }
    static let tagLength = 16

    /// Whether `bytes` start like a sealed stream (a spool file written with encryption on).
    public static func isSealed(_ bytes: some Collection<UInt8>) -> Bool {
        bytes.starts(with: magic)
    }
}

public enum SealingError: Error, Equatable, CustomStringConvertible {
    /// The key file cannot be used; the text says why and where.
    case keyFile(String)
    /// The file was sealed with a key the key file does not list.
    case unknownKey(String)
    /// The bytes are not a sealed stream, or were changed: authentication failed.
    case corrupt(String)
    /// The stream ends before its last chunk.
    case truncated

    public var description: String {
        switch self {
        case .keyFile(let why): return "spool key file: \(why)"
        case .unknownKey(let id): return "sealed with key '\(id)', which the key file does not list (keep old keys until no spool file uses them)"
        case .corrupt(let why): return "sealed data is damaged or was changed: \(why)"
        case .truncated: return "sealed data ends before its last chunk (cut short)"
        }
    }
}

/// The spool's keys: a text file of `KEY-ID BASE64-OF-32-BYTES` lines (`#` comments). The first key seals new
/// files; every key listed opens. Rotate by putting a new key first and keeping the old ones until no file in
/// the spool names them. The file must not be readable by group or others.
///
///     # openssl rand -base64 32
///     2026-12 q2Yt6mQ4r4c0p1m9xN5m8mK3y0x8d7b6a5Z4Y3X2W1U=
public struct SpoolKeyRing: Sendable {
    public struct Key: Sendable {
        public let id: String
        let key: SymmetricKey
    }
    /// The key that seals.
    public let current: Key
    private let keys: [String: SymmetricKey]

    public init(keys: [(id: String, key: [UInt8])]) throws(SealingError) {
        guard let first = keys.first else { throw .keyFile("no key") }
        var table: [String: SymmetricKey] = [:]
        for (id, bytes) in keys {
            guard Self.isValidID(id) else { throw .keyFile("key id '\(id)' must be 1 to 64 of A-Z a-z 0-9 . _ -") }
            guard bytes.count == 32 else { throw .keyFile("key '\(id)' is \(bytes.count) bytes; AES-256 needs 32 (openssl rand -base64 32)") }
            guard table[id] == nil else { throw .keyFile("key id '\(id)' is listed twice") }
            table[id] = SymmetricKey(data: bytes)
        }
        self.keys = table
        current = Key(id: first.id, key: SymmetricKey(data: first.key))
    }

    /// Reads the key file; refuses one that group or others may read, as ssh refuses such a private key.
    public init(contentsOfFile path: String) throws(SealingError) {
        var info = stat()
        guard stat(path, &info) == 0 else { throw .keyFile("cannot read \(path): \(String(cString: strerror(errno)))") }
        guard info.st_mode & 0o077 == 0 else {
            throw .keyFile("\(path) may be read by group or others (mode \(String(info.st_mode & 0o777, radix: 8))); chmod 600 it")
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { throw .keyFile("cannot read \(path) as text") }
        var keys: [(id: String, key: [UInt8])] = []
        for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.isEmpty || trimmed.hasPrefix("#") { continue }
            let fields = trimmed.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count == 2, let key = Data(base64Encoded: String(fields[1])) else {
                throw .keyFile("\(path):\(number + 1): write KEY-ID and the key in base64 (openssl rand -base64 32)")
            }
            keys.append((String(fields[0]), Array(key)))
        }
        do {
            try self.init(keys: keys)
        } catch {
            if case .keyFile(let why) = error { throw .keyFile("\(path): \(why)") }
            throw error
        }
    }

    func key(id: String) -> SymmetricKey? { keys[id] }

    static func isValidID(_ id: String) -> Bool {
        (1...64).contains(id.utf8.count) && id.utf8.allSatisfy { c in
            (c >= 0x30 && c <= 0x39) || (c >= 0x41 && c <= 0x5A) || (c >= 0x61 && c <= 0x7A) || c == 0x2E || c == 0x5F || c == 0x2D
        }
    }
}

/// Seals a stream: `header` first, then what `append` and `finish` return, in order.
public struct SealingStream {
    public let header: [UInt8]
    private let key: SymmetricKey
    private var counter: UInt32 = 0
    private var pending: [UInt8] = []
    private var finished = false

    public init(keys: SpoolKeyRing) {
        var generator = SystemRandomNumberGenerator()
        let (a, b): (UInt64, UInt64) = (generator.next(), generator.next())
        self.init(keys: keys, salt: (0..<8).map { UInt8(truncatingIfNeeded: a >> (8 * $0)) } + (0..<8).map { UInt8(truncatingIfNeeded: b >> (8 * $0)) })
    }

    /// With a given salt, for tests of the format; anything else takes a random one.
    init(keys: SpoolKeyRing, salt: [UInt8]) {
        key = SpoolSealing.fileKey(keys.current.key, salt: salt)
        header = SpoolSealing.magic + [UInt8(keys.current.id.utf8.count)] + Array(keys.current.id.utf8) + salt
    }

    /// Seals what fills whole chunks and keeps the rest for the next call.
    public mutating func append(_ bytes: some Collection<UInt8>) throws(SealingError) -> [UInt8] {
        pending.append(contentsOf: bytes)
        var out: [UInt8] = []
        var start = 0
        // A full chunk is sealed only once more follows: the last chunk must carry the final flag.
        while pending.count - start > SpoolSealing.chunkSize {
            out += try seal(pending[start..<start + SpoolSealing.chunkSize], final: false)
            start += SpoolSealing.chunkSize
        }
        pending.removeFirst(start)
        return out
    }

    /// Seals the rest as the last chunk (possibly empty). Nothing may be appended after.
    public mutating func finish() throws(SealingError) -> [UInt8] {
        guard !finished else { throw .corrupt("the stream was already finished") }
        finished = true
        let last = try seal(pending[...], final: true)
        pending = []
        return last
    }

    private mutating func seal(_ plaintext: ArraySlice<UInt8>, final: Bool) throws(SealingError) -> [UInt8] {
        guard !finished || final, counter < UInt32.max else { throw .corrupt("too many chunks") }
        let length = SealingStream.bigEndian(UInt32(plaintext.count))
        let nonce = SealingStream.nonce(counter: counter, final: final)
        counter += 1
        do {
            let box = try AES.GCM.seal(plaintext, using: key, nonce: AES.GCM.Nonce(data: nonce), authenticating: header + length)
            return length + Array(box.ciphertext) + Array(box.tag)
        } catch {
            throw .corrupt("sealing failed: \(error)")
        }
    }

    static func nonce(counter: UInt32, final: Bool) -> [UInt8] {
        [0, 0, 0, 0, 0, 0, 0] + bigEndian(counter) + [final ? 1 : 0]
    }

    static func bigEndian(_ value: UInt32) -> [UInt8] {
        [UInt8(value >> 24), UInt8((value >> 16) & 0xFF), UInt8((value >> 8) & 0xFF), UInt8(value & 0xFF)]
    }
}

/// Opens a sealed stream fed in pieces of any size: `feed` returns the plaintext of every chunk completed so far,
/// `finish` checks that the last chunk came. Memory stays within about two chunks whatever the input claims.
public struct OpeningStream {
    private let keys: SpoolKeyRing
    private var buffer: [UInt8] = []
    private var header: [UInt8]?
    private var key: SymmetricKey?
    private var counter: UInt32 = 0
    private var ended = false
    /// The key id the header names, once read.
    public private(set) var keyID: String?

    public init(keys: SpoolKeyRing) {
        self.keys = keys
    }

    public mutating func feed(_ bytes: some Collection<UInt8>) throws(SealingError) -> [UInt8] {
        buffer.append(contentsOf: bytes)
        var out: [UInt8] = []
        var start = 0
        if header == nil {
            let fixed = SpoolSealing.magic.count + 1
            guard buffer.count >= fixed else {
                guard buffer.starts(with: SpoolSealing.magic.prefix(buffer.count)) else { throw .corrupt("not a sealed spool file") }
                return []
            }
            guard buffer.starts(with: SpoolSealing.magic) else { throw .corrupt("not a sealed spool file") }
            let idLength = Int(buffer[SpoolSealing.magic.count])
            let total = fixed + idLength + SpoolSealing.saltLength
            guard idLength > 0 else { throw .corrupt("empty key id") }
            guard buffer.count >= total else { return [] }
            let id = String(decoding: buffer[fixed..<fixed + idLength], as: UTF8.self)
            guard let master = keys.key(id: id) else { throw .unknownKey(id) }
            key = SpoolSealing.fileKey(master, salt: buffer[fixed + idLength..<total])
            keyID = id
            header = Array(buffer[0..<total])
            start = total
        }
        guard let header, let key else { return [] }
        while buffer.count - start >= 4 {
            guard !ended else { throw .corrupt("data after the last chunk") }
            let lengthField = Array(buffer[start..<start + 4])
            let length = lengthField.reduce(0) { $0 << 8 | Int($1) }
            guard length <= SpoolSealing.chunkSize else { throw .corrupt("a chunk claims \(length) bytes, more than \(SpoolSealing.chunkSize)") }
            let end = start + 4 + length + SpoolSealing.tagLength
            guard buffer.count >= end else { break }
            let ciphertext = buffer[start + 4..<start + 4 + length]
            let tag = buffer[start + 4 + length..<end]
            // The last chunk is the one that opens with the final flag; a chunk that opens with neither is damaged.
            var opened: [UInt8]?
            // Only a chunk shorter than `chunkSize` can be the last: try the likelier flag first.
            for final in length < SpoolSealing.chunkSize ? [true, false] : [false, true] {
                if let plaintext = SpoolSealing.openChunk(ciphertext, tag: tag, key: key, header: header, lengthField: lengthField,
                                                          counter: counter, final: final) {
                    opened = plaintext
                    ended = final
                    break
                }
            }
            guard let plaintext = opened else { throw .corrupt("chunk \(counter) does not authenticate") }
            guard counter < UInt32.max else { throw .corrupt("too many chunks") }
            counter += 1
            out += plaintext
            start = end
        }
        buffer.removeFirst(start)
        if ended, !buffer.isEmpty { throw .corrupt("data after the last chunk") }
        return out
    }

    /// Throws unless the last chunk has been read and nothing followed it.
    public func finish() throws(SealingError) {
        guard header != nil else { throw .truncated }
        guard ended else { throw .truncated }
        guard buffer.isEmpty else { throw .corrupt("data after the last chunk") }
    }
}

extension SpoolSealing {
    /// Seals `plaintext` whole (small files: envelopes, the relay's in-memory hand-off).
    public static func seal(_ plaintext: some Collection<UInt8>, keys: SpoolKeyRing) throws(SealingError) -> [UInt8] {
        var stream = SealingStream(keys: keys)
        var out = stream.header
        out += try stream.append(plaintext)
        out += try stream.finish()
        return out
    }

    /// Opens a whole sealed file.
    public static func open(_ sealed: some Collection<UInt8>, keys: SpoolKeyRing) throws(SealingError) -> [UInt8] {
        var stream = OpeningStream(keys: keys)
        let plaintext = try stream.feed(sealed)
        try stream.finish()
        return plaintext
    }
}

extension SpoolSealing {
    /// The longest stream header: magic, id length, a 64-byte id, salt.
    public static let maxHeaderLength = 6 + 1 + 64 + saltLength
    /// Bytes a full chunk takes in the file.
    static let storedChunkSize = 4 + chunkSize + tagLength

    /// Where each chunk of a sealed stream of known stored length lies, for reading a part of a large sealed
    /// message without opening what comes before it. Every chunk but the last holds `chunkSize` bytes of
    /// plaintext (what `SealingStream` writes).
    public struct Layout: Sendable {
        public let streamHeader: [UInt8]
        public let keyID: String
        let salt: [UInt8]
        public let chunkCount: Int
        public let plaintextLength: Int
        let storedLength: Int

        /// nil when the stored length cannot be a stream with this header (a damaged file).
        public init?(streamHeader bytes: [UInt8], storedLength: Int) {
            let fixed = SpoolSealing.magic.count + 1
            guard bytes.count >= fixed, bytes.starts(with: SpoolSealing.magic) else { return nil }
            let idLength = Int(bytes[SpoolSealing.magic.count])
            let headerLength = fixed + idLength + SpoolSealing.saltLength
            guard idLength > 0, bytes.count >= headerLength, storedLength >= headerLength + 4 + SpoolSealing.tagLength else { return nil }
            let body = storedLength - headerLength
            let count = (body + SpoolSealing.storedChunkSize - 1) / SpoolSealing.storedChunkSize
            let last = body - (count - 1) * SpoolSealing.storedChunkSize
            guard last >= 4 + SpoolSealing.tagLength else { return nil }
            streamHeader = Array(bytes[..<headerLength])
            keyID = String(decoding: bytes[fixed..<fixed + idLength], as: UTF8.self)
            salt = Array(bytes[fixed + idLength..<headerLength])
            chunkCount = count
            plaintextLength = body - count * (4 + SpoolSealing.tagLength)
            self.storedLength = storedLength
        }

        /// Offset of chunk `index` from the stream's start, and its stored size.
        public func storedRange(ofChunk index: Int) -> (offset: Int, count: Int) {
            let offset = streamHeader.count + index * SpoolSealing.storedChunkSize
            return (offset, min(SpoolSealing.storedChunkSize, storedLength - offset))
        }

        /// The plaintext of chunk `index` from its stored bytes (`storedRange`).
        public func open(chunk index: Int, stored: [UInt8], keys: SpoolKeyRing) throws(SealingError) -> [UInt8] {
            guard let master = keys.key(id: keyID) else { throw .unknownKey(keyID) }
            let key = SpoolSealing.fileKey(master, salt: salt)
            guard index >= 0, index < chunkCount, stored.count >= 4 + SpoolSealing.tagLength, let counter = UInt32(exactly: index) else {
                throw .corrupt("no chunk \(index)")
            }
            let lengthField = Array(stored[0..<4])
            let length = lengthField.reduce(0) { $0 << 8 | Int($1) }
            guard stored.count == 4 + length + SpoolSealing.tagLength else { throw .corrupt("chunk \(index) has the wrong length") }
            guard let plaintext = SpoolSealing.openChunk(stored[4..<4 + length], tag: stored[(4 + length)...], key: key, header: streamHeader,
                                                         lengthField: lengthField, counter: counter, final: index == chunkCount - 1) else {
                throw .corrupt("chunk \(index) does not authenticate")
            }
            return plaintext
        }
    }
}
