import Foundation
import NIOConcurrencyHelpers
import PosternCore
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which queue entries are being delivered right now, kept in a file so that the next start knows
/// which deliveries the process died in.
///
/// Postfix survives a delivery agent that crashes on a message because every delivery is a process
/// of its own; in Postern a trap ends the gateway. So a message that crashed delivery must not be
/// delivered again and again, taking every listener down each time (the crash loop of a duplicate
/// recipient): the relay marks an entry here before it works on it and clears the mark after, and
/// recovery counts the marks it finds (see `SpoolRecovery`). An entry that was marked at two deaths
/// is held.
///
/// The file is a row of fixed slots, one per delivery in flight, written with `pwrite` and never
/// fsynced: what a process crash (trap, SIGKILL, OOM kill) must leave behind is in the page cache,
/// which outlives the process. Only a power loss can drop a mark, and a power loss is no evidence
/// against a message. Two small writes per delivery, no fsync: nothing on the hot path.
///
/// The file is also the spool's owner lock: a second gateway on the same spool is refused (flock),
/// since its marks would mix with ours.
final class DeliveryLedger: Sendable {
    static let slotSize = 80
    static let fileName = "delivering"

    /// The file, and the slots: free ones below `count` for reuse. -1 once closed.
    private let file: NIOLockedValueBox<(fd: Int32, free: [Int], count: Int)>

    /// The ids that were marked when the previous owner stopped: it died delivering them.
    let interrupted: [String]

    /// Opens and locks the ledger; reads the marks a previous process left, then clears them.
    init(path: String) throws(SpoolError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .unwritable("open \(path): \(String(cString: strerror(errno)))") }
        while flock(fd, LOCK_EX | LOCK_NB) != 0 {
            if errno == EINTR { continue }
            let reason = errno == EWOULDBLOCK ? "the spool is in use by another running postern (\(path) is locked)" : String(cString: strerror(errno))
            _ = systemClose(fd)
            throw .unwritable(reason)
        }
        var ids: [String] = []
        var st = stat()
        if fstat(fd, &st) == 0, st.st_size > 0, st.st_size <= 1 << 20 {
            var bytes = [UInt8](repeating: 0, count: Int(st.st_size))
            let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { ids = Self.parse(bytes.prefix(n)) }
        }
        interrupted = ids
        if ftruncate(fd, 0) != 0 {
            _ = systemClose(fd)
            throw .unwritable("truncate \(path): \(String(cString: strerror(errno)))")
        }
        file = NIOLockedValueBox((fd, [], 0))
    }

    deinit { close() }

    /// Releases the file and its lock (at shutdown, with no delivery in flight).
    func close() {
        file.withLockedValue { file in
            if file.fd >= 0 { _ = systemClose(file.fd) }
            file.fd = -1
        }
    }

    /// The ids in a ledger's bytes: each slot holds an id and a newline, or blanks. Anything that is
    /// not a valid queue id (a torn write, a foreign file) is ignored.
    static func parse<Bytes: Collection>(_ bytes: Bytes) -> [String] where Bytes.Element == UInt8 {
        var ids: [String] = []
        var seen = Set<String>()
        for line in bytes.split(separator: UInt8(ascii: "\n")) {
            let text = String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespaces)
            guard QueueID.isValid(text), seen.insert(text).inserted else { continue }
            ids.append(text)
        }
        return ids
    }

    func mark(_ id: String) -> DeliveryMark {
        file.withLockedValue { file in
            let slot: Int
            if let free = file.free.popLast() {
                slot = free
            } else {
                slot = file.count
                file.count += 1
            }
            Self.write(file.fd, slot, id)
            return DeliveryMark(slot: slot)
        }
    }

    func clear(_ mark: DeliveryMark) {
        file.withLockedValue { file in
            Self.write(file.fd, mark.slot, "")
            file.free.append(mark.slot)
        }
    }

    /// A failed write loses a mark, which only matters if the process then dies in that delivery.
    private static func write(_ fd: Int32, _ slot: Int, _ id: String) {
        guard fd >= 0 else { return }
        // An id is at most 64 bytes (`QueueID.isValid`); the slot is padded with spaces and ends in a newline.
        var bytes = Array(id.utf8.prefix(slotSize - 1))
        bytes.append(contentsOf: repeatElement(UInt8(ascii: " "), count: slotSize - 1 - bytes.count))
        bytes.append(UInt8(ascii: "\n"))
        let offset = off_t(slot) * off_t(slotSize)
        _ = bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, $0.count, offset) }
    }
}

/// One delivery's mark in the `DeliveryLedger`, from `Spool.beginDelivery` to `Spool.endDelivery`.
public struct DeliveryMark: Sendable {
    fileprivate let slot: Int
}

#if canImport(Glibc)
private let systemClose = Glibc.close
#else
private let systemClose = Darwin.close
#endif
