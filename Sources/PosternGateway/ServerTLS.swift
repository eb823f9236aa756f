import NIOConcurrencyHelpers
import NIOSSL

/// Server-side TLS for the submission endpoints: TLS 1.2 and 1.3 only, Mozilla "intermediate" suites.
public enum ServerTLS {
    /// Mozilla intermediate (v5.7) TLS 1.2 suites that BoringSSL offers: ECDHE with AES-GCM or ChaCha20-Poly1305.
    /// TLS 1.3 suites are fixed by BoringSSL (AES-GCM, ChaCha20-Poly1305).
    public static let intermediateCipherSuites = [
        "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
    ].joined(separator: ":")

    public static func makeContext(_ files: TLSFiles) throws -> NIOSSLContext {
        let chain = try NIOSSLCertificate.fromPEMFile(files.certificateChain).map { NIOSSLCertificateSource.certificate($0) }
        let key = try NIOSSLPrivateKey(file: files.privateKey, format: .pem)
        var configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .privateKey(key))
        configuration.minimumTLSVersion = .tlsv12
        configuration.maximumTLSVersion = .tlsv13
        configuration.cipherSuites = intermediateCipherSuites
        return try NIOSSLContext(configuration: configuration)
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

extension TLSVersion {
    var displayName: String {
        switch self {
        case .tlsv1: return "TLSv1"
        case .tlsv11: return "TLSv1.1"
        case .tlsv12: return "TLSv1.2"
        case .tlsv13: return "TLSv1.3"
        }
    }
}
