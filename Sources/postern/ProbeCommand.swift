import ArgumentParser
import Foundation
import NIOPosix
import PosternGateway
import PosternRelay

/// `postern probe UPSTREAM`: what the relay would meet at an upstream, without sending mail.
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Connect to an upstream as the relay does and report what it offers; sends no mail.",
        discussion: """
            Connects to the upstream named in postern.yaml, starts TLS (STARTTLS or implicit) with the relay's client \
            certificate, checks the upstream's certificate and name as the relay does, says EHLO and, when the upstream \
            has an auth: block, authenticates (fetching an OAuth token for xoauth2). Prints the upstream's certificate \
            (subject, issuer, names, expiry), the TLS version, the EHLO extensions and the AUTH result, then QUITs. \
            Exit status 0 when all of it worked, 1 otherwise.
            """)

    @Argument(help: "The upstream's name (relay.upstreams[].name).") var upstream: String
    @Option(name: .long, help: "The gateway configuration file (YAML).") var config: String = "policies/postern.yaml"

    func run() async throws {
        let configuration: GatewayConfiguration
        do {
            configuration = try GatewayConfiguration.load(path: config)
        } catch {
            for issue in error.issues { print(issue) }
            throw ExitCode(1)
        }
        guard case .relay(_, let relay) = configuration.delivery else {
            print("\(config): no relay is configured (delivery is an outbox)")
            throw ExitCode(1)
        }
        guard let upstream = relay.upstreams.first(where: { $0.name == upstream }) else {
            print("\(config): no upstream named '\(self.upstream)' (upstreams: \(relay.upstreams.map(\.name).joined(separator: ", ")))")
            throw ExitCode(1)
        }
        print("upstream \(upstream.name): \(upstream.host):\(upstream.port), \(upstream.tls.rawValue), certificate name \(upstream.serverName)")
        let report = await UpstreamProbe.run(upstream, hostname: relay.hostname, group: MultiThreadedEventLoopGroup.singleton)
        for line in Self.lines(report, now: Date()) { print(line) }
        if !report.succeeded { throw ExitCode(1) }
    }

    static func lines(_ report: UpstreamProbeReport, now: Date) -> [String] {
        var lines: [String] = []
        if let failure = report.setupFailure {
            lines.append("setup failed: \(failure)")
            lines.append("no mail sent")
            return lines
        }
        lines.append("TLS: \(report.tlsVersion ?? "unknown version"), client certificate \(report.upstream.certificateFile)")
        if let certificate = report.certificate {
            let days = Int((certificate.notAfter.timeIntervalSince(now) / 86_400).rounded(.down))
            lines.append("upstream certificate: subject \(certificate.subject)")
            lines.append("  issuer \(certificate.issuer)")
            lines.append("  names \(certificate.alternativeNames.isEmpty ? "(none)" : certificate.alternativeNames.joined(separator: ", "))")
            lines.append("  expires \(ISO8601DateFormatter().string(from: certificate.notAfter)) (\(days < 0 ? "expired" : "in \(days) days"))")
        }
        lines.append("EHLO extensions: \(report.extensions.isEmpty ? "(none)" : report.extensions.joined(separator: ", "))")
        switch report.auth {
        case nil: lines.append("AUTH: not configured (the client certificate is the credential)")
        case .success(let reply)?: lines.append("AUTH \(report.upstream.auth?.mechanism ?? "") as \(report.upstream.auth?.username ?? ""): \(reply)")
        case .failure(let error)?: lines.append("AUTH failed: \(error)")
        }
        lines.append("no mail sent")
        return lines
    }
}
