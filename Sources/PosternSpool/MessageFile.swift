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
    private var finished = false

    /// Nothing is opened until the first `append` (or `commit`): creating a writer does no I/O.
    /// `reuse`: a name in `free/` whose file is overwritten instead of creating one.
    init(directory: SpoolDirectory, id: String, reuse: String?) {
        self.directory = directory
        self.id = id
        self.reuse = reuse
    }

    deinit { file?.abort() }

    static func headerLine(messageLength: Int, checksum: UInt64, envelopeLength: Int) -> [UInt8] {
        func padded(_ text: String, _ width: Int) -> String { String(repeating: "0", count: max(0, width - text.count)) + text }
        return Array("\(SpoolDirectory.magic2) \(padded(String(messageLength), 20)) \(padded(String(checksum, radix: 16), 16)) \(padded(String(envelopeLength), 10))\n".utf8)
    }

    private func opened() throws(SpoolError) -> DurableFile.Writer {
        if let file { return file }
        guard !finished, QueueID.isValid(id) else { throw .unwritable("invalid queue id \(id), or the message file is finished") }
        do {
            let file = try DurableFile.Writer(temporary: "\(directory.tmpPath)/\(id).msg", reusing: reuse.map { "\(directory.freePath)/\($0)" })
            self.file = file
            try file.output.write(Self.headerLine(messageLength: 0, checksum: 0, envelopeLength: 0))
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
            checksum = bytes.withUnsafeReadableBytes { SpoolDirectory.fnv1a64($0, seed: checksum) }
            try file.output.write(bytes)
            messageLength += bytes.readableBytes
        } catch {
            abort()
            throw SpoolDirectory.error(error)
        }
    }

    /// Writes the envelope and the header line, then fdatasync and rename into `queue/`. The caller fsyncs the
    /// queue directory (the spool's group commit) before the message counts as stored.
    public func commit(envelope: SpoolEnvelope) throws(SpoolError) {
        let file = try opened()
        let json: Data
        do { json = try JSONEncoder.spool.encode(envelope) } catch {
            abort()
            throw .unwritable("encoding envelope: \(error)")
        }
        do {
            try file.output.write(json)
            let sum = json.withUnsafeBytes { SpoolDirectory.fnv1a64($0, seed: checksum) }
            try file.overwrite(Self.headerLine(messageLength: messageLength, checksum: sum, envelopeLength: json.count), at: 0)
            finished = true
            try file.commit(to: directory.messagePath(id), syncDirectory: false)
        } catch {
            abort()
            throw SpoolDirectory.error(error)
        }
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

    init(fd: Int32, header: SpoolDirectory.Header, envelope: SpoolEnvelope, envelopeBytes: [UInt8]) {
        self.fd = fd
        self.envelopeBytes = envelopeBytes
        self.header = header
        self.envelope = envelope
        self.messageLength = header.messageLength
    }

    deinit { close() }

    public func close() {
        guard !closed else { return }
        closed = true
        _ = systemClose(fd)
    }

    /// Reads the whole message in chunks and checks it against the header's checksum.
    public func verify() throws(SpoolDirectory.ReadError) {
        var hash = SpoolDirectory.fnvOffset
        var offset = 0
        while offset < messageLength {
            let chunk = try read(from: offset, count: min(Self.chunkSize, messageLength - offset))
            hash = chunk.withUnsafeReadableBytes { SpoolDirectory.fnv1a64($0, seed: hash) }
            offset += chunk.readableBytes
        }
        if header.coversEnvelope { hash = envelopeBytes.withUnsafeBytes { SpoolDirectory.fnv1a64($0, seed: hash) } }
        guard hash == header.checksum else { throw .corrupt("checksum mismatch") }
    }

    /// `count` bytes of the message from `offset` (clamped to the message's end).
    public func read(from offset: Int, count: Int) throws(SpoolDirectory.ReadError) -> ByteBuffer {
        let count = max(0, min(count, messageLength - offset))
        let bytes = try SpoolDirectory.readRange(fd, offset: header.messageStart + offset, count: count)
        return ByteBuffer(bytes: bytes)
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
        case Self.magic2: (envField, msgField) = (fields[4], fields[2])
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
        return Header(envelopeLength: envLength, messageLength: msgLength, checksum: checksum, envelopeStart: firstEnd, messageStart: newline + 1)
    }

    /// Opens a message file for reading in chunks: header and envelope read and checked, the message not yet
    /// (see `OpenMessageFile.verify`).
    public func openMessage(id: String, in area: Area = .queue) throws(ReadError) -> OpenMessageFile {
        let (fd, fileSize) = try Self.openForReading(messagePath(id, in: area))
        do throws(ReadError) {
            let header = try Self.parseHeader(try Self.readPrefix(fd, min(fileSize, 4096)))
            guard fileSize == header.fileSize else { throw .corrupt("size \(fileSize), header says \(header.fileSize)") }
            let envelopeBytes = try Self.readRange(fd, offset: header.envelopeStart, count: header.envelopeLength)
            let envelope = try Self.decodeEnvelope(envelopeBytes[...])
            return OpenMessageFile(fd: fd, header: header, envelope: envelope, envelopeBytes: envelopeBytes)
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
