import Foundation
import PosternCore
import PosternDirectory
import PosternListener
import PosternRegistration
import PosternRelay
import Yams

/// The effective configuration, `postern config` (Postfix's `postconf`): every setting the gateway runs with, the
/// defaults included, as `key = value` lines in postern.yaml's own names. It is rendered from the
/// `GatewayConfiguration` the gateway itself loads, so it cannot disagree with what `postern serve` does; whether a
/// key was written in the file (`postern config -n`, like `postconf -n`) is looked up in the file's YAML.
///
/// Keys are paths: `limits.max-message-size`, `listeners[0].listen`, `delivery.relay.upstreams[0].auth.mechanism`.
/// Secrets never appear: the file names a path or a variable for each, and that is what is shown.
public struct EffectiveSetting: Sendable, Hashable {
    /// The path, `directory.throttle.lockout-after`.
    public var key: String
    public var value: String
    /// Written in the file, rather than a default or a value taken from another key.
    public var isSet: Bool
}

extension GatewayConfiguration {
    /// Every setting, in the file's order of sections. `text` is the file as read, to tell which keys it sets.
    public func effectiveSettings(fileText text: String) -> [EffectiveSetting] {
        let root = (try? Yams.compose(yaml: text)) ?? nil
        var out = EffectiveSettings(root: root)
        out.add("hostname", hostname)
        out.add("policies", policyDirectory)
        if let tls {
            out.add("tls.certificate", tls.certificateChain)
            out.add("tls.key", tls.privateKey)
        }
        out.add("limits.max-message-size", ByteSize.describe(limits.maxMessageSize))
        out.add("limits.max-recipients", limits.maxRecipients)
        out.add("limits.idle-timeout-seconds", limits.idleTimeoutSeconds)
        out.add("limits.max-connections-per-client", limits.maxConnectionsPerClient)
        out.add("limits.max-connections", limits.maxConnections)
        out.add("limits.messages-per-user-per-hour", limits.messagesPerUserPerHour.map(String.init) ?? "none")
        out.add("limits.greeting-delay-ms", limits.greetingDelayMilliseconds)
        for (i, listener) in listeners.enumerated() {
            let key = "listeners[\(i)]"
            out.add("\(key).name", listener.name)
            out.add("\(key).kind", listener.kind.rawValue)
            out.add("\(key).listen", listener.host.contains(":") ? "[\(listener.host)]:\(listener.port)" : "\(listener.host):\(listener.port)")
            let session = listener.sessionConfiguration(hostname: hostname, limits: limits, authAvailable: directory != nil)
            out.add("\(key).max-message-size", ByteSize.describe(session.maxMessageSize))
            out.add("\(key).normalize-bare-lf", listener.normalizeBareLF)
            out.add("\(key).proxy-protocol-from", listener.proxyProtocolFrom.map(\.description))
        }
        switch delivery {
        case .outbox(let directory):
            out.add("delivery.outbox", directory)
        case .relay(let spool, let relay):
            if let keyFile = spoolKeyFile {
                out.add("delivery.spool.directory", spool)
                out.add("delivery.spool.encrypt.key-file", keyFile)
            } else {
                out.add("delivery.spool", spool)
            }
            out.relay(relay)
        }
        out.add("audit.output", auditOutput ?? "stdout")
        if auditOutput != nil {
            out.add("audit.rotate.size", auditRetention?.rotateBytes.map(ByteSize.describe) ?? "none")
            out.add("audit.rotate.keep-days", auditRetention?.keepDays.map(String.init) ?? "forever")
        }
        if let directory {
            out.directory(directory, throttle: authThrottle, revealNotAuthorized: revealNotAuthorized)
        }
        if let admin {
            out.add("admin.listen", "\(admin.host):\(admin.port)")
            out.add("admin.drain-notice-seconds", Int(admin.drainNoticeSeconds))
        }
        if let registration {
            out.registration(registration)
        }
        return out.settings
    }
}

/// Collects the settings, asking the file's YAML whether each key is in it.
private struct EffectiveSettings {
    let root: Node?
    var settings: [EffectiveSetting] = []

    mutating func add(_ key: String, _ value: String) {
        settings.append(EffectiveSetting(key: key, value: value, isSet: isWritten(key)))
    }

    mutating func add(_ key: String, _ value: Int) { add(key, String(value)) }
    mutating func add(_ key: String, _ value: Bool) { add(key, value ? "true" : "false") }
    mutating func add(_ key: String, _ values: [String]) { add(key, "[" + values.joined(separator: ", ") + "]") }
    mutating func add(_ key: String, seconds duration: Duration) { add(key, Int(duration.components.seconds)) }
    mutating func add(_ key: String, milliseconds duration: Duration) {
        let (seconds, attoseconds) = duration.components
        add(key, String(seconds * 1000 + attoseconds / 1_000_000_000_000_000))
    }

    /// Whether the path's node is in the file: `a.b[2].c` walks mappings by key and lists by index.
    func isWritten(_ key: String) -> Bool {
        var node = root
        for part in key.split(separator: ".") {
            var name = Substring(part)
            var index: Int?
            if let open = part.firstIndex(of: "["), part.hasSuffix("]") {
                name = part[..<open]
                index = Int(part[part.index(after: open)..<part.index(before: part.endIndex)])
            }
            node = node?.mapping?[String(name)]
            if let index {
                guard let sequence = node?.sequence, index >= 0, index < sequence.count else { return false }
                node = sequence[index]
            }
            if node == nil { return false }
        }
        return true
    }

    mutating func relay(_ relay: RelayConfiguration) {
        add("delivery.relay.hostname", relay.hostname)
        for (i, upstream) in relay.upstreams.enumerated() {
            let key = "delivery.relay.upstreams[\(i)]"
            add("\(key).name", upstream.name)
            add("\(key).host", upstream.host)
            add("\(key).port", upstream.port)
            add("\(key).tls", upstream.tls.rawValue)
            add("\(key).server-name", upstream.serverName)
            add("\(key).ca-file", upstream.caFile)
            add("\(key).certificate", upstream.certificateFile)
            add("\(key).key", upstream.keyFile)
            add("\(key).max-connections", upstream.maxConnections)
            add("\(key).connect-timeout-seconds", seconds: upstream.connectTimeout)
            add("\(key).accepted-domains", upstream.acceptedDomains)
            switch upstream.auth {
            case nil:
                add("\(key).auth", "none")
            case .password(let mechanism, let username, let password)?:
                add("\(key).auth.mechanism", mechanism.rawValue)
                add("\(key).auth.username", username)
                secret(password, file: "\(key).auth.password-file", env: "\(key).auth.password-env")
            case .xoauth2(let credentials)?:
                add("\(key).auth.mechanism", "xoauth2")
                add("\(key).auth.token-endpoint", credentials.tokenEndpoint)
                add("\(key).auth.client-id", credentials.clientID)
                switch credentials.clientAuthentication {
                case .secret(let secret): self.secret(secret, file: "\(key).auth.client-secret-file", env: "\(key).auth.client-secret-env")
                case .certificate(let certificate, let privateKey):
                    add("\(key).auth.client-certificate", certificate)
                    add("\(key).auth.client-key", privateKey)
                }
                add("\(key).auth.scope", credentials.scope)
                add("\(key).auth.user", credentials.user)
                add("\(key).auth.ca-file", credentials.caFile ?? "system")
            }
        }
        add("delivery.relay.default", relay.defaultUpstream)
        for (i, route) in relay.routes.enumerated() {
            add("delivery.relay.routes[\(i)].domain", route.domainPattern)
            add("delivery.relay.routes[\(i)].upstream", route.upstream)
        }
        add("delivery.relay.retry.initial-seconds", seconds: relay.initialRetry)
        add("delivery.relay.retry.max-seconds", seconds: relay.maxRetry)
        add("delivery.relay.retry.expire-hours", Int(relay.expiry.components.seconds / 3600))
        add("delivery.relay.retry.scan-seconds", seconds: relay.scanInterval)
    }

    private mutating func secret(_ secret: UpstreamSecret, file: String, env: String) {
        switch secret {
        case .file(let path): add(file, path)
        case .environment(let name): add(env, name)
        }
    }

    mutating func directory(_ directory: DirectoryConfiguration, throttle: AuthThrottle.Limits, revealNotAuthorized: Bool) {
        add("directory.uris", directory.uris)
        add("directory.ca-file", directory.caFile ?? "system")
        add("directory.bind-dn", directory.bindDN)
        switch directory.bindPassword {
        case .file(let path): add("directory.bind-password-file", path)
        case .environment(let name): add("directory.bind-password-env", name)
        }
        add("directory.search-base", directory.searchBase)
        add("directory.user-filter", directory.userFilter)
        add("directory.address-attributes", directory.addressAttributes)
        switch directory.groupLookup {
        case .none: add("directory.group-attribute", "none")
        case .attribute(let attribute): add("directory.group-attribute", attribute)
        case .search(let base, let filter):
            add("directory.group-search-base", base)
            add("directory.group-search-filter", filter)
        }
        add("directory.required-groups", directory.requiredGroups)
        add("directory.group-base", directory.groupBase ?? "none")
        add("directory.connect-timeout-seconds", seconds: directory.connectTimeout)
        add("directory.operation-timeout-seconds", seconds: directory.operationTimeout)
        add("directory.max-connections", directory.maxConnections)
        add("directory.reveal-not-authorized", revealNotAuthorized)
        add("directory.throttle.slow-down-after", throttle.slowDownAfter)
        add("directory.throttle.delay-step-ms", milliseconds: throttle.delayStep)
        add("directory.throttle.max-delay-ms", milliseconds: throttle.maxDelay)
        add("directory.throttle.lockout-after", throttle.lockoutAfter)
        add("directory.throttle.lockout-seconds", seconds: throttle.lockoutDuration)
    }

    mutating func registration(_ registration: RegistrationConfiguration) {
        add("registration.listen", "\(registration.host):\(registration.port)")
        add("registration.tls.certificate", registration.tls.certificateChain)
        add("registration.tls.key", registration.tls.privateKey)
        add("registration.admin-groups", registration.adminGroups)
        for id in registration.departmentGroups.keys.sorted() {
            add("registration.department-groups.\(id)", registration.departmentGroups[id] ?? [])
        }
        add("registration.campus-ranges", registration.campusRanges.map(\.description))
        add("registration.state", registration.stateDirectory)
        add("registration.session-minutes", Int(registration.sessionLifetime.components.seconds / 60))
        add("registration.university-name", registration.universityName)
        add("registration.help-url", registration.helpURL)
        add("registration.contact", registration.contact)
        add("registration.notify-admins", registration.adminRecipients)
        add("registration.public-url", registration.publicURL ?? "")
    }
}
