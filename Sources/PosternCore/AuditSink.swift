import CompressNIO
import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// How long the audit log is kept (GDPR storage limitation): `audit: { output: FILE, rotate: { size: 100M, keep-days: 90 } }`.
public struct AuditRetention: Sendable, Hashable {
    /// Rotate the file once it reaches this many bytes.
    public var rotateBytes: Int?
    /// Delete a rotated file once its newest line is this many days old; with it the file also rotates daily.
    public var keepDays: Int?

    public init(rotateBytes: Int? = nil, keepDays: Int? = nil) {
        self.rotateBytes = rotateBytes
        self.keepDays = keepDays
    }
}

/// Where JSON lines go: standard output, standard error (`stderr`, for tools whose gateway logs to its
/// standard output) or a file. Whole lines under one lock.
///
/// A file is opened with `O_APPEND`: every line lands at the end of the file as it is then, so the gateway and a
/// `postern queue` command writing to the same audit log at once do not overwrite each other's lines, and after
/// logrotate's `copytruncate` lines go to the start of the emptied file instead of the old offset.
///
/// With `AuditRetention` Postern rotates the file itself: under the same lock as the writes (so no line is split
/// or lost), the file is renamed to `FILE.STAMP` and a new one opened; a background queue then compresses the
/// rotated file to `FILE.STAMP.gz` (written durably, then the plain file removed) and deletes rotated files past
/// `keep-days`. A `postern queue` command that opened the file just before a rotation writes its line into the
/// rotated file; compression reads that file again when it grew while being compressed.
final class JSONLineSink: Sendable {
    private struct FileState {
        var fd: Int32
        var size: Int
        /// Days since 1970 (UTC) of the file's first line, for the daily rotation.
        var day: Int
    }

    private enum Target {
        case stream(Int32)
        case file(String)
    }

    private let target: Target
    private let retention: AuditRetention?
    private let state: NIOLockedValueBox<FileState?>
    private let background = DispatchQueue(label: "postern.audit.rotation")

    init(path: String?, retention: AuditRetention?) throws {
        self.retention = retention
        if path == "stderr" {
            target = .stream(STDERR_FILENO)
            state = NIOLockedValueBox(nil)
        } else if let path, path != "-", path != "stdout" {
            target = .file(path)
            state = NIOLockedValueBox(try Self.open(path, now: Date()))
        } else {
            target = .stream(STDOUT_FILENO)
            state = NIOLockedValueBox(nil)
        }
    }

    deinit {
        state.withLockedValue { if let fd = $0?.fd { close(fd) } }
    }

    private static func open(_ path: String, now: Date) throws -> FileState {
        let fd = Foundation.open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { throw AuditLogError("cannot open audit log \(path): \(String(cString: strerror(errno)))") }
        var info = stat()
        let size = fstat(fd, &info) == 0 ? Int(info.st_size) : 0
        let started = size > 0 ? Int(info.st_mtim.tv_sec) : Int(now.timeIntervalSince1970)
        return FileState(fd: fd, size: size, day: Self.day(started))
    }

    private static func day(_ seconds: Int) -> Int { seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400 }

    func write(_ line: Data) {
        switch target {
        case .stream(let fd):
            state.withLockedValue { _ in line.withUnsafeBytes { Self.writeAll(fd, $0) } }
        case .file(let path):
            state.withLockedValue { file in
                guard var current = file else { return }
                if let limit = retention?.rotateBytes, current.size > 0, current.size + line.count > limit {
                    rotate(&current, path: path, now: Date())
                }
                line.withUnsafeBytes { Self.writeAll(current.fd, $0) }
                current.size += line.count
                file = current
            }
        }
    }

    /// Writes every byte (a short write or EINTR is retried); a failing disk loses the line rather than the process.
    private static func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) {
        var offset = 0
        while offset < bytes.count, let base = bytes.baseAddress {
            let n = Foundation.write(fd, base + offset, bytes.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += n
        }
    }

    /// Under the lock: renames the file to its rotated name, opens a new one and hands the old one to compression.
    /// When the rename or the new open fails, lines keep going to the file in hand.
    private func rotate(_ file: inout FileState, path: String, now: Date) {
        var rotated = path + "." + AuditFileSet.stamp(for: now)
        var n = 1
        while access(rotated, F_OK) == 0 || access(rotated + ".gz", F_OK) == 0 {
            // Zero-padded, so that names keep sorting in time order.
            rotated = path + "." + AuditFileSet.stamp(for: now) + "-" + String(String(n + 10_000).dropFirst())
            n += 1
        }
        guard rename(path, rotated) == 0 else { return }
        guard let fresh = try? Self.open(path, now: now) else { return }
        close(file.fd)
        file = fresh
        let keepDays = retention?.keepDays
        let rotatedFile = rotated
        background.async {
            Self.compress(rotatedFile)
            if let keepDays { Self.expire(path: path, keepDays: keepDays, now: Date()) }
        }
    }

    /// Rotates a file whose first line is from an earlier day (with `keep-days`), deletes what is past `keep-days`.
    func maintain(now: Date) -> [String] {
        guard case .file(let path) = target, let keepDays = retention?.keepDays else { return [] }
        state.withLockedValue { file in
            guard var current = file else { return }
            if current.size > 0, current.day < Self.day(Int(now.timeIntervalSince1970)) {
                rotate(&current, path: path, now: now)
                file = current
            }
        }
        return background.sync { Self.expire(path: path, keepDays: keepDays, now: now) }
    }

    /// Waits for the compression and deletion under way (for tests).
    func settle() {
        background.sync {}
    }

    /// `FILE.STAMP` → `FILE.STAMP.gz`, durably; the plain file goes once the compressed one is in place. A file that
    /// grew while it was compressed (a late writer) is compressed again, up to three times; after that it stays plain.
    static func compress(_ rotated: String) {
        for _ in 0..<3 {
            guard let data = FileManager.default.contents(atPath: rotated) else { return }
            var plain = ByteBuffer(bytes: data)
            guard let compressed = try? plain.compress(with: .gzip()) else { return }
            do {
                try DurableFile.write(to: rotated + ".gz", permissions: 0o640) { output throws(DurableWriteError) in try output.write(compressed) }
            } catch {
                return
            }
            var info = stat()
            if stat(rotated, &info) == 0, Int(info.st_size) == data.count {
                unlink(rotated)
                return
            }
        }
    }

    /// Deletes the rotated files whose stamp (the moment of rotation, so their newest line) is `keepDays` days old.
    @discardableResult
    static func expire(path: String, keepDays: Int, now: Date) -> [String] {
        let cutoff = now.addingTimeInterval(-Double(keepDays) * 86_400)
        var deleted: [String] = []
        for (file, stamp) in AuditFileSet(path: path).rotated() {
            guard let date = AuditFileSet.date(ofStamp: stamp), date < cutoff else { continue }
            if unlink(file) == 0 { deleted.append(file) }
            if file.hasSuffix(".gz") { unlink(String(file.dropLast(3))) }
        }
        return deleted
    }
}
