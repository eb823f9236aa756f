import Foundation
import Logging
import PosternCore
import ServiceLifecycle

/// `audit.rotate.keep-days`: at start and every hour, rotates the audit file once its first line is from an earlier
/// day and deletes rotated files whose newest line is older than `keep-days` (GDPR storage limitation). Writes
/// rotate by size on their own.
struct AuditRetentionService: Service {
    let audit: AuditLog
    let logger: Logger
    var interval: Duration = .seconds(3600)

    func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                // Deleting and compressing files is blocking I/O: off the cooperative pool's threads' critical path,
                // but short (a handful of files an hour).
                for file in audit.maintain() {
                    logger.notice("audit file past keep-days deleted", metadata: ["file": "\(file)"])
                }
                try? await Task.sleep(for: interval)
            }
        }
    }
}
