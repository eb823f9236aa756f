import Foundation
import NIOCore
import PosternCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes one queue file, `queue/<id>.msg`, while its message arrives: the one place a message's bytes go to
/// disk (spool encryption adds its sealing stage here, between `append` and the file).
///
/// Format 2 (issue #20): `POSTERN-SPOOL 2 <message length> <fnv1a64 of message and envelope> <envelope length>\n
/// <message><envelope JSON>`, the header line of fixed width (the checksum covers the envelope too, which
/// format 1's did not). The message streams in chunks of any size (memory does
/// not grow with it); the envelope, whose Message-ID comes from the header section, follows it; the header
/// line, written as a placeholder first, is overwritten with the lengths and checksum at `commit`. The file
/// is written in `tmp/` and renamed into `queue/` only after its fdatasync (`DurableFile.Writer`), so a crash,
/// an abort or a disconnect leaves at most a file in `tmp/`, which recovery removes: never a partial message
/// in the queue. Format 1 files (envelope before the message) are still read.
///
/// Not thread-safe: one caller at a time, in order (the spool's I/O threads, one job after another).
public final class MessageFileWriter: @unchecked Sendable {
    public let id: String
    private let directory: SpoolDirectory
    private let reuse: String?
    private var file: DurableFile.Writer?
    private var checksum = SpoolDirectory.fnvOffset
    /// Octets of the message appended so far.
    public private(set) var messageLength = 0
    /// Octets of the message section written so far: `messageLength`, or with sealing the sealed stream's.
    private var storedLength = 0
    private var finished = false
    /// With spool encryption: the message's sealed stream (format 3).
    private var sealer: SealingStream?

    /// Nothing is opened until the first `append` (or `commit`): creating a writer does no I/O.
    /// `reuse`: a name in `free/` whose file is overwritten instead of creating one.
    init(directory: SpoolDirectory, id: String, reuse: String?) {
        self.directory = directory
        self.id = id
        self.reuse = reuse
        sealer = directory.keys.map { SealingStream(keys: $0) }
    }

    deinit { file?.abort() }

    static func headerLine(messageLength: Int, checksum: UInt64, envelopeLength: Int, sealed: Bool = false) -> [UInt8] {
        func padded(_ text: String, _ width: Int) -> String { String(repeating: "0", count: max(0, width - text.count)) + text }
        return Array("\(sealed ? SpoolDirectory.magic3 : SpoolDirectory.magic2) \(padded(String(messageLength), 20)) \(padded(String(checksum, radix: 16), 16)) \(padded(String(envelopeLength), 10))\n".utf8)
    }

    private func opened() throws(SpoolError) -> DurableFile.Writer {
        if let file { return file }
        guard !finished, QueueID.isValid(id) else { throw .unwritable("invalid queue id \(id), or the message file is finished") }
        do {
            let file = try DurableFile.Writer(temporary: "\(directory.tmpPath)/\(id).msg", reusing: reuse.map { "\(directory.freePath)/\($0)" })
            self.file = file
            try file.output.write(Self.headerLine(messageLength: 0, checksum: 0, envelopeLength: 0))
            if let header = sealer?.header { try store(header, to: file) }
            return file
        } catch {
            abort()
            throw SpoolDirectory.error(error)
        }
    }

    /// Appends message bytes. On a failure the partial file is removed and the writer is finished.
    public func append(_ bytes: ByteBuffer) throws(SpoolError) {
        let file = try opened()
        do {
            if sealer != nil {
                let sealed = try bytes.withUnsafeReadableBytes { raw throws(SealingError) in try seal(raw) }
                try store(sealed, to: file)
            } else {
                checksum = bytes.withUnsafeReadableBytes { SpoolDirectory.fnv1a64($0, seed: checksum) }
                try file.output.write(bytes)
                storedLength += bytes.readableBytes
            }
            messageLength += bytes.readableBytes
        } catch let error as SealingError {
            abort()
            throw .unwritable("sealing the message: \(error)")
        } catch let error as DurableWriteError {
            abort()
            throw SpoolDirectory.error(error)
        } catch {
            abort()
            throw .unwritable("\(error)")
        }
    }

    private func seal(_ raw: UnsafeRawBufferPointer) throws(SealingError) -> [UInt8] {
        guard var stream = sealer else { return [] }
        let sealed = try stream.append(raw)
        sealer = stream
        return sealed
    }

    /// Writes stored bytes of the message section, counted into the checksum and the stored length.
    private func store(_ bytes: [UInt8], to file: DurableFile.Writer) throws(DurableWriteError) {
        guard !bytes.isEmpty else { return }
        checksum = bytes.withUnsafeBytes { SpoolDirectory.fnv1a64($0, seed: checksum) }
        try file.output.write(bytes)
        storedLength += bytes.count
    }

    /// Writes the envelope and the header line, then fdatasync and rename into `queue/`. The caller fsyncs the
    /// queue directory (the spool's group commit) before the message counts as stored.
    public func commit(envelope: SpoolEnvelope) throws(SpoolError) {
        let file = try opened()
        var json: [UInt8]
        var lastChunk: [UInt8] = []
        do {
            json = try envelope.json()
            if var stream = sealer, let keys = directory.keys {
                lastChunk = try stream.finish()
                sealer = stream
                json = try SpoolSealing.seal(json, keys: keys)
            }
        } catch {
            abort()
            throw .unwritable("encoding or sealing the envelope: \(error)")
        }
        do {
            try store(lastChunk, to: file)
            try file.output.write(json)
            let sum = json.withUnsafeBytes { SpoolDirectory.fnv1a64($0, seed: checksum) }
            try file.overwrite(Self.headerLine(messageLength: storedLength, checksum: sum, envelopeLength: json.count, sealed: sealer != nil), at: 0)
            finished = true
            try file.commit(to: directory.messagePath(id), syncDirectory: false)
        } catch {
            abort()
            throw SpoolDirectory.error(error)
        }
    }

    /// The whole queue file for a message held in memory, as `append` and `commit` would write it (format 2, or
    /// format 3 when `keys` seal it): what the intake log stores as one record (`SpoolIntake`).
    static func image(envelope: SpoolEnvelope, message: ByteBuffer, keys: SpoolKeyRing?) throws(SpoolError) -> [UInt8] {
        var body: [UInt8]
        var json: [UInt8]
        do {
            json = try envelope.json()
            if let keys {
                body = try message.withUnsafeReadableBytes { raw throws(SealingError) in try SpoolSealing.seal(raw, keys: keys) }
                json = try SpoolSealing.seal(json, keys: keys)
            } else {
                body = Array(message.readableBytesView)
            }
        } catch {
            throw .unwritable("encoding or sealing the message: \(error)")
        }
        var sum = body.withUnsafeBytes { SpoolDirectory.fnv1a64($0) }
        sum = json.withUnsafeBytes { SpoolDirectory.fnv1a64($0, seed: sum) }
        var image = headerLine(messageLength: body.count, checksum: sum, envelopeLength: json.count, sealed: keys != nil)
        image.reserveCapacity(image.count + body.count + json.count)
        image += body
        image += json
        return image
    }

    /// Removes the partial file, if any. Safe more than once and after a failure; does nothing after `commit`.
    public func abort() {
        finished = true
        file?.abort()
        file = nil
    }
}

/// A queue file opened for reading in chunks: its envelope and where its message lies. The relay sends a large
/// message from it without holding the message; recovery checks one without loading it.
public final class OpenMessageFile: @unchecked Sendable {
    public let envelope: SpoolEnvelope
    public let messageLength: Int
    /// The envelope as stored: format 2's checksum covers it.
    let envelopeBytes: [UInt8]
    let fd: Int32
    let header: SpoolDirectory.Header
    private var closed = false

    /// Bytes read at a time by `verify` (and suggested for `read`).
    public static let chunkSize = 256 * 1024

    /// Where the chunks of a sealed message lie, and the keys to open them; nil for a message in the clear.
    let sealed: (layout: SpoolSealing.Layout, keys: SpoolKeyRing)?

    init(fd: Int32, header: SpoolDirectory.Header, envelope: SpoolEnvelope, envelopeBytes: [UInt8],
         sealed: (layout: SpoolSealing.Layout, keys: SpoolKeyRing)? = nil) {
        self.fd = fd
        self.envelopeBytes = envelopeBytes
        self.header = header
        self.envelope = envelope
        self.sealed = sealed
        self.messageLength = sealed?.layout.plaintextLength ?? header.messageLength
    }

    deinit { close() }

    public func close() {
        guard !closed else { return }
        closed = true
        _ = systemClose(fd)
    }

    /// Reads the whole message as stored, in chunks, and checks it against the header's checksum (a sealed
    /// message's chunks authenticate as they are read for delivery).
    public func verify() throws(SpoolDirectory.ReadError) {
        var hash = SpoolDirectory.fnvOffset
        var offset = 0
        while offset < header.messageLength {
            let chunk = try SpoolDirectory.readRange(fd, offset: header.messageStart + offset, count: min(Self.chunkSize, header.messageLength - offset))
            hash = chunk.withUnsafeBytes { SpoolDirectory.fnv1a64($0, seed: hash) }
            offset += chunk.count
        }
        try checkSum(hash)
    }

    /// The whole message in one read, checked against the header's checksum and opened when sealed: a small
    /// message for the relay's in-memory hand-off, without reading the file a second time.
    public func readWhole() throws(SpoolDirectory.ReadError) -> ByteBuffer {
        let stored = try SpoolDirectory.readRange(fd, offset: header.messageStart, count: header.messageLength)
        try checkSum(stored.withUnsafeBytes { SpoolDirectory.fnv1a64($0) })
        guard let keys = sealed?.keys else { return ByteBuffer(bytes: stored) }
        return ByteBuffer(bytes: try SpoolDirectory.opening { () throws(SealingError) in try SpoolSealing.open(stored, keys: keys) })
    }

    /// Checks the hash of the stored message (`hash`), continued over the envelope in format 2 and 3.
    private func checkSum(_ hash: UInt64) throws(SpoolDirectory.ReadError) {
        var hash = hash
        if header.coversEnvelope { hash = envelopeBytes.withUnsafeBytes { SpoolDirectory.fnv1a64($0, seed: hash) } }
        guard hash == header.checksum else { throw .corrupt("checksum mismatch") }
    }

    /// `count` bytes of the message from `offset` (clamped to the message's end).
    public func read(from offset: Int, count: Int) throws(SpoolDirectory.ReadError) -> ByteBuffer {
        let count = max(0, min(count, messageLength - offset))
        guard let (layout, keys) = sealed else {
            return ByteBuffer(bytes: try SpoolDirectory.readRange(fd, offset: header.messageStart + offset, count: count))
        }
        // The sealed chunks the range touches, each opened on its own.
        var out = ByteBuffer()
        out.reserveCapacity(count)
        var position = offset
        while position < offset + count {
            let index = position / SpoolSealing.chunkSize
            let (chunkOffset, storedCount) = layout.storedRange(ofChunk: index)
            let stored = try SpoolDirectory.readRange(fd, offset: header.messageStart + chunkOffset, count: storedCount)
            let plaintext = try SpoolDirectory.opening { () throws(SealingError) in try layout.open(chunk: index, stored: stored, keys: keys) }
            let start = position - index * SpoolSealing.chunkSize
            let end = min(plaintext.count, start + (offset + count - position))
            guard start < end else { throw .corrupt("sealed chunk \(index) is shorter than its place") }
            out.writeBytes(plaintext[start..<end])
            position += end - start
        }
        return out
    }
}

extension SpoolDirectory {
    struct Header {
        var envelopeLength: Int
        var messageLength: Int
        var checksum: UInt64
        /// Offset of the envelope JSON: just past the header line (format 1), or past the message (format 2).
        var envelopeStart: Int
        /// Offset of the message: past the envelope (format 1), or just past the header line (format 2).
        var messageStart: Int
        /// Format 3: message and envelope are sealed streams; the lengths and the checksum are the stored bytes'.
        var sealed = false
        /// Format 2: the checksum covers the message, then the envelope.
        var coversEnvelope: Bool { envelopeStart > messageStart }
        /// Cannot overflow: `parseHeader` refuses lengths whose sum does.
        var fileSize: Int { max(envelopeStart + envelopeLength, messageStart + messageLength) }
    }

    /// Parses the header line at the start of `bytes` (at least its first 200 bytes, or all of a shorter file).
    static func parseHeader(_ bytes: [UInt8]) throws(ReadError) -> Header {
        guard let newline = bytes.prefix(200).firstIndex(of: 0x0A) else { throw .corrupt("no header line") }
        let fields = String(decoding: bytes[..<newline], as: UTF8.self).split(separator: " ")
        guard fields.count == 5 else { throw .corrupt("bad header line") }
        let magic = "\(fields[0]) \(fields[1])"
        let envField: Substring, msgField: Substring
        switch magic {
        case Self.magic: (envField, msgField) = (fields[2], fields[3])
        case Self.magic2, Self.magic3: (envField, msgField) = (fields[4], fields[2])
        default: throw .corrupt("bad header line")
        }
        let sumField = magic == Self.magic ? fields[4] : fields[3]
        guard let envLength = Int(envField), let msgLength = Int(msgField), let checksum = UInt64(sumField, radix: 16),
              envLength >= 0, msgLength >= 0
        else { throw .corrupt("bad header line") }
        // The lengths are the file's word: a corrupt one near Int.max must not overflow `fileSize`.
        let (firstEnd, overflow) = (newline + 1).addingReportingOverflow(magic == Self.magic ? envLength : msgLength)
        guard !overflow, !firstEnd.addingReportingOverflow(magic == Self.magic ? msgLength : envLength).overflow else {
            throw .corrupt("header lengths out of range")
        }
        if magic == Self.magic {
            return Header(envelopeLength: envLength, messageLength: msgLength, checksum: checksum, envelopeStart: newline + 1, messageStart: firstEnd)
        }
        return Header(envelopeLength: envLength, messageLength: msgLength, checksum: checksum, envelopeStart: firstEnd, messageStart: newline + 1,
                      sealed: magic == Self.magic3)
    }

    /// Opens a message file for reading in chunks: header and envelope read and checked, the message not yet
    /// (see `OpenMessageFile.verify`).
    public func openMessage(id: String, in area: Area = .queue) throws(ReadError) -> OpenMessageFile {
        let (fd, fileSize) = try Self.openForReading(messagePath(id, in: area))
        do throws(ReadError) {
            let header = try Self.parseHeader(try Self.readPrefix(fd, min(fileSize, 4096)))
            guard fileSize == header.fileSize else { throw .corrupt("size \(fileSize), header says \(header.fileSize)") }
            let envelopeBytes = try Self.readRange(fd, offset: header.envelopeStart, count: header.envelopeLength)
            guard header.sealed else {
                return OpenMessageFile(fd: fd, header: header, envelope: try Self.decodeEnvelope(envelopeBytes[...]), envelopeBytes: envelopeBytes)
            }
            let envelope = try Self.decodeEnvelope(try opened(envelopeBytes)[...])
            let keys = try sealingKeys()
            let streamHeader = try Self.readRange(fd, offset: header.messageStart, count: min(header.messageLength, SpoolSealing.maxHeaderLength))
            let layout = try Self.sealedLayout(streamHeader, storedLength: header.messageLength)
            return OpenMessageFile(fd: fd, header: header, envelope: envelope, envelopeBytes: envelopeBytes, sealed: (layout, keys))
        } catch {
            close(fd)
            throw error
        }
    }

    /// A writer for a new message file (see `MessageFileWriter`).
    public func messageWriter(id: String, reuse: String? = nil) -> MessageFileWriter {
        MessageFileWriter(directory: self, id: id, reuse: reuse)
    }
}

#if canImport(Glibc)
private let systemClose = Glibc.close
#elseif canImport(Darwin)
private let systemClose = Darwin.close
#endif
