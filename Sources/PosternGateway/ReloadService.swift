import Foundation
import Logging
import PosternPolicy
import ServiceLifecycle
import UnixSignals

/// Reloads policy (and TLS certificates) on SIGHUP, and policy when its files change.
public struct ReloadService: Service {
    let policies: PolicyStore
    let gateway: Gateway
    let logger: Logger

    public init(policies: PolicyStore, gateway: Gateway, logger: Logger) {
        self.policies = policies
        self.gateway = gateway
        self.logger = logger
    }

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await policies.watch() }
            group.addTask {
                for await _ in await UnixSignalsSequence(trapping: .sighup) {
                    policies.reload(reason: "SIGHUP")
                    gateway.reloadTLS()
                }
            }
            group.addTask { try? await gracefulShutdown() }
            await group.next()
            group.cancelAll()
        }
    }
}
