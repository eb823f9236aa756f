import ArgumentParser

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
        subcommands: [ServeCommand.self, CheckCommand.self, ExplainCommand.self, DevicesCommand.self, QueueCommand.self, ReportCommand.self, ProbeCommand.self, SinkCommand.self]
    )
}

/// The release this build is; bumped by hand when a release is tagged (`postern --version`).
enum PosternVersion {
    static let current = "0.9.0"
}
