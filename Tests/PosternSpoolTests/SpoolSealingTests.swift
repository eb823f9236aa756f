import Foundation
import Testing
@testable import PosternSpool

/// The sealed-stream format of spool encryption (`SpoolSealing`): round trips in pieces of any size, and every way
/// a file can be damaged or tampered with is refused, never trapped on, never returned as plaintext.
@Suite struct SpoolSealingTests {
    static let keyA: [UInt8] = Array(0..<32)
    static let keyB: [UInt8] = (0..<32).map { 255 - $0 }
    let ring: SpoolKeyRing

    init() throws {
        ring = try SpoolKeyRing(keys: [("2026-12", Self.keyA)])
    }

    func bytes(_ count: Int, seed: UInt64 = 1) -> [UInt8] {
        var state = seed
        return (0..<count).map { _ in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return UInt8(truncatingIfNeeded: state >> 33)
        }
    }

    @Test(arguments: [0, 1, 100, SpoolSealing.chunkSize - 1, SpoolSealing.chunkSize, SpoolSealing.chunkSize + 1, 3 * SpoolSealing.chunkSize + 17])
    func roundTripsInPiecesOfAnySize(size: Int) throws {
        let plaintext = bytes(size, seed: UInt64(size) + 3)
        // Sealed in uneven pieces, opened in other uneven pieces.
        var sealer = SealingStream(keys: ring)
        var sealed = sealer.header
        var offset = 0
        for piece in [1, 7, 5000, 70_000, 1] where offset < plaintext.count || piece == 1 {
            let end = min(plaintext.count, offset + piece)
            sealed += try sealer.append(plaintext[offset..<end])
            offset = end
        }
        sealed += try sealer.append(plaintext[offset...])
        sealed += try sealer.finish()
        // 20 bytes (length and tag) per chunk; an empty stream is one empty last chunk.
        #expect(sealed.count == sealer.header.count + plaintext.count + 20 * max(1, (plaintext.count + SpoolSealing.chunkSize - 1) / SpoolSealing.chunkSize))
        #expect(SpoolSealing.isSealed(sealed))
        #expect(!SpoolSealing.isSealed(plaintext) || size == 0)

        var opener = OpeningStream(keys: ring)
        var opened: [UInt8] = []
        var at = 0
        for piece in [3, 1, 9, 65_557, 4096, 1 << 20] {
            let end = min(sealed.count, at + piece)
            opened += try opener.feed(sealed[at..<end])
            at = end
        }
        opened += try opener.feed(sealed[at...])
        try opener.finish()
        #expect(opened == plaintext)
        #expect(opener.keyID == "2026-12")
    }

    @Test func theSamePlaintextSealsDifferentlyEachTime() throws {
        let plaintext = bytes(1000)
        #expect(try SpoolSealing.seal(plaintext, keys: ring) != SpoolSealing.seal(plaintext, keys: ring))
    }

    @Test func anOlderKeyStillOpensAfterRotationAndAnUnknownOneIsNamed() throws {
        let old = try SpoolSealing.seal(bytes(5000), keys: ring)
        let rotated = try SpoolKeyRing(keys: [("2027-01", Self.keyB), ("2026-12", Self.keyA)])
        #expect(rotated.current.id == "2027-01")
        #expect(try SpoolSealing.open(old, keys: rotated) == bytes(5000))
        let new = try SpoolSealing.seal(bytes(10), keys: rotated)
        #expect(throws: SealingError.unknownKey("2027-01")) { try SpoolSealing.open(new, keys: ring) }
        // The same id with another key: the data does not authenticate.
        let impostor = try SpoolKeyRing(keys: [("2026-12", Self.keyB)])
        #expect(throws: SealingError.self) { try SpoolSealing.open(old, keys: impostor) }
    }

    @Test func everyFlippedBitIsRefused() throws {
        let sealed = try SpoolSealing.seal(bytes(SpoolSealing.chunkSize + 100), keys: ring)
        // Every byte of the header and the chunk framing, and a sample of the ciphertext and tags.
        let positions = Array(0..<40) + stride(from: 40, to: sealed.count, by: 997).map { $0 } + Array(sealed.count - 40..<sealed.count)
        for position in positions {
            var damaged = sealed
            damaged[position] ^= 0x04
            #expect(throws: SealingError.self, "bit flipped at \(position)") { try SpoolSealing.open(damaged, keys: ring) }
        }
    }

    @Test func aStreamCutShortOrExtendedIsRefused() throws {
        let sealed = try SpoolSealing.seal(bytes(2 * SpoolSealing.chunkSize + 5), keys: ring)
        // Cut anywhere, including exactly after a whole non-final chunk.
        let firstChunkEnd = 6 + 1 + 7 + 16 + 4 + SpoolSealing.chunkSize + 16
        for length in [0, 3, 6, 20, firstChunkEnd, firstChunkEnd + 1, sealed.count - 1] {
            #expect(throws: SealingError.self, "cut at \(length)") { try SpoolSealing.open(sealed[..<length], keys: ring) }
        }
        #expect(throws: SealingError.corrupt("data after the last chunk")) { try SpoolSealing.open(sealed + [0], keys: ring) }
        #expect(throws: SealingError.self) { try SpoolSealing.open(sealed + sealed, keys: ring) }
    }

    @Test func chunksCannotBeReorderedDroppedOrTakenFromAnotherFile() throws {
        let chunk = 4 + SpoolSealing.chunkSize + 16
        let one = try SpoolSealing.seal(bytes(3 * SpoolSealing.chunkSize + 9, seed: 7), keys: ring)
        let two = try SpoolSealing.seal(bytes(3 * SpoolSealing.chunkSize + 9, seed: 8), keys: ring)
        let header = 6 + 1 + 7 + 16
        func chunkAt(_ file: [UInt8], _ i: Int) -> ArraySlice<UInt8> { file[header + i * chunk..<min(file.count, header + (i + 1) * chunk)] }
        let swapped = Array(one[..<header]) + chunkAt(one, 1) + chunkAt(one, 0) + chunkAt(one, 2) + chunkAt(one, 3)
        let dropped = Array(one[..<header]) + chunkAt(one, 0) + chunkAt(one, 2) + chunkAt(one, 3)
        let mixed = Array(one[..<header]) + chunkAt(two, 0) + chunkAt(one, 1) + chunkAt(one, 2) + chunkAt(one, 3)
        for file in [swapped, dropped, mixed] {
            #expect(throws: SealingError.self) { try SpoolSealing.open(file, keys: ring) }
        }
        #expect(try SpoolSealing.open(Array(one[..<header]) + chunkAt(one, 0) + chunkAt(one, 1) + chunkAt(one, 2) + chunkAt(one, 3), keys: ring)
                == bytes(3 * SpoolSealing.chunkSize + 9, seed: 7))
    }

    @Test func aHostileLengthFieldIsRefusedBeforeAnythingIsBuffered() throws {
        var opener = OpeningStream(keys: ring)
        let header = SpoolSealing.magic + [7] + Array("2026-12".utf8) + [UInt8](repeating: 0, count: 16)
        #expect(throws: SealingError.corrupt("a chunk claims 4294967295 bytes, more than 65536")) {
            _ = try opener.feed(header + [0xFF, 0xFF, 0xFF, 0xFF])
        }
        var empty = OpeningStream(keys: ring)
        #expect(throws: SealingError.corrupt("empty key id")) { _ = try empty.feed(SpoolSealing.magic + [0] + [UInt8](repeating: 0, count: 30)) }
        var plain = OpeningStream(keys: ring)
        #expect(throws: SealingError.corrupt("not a sealed spool file")) { _ = try plain.feed(Array("POSTERN-SPOOL 2 ...".utf8)) }
    }

    @Test func keyFilesAreCheckedAndMustBePrivate() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-keys-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        func keyFile(_ text: String, mode: mode_t = 0o600) throws -> String {
            let path = directory.appendingPathComponent("keys-\(UUID().uuidString.prefix(6))").path
            try text.write(toFile: path, atomically: false, encoding: .utf8)
            chmod(path, mode)
            return path
        }
        let a = Data(Self.keyA).base64EncodedString(), b = Data(Self.keyB).base64EncodedString()
        let good = try SpoolKeyRing(contentsOfFile: keyFile("# rotated 2027-01\n2027-01 \(b)\n\n2026-12\t\(a)\n"))
        #expect(good.current.id == "2027-01")
        #expect(try SpoolSealing.open(SpoolSealing.seal([1, 2, 3], keys: ring), keys: good) == [1, 2, 3])

        let cases: [(String, mode_t, String)] = [
            ("2026-12 \(a)\n", 0o640, "may be read by group or others (mode 640); chmod 600 it"),
            ("", 0o600, "no key"),
            ("2026-12\n", 0o600, ":1: write KEY-ID and the key in base64"),
            ("2026-12 not-base64!\n", 0o600, ":1: write KEY-ID and the key in base64"),
            ("2026-12 \(Data(Self.keyA.prefix(16)).base64EncodedString())\n", 0o600, "key '2026-12' is 16 bytes; AES-256 needs 32"),
            ("x \(a)\nx \(b)\n", 0o600, "key id 'x' is listed twice"),
            ("a/b \(a)\n", 0o600, "key id 'a/b' must be 1 to 64 of"),
        ]
        for (text, mode, message) in cases {
            let path = try keyFile(text, mode: mode)
            do {
                _ = try SpoolKeyRing(contentsOfFile: path)
                Issue.record("accepted: \(text)")
            } catch {
                #expect(error.description.contains(message), "\(error.description)")
            }
        }
        #expect(throws: SealingError.self) { try SpoolKeyRing(contentsOfFile: directory.appendingPathComponent("missing").path) }
    }
}
