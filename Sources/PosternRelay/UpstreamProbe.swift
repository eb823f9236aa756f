import Foundation
import NIOCore
import NIOSSL
import X509

/// What `postern probe` found out about one upstream: the relay's own connection setup (TLS with the client
/// certificate, the name check, EHLO over TLS) and AUTH when configured, then QUIT. No mail is sent.
public struct UpstreamProbeReport: Sendable {
    /// The upstream's certificate as presented.
    public struct PeerCertificate: Sendable, Hashable {
        public var subject: String
        public var issuer: String
        /// `DNS:name` and `IP:address` entries of the subjectAltName extension.
        public var alternativeNames: [String]
        public var notAfter: Date
    }

    public var upstream: UpstreamConfiguration
    /// Where setup stopped, when it did (connection, TLS, name check, EHLO); nil when it got to EHLO over TLS.
    public var setupFailure: String?
    public var tlsVersion: String?
    public var certificate: PeerCertificate?
    /// The EHLO reply's lines over TLS after the first.
    public var extensions: [String] = []
    /// AUTH's outcome: nil when no AUTH is configured.
    public var auth: Result<String, UpstreamConnectionError>?

    /// Setup went through and AUTH, if configured, succeeded.
    public var succeeded: Bool {
        guard setupFailure == nil else { return false }
        if case .failure = auth { return false }
        return true
    }
}

public enum UpstreamProbe {
    /// Connects to `upstream` as the relay does, says EHLO as `hostname`, authenticates if configured and quits.
    public static func run(_ upstream: UpstreamConfiguration, hostname: String, group: EventLoopGroup) async -> UpstreamProbeReport {
        var report = UpstreamProbeReport(upstream: upstream)
        let context: NIOSSLContext
        do {
            context = try UpstreamConnection.makeTLSContext(upstream)
        } catch {
            report.setupFailure = "loading the certificates for \(upstream.name): \(error)"
            return report
        }
        let connection: UpstreamConnection
        do {
            connection = try await UpstreamConnection.connect(to: upstream, tlsContext: context, hostname: hostname, group: group)
        } catch {
            report.setupFailure = error.description
            return report
        }
        let channel = connection.channel
        let tls: (version: String?, der: [UInt8]?)? = try? await channel.eventLoop.submit {
            let handler = try channel.pipeline.syncOperations.handler(type: NIOSSLClientHandler.self)
            return (handler.tlsVersion.map(Self.name), try? handler.peerCertificate?.toDERBytes())
        }.get()
        report.tlsVersion = tls?.version
        if let der = tls?.der, let certificate = try? Certificate(derEncoded: der) {
            report.certificate = Self.describe(certificate)
        }
        report.extensions = connection.extensionLines
        if let auth = upstream.auth {
            do {
                let reply = try await connection.authenticate(with: UpstreamAuthenticator(auth: auth))
                report.auth = .success(reply.text)
            } catch {
                report.auth = .failure(error)
            }
        }
        await connection.quit()
        return report
    }

    static func describe(_ certificate: Certificate) -> UpstreamProbeReport.PeerCertificate {
        var names: [String] = []
        if let alternatives = try? certificate.extensions.subjectAlternativeNames {
            for name in alternatives {
                switch name {
                case .dnsName(let dns): names.append("DNS:\(dns)")
                case .ipAddress(let bytes): names.append("IP:\(ipText(Array(bytes.bytes)))")
                default: names.append("\(name)")
                }
            }
        }
        return .init(subject: certificate.subject.description, issuer: certificate.issuer.description, alternativeNames: names,
                     notAfter: certificate.notValidAfter)
    }

    static func ipText(_ bytes: [UInt8]) -> String {
        if bytes.count == 4 { return bytes.map(String.init).joined(separator: ".") }
        guard bytes.count == 16 else { return bytes.map { String($0, radix: 16) }.joined(separator: ":") }
        return stride(from: 0, to: 16, by: 2).map { String(UInt16(bytes[$0]) << 8 | UInt16(bytes[$0 + 1]), radix: 16) }.joined(separator: ":")
    }

    static func name(_ version: TLSVersion) -> String {
        switch version {
        case .tlsv1: return "TLS 1.0"
        case .tlsv11: return "TLS 1.1"
        case .tlsv12: return "TLS 1.2"
        case .tlsv13: return "TLS 1.3"
        }
    }
}
