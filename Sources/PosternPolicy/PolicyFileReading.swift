#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

// The file system calls of loading: directory listings, `stat` fingerprints and bounded reads of UTF-8 text,
// relative to directory descriptors (`openat`, `fstatat`) so that a reload of devices.d resolves each path
// once. Device files are regular files: symbolic links, FIFOs and devices in devices.d are refused, not followed.

/// A file's identity and version as `stat` gives them; a file whose fingerprint is unchanged was not written since,
/// unless it was written within the file system's timestamp granularity of the last look (`PolicyClock.isRecent`).
struct FileFingerprint: Sendable, Hashable {
    var inode: UInt64
    var size: Int64
    var modifiedSeconds: Int64
    var modifiedNanoseconds: Int64

    init(_ info: stat) {
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        #if canImport(Darwin)
        modifiedSeconds = Int64(info.st_mtimespec.tv_sec)
        modifiedNanoseconds = Int64(info.st_mtimespec.tv_nsec)
        #else
        modifiedSeconds = Int64(info.st_mtim.tv_sec)
        modifiedNanoseconds = Int64(info.st_mtim.tv_nsec)
        #endif
    }

    /// Text given in memory (an edit being validated): matches no file, so the next scan reads the file.
    static let inMemory = FileFingerprint(inode: 0, size: -1)

    private init(inode: UInt64, size: Int64) {
        self.inode = inode
        self.size = size
        modifiedSeconds = 0
        modifiedNanoseconds = 0
    }
}

enum PolicyClock {
    /// Timestamps are as coarse as a clock tick here, and as a second or two elsewhere: a file modified this
    /// close to a scan could be modified again with the same size and time, so it is read again at the next one.
    static let granularitySeconds: Int64 = 2

    static func now() -> Int64 {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Int64(ts.tv_sec)
    }

    static func isRecent(_ fingerprint: FileFingerprint, scanStart: Int64) -> Bool {
        fingerprint.modifiedSeconds >= scanStart - granularitySeconds
    }
}

/// Why a file could not be read as policy text.
enum FileReadProblem: Error, Sendable, Equatable {
    case missing
    case notRegular
    case tooLarge(limit: Int)
    case notUTF8
    case system(String)

    var message: String {
        switch self {
        case .missing: return "file does not exist"
        case .notRegular: return "not a regular file (a symbolic link, directory or device)"
        case .tooLarge(let limit): return "file is larger than \(limit / 1024) KiB"
        case .notUTF8: return "file is not valid UTF-8"
        case .system(let reason): return "cannot read file: \(reason)"
        }
    }
}

enum PolicyFileReading {
    /// A device file is a dozen lines; a much larger one is a mistake, and reading it would only cost time.
    static let deviceFileLimit = 64 << 10
    /// policy.yaml and departments.yaml.
    static let policyFileLimit = 8 << 20

    static func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

    /// Opens a directory (relative to `parent`, or a path when `parent` is `AT_FDCWD`) without following a final symlink.
    static func openDirectory(_ name: String, in parent: Int32 = AT_FDCWD) -> Result<Int32, FileReadProblem> {
        let fd = openat(parent, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { return .failure(.missing) }
            if code == ENOTDIR || code == ELOOP { return .failure(.notRegular) }
            return .failure(.system(errnoText(code)))
        }
        return .success(fd)
    }

    struct Entry {
        var name: String
        /// `DT_DIR`, `DT_REG`, ... or `DT_UNKNOWN` when the file system does not say.
        var type: UInt8
    }

    /// The names in a directory other than hidden ones (`.`, `..`, temporary files, the lock); does not close `fd`.
    static func list(_ fd: Int32) -> Result<[Entry], FileReadProblem> {
        let copy = dup(fd)
        guard copy >= 0, let dir = fdopendir(copy) else {
            let reason = errnoText()
            return .failure(.system(reason))
        }
        defer { closedir(dir) }
        rewinddir(dir)
        var entries: [Entry] = []
        while true {
            errno = 0
            guard let entry = readdir(dir) else {
                if errno != 0 { return .failure(.system(errnoText())) }
                return .success(entries)
            }
            let (name, hidden) = withUnsafePointer(to: &entry.pointee.d_name) { pointer in
                pointer.withMemoryRebound(to: CChar.self, capacity: MemoryLayout.size(ofValue: entry.pointee.d_name)) { c in
                    (String(cString: c), c.pointee == CChar(UInt8(ascii: ".")))
                }
            }
            if !hidden { entries.append(Entry(name: name, type: entry.pointee.d_type)) }
        }
    }

    /// `fstatat` without following a symlink.
    static func status(_ name: String, in directory: Int32) -> Result<stat, FileReadProblem> {
        var info = stat()
        guard fstatat(directory, name, &info, AT_SYMLINK_NOFOLLOW) == 0 else {
            let code = errno
            return .failure(code == ENOENT ? .missing : .system(errnoText(code)))
        }
        return .success(info)
    }

    static func isRegularFile(_ info: stat) -> Bool { (info.st_mode & S_IFMT) == S_IFREG }
    static func isDirectory(_ info: stat) -> Bool { (info.st_mode & S_IFMT) == S_IFDIR }

    /// The whole of a regular file as UTF-8 text, at most `limit` bytes, and the fingerprint of what was read.
    static func readText(_ name: String, in directory: Int32 = AT_FDCWD, limit: Int, followSymlinks: Bool = false)
        -> Result<(text: String, fingerprint: FileFingerprint), FileReadProblem>
    {
        // O_NONBLOCK: opening a FIFO placed where a file should be must not wait for a writer.
        let fd = openat(directory, name, O_RDONLY | O_CLOEXEC | O_NONBLOCK | (followSymlinks ? 0 : O_NOFOLLOW))
        guard fd >= 0 else {
            let code = errno
            if code == ENOENT { return .failure(.missing) }
            if code == ELOOP { return .failure(.notRegular) }
            return .failure(.system(errnoText(code)))
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return .failure(.system(errnoText())) }
        guard isRegularFile(info) else { return .failure(.notRegular) }
        guard info.st_size <= limit else { return .failure(.tooLarge(limit: limit)) }
        // One byte more than the limit: a file that grew since fstat is still caught.
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size) + 1)
        var count = 0
        while count < bytes.count {
            let n = bytes.withUnsafeMutableBytes { buffer in
                // Not empty: `count < bytes.count`.
                read(fd, buffer.baseAddress.map { $0 + count }, buffer.count - count)
            }
            if n < 0 {
                if errno == EINTR { continue }
                return .failure(.system(errnoText()))
            }
            if n == 0 { break }
            count += n
            if count > limit { return .failure(.tooLarge(limit: limit)) }
            if count == bytes.count { bytes.append(contentsOf: repeatElement(0, count: 4096)) }
        }
        guard let text = String(validating: bytes[..<count], as: UTF8.self) else { return .failure(.notUTF8) }
        return .success((text, FileFingerprint(info)))
    }
}
