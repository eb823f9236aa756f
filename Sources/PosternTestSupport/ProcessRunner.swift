import Foundation

/// A child process for tests, killed when stopped or released.
public final class ProcessRunner: @unchecked Sendable {
    public let process = Process()
    public let outputPath: String

    /// Starts `executable` with `arguments`; stdout and stderr go to a temp file (see `output`).
    public init(_ executable: String, _ arguments: [String], environment: [String: String]? = nil) throws {
        outputPath = FileManager.default.temporaryDirectory.appendingPathComponent("postern-proc-\(UUID().uuidString).log").path
        _ = FileManager.default.createFile(atPath: outputPath, contents: nil)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: outputPath))
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        if let environment { process.environment = environment }
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
    }

    public var output: String { (try? String(contentsOfFile: outputPath, encoding: .utf8)) ?? "" }
    public var isRunning: Bool { process.isRunning }

    public func stop() {
        guard process.isRunning else { return }
        let pid = process.processIdentifier
        kill(pid, SIGTERM)
        // Polls rather than waitUntilExit, which can wait on a run loop nobody runs.
        for _ in 0..<100 where process.isRunning { usleep(20_000) }
        if process.isRunning { kill(pid, SIGKILL) }
        for _ in 0..<100 where process.isRunning { usleep(20_000) }
    }

    deinit { stop() }
}
