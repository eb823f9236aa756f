import CompressNIO
import Foundation
import NIOCore

/// The audit log's files: the current one (`audit.jsonl`) and the rotated ones beside it, named for the moment
/// they were rotated (`audit.jsonl.20261201T093000.123Z`, gzip-compressed to `….gz` right after). Their names
/// sort in time order, so reading them in name order and the current file last reads the log in order.
public struct AuditFileSet: Sendable {
    public let path: String

    public init(path: String) { self.path = path }

    var directory: String { (path as NSString).deletingLastPathComponent.isEmpty ? "." : (path as NSString).deletingLastPathComponent }
    var baseName: String { (path as NSString).lastPathComponent }

    /// A rotated file of this log: `BASE.` and a stamp `yyyyMMddTHHmmss.SSSZ` (maybe `-N`), maybe `.gz`.
    func stamp(ofRotated name: String) -> String? {
        guard name.hasPrefix(baseName + ".") else { return nil }
        var rest = String(name.dropFirst(baseName.count + 1))
        if rest.hasSuffix(".gz") { rest = String(rest.dropLast(3)) }
        let bytes = Array(rest.utf8)
        guard bytes.count >= 16, bytes[8] == UInt8(ascii: "T"), bytes[0..<8].allSatisfy({ (0x30...0x39).contains($0) }) else { return nil }
        return rest
    }

    /// The rotated files, oldest first, each with its stamp.
    public func rotated() -> [(path: String, stamp: String)] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        var byStamp: [String: String] = [:]
        for name in names {
            guard let stamp = stamp(ofRotated: name) else { continue }
            // The plain file and its .gz for a moment both exist while it is compressed: the .gz wins once it is there.
            if byStamp[stamp] == nil || name.hasSuffix(".gz") { byStamp[stamp] = directory + "/" + name }
        }
        return byStamp.sorted { $0.key < $1.key }.map { (path: $0.value, stamp: $0.key) }
    }

    /// Every file `postern report` reads, in order: the rotated ones, then the current one if it exists.
    public func all() -> [String] {
        rotated().map(\.path) + (FileManager.default.fileExists(atPath: path) ? [path] : [])
    }

    /// The rotation stamp for `date`: `20261201T093000.123Z`.
    static func stamp(for date: Date) -> String {
        let ms = Int((date.timeIntervalSince1970 * 1000).rounded(.down))
        let seconds = ms / 1000
        var tm = tm()
        var t = time_t(seconds)
        gmtime_r(&t, &tm)
        let text = JSONLineLogHandler.timestamp(year: Int(tm.tm_year) + 1900, month: Int(tm.tm_mon) + 1, day: Int(tm.tm_mday),
                                                hour: Int(tm.tm_hour), minute: Int(tm.tm_min), second: Int(tm.tm_sec),
                                                millisecond: ms % 1000)
        return text.replacingOccurrences(of: "-", with: "").replacingOccurrences(of: ":", with: "")
    }

    /// The moment a stamp names (to the second), or nil.
    static func date(ofStamp stamp: String) -> Date? {
        let digits = Array(stamp.utf8)
        guard digits.count >= 15 else { return nil }
        func number(_ range: Range<Int>) -> Int? { Int(String(decoding: digits[range], as: UTF8.self)) }
        guard let year = number(0..<4), let month = number(4..<6), let day = number(6..<8), let hour = number(9..<11),
              let minute = number(11..<13), let second = number(13..<15) else { return nil }
        var components = DateComponents()
        components.calendar = Calendar(identifier: .gregorian)
        components.timeZone = TimeZone(identifier: "UTC")
        (components.year, components.month, components.day, components.hour, components.minute, components.second) = (year, month, day, hour, minute, second)
        return components.date
    }
}

public struct AuditFileError: Error, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

/// Reads the lines of audit files, plain or gzip, in bounded memory: a plain file in 4 MiB chunks, a gzip file
/// inflated through a 4 MiB window (CompressNIO over zlib).
public enum AuditFileReader {
    static let chunk = 4 << 20

    /// Calls `line` with each line of the file (without its newline; a last line without one too).
    public static func forEachLine(path: String, _ line: (UnsafeRawBufferPointer) -> Void) throws {
        var splitter = LineSplitter()
        if path.hasSuffix(".gz") {
            let data = try readAll(path)
            var compressed = ByteBuffer(bytes: data)
            let decompressor = CompressionAlgorithm.gzip().decompressor
            decompressor.window = ByteBufferAllocator().buffer(capacity: chunk)
            var inflated: UInt64 = 0
            do {
                try decompressor.startStream()
                try compressed.decompressStream(with: decompressor) { window in
                    inflated += UInt64(window.readableBytes)
                    window.withUnsafeReadableBytes { splitter.feed($0, line) }
                }
                try decompressor.finishStream()
            } catch {
                throw AuditFileError("\(path): not a readable gzip file (\(error))")
            }
            // zlib stops quietly at the end of a cut-off file: the gzip trailer's length (RFC 1952 ISIZE, the
            // size modulo 2^32) tells a whole file from a cut-off one.
            guard data.count >= 18, Self.littleEndian32(data.suffix(4)) == UInt32(truncatingIfNeeded: inflated) else {
                throw AuditFileError("\(path): the gzip file is cut off or damaged (its length does not match)")
            }
        } else {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw AuditFileError("cannot open \(path): \(String(cString: strerror(errno)))") }
            defer { close(fd) }
            var buffer = [UInt8](repeating: 0, count: chunk)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, chunk) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw AuditFileError("cannot read \(path): \(String(cString: strerror(errno)))")
                }
                if n == 0 { break }
                buffer.withUnsafeBytes { splitter.feed(UnsafeRawBufferPointer(rebasing: $0[0..<n]), line) }
            }
        }
        splitter.finish(line)
    }

    static func littleEndian32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        bytes.reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    static func readAll(_ path: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw AuditFileError("cannot read \(path)")
        }
        return [UInt8](data)
    }

    /// Cuts chunks into lines, keeping a line cut by a chunk's end for the next chunk.
    struct LineSplitter {
        var carry: [UInt8] = []

        mutating func feed(_ bytes: UnsafeRawBufferPointer, _ line: (UnsafeRawBufferPointer) -> Void) {
            var start = 0
            while let newline = Self.newline(in: bytes, from: start) {
                if carry.isEmpty {
                    line(UnsafeRawBufferPointer(rebasing: bytes[start..<newline]))
                } else {
                    carry.append(contentsOf: bytes[start..<newline])
                    carry.withUnsafeBytes(line)
                    carry.removeAll(keepingCapacity: true)
                }
                start = newline + 1
            }
            carry.append(contentsOf: bytes[start...])
        }

        mutating func finish(_ line: (UnsafeRawBufferPointer) -> Void) {
            if !carry.isEmpty { carry.withUnsafeBytes(line) }
            carry.removeAll()
        }

        static func newline(in bytes: UnsafeRawBufferPointer, from start: Int) -> Int? {
            guard start < bytes.count, let base = bytes.baseAddress else { return nil }
            guard let found = memchr(base + start, 0x0A, bytes.count - start) else { return nil }
            return UnsafeRawPointer(found) - base
        }
    }
}
