import NIOCore
import NIOPosix

/// What an operator should read when a connection to an upstream fails: the queue's "last reason", the relay
/// log and the audit log show this, not the library's error value (`NIOConnectionError(host: …,
/// connectionErrors: [SingleConnectionFailure(…, errno: 111)])`).
enum ConnectFailure {
    static func describe(_ error: any Error, host: String, port: Int) -> String {
        if let connection = error as? NIOConnectionError {
            if let dns = connection.dnsAError ?? connection.dnsAAAAError {
                return "the name \(host) does not resolve (\(dns))"
            }
            guard !connection.connectionErrors.isEmpty else { return "\(host) has no address to connect to" }
            // One reason per address tried, each said once: "127.0.0.1:2526 refused the connection".
            var seen = Set<String>()
            let reasons = connection.connectionErrors.compactMap { failure -> String? in
                let text = "\(address(failure.target)) \(reason(failure.error))"
                return seen.insert(text).inserted ? text : nil
            }
            return reasons.joined(separator: "; ")
        }
        return "\(host):\(port) \(reason(error))"
    }

    /// The part after the address: "refused the connection", "did not answer within 10 s".
    static func reason(_ error: any Error) -> String {
        if let io = error as? IOError {
            switch io.errnoCode {
            case ECONNREFUSED: return "refused the connection (nothing listens on that port)"
            case ETIMEDOUT: return "did not answer (connection timed out)"
            case EHOSTUNREACH, ENETUNREACH: return "cannot be reached (no route to host)"
            case ECONNRESET: return "reset the connection"
            case EADDRNOTAVAIL: return "cannot be connected to from this host (address not available)"
            default: return "could not be connected to (\(io.description))"
            }
        }
        if let channel = error as? ChannelError, case .connectTimeout(let amount) = channel {
            return "did not answer within \(amount.nanoseconds / 1_000_000_000) s (connect timeout)"
        }
        return "could not be connected to (\(error))"
    }

    private static func address(_ target: SocketAddress) -> String {
        guard let ip = target.ipAddress, let port = target.port else { return "\(target)" }
        if case .v6 = target { return "[\(ip)]:\(port)" }
        return "\(ip):\(port)"
    }
}
