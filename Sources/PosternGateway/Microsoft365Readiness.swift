import Foundation
import PosternCore
import PosternPolicy
import SwiftASN1
import X509

/// One thing `postern check` found, with where it is and how to fix it.
public struct CheckFinding: Sendable, Hashable, CustomStringConvertible {
    public enum Severity: String, Sendable, Hashable {
        /// Mail will be refused or the gateway will not work as configured.
        case error
        /// Worth fixing; mail may still flow.
        case warning
        /// What the check could not see, said so that silence is not read as "all clear".
        case info
    }

    public var severity: Severity
    public var file: String
    /// 0 when the finding is about a whole file (a certificate).
    public var line: Int
    public var message: String
    public var fix: String?

    public var description: String {
        "\(file)\(line > 0 ? ":\(line)" : ""): \(severity.rawValue): \(message)" + (fix.map { " (fix: \($0))" } ?? "")
    }
}

/// Whether Microsoft 365 will take the gateway's mail, and whether its certificates will hold, checked offline from
/// the configuration and the policy (issue #17):
///
/// - for each upstream with `accepted-domains:`, Exchange Online's relay requirements (Exchange team blog,
///   2023-06-19): the relay client certificate's CN or a DNS subjectAltName must lie in an accepted domain (the
///   connector's `TlsSenderCertificateName`; a subdomain of an accepted domain counts), else `550 5.7.64
///   TenantAttribution`; and the MAIL FROM domains: every device sender's, and for directory users what can be
///   known offline, the policy's internal domains and the departments' domains (the addresses themselves come from
///   LDAP at AUTH time). A MAIL FROM domain must be an accepted domain itself (Exchange lists subdomains
///   separately). It is an error when the certificate does not attribute the mail either, else a warning;
/// - for every certificate file (server, each relay client, each upstream's CA file): a warning under 30 days to
///   expiry and an error once expired, for every certificate in the file (a CA file of more than five, a bundle such
///   as the system's, only gets an `info`: bundles keep expired roots); and for the server and relay-client
///   chains, that they lead to a root in the system's bundle or a CA file of the configuration (a warning if not:
///   the peer may still trust it, but it is worth a look).
public enum Microsoft365Readiness {
    public static let warningDays = 30
    static let systemBundle = "/etc/ssl/certs/ca-certificates.crt"

    public static func findings(configuration: GatewayConfiguration, policy: PolicySet, now: Date = Date()) -> [CheckFinding] {
        var findings: [CheckFinding] = []
        let files = WatchedCertificateFile.all(in: configuration)
        var roots: [Certificate] = (try? WatchedCertificateFile(label: "system", file: systemBundle).certificates()) ?? []
        for file in files where file.label.hasPrefix("ca:") { roots += (try? file.certificates()) ?? [] }
        for file in files { findings += certificateFindings(file, roots: roots, now: now) }
        if case .relay(_, let relay) = configuration.delivery {
            for upstream in relay.upstreams where !upstream.acceptedDomains.isEmpty {
                findings += acceptedDomainFindings(upstream: upstream.name, acceptedDomains: upstream.acceptedDomains,
                                                   clientCertificate: upstream.certificateFile, configuration: configuration, policy: policy)
            }
        }
        return findings
    }

    // MARK: Certificates

    static func certificateFindings(_ watched: WatchedCertificateFile, roots: [Certificate], now: Date) -> [CheckFinding] {
        let certificates: [Certificate]
        do {
            certificates = try watched.certificates()
        } catch {
            return [CheckFinding(severity: .error, file: watched.file, line: 0, message: "\(watched.label): cannot read the certificates: \(error)",
                                 fix: "a PEM file, leaf first")]
        }
        if watched.isBundle(certificates) {
            return [CheckFinding(severity: .info, file: watched.file, line: 0,
                                 message: "\(watched.label): a bundle of \(certificates.count) CA certificates, not checked one by one "
                                     + "(bundles keep expired roots); postern probe shows the upstream's certificate and its expiry")]
        }
        var findings: [CheckFinding] = []
        for certificate in certificates {
            let days = Int((certificate.notValidAfter.timeIntervalSince(now) / 86_400).rounded(.down))
            let when = ISO8601DateFormatter().string(from: certificate.notValidAfter)
            if certificate.notValidAfter <= now {
                findings.append(CheckFinding(severity: .error, file: watched.file, line: 0,
                                             message: "\(watched.label): \(certificate.subject) expired on \(when)", fix: "renew it"))
            } else if days < warningDays {
                findings.append(CheckFinding(severity: .warning, file: watched.file, line: 0,
                                             message: "\(watched.label): \(certificate.subject) expires on \(when), in \(days) days",
                                             fix: "renew it before then"))
            }
            if certificate.notValidBefore > now {
                findings.append(CheckFinding(severity: .error, file: watched.file, line: 0,
                                             message: "\(watched.label): \(certificate.subject) is not valid before \(ISO8601DateFormatter().string(from: certificate.notValidBefore))"))
            }
        }
        if !watched.label.hasPrefix("ca:"), let leaf = certificates.first, !leadsToRoot(leaf, intermediates: Array(certificates.dropFirst()), roots: roots) {
            findings.append(CheckFinding(severity: .warning, file: watched.file, line: 0,
                                         message: "\(watched.label): the chain of \(leaf.subject) does not lead to a root in \(systemBundle) or a ca-file of this configuration",
                                         fix: "put the intermediates after the leaf; Exchange Online takes only certificates from a public CA it trusts"))
        }
        return findings
    }

    /// Whether `certificate` is signed, through `intermediates`, by one of `roots` (issuer names and signatures; at most
    /// eight links, so a loop in a hostile file ends).
    static func leadsToRoot(_ certificate: Certificate, intermediates: [Certificate], roots: [Certificate], depth: Int = 0) -> Bool {
        guard depth < 8 else { return false }
        if roots.contains(where: { $0.subject == certificate.issuer && $0.publicKey.isValidSignature(certificate.signature, for: certificate) }) {
            return true
        }
        if roots.contains(certificate) { return true }
        return intermediates.contains { issuer in
            issuer != certificate && issuer.subject == certificate.issuer && issuer.publicKey.isValidSignature(certificate.signature, for: certificate)
                && leadsToRoot(issuer, intermediates: intermediates, roots: roots, depth: depth + 1)
        }
    }

    // MARK: Accepted domains

    /// `name` (a certificate name; `*.` stripped) is an accepted domain or lies under one.
    static func isWithin(_ name: String, _ accepted: [String]) -> Bool {
        var name = name.lowercased()
        if name.hasPrefix("*.") { name.removeFirst(2) }
        return accepted.contains { name == $0 || name.hasSuffix("." + $0) }
    }

    /// The certificate's CN values and DNS subjectAltNames, each once.
    static func names(of certificate: Certificate) -> [String] {
        let commonNames = certificate.subject.flatMap { $0 }.filter { $0.type == .RDNAttributeType.commonName }.map { $0.value.description }
        var dns: [String] = []
        if let alternatives = try? certificate.extensions.subjectAlternativeNames {
            for case .dnsName(let name) in alternatives { dns.append(name) }
        }
        var seen = Set<String>()
        return (commonNames + dns).filter { seen.insert($0.lowercased()).inserted }
    }

    static func acceptedDomainFindings(upstream: String, acceptedDomains: [String], clientCertificate: String,
                                       configuration: GatewayConfiguration, policy: PolicySet) -> [CheckFinding] {
        var findings: [CheckFinding] = []
        let accepted = acceptedDomains.joined(separator: ", ")
        var certificateAttributes = false
        if let leaf = try? WatchedCertificateFile(label: "relay-client:\(upstream)", file: clientCertificate).certificates().first {
            let names = names(of: leaf)
            certificateAttributes = names.contains { isWithin($0, acceptedDomains) }
            if !certificateAttributes {
                findings.append(CheckFinding(
                    severity: .error, file: clientCertificate, line: 0,
                    message: "relay-client:\(upstream): the certificate's names (\(names.joined(separator: ", "))) are in none of the accepted domains (\(accepted)); "
                        + "Exchange Online refuses relayed mail with 550 5.7.64 TenantAttribution",
                    fix: "a certificate whose CN or a DNS subjectAltName is in an accepted domain, and that name as the connector's TlsSenderCertificateName"))
            }
        }
        let severity: CheckFinding.Severity = certificateAttributes ? .warning : .error
        let consequence = certificateAttributes
            ? "Exchange Online relays it on the strength of the certificate, but it is not the tenant's own domain"
            : "and the certificate does not attribute the mail to the tenant either: 550 5.7.64"
        for device in policy.devices {
            let devicesFile = device.file(in: configuration.policyDirectory)
            var named = Set<String>()
            for sender in device.senders {
                let domain: String
                switch sender {
                case .address(_, let name): domain = name.lowercased()
                case .domain(let pattern): domain = pattern.domain.lowercased()
                }
                guard !acceptedDomains.contains(domain), named.insert(domain).inserted else { continue }
                findings.append(CheckFinding(severity: severity, file: devicesFile, line: device.line,
                                             message: "device \(device.id): sender domain \(domain) is not an accepted domain of upstream \(upstream) (\(accepted)); \(consequence)",
                                             fix: "add \(domain) to the tenant's accepted domains and to accepted-domains, or register the device with a sender in one"))
            }
        }
        let policyFile = URL(fileURLWithPath: configuration.policyDirectory).appendingPathComponent(PolicyLoader.policyFile).path
        let departmentsFile = URL(fileURLWithPath: configuration.policyDirectory).appendingPathComponent(PolicyLoader.departmentsFile).path
        var userDomains: [(String, String)] = policy.internalDomains.map { ($0.domain, policyFile) }
        for department in policy.departments.values.sorted(by: { $0.id < $1.id }) {
            userDomains += department.domains.map { ($0.domain, departmentsFile) }
        }
        var seen = Set<String>()
        for (domain, file) in userDomains where seen.insert(domain).inserted && !acceptedDomains.contains(domain) {
            findings.append(CheckFinding(severity: severity, file: file, line: 0,
                                         message: "directory users' domain \(domain) is not an accepted domain of upstream \(upstream) (\(accepted)); \(consequence)",
                                         fix: "add \(domain) to the tenant's accepted domains and to accepted-domains"))
        }
        findings.append(CheckFinding(severity: .info, file: configuration.file, line: 0,
                                     message: "upstream \(upstream): directory users' own addresses come from LDAP at AUTH time and are not checked here; "
                                         + "checked instead: the internal domains and the departments' domains, which their addresses are expected to be in"))
        return findings
    }
}
