import Foundation

/// One upstream smarthost, reached over mutual TLS only.
public struct UpstreamConfiguration: Sendable, Hashable {
    public enum TLSMode: String, Sendable, Hashable {
        case startTLS = "starttls"
        case implicit
    }
    public var name: String
    public var host: String
    public var port: Int
    public var tls: TLSMode
    /// The name the upstream's certificate must carry (and the SNI sent); not an IP address.
    public var serverName: String
    /// PEM bundle of the CAs the upstream certificate must chain to.
    public var caFile: String
    /// Our client certificate (PEM, leaf first) and its key.
    public var certificateFile: String
    public var keyFile: String
    public var maxConnections: Int
    public var connectTimeout: Duration
    /// Time allowed for each reply; DATA's final reply gets four times this.
    public var commandTimeout: Duration
    /// Idle connections are closed after this.
    public var idleTimeout: Duration
    /// SMTP AUTH after TLS is up (PLAIN or LOGIN with a password, or XOAUTH2 with an OAuth 2.0 token); none by default:
    /// the client certificate is the credential (a certificate-based connector).
    public var auth: UpstreamAuth?
    /// The tenant's accepted domains (Microsoft 365), for `postern check`: the client certificate's names and the
    /// senders' domains must fall within them. Empty: not checked.
    public var acceptedDomains: [String] = []

    public init(name: String, host: String, port: Int, tls: TLSMode = .startTLS, serverName: String, caFile: String,
                certificateFile: String, keyFile: String, maxConnections: Int = 4, connectTimeout: Duration = .seconds(10),
                commandTimeout: Duration = .seconds(60), idleTimeout: Duration = .seconds(30)) {
        self.name = name
        self.host = host
        self.port = port
        self.tls = tls
        self.serverName = serverName
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.maxConnections = maxConnections
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.idleTimeout = idleTimeout
    }
}

/// Where and how the relay delivers, and its retry schedule.
public struct RelayConfiguration: Sendable {
    public struct Route: Sendable, Hashable {
        /// `example.edu` (that domain only) or `*.example.edu` (its subdomains, and itself).
        public var domainPattern: String
        public var upstream: String
        public init(domainPattern: String, upstream: String) {
            self.domainPattern = domainPattern
            self.upstream = upstream
        }
    }

    /// Our name in EHLO and in DSNs.
    public var hostname: String
    public var upstreams: [UpstreamConfiguration]
    public var defaultUpstream: String
    public var routes: [Route]
    public var initialRetry: Duration
    public var maxRetry: Duration
    /// After this long in the queue, a message still undelivered is bounced.
    public var expiry: Duration
    /// How often the queue directory is rescanned for changes made outside (the CLI).
    public var scanInterval: Duration
    /// Largest jitter added to a retry delay, as a fraction of it.
    public var jitter: Double

    public init(hostname: String, upstreams: [UpstreamConfiguration], defaultUpstream: String, routes: [Route] = [],
                initialRetry: Duration = .seconds(60), maxRetry: Duration = .seconds(3600), expiry: Duration = .seconds(5 * 86400),
                scanInterval: Duration = .seconds(5), jitter: Double = 0.2) {
        self.hostname = hostname
        self.upstreams = upstreams
        self.defaultUpstream = defaultUpstream
        self.routes = routes
        self.initialRetry = initialRetry
        self.maxRetry = maxRetry
        self.expiry = expiry
        self.scanInterval = scanInterval
        self.jitter = jitter
    }

    /// The upstream name for a recipient: the most specific matching route, else the default.
    public func upstream(for recipient: String) -> String {
        guard let at = recipient.lastIndex(of: "@") else { return defaultUpstream }
        let domain = recipient[recipient.index(after: at)...].lowercased()
        var best: (length: Int, upstream: String)?
        for route in routes {
            let pattern = route.domainPattern.lowercased()
            let matches: Bool
            if pattern.hasPrefix("*.") {
                let base = pattern.dropFirst(2)
                matches = domain == base || domain.hasSuffix("." + base)
            } else {
                matches = domain == pattern
            }
            // An exact domain beats a wildcard of the same base.
            let score = pattern.count + (pattern.hasPrefix("*.") ? 0 : 1)
            if matches, score > (best?.length ?? -1) { best = (score, route.upstream) }
        }
        return best?.upstream ?? defaultUpstream
    }
}

/// Exponential backoff with jitter: `initial * 2^(n-1)`, capped, times `1 + random(0..<jitter)`.
/// Jitter only lengthens a delay, so no retry comes sooner than the schedule says.
public struct RetrySchedule: Sendable {
    public var initial: Duration
    public var maximum: Duration
    public var jitter: Double

    public init(initial: Duration, maximum: Duration, jitter: Double) {
        self.initial = initial
        self.maximum = maximum
        self.jitter = jitter
    }

    /// The base delay (without jitter) after the `attempt`-th failure (1-based).
    public func baseDelay(afterAttempt attempt: Int) -> TimeInterval {
        let initial = initial.seconds
        let exponent = min(max(attempt - 1, 0), 40)
        return min(initial * pow(2, Double(exponent)), maximum.seconds)
    }

    public func delay(afterAttempt attempt: Int) -> TimeInterval {
        baseDelay(afterAttempt: attempt) * (1 + (jitter > 0 ? Double.random(in: 0..<jitter) : 0))
    }
}

extension Duration {
    var seconds: TimeInterval {
        let (s, atto) = components
        return TimeInterval(s) + TimeInterval(atto) / 1e18
    }
}
