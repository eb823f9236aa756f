import PosternPolicy
import PosternSession

/// One endpoint to listen on (an entry of postern.yaml's `listeners`).
public struct ListenerConfiguration: Sendable, Hashable {
    public var name: String
    public var kind: ListenerKind
    public var host: String
    public var port: Int
    /// Device listeners only: store bare LF as CRLF for old devices instead of refusing.
    public var normalizeBareLF: Bool
    /// Replaces `limits.max-message-size` for this listener (bigger or smaller); policy.yaml may only lower it.
    public var maxMessageSize: Int?
    /// Load balancers whose connections start with a PROXY protocol header (v1 or v2).
    public var proxyProtocolFrom: [AddressRange]

    public init(name: String, kind: ListenerKind, host: String, port: Int, normalizeBareLF: Bool, maxMessageSize: Int?,
                proxyProtocolFrom: [AddressRange] = []) {
        self.name = name
        self.kind = kind
        self.host = host
        self.port = port
        self.normalizeBareLF = normalizeBareLF
        self.maxMessageSize = maxMessageSize
        self.proxyProtocolFrom = proxyProtocolFrom
    }
}

/// What every listener shares (postern.yaml's `limits`).
public struct Limits: Sendable, Hashable {
    /// The largest message a listener takes, unless it sets its own (`ListenerConfiguration.maxMessageSize`).
    public var maxMessageSize = 25 * 1024 * 1024
    public var maxRecipients = 100
    public var idleTimeoutSeconds = 300
    public var maxConnectionsPerClient = 50
    public var maxConnections = 20_000
    /// Messages one authenticated login may send per hour, on every endpoint together; nil for no limit.
    public var messagesPerUserPerHour: Int?
    /// Wait this long before the 220 and refuse clients that talk first (postscreen's "pregreet"); 0 is off.
    public var greetingDelayMilliseconds = 0

    public init() {}
}

extension ListenerConfiguration {
    /// A listener of `kind` with the defaults a configuration file gets (for `postern explain` without one).
    public init(name: String, kind: ListenerKind) {
        self.init(name: name, kind: kind, host: "", port: 0, normalizeBareLF: false, maxMessageSize: nil)
    }

    /// The configuration of this listener's sessions (the gateway's, and `postern explain`'s).
    public func sessionConfiguration(hostname: String, limits: Limits, authAvailable: Bool) -> SessionConfiguration {
        SessionConfiguration(hostname: hostname, listenerName: name, kind: kind, maxMessageSize: maxMessageSize ?? limits.maxMessageSize,
                             maxRecipients: limits.maxRecipients, normalizeBareLF: normalizeBareLF, authAvailable: authAvailable)
    }
}

extension Limits {
    /// The defaults of a configuration file without a `limits:` section.
    public static let defaults = Limits()
}
