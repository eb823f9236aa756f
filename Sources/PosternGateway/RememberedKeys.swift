import Foundation
import Logging
import PosternCore

/// What a periodic job has already done, remembered across restarts: a JSON list of keys in one small file,
/// written durably (`DurableFile`). The sunset reminders and the certificate-expiry warnings keep theirs here,
/// so each reminder or warning goes out once.
struct RememberedKeys {
    let file: URL

    /// The keys remembered; none when the file is missing or unreadable (then everything is due again).
    func load() -> Set<String> {
        Set((try? JSONDecoder().decode([String].self, from: Data(contentsOf: file))) ?? [])
    }

    /// Writes `keys`, sorted. A failure is logged with `what`: done but not remembered, so a restart before the
    /// next successful write does those again.
    func save(_ keys: Set<String>, what: String, logger: Logger) {
        guard let data = try? JSONEncoder().encode(keys.sorted()) else { return }
        do {
            try DurableFile.write(to: file.path) { output throws(DurableWriteError) in try output.write(data) }
        } catch {
            logger.error("\(what) state not written", metadata: ["file": "\(file.path)", "error": "\(error)"])
        }
    }
}
