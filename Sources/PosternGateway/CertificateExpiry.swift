import Foundation
import PosternCore
import Logging
import Prometheus
import ServiceLifecycle
import SwiftASN1
import X509

/// The certificates the gateway depends on, each file under one label: `server` (the listeners' chain),
/// `relay-client:<upstream>` (the chain presented to that upstream) and `ca:<upstream>` (the roots that upstream's
/// certificate is checked against). A file's expiry is its earliest certificate's: a chain stops working when any
/// link expires. A CA file of more than `bundleSize` certificates is a bundle (the system's, for Microsoft 365):
/// which of its roots matters is the upstream's to say, and such bundles keep expired roots, so it is not watched.
public struct WatchedCertificateFile: Sendable, Hashable {
    public var label: String
    public var file: String
    /// More certificates than this in a `ca:` file make it a bundle (see the type's comment).
    public static let bundleSize = 5

    /// A `ca:` file that is a bundle: its certificates are not watched one by one.
    public func isBundle(_ certificates: [Certificate]) -> Bool {
        label.hasPrefix("ca:") && certificates.count > Self.bundleSize
    }

    public init(label: String, file: String) {
        self.label = label
        self.file = file
    }

    /// The files of `configuration`, in a stable order.
    public static func all(in configuration: GatewayConfiguration) -> [WatchedCertificateFile] {
        var files: [WatchedCertificateFile] = []
        if let tls = configuration.tls { files.append(.init(label: "server", file: tls.certificateChain)) }
        if case .relay(_, let relay) = configuration.delivery {
            for upstream in relay.upstreams {
                files.append(.init(label: "relay-client:\(upstream.name)", file: upstream.certificateFile))
                files.append(.init(label: "ca:\(upstream.name)", file: upstream.caFile))
            }
        }
        return files
    }

    /// The file's certificates, in order.
    public func certificates() throws -> [Certificate] {
        let text = try String(contentsOfFile: file, encoding: .utf8)
        let certificates = try PEMDocument.parseMultiple(pemString: text).filter { $0.discriminator == "CERTIFICATE" }
            .map { try Certificate(derEncoded: $0.derBytes) }
        guard !certificates.isEmpty else { throw CertificateFileError(description: "\(file) holds no PEM certificate") }
        return certificates
    }

    /// The certificate that expires first.
    public func earliest() throws -> Certificate {
        guard let first = try certificates().min(by: { $0.notValidAfter < $1.notValidAfter }) else {
            throw CertificateFileError(description: "\(file) holds no PEM certificate")
        }
        return first
    }
}

struct CertificateFileError: Error, CustomStringConvertible {
    var description: String
}

extension GatewayMetrics {
    static var certificateExpiryName: MetricNameDescriptor {
        MetricNameDescriptor(namespace: "postern", metricName: "certificate_expiry_timestamp", unitName: "seconds",
                             helpText: "When the certificate expires (Unix time), by file: server, relay-client:<upstream>, ca:<upstream>.")
    }

    /// When the certificate file labelled `certificate` expires (its earliest certificate).
    public func setCertificateExpiry(certificate: String, notAfter: Date) {
        registry.makeGauge(descriptor: Self.certificateExpiryName, labels: [("certificate", certificate)]).set(notAfter.timeIntervalSince1970)
    }
}

extension AuditLog {
    /// A certificate is within `days` of its expiry (or past it): once per threshold per certificate.
    func certificateExpiry(label: String, file: String, subject: String, notAfter: Date, daysLeft: Int, threshold: Int?) {
        var fields: Logger.Metadata = ["certificate": "\(label)", "file": "\(file)", "subject": "\(subject)",
                                       "not_after": "\(ISO8601DateFormatter().string(from: notAfter))", "days_left": "\(daysLeft)"]
        if let threshold { fields["threshold_days"] = "\(threshold)" }
        event(threshold == nil ? "certificate_expired" : "certificate_expiring", fields)
    }
}

/// Watches the certificates' expiry: sets `postern_certificate_expiry_timestamp_seconds` for each file and writes an
/// audit warning when one comes within 30, 14 and 7 days of its end, and when it has ended: once each, not at every
/// check (a small state file remembers what was said, keyed by the certificate's expiry, so a renewed certificate
/// starts over and a restart does not repeat). Reads the files at every check: a renewal in place is seen.
public final class CertificateExpiryWatch: Service, Sendable {
    public static let thresholds = [30, 14, 7]
    let files: [WatchedCertificateFile]
    let metrics: GatewayMetrics
    let audit: AuditLog
    let stateFile: URL
    let interval: Duration
    let now: @Sendable () -> Date
    let logger: Logger

    public init(configuration: GatewayConfiguration, metrics: GatewayMetrics, audit: AuditLog, stateFile: URL,
                interval: Duration = .seconds(3600), now: @escaping @Sendable () -> Date = { Date() }, logger: Logger) {
        files = WatchedCertificateFile.all(in: configuration)
        self.metrics = metrics
        self.audit = audit
        self.stateFile = stateFile
        self.interval = interval
        self.now = now
        self.logger = logger
    }

    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                _ = self.check()
                try? await Task.sleep(for: self.interval)
            }
        }
    }

    /// Sets the gauges and writes the warnings now due; returns the keys of the warnings written.
    @discardableResult
    public func check() -> [String] {
        let at = now()
        let record = RememberedKeys(file: stateFile)
        var said = record.load()
        var written: [String] = []
        for watched in files {
            let certificate: Certificate
            do {
                let all = try watched.certificates()
                guard !watched.isBundle(all), let first = all.min(by: { $0.notValidAfter < $1.notValidAfter }) else { continue }
                certificate = first
            } catch {
                logger.warning("cannot read a certificate to watch its expiry", metadata: ["certificate": "\(watched.label)", "error": "\(error)"])
                continue
            }
            let notAfter = certificate.notValidAfter
            metrics.setCertificateExpiry(certificate: watched.label, notAfter: notAfter)
            let daysLeft = Int((notAfter.timeIntervalSince(at) / 86_400).rounded(.down))
            let prefix = "\(watched.label)|\(Int(notAfter.timeIntervalSince1970))|"
            if notAfter <= at {
                guard said.insert(prefix + "expired").inserted else { continue }
                written.append(prefix + "expired")
                audit.certificateExpiry(label: watched.label, file: watched.file, subject: certificate.subject.description, notAfter: notAfter,
                                        daysLeft: daysLeft, threshold: nil)
                logger.error("certificate expired", metadata: ["certificate": "\(watched.label)", "file": "\(watched.file)"])
                continue
            }
            // Every threshold already passed counts as said; only the nearest one is written.
            let due = Self.thresholds.filter { daysLeft < $0 }
            guard let nearest = due.min(), !said.contains(prefix + "\(nearest)") else { continue }
            for threshold in due { said.insert(prefix + "\(threshold)") }
            written.append(prefix + "\(nearest)")
            audit.certificateExpiry(label: watched.label, file: watched.file, subject: certificate.subject.description, notAfter: notAfter,
                                    daysLeft: daysLeft, threshold: nearest)
            logger.warning("certificate expires soon", metadata: ["certificate": "\(watched.label)", "days_left": "\(daysLeft)"])
        }
        if !written.isEmpty { record.save(said, what: "certificate expiry", logger: logger) }
        return written
    }
}
