import Foundation
import NIOConcurrencyHelpers
import NIOSSL
import Yams

/// A PEM certificate chain and its private key, as postern.yaml names them (`tls: { certificate, key }`).
public struct TLSFiles: Sendable, Hashable {
    public var certificateChain: String
    public var privateKey: String

    public init(certificateChain: String, privateKey: String) {
        self.certificateChain = certificateChain
        self.privateKey = privateKey
    }
}

/// Server-side TLS for every endpoint Postern serves (SMTP submission, the registration page): TLS 1.2 and 1.3
/// only, Mozilla "intermediate" suites.
public enum ServerTLS {
    /// Mozilla intermediate (v5.7) TLS 1.2 suites that BoringSSL offers: ECDHE with AES-GCM or ChaCha20-Poly1305.
    /// TLS 1.3 suites are fixed by BoringSSL (AES-GCM, ChaCha20-Poly1305).
    public static let intermediateCipherSuites = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    /// The server configuration for `files`: what the SMTP listeners and the registration page both use.
    public static func configuration(_ files: TLSFiles) throws -> TLSConfiguration {
        let chain = try NIOSSLCertificate.fromPEMFile(files.certificateChain).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: files.privateKey, format: .pem)
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.maximumTLSVersion = .tlsv13
        configuration.cipherSuites = intermediateCipherSuites
        return configuration
    }

    public static func makeContext(_ files: TLSFiles) throws -> NIOSSLContext {
        try NIOSSLContext(configuration: configuration(files))
    }

    /// `TLSv1.2`, `TLSv1.3`: how the audit log and the Received header name a version.
    public static func name(of version: TLSVersion) -> String {
        switch version {
        case .tlsv1: return "TLSv1"
        case .tlsv11: return "TLSv1.1"
        case .tlsv12: return "TLSv1.2"
        case .tlsv13: return "TLSv1.3"
        }
    }
}

/// The TLS context new handshakes use; swapped on reload so new connections see new certificates.
public final class TLSContextBox: Sendable {
    private let box: NIOLockedValueBox<NIOSSLContext?>

    public init(_ context: NIOSSLContext?) {
        box = NIOLockedValueBox(context)
    }

    public var current: NIOSSLContext? { box.withLockedValue { $0 } }

    public func replace(_ context: NIOSSLContext) {
        box.withLockedValue { $0 = context }
    }
}

extension ConfigReader {
    /// A `tls: { certificate, key }` section, both files readable now; nil with the issues recorded otherwise.
    public mutating func tlsFiles(_ node: Node, _ context: String) -> TLSFiles? {
        let map = mapping(node, known: ["certificate", "key"], context: context)
        let certificate = string(map["certificate"], "\(context).certificate")
        let key = string(map["key"], "\(context).key")
        if certificate == nil { issue(node, "\(context).certificate is missing", fix: "the path to the PEM certificate chain") }
        if key == nil { issue(node, "\(context).key is missing", fix: "the path to the PEM private key") }
        guard let certificate, let key else { return nil }
        let files = TLSFiles(certificateChain: resolve(certificate), privateKey: resolve(key))
        for (field, path) in [(map["certificate"], files.certificateChain), (map["key"], files.privateKey)]
        where !FileManager.default.isReadableFile(atPath: path) {
            issue(field, "cannot read \(path)", fix: "run certs/make-dev-certs.sh for development certificates")
        }
        return files
    }
}
