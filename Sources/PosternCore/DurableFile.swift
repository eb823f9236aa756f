import Foundation
import NIOCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A step of a durable write that failed: the system call, the path and `errno`.
public struct DurableWriteError: Error, Sendable, Hashable, CustomStringConvertible {
    public var operation: String
    public var path: String
    public var code: Int32

    public init(operation: String, path: String, code: Int32) {
        self.operation = operation
        self.path = path
        self.code = code
    }

    /// The disk or the user's quota is full: worth a different answer ("insufficient storage") than other errors.
    public var isOutOfSpace: Bool { code == ENOSPC || code == EDQUOT }

    public var description: String { "\(operation) \(path): \(String(cString: strerror(code)))" }
}

/// The one way Postern replaces a file so that a crash or a power loss leaves either the old file or the whole new
/// one, never a part: the spool's messages and states, the outbox, the registration page's requests and the sunset
/// reminders' state all go through `write`.
///
/// The steps: write a temporary file in the same file system, `fdatasync` it (the data and what is needed to read
/// it back; `fsync` where there is no `fdatasync`), `rename` it over the target (atomic), `fsync` the directory
/// (which makes the rename durable). A failure at any step before the rename leaves the old file as it was and
/// removes the temporary file.
public enum DurableFile {
    /// Where `write`'s body puts the bytes.
    public struct Output {
        let fd: Int32
        let path: String

        public func write(_ bytes: UnsafeRawBufferPointer) throws(DurableWriteError) {
            var offset = 0
            while offset < bytes.count {
                guard let base = bytes.baseAddress else { return }
                let n = systemWrite(fd, base + offset, bytes.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    throw DurableWriteError(operation: "write", path: path, code: errno)
                }
                offset += n
            }
        }

        // (The buffers' `withUnsafe...Bytes` rethrow untyped errors: the result comes out as a value.)
        public func write(_ buffer: ByteBuffer) throws(DurableWriteError) {
            try buffer.withUnsafeReadableBytes { bytes in Result { () throws(DurableWriteError) in try write(bytes) } }.get()
        }

        public func write(_ bytes: [UInt8]) throws(DurableWriteError) {
            try bytes.withUnsafeBytes { bytes in Result { () throws(DurableWriteError) in try write(bytes) } }.get()
        }

        public func write(_ data: Data) throws(DurableWriteError) {
            try data.withUnsafeBytes { bytes in Result { () throws(DurableWriteError) in try write(bytes) } }.get()
        }
    }

    /// Replaces (or creates) `path` with what `body` writes.
    ///
    /// - `temporary`: where the new file is written first; in `path`'s file system. Default: `.NAME.RANDOM.tmp`
    ///   beside `path`.
    /// - `reusing`: an old file in the same file system to overwrite (and cut to length) instead of creating one;
    ///   it is renamed to `temporary` first. The spool recycles delivered messages' files this way, since creating
    ///   a file costs an inode allocation. When it is gone, a new file is created.
    /// - `syncDirectory`: false when the caller fsyncs `path`'s directory itself, once for many files (the spool's
    ///   group commit); until then the rename may be lost in a power loss.
    public static func write(to path: String, temporary: String? = nil, reusing: String? = nil, permissions: mode_t = 0o600,
                             syncDirectory: Bool = true, _ body: (Output) throws(DurableWriteError) -> Void) throws(DurableWriteError) {
        let writer = try Writer(temporary: temporary ?? defaultTemporary(for: path), reusing: reusing, permissions: permissions)
        do throws(DurableWriteError) {
            try body(writer.output)
        } catch {
            writer.abort()
            throw error
        }
        try writer.commit(to: path, syncDirectory: syncDirectory)
    }

    /// `write` in steps, for a file whose bytes arrive over time (a message streamed from a client): open,
    /// `output.write` as often as needed, then `commit` (the same fdatasync, rename and directory fsync as
    /// `write`) or `abort` (the temporary file is removed). Not thread-safe: one caller at a time, in order.
    public final class Writer: @unchecked Sendable {
        public let temporary: String
        public let output: Output
        private let reused: Bool
        private var isOpen = true

        /// Creates the temporary file (or takes over `reusing`, see `write`).
        public init(temporary: String, reusing: String? = nil, permissions: mode_t = 0o600) throws(DurableWriteError) {
            var fd: Int32 = -1
            var reused = false
            if let reusing, rename(reusing, temporary) == 0 {
                fd = open(temporary, O_WRONLY | O_CLOEXEC)
                if fd < 0 { unlink(temporary) } else { reused = true }
            }
            if fd < 0 { fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, permissions) }
            // Nothing to clean up: an existing file of that name (EEXIST) is another writer's.
            guard fd >= 0 else { throw DurableWriteError(operation: "open", path: temporary, code: errno) }
            self.temporary = temporary
            self.reused = reused
            self.output = Output(fd: fd, path: temporary)
        }

        deinit { abort() }

        /// Overwrites bytes already written at `offset` (a header whose lengths are known only at the end).
        public func overwrite(_ bytes: [UInt8], at offset: Int) throws(DurableWriteError) {
            let failure: Int32? = bytes.withUnsafeBytes { raw in
                var done = 0
                while done < raw.count, let base = raw.baseAddress {
                    let n = pwrite(output.fd, base + done, raw.count - done, off_t(offset + done))
                    if n < 0 {
                        if errno == EINTR { continue }
                        return errno
                    }
                    done += n
                }
                return nil
            }
            if let failure { throw DurableWriteError(operation: "pwrite", path: temporary, code: failure) }
        }

        /// fdatasync, rename to `path`, and (unless the caller does it for many files) fsync of `path`'s directory.
        /// On a failure the temporary file is removed.
        public func commit(to path: String, syncDirectory: Bool = true) throws(DurableWriteError) {
            guard isOpen else { throw DurableWriteError(operation: "commit", path: temporary, code: EBADF) }
            isOpen = false
            let fd = output.fd
            do throws(DurableWriteError) {
                if reused {
                    let length = lseek(fd, 0, SEEK_CUR)
                    if length < 0 || ftruncate(fd, length) != 0 { throw DurableWriteError(operation: "ftruncate", path: temporary, code: errno) }
                }
                if syncData(fd) != 0 { throw DurableWriteError(operation: "fdatasync", path: temporary, code: errno) }
            } catch {
                close(fd)
                unlink(temporary)
                throw error
            }
            if close(fd) != 0 {
                let code = errno
                unlink(temporary)
                throw DurableWriteError(operation: "close", path: temporary, code: code)
            }
            if rename(temporary, path) != 0 {
                let code = errno
                unlink(temporary)
                throw DurableWriteError(operation: "rename", path: temporary, code: code)
            }
            if syncDirectory { try DurableFile.syncDirectory(DurableFile.directory(of: path)) }
        }

        /// Closes and removes the temporary file. Does nothing after `commit` or a first `abort`.
        public func abort() {
            guard isOpen else { return }
            isOpen = false
            close(output.fd)
            unlink(temporary)
        }
    }

    /// fsyncs a directory, which makes renames and removals in it durable.
    public static func syncDirectory(_ path: String) throws(DurableWriteError) {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw DurableWriteError(operation: "open", path: path, code: errno) }
        defer { close(fd) }
        if fsync(fd) != 0 { throw DurableWriteError(operation: "fsync", path: path, code: errno) }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }

    static func defaultTemporary(for path: String) -> String {
        let name = path.lastIndex(of: "/").map { String(path[path.index(after: $0)...]) } ?? path
        return directory(of: path) + "/.\(name).\(String(UInt64.random(in: 0...UInt64.max), radix: 36)).tmp"
    }

    /// `fdatasync` where there is one, else `fsync`: the data and what is needed to read it back.
    public static func syncData(_ fd: Int32) -> Int32 {
        #if os(Linux)
        return fdatasync(fd)
        #else
        return fsync(fd)
        #endif
    }
}

#if canImport(Glibc)
private let systemWrite = Glibc.write
#elseif canImport(Darwin)
private let systemWrite = Darwin.write
#endif
