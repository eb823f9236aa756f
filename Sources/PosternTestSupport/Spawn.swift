import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Starts a child with posix_spawn: stdin from /dev/null, stdout and stderr to `output`, and a clean
/// signal mask with default dispositions. (Foundation's Process passes on the test thread's blocked
/// signals and ignored SIGPIPE, so a child such as slapd or the gateway would never see SIGTERM.)
/// `environment` is added to (or replaces entries of) this process's environment. With `ownProcessGroup` the
/// child leads a process group of its own (its pid), as a job started from a shell does: `kill(-pid, SIGINT)`
/// is then what Ctrl-C in its terminal would do.
public func spawnProcess(_ arguments: [String], output: String, environment: [String: String] = [:],
                         ownProcessGroup: Bool = false) throws -> pid_t {
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, output, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    var attributes = posix_spawnattr_t()
    posix_spawnattr_init(&attributes)
    defer { posix_spawnattr_destroy(&attributes) }
    var noSignals = sigset_t()
    sigemptyset(&noSignals)
    var defaults = sigset_t()
    sigemptyset(&defaults)
    for signal in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGCHLD] { sigaddset(&defaults, signal) }
    posix_spawnattr_setsigmask(&attributes, &noSignals)
    posix_spawnattr_setsigdefault(&attributes, &defaults)
    var flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF
    if ownProcessGroup {
        posix_spawnattr_setpgroup(&attributes, 0)
        flags |= POSIX_SPAWN_SETPGROUP
    }
    posix_spawnattr_setflags(&attributes, Int16(flags))
    let argv = arguments.map { strdup($0) } + [nil]
    defer { for pointer in argv { free(pointer) } }
    var pid = pid_t()
    let spawned: Int32
    if environment.isEmpty {
        spawned = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, environ)
    } else {
        let merged = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        let envp = merged.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { for pointer in envp { free(pointer) } }
        spawned = posix_spawn(&pid, arguments[0], &actions, &attributes, argv, envp)
    }
    guard spawned == 0 else { throw SpawnError(message: "posix_spawn \(arguments[0]): \(String(cString: strerror(spawned)))") }
    return pid
}

/// Waits for a spawned child; its exit code, or -1 when a signal ended it.
public func waitForExit(_ pid: pid_t) -> Int32 {
    var status: Int32 = 0
    while waitpid(pid, &status, 0) == -1 {
        guard errno == EINTR else { return -1 }
    }
    // WIFEXITED and WEXITSTATUS are macros Swift cannot import.
    return status & 0x7f == 0 ? (status >> 8) & 0xff : -1
}

public struct SpawnError: Error, CustomStringConvertible {
    public var message: String
    public var description: String { message }
}
