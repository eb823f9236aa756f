import ArgumentParser
import Foundation
import PosternCore
import PosternGateway

/// `postern config`: the effective configuration, like Postfix's `postconf` (all) and `postconf -n` (only what the
/// file sets). It is what `GatewayConfiguration.load` gives `postern serve`, rendered by
/// `GatewayConfiguration.effectiveSettings`, never a second reading of the file.
struct ConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config",
        abstract: "Print the effective configuration, defaults included, as KEY = VALUE lines (like postconf).",
        discussion: """
            Keys are postern.yaml's own, as paths: limits.max-message-size, listeners[0].listen, \
            delivery.relay.upstreams[0].auth.mechanism. Paths are shown made absolute, sizes as 25M, and a \
            listener's max-message-size as the one its sessions get. Secrets are never shown: only the file or \
            variable the configuration names for them.
            With -n, only the keys the file sets (like postconf -n). With KEY arguments, only those keys and the keys \
            under them (e.g. `postern config limits registration.contact`).
            Exit status: 0; 2 when the configuration has errors (listed as `postern check` lists them).
            """)

    @Option(name: .long, help: "The gateway configuration file (YAML). Default: $POSTERN_CONFIG or /etc/postern/postern.yaml.")
    var config: String?

    @Flag(name: .customShort("n"), help: "Only the keys set in the file.")
    var nonDefault = false

    @Argument(help: "Keys to show (a section shows every key under it).")
    var keys: [String] = []

    func run() throws {
        let path = ConfigPath.resolve(config)
        let configuration: GatewayConfiguration
        let text: String
        do {
            configuration = try GatewayConfiguration.load(path: path)
            text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
        } catch {
            for issue in error.issues { FileHandle.standardError.write(Data("\(issue.errorDescription)\n".utf8)) }
            FileHandle.standardError.write(Data("postern config: \(path) has \(error.issues.count) error\(error.issues.count == 1 ? "" : "s")\n".utf8))
            throw ExitCode(2)
        }
        let settings = configuration.effectiveSettings(fileText: text).filter { setting in
            (!nonDefault || setting.isSet) && (keys.isEmpty || keys.contains { Self.key(setting.key, isUnder: $0) })
        }
        if !keys.isEmpty, settings.isEmpty {
            FileHandle.standardError.write(Data("postern config: no such key: \(keys.joined(separator: ", "))\n".utf8))
            throw ExitCode(2)
        }
        for setting in settings { print("\(setting.key) = \(setting.value)") }
    }

    /// `limits.max-message-size` is under `limits` and itself; `listeners[0].listen` under `listeners` and `listeners[0]`.
    static func key(_ key: String, isUnder prefix: String) -> Bool {
        key == prefix || key.hasPrefix(prefix + ".") || key.hasPrefix(prefix + "[")
    }
}

/// Where the gateway's configuration file is: --config, else $POSTERN_CONFIG, else /etc/postern/postern.yaml
/// (what `postern serve` installed by docs/production.md reads).
enum ConfigPath {
    static func resolve(_ option: String?) -> String {
        option ?? ProcessInfo.processInfo.environment["POSTERN_CONFIG"].flatMap { $0.isEmpty ? nil : $0 } ?? "/etc/postern/postern.yaml"
    }
}
