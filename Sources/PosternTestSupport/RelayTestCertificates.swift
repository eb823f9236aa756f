import Foundation

/// A set of development certificates made by `certs/make-dev-certs.sh` in a temp directory:
/// ca.pem, server.pem/key (localhost), client.pem/key, all from one fresh CA.
public struct RelayTestCertificates: Sendable {
    public let directory: String
    public var ca: String { directory + "/ca.pem" }
    public var serverCertificate: String { directory + "/server.pem" }
    public var serverKey: String { directory + "/server.key" }
    public var clientCertificate: String { directory + "/client.pem" }
    public var clientKey: String { directory + "/client.key" }

    /// Makes a fresh CA and certificates. Each call makes a different CA.
    public static func make(file: StaticString = #filePath) throws -> RelayTestCertificates {
        var root = URL(fileURLWithPath: "\(file)")
        while root.path != "/" && !FileManager.default.fileExists(atPath: root.appendingPathComponent("Package.swift").path) {
            root.deleteLastPathComponent()
        }
        let script = root.appendingPathComponent("certs/make-dev-certs.sh").path
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("postern-certs-\(UUID().uuidString)").path
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [script, directory]
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw NSError(domain: "RelayTestCertificates", code: Int(process.terminationStatus),
                          userInfo: [NSLocalizedDescriptionKey: "\(script) failed"])
        }
        return RelayTestCertificates(directory: directory)
    }
}
