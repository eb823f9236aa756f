import ArgumentParser
import Foundation

@main
struct Postern: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "postern",
        abstract: "A policy-enforcing SMTP submission gateway.",
        discussion: """
            Postern accepts mail on three kinds of endpoint: `submission` (STARTTLS required, AUTH against LDAP),
            `submissions` (implicit TLS) and `device` (plaintext, registered devices only, internal recipients only).
            """,
        version: PosternVersion.current,
        subcommands: [ServeCommand.self, CheckCommand.self, ConfigCommand.self, ExplainCommand.self, DevicesCommand.self, QueueCommand.self, ReportCommand.self, ProbeCommand.self, SinkCommand.self]
    )
}

/// The release this build is; bumped by hand when a release is tagged (`postern --version`).
enum PosternVersion {
    static let current = "0.9.0"
}

/// Every `--json` output of the CLI: pretty, sorted, snake_case keys (`effective_sunset`, `last_reason`), so `jq`
/// reads `.max_message_size` where the YAML says `max-message-size`; absent values are left out.
func printJSON<T: Encodable>(_ value: T) throws {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
    encoder.keyEncodingStrategy = .convertToSnakeCase
    print(String(decoding: try encoder.encode(value), as: UTF8.self))
}
