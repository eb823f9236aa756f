#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Which entries of devices.d changed since the last look, as the kernel reports them (inotify, on Linux).
///
/// A full scan of devices.d `stat`s every device file: with 100,000 files that is 100,000 system calls and
/// path lookups, about 0.3–1 s on the 2-core machine of BENCHMARKS.md, far more than a reload after one
/// changed device may take (50 ms). With a watch on each department directory, a reload looks at the entries
/// the kernel named (created, written, closed after writing, renamed, removed, attributes changed), with the
/// same per-file fingerprint as a full scan, and at nothing else.
///
/// What events cannot name asks for a full scan instead (`Changes.everything`): the first load, lost events
/// (the kernel's queue overflowed), a department directory added, removed or renamed, devices.d itself
/// replaced, or devices.d no longer the directory that was watched (a symbolic link on the way to it changed).
/// Where inotify is missing, or a watch cannot be had (the per-user limit), every load is a full scan.
final class DeviceFilesWatch {
    enum Changes: Equatable {
        case everything
        /// Entry names by department directory.
        case entries([String: Set<String>])
    }

    #if os(Linux)
    private let fd: Int32
    private let devicesName: String
    /// Watch descriptors: the policy directory's, devices.d's, and each department directory's with its name.
    private let policyWatch: Int32
    private var devicesWatch: Int32 = -1
    private var departmentWatches: [Int32: String] = [:]
    /// devices.d's device and inode when the watch was made.
    private var identity: (device: UInt64, inode: UInt64)?
    private let devicesPath: String

    private static let structureMask = UInt32(IN_CREATE) | UInt32(IN_DELETE) | UInt32(IN_MOVED_FROM) | UInt32(IN_MOVED_TO)
        | UInt32(IN_DELETE_SELF) | UInt32(IN_MOVE_SELF) | UInt32(IN_ONLYDIR)
    private static let departmentMask = structureMask | UInt32(IN_CLOSE_WRITE) | UInt32(IN_MODIFY) | UInt32(IN_ATTRIB) | UInt32(IN_DONT_FOLLOW)
    /// Events after which the watches no longer cover what they should.
    private static let lostMask = UInt32(IN_Q_OVERFLOW) | UInt32(IN_IGNORED) | UInt32(IN_DELETE_SELF) | UInt32(IN_MOVE_SELF) | UInt32(IN_UNMOUNT)

    private init(fd: Int32, policyWatch: Int32, devicesName: String, devicesPath: String) {
        self.fd = fd
        self.policyWatch = policyWatch
        self.devicesName = devicesName
        self.devicesPath = devicesPath
    }

    deinit { close(fd) }

    /// Watches the policy directory, its devices directory and each directory in that, before a full scan reads them
    /// (so that nothing changed between the scan and the watch goes unseen); nil when no watch can be had.
    static func start(directory: String, devicesName: String) -> DeviceFilesWatch? {
        let fd = inotify_init1(Int32(IN_NONBLOCK) | Int32(IN_CLOEXEC))
        guard fd >= 0 else { return nil }
        let policyWatch = inotify_add_watch(fd, directory, structureMask)
        guard policyWatch >= 0 else {
            close(fd)
            return nil
        }
        let devicesPath = directory.hasSuffix("/") ? directory + devicesName : directory + "/" + devicesName
        let watch = DeviceFilesWatch(fd: fd, policyWatch: policyWatch, devicesName: devicesName, devicesPath: devicesPath)
        // devices.d missing (or not a directory): its appearance is an event on the policy directory.
        watch.devicesWatch = inotify_add_watch(fd, devicesPath, structureMask | UInt32(IN_DONT_FOLLOW))
        guard watch.devicesWatch >= 0 else { return watch }
        watch.identity = identity(devicesPath)
        guard case .success(let top) = PolicyFileReading.openDirectory(devicesPath) else { return watch }
        defer { close(top) }
        guard case .success(let entries) = PolicyFileReading.list(top) else { return nil }
        for entry in entries {
            // Only directories are departments; anything else is an error the scan reports, and its change an event here.
            let wd = inotify_add_watch(fd, devicesPath + "/" + entry.name, departmentMask)
            if wd >= 0 {
                watch.departmentWatches[wd] = entry.name
            } else if errno != ENOTDIR && errno != ENOENT && errno != ELOOP {
                return nil  // out of watches (fs.inotify.max_user_watches), or no permission: full scans it is
            }
        }
        return watch
    }

    /// What changed since the last call (or since `start`).
    func changes() -> Changes {
        var names: [String: Set<String>] = [:]
        var everything = false
        let size = 64 << 10
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: size, alignment: 8)
        defer { buffer.deallocate() }
        reading: while true {
            let n = read(fd, buffer.baseAddress, size)
            if n < 0 {
                if errno == EINTR { continue }
                if errno != EAGAIN && errno != EWOULDBLOCK { everything = true }
                break
            }
            guard n > 0 else { break }
            // struct inotify_event: wd (Int32), mask, cookie, len (UInt32), then len bytes of NUL-padded name.
            var offset = 0
            while offset + 16 <= n {
                let wd = buffer.loadUnaligned(fromByteOffset: offset, as: Int32.self)
                let mask = buffer.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)
                let length = Int(buffer.loadUnaligned(fromByteOffset: offset + 12, as: UInt32.self))
                let nameStart = offset + 16
                guard length <= n - nameStart else {
                    everything = true
                    break reading
                }
                let nameBytes = UnsafeRawBufferPointer(rebasing: buffer[nameStart..<(nameStart + length)])
                let name = String(decoding: nameBytes.prefix { $0 != 0 }, as: UTF8.self)
                offset = nameStart + length
                if mask & Self.lostMask != 0 {
                    everything = true
                } else if let department = departmentWatches[wd] {
                    // Hidden names are the lock and temporary files, which scans pass by; a rename of one into place is an event of its new name.
                    if !name.isEmpty && !name.hasPrefix(".") { names[department, default: []].insert(name) }
                } else if wd == devicesWatch {
                    if !name.hasPrefix(".") { everything = true }
                } else if wd == policyWatch {
                    if name == devicesName { everything = true }
                } else {
                    everything = true
                }
            }
        }
        if !everything, devicesWatch >= 0, let identity, let now = Self.identity(devicesPath), now == identity {
            return .entries(names)
        }
        return .everything
    }

    private static func identity(_ path: String) -> (device: UInt64, inode: UInt64)? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return (UInt64(info.st_dev), UInt64(info.st_ino))
    }
    #else
    static func start(directory: String, devicesName: String) -> DeviceFilesWatch? { nil }

    func changes() -> Changes { .everything }
    #endif
}
