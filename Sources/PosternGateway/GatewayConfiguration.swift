import Foundation
import PosternCore
import PosternDirectory
import PosternListener
import PosternPolicy
import PosternRegistration
import PosternRelay
import PosternSession
import PosternSpool
import Yams

/// Where accepted mail goes.
public enum DeliveryConfiguration: Sendable {
    /// One `.eml` file per message in a directory, no relay (for development and tests).
    case outbox(String)
    /// The durable spool in this directory, relayed over mutual TLS to the upstreams.
    case relay(spool: String, RelayConfiguration)
}

/// The gateway's configuration file (`postern.yaml`): listeners, TLS, limits, delivery, and where
/// the policy files are. Paths are relative to the file's directory.
///
/// Read in one pass through PosternCore's `ConfigReader`, so every problem comes back at once with its line and
/// fix, and sizes take the forms the policy files take (`ByteSize`); the `registration:` section is read by
/// `RegistrationConfiguration.read` with the same reader.
public struct GatewayConfiguration: Sendable {
    public var file: String
    public var hostname: String
    public var policyDirectory: String
    public var tls: TLSFiles?
    public var limits: Limits
    public var listeners: [ListenerConfiguration]
    public var delivery: DeliveryConfiguration
    /// Where audit JSON lines go: nil for standard output, or a file path.
    public var auditOutput: String?
    /// `audit.rotate`: size rotation, gzip and deletion after `keep-days` (a file output only).
    public var auditRetention: AuditRetention?
    /// The LDAP directory SMTP AUTH is checked against; without it the TLS endpoints accept no one.
    public var directory: DirectoryConfiguration?
    /// Brute-force limits for one account; a client address gets three times as many failures.
    public var authThrottle = AuthThrottle.Limits.login
    /// Answer a right password of an account that may not submit (SMTP: outside `required-groups`; the
    /// registration page: no role) differently from a wrong password. Off: a different answer confirms the password.
    public var revealNotAuthorized = false
    /// Things `postern check` points out that do not stop the gateway (e.g. a group name that matches nothing).
    public var warnings: [ConfigIssue] = []
    /// The admin HTTP endpoint (`/metrics`, `/health`); none without an `admin` section.
    public var admin: AdminConfiguration?
    /// Spool encryption at rest (`delivery.spool.encrypt.key-file`): the key file, and its keys as read at load.
    public var spoolKeyFile: String?
    public var spoolKeys: SpoolKeyRing?
    /// The device-registration web page; none without a `registration` section.
    public var registration: RegistrationConfiguration?

    public static func load(path: String) throws(ConfigErrors) -> GatewayConfiguration {
        var reader = ConfigReader(file: path)
        let root = reader.document(atPath: path)
        return try parse(root, reader: &reader)
    }

    public static func parse(_ text: String, file: String) throws(ConfigErrors) -> GatewayConfiguration {
        var reader = ConfigReader(file: file)
        let root = reader.document(text)
        return try parse(root, reader: &reader)
    }

    static func parse(_ root: Node?, reader: inout ConfigReader) throws(ConfigErrors) -> GatewayConfiguration {
        if !reader.issues.isEmpty { throw ConfigErrors(issues: reader.issues) }  // not read, or not YAML
        let file = reader.file
        let paths = reader
        func resolve(_ path: String) -> String { paths.resolve(path) }
        let top = reader.mapping(root, known: ["hostname", "policies", "tls", "limits", "listeners", "delivery", "audit", "directory", "admin", "registration"], context: "top level")

        let hostname = reader.string(top["hostname"], "hostname") ?? ProcessInfo.processInfo.hostName
        if !hostname.isEmpty, !hostname.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) {
            reader.issue(top["hostname"], "hostname must be a plain host name", fix: "e.g. mail-gw.example.edu, without spaces")
        }
        let policyDirectory = resolve(reader.string(top["policies"], "policies") ?? ".")

        let tls = top["tls"].flatMap { reader.tlsFiles($0, "tls") }

        var limits = Limits()
        if let node = top["limits"] {
            let map = reader.mapping(node, known: ["max-message-size", "max-recipients", "idle-timeout-seconds", "max-connections-per-client", "max-connections",
                                                     "messages-per-user-per-hour", "greeting-delay-ms"], context: "limits")
            limits.maxMessageSize = reader.size(map["max-message-size"], "limits.max-message-size", range: Self.messageSizes) ?? limits.maxMessageSize
            limits.maxRecipients = reader.int(map["max-recipients"], "limits.max-recipients", range: 1...10_000) ?? limits.maxRecipients
            limits.idleTimeoutSeconds = reader.int(map["idle-timeout-seconds"], "limits.idle-timeout-seconds", range: 1...3600) ?? limits.idleTimeoutSeconds
            limits.maxConnectionsPerClient = reader.int(map["max-connections-per-client"], "limits.max-connections-per-client", range: 1...100_000) ?? limits.maxConnectionsPerClient
            limits.maxConnections = reader.int(map["max-connections"], "limits.max-connections", range: 1...1_000_000) ?? limits.maxConnections
            limits.messagesPerUserPerHour = reader.int(map["messages-per-user-per-hour"], "limits.messages-per-user-per-hour", range: 1...1_000_000)
            limits.greetingDelayMilliseconds = reader.int(map["greeting-delay-ms"], "limits.greeting-delay-ms", range: 0...30_000) ?? limits.greetingDelayMilliseconds
        }

        var listeners: [ListenerConfiguration] = []
        let listenerNodes = reader.sequence(top["listeners"], "listeners")
        if listenerNodes.isEmpty { reader.issue(top["listeners"] ?? root, "no listeners configured", fix: "add a 'listeners:' list") }
        var seenNames = Set<String>()
        var seenEndpoints = Set<String>()
        for node in listenerNodes {
            let map = reader.mapping(node, known: ["name", "kind", "listen", "normalize-bare-lf", "max-message-size", "proxy-protocol-from"], context: "listener")
            guard let kindText = reader.string(map["kind"], "listener kind") else {
                reader.issue(node, "listener without kind", fix: "kind: submission, submissions or device")
                continue
            }
            guard let kind = ListenerKind(rawValue: kindText) else {
                reader.issue(map["kind"], "unknown listener kind '\(kindText)'", fix: "one of submission, submissions, device")
                continue
            }
            let name = reader.string(map["name"], "listener name") ?? kindText
            if !seenNames.insert(name).inserted { reader.issue(map["name"] ?? node, "listener name '\(name)' used twice", fix: "give each listener its own name") }
            guard map["listen"] != nil else {
                reader.issue(node, "listener '\(name)' has no listen address", fix: "listen: 127.0.0.1:2525 or [::1]:2525")
                continue
            }
            guard let (host, port) = reader.listenAddress(map["listen"], "listen address", example: "0.0.0.0:587 or [::]:587") else { continue }
            if !seenEndpoints.insert("\(host):\(port)").inserted, port != 0 {
                reader.issue(map["listen"], "\(host):\(port) is used by two listeners", fix: "give each listener its own address or port")
            }
            let normalize = reader.bool(map["normalize-bare-lf"], "normalize-bare-lf") ?? false
            if normalize && kind != .device {
                reader.issue(map["normalize-bare-lf"], "normalize-bare-lf is only allowed on device listeners", fix: "remove it; TLS endpoints always refuse bare LF")
            }
            let size = reader.size(map["max-message-size"], "listener max-message-size", range: Self.messageSizes)
            if kind.requiresTLS && tls == nil {
                reader.issue(node, "listener '\(name)' (\(kind.rawValue)) needs TLS but no tls section is configured", fix: "add tls: certificate/key")
            }
            var trusted: [AddressRange] = []
            for entry in reader.sequence(map["proxy-protocol-from"], "proxy-protocol-from") {
                guard let text = reader.string(entry, "proxy-protocol-from") else { continue }
                switch AddressRange.parse(text) {
                case .success(let range): trusted.append(range)
                case .failure: reader.issue(entry, "'\(text)' is not an address or CIDR range", fix: "e.g. 10.0.0.5 or 10.0.0.0/24")
                }
            }
            listeners.append(ListenerConfiguration(name: name, kind: kind, host: host, port: port, normalizeBareLF: normalize,
                                                   maxMessageSize: size, proxyProtocolFrom: trusted))
        }

        var delivery = DeliveryConfiguration.outbox(resolve("outbox"))
        var spoolKeyFile: String?, spoolKeys: SpoolKeyRing?
        if let node = top["delivery"] {
            let map = reader.mapping(node, known: ["outbox", "spool", "relay"], context: "delivery")
            var spoolPath: String?
            if let spoolNode = map["spool"], spoolNode.mapping != nil {
                (spoolPath, spoolKeyFile, spoolKeys) = readSpool(spoolNode, reader: &reader, resolve: resolve)
            } else {
                spoolPath = reader.string(map["spool"], "delivery.spool")
            }
            switch (reader.string(map["outbox"], "delivery.outbox"), spoolPath) {
            case (let outbox?, nil):
                if map["relay"] != nil { reader.issue(map["relay"], "relay needs a spool, not an outbox", fix: "delivery: { spool: DIR, relay: ... }") }
                delivery = .outbox(resolve(outbox))
            case (nil, let spool?):
                if let relay = map["relay"].flatMap({ parseRelay($0, hostname: hostname, reader: &reader, resolve: resolve) }) {
                    delivery = .relay(spool: resolve(spool), relay)
                } else if map["relay"] == nil {
                    reader.issue(node, "a spool needs a relay section", fix: "add relay: { upstreams: [...], default: NAME }")
                }
            default:
                reader.issue(node, "delivery needs either an outbox or a spool with a relay", fix: "delivery: { spool: /var/lib/postern/spool, relay: ... }")
            }
        }

        var auditOutput: String?
        var auditRetention: AuditRetention?
        if let node = top["audit"] {
            let map = reader.mapping(node, known: ["output", "rotate"], context: "audit")
            if let output = reader.string(map["output"], "audit.output"), output != "stdout", output != "-" {
                auditOutput = resolve(output)
            }
            if let rotateNode = map["rotate"] {
                let rotate = reader.mapping(rotateNode, known: ["size", "keep-days"], context: "audit.rotate")
                let retention = AuditRetention(rotateBytes: reader.size(rotate["size"], "audit.rotate.size", range: (64 << 10)...(64 << 30)),
                                               keepDays: reader.int(rotate["keep-days"], "audit.rotate.keep-days", range: 1...36_500))
                if auditOutput == nil || auditOutput == "stderr" {
                    reader.issue(rotateNode, "audit.rotate needs audit.output to be a file",
                                 fix: "set audit.output: /var/log/postern/audit.jsonl, or rotate the journal with journald's own settings")
                } else if retention.rotateBytes == nil && retention.keepDays == nil {
                    reader.issue(rotateNode, "audit.rotate needs size, keep-days or both", fix: "rotate: { size: 100M, keep-days: 90 }")
                } else {
                    auditRetention = retention
                }
            }
        }

        let directory = top["directory"].flatMap { parseDirectory($0, reader: &reader, resolve: resolve) }
        let revealNotAuthorized = reader.bool(top["directory"]?.mapping?["reveal-not-authorized"], "directory.reveal-not-authorized") ?? false
        var authThrottle = AuthThrottle.Limits.login
        if let node = top["directory"]?.mapping?["throttle"] {
            let map = reader.mapping(node, known: ["slow-down-after", "delay-step-ms", "max-delay-ms", "lockout-after", "lockout-seconds"],
                                     context: "directory.throttle")
            if let n = reader.int(map["slow-down-after"], "slow-down-after", range: 1...1000) { authThrottle.slowDownAfter = n }
            if let n = reader.int(map["delay-step-ms"], "delay-step-ms", range: 0...60_000) { authThrottle.delayStep = .milliseconds(n) }
            if let n = reader.int(map["max-delay-ms"], "max-delay-ms", range: 0...60_000) { authThrottle.maxDelay = .milliseconds(n) }
            if let n = reader.int(map["lockout-after"], "lockout-after", range: 1...1000) { authThrottle.lockoutAfter = n }
            if let n = reader.int(map["lockout-seconds"], "lockout-seconds", range: 1...86_400) {
                authThrottle.lockoutDuration = .seconds(n)
                authThrottle.forgetAfter = .seconds(n)
            }
        }

        var admin: AdminConfiguration?
        if let node = top["admin"] {
            let map = reader.mapping(node, known: ["listen", "drain-notice-seconds"], context: "admin")
            if map["listen"] == nil {
                admin = AdminConfiguration()
            } else if let (host, port) = reader.listenAddress(map["listen"], "admin.listen", example: "127.0.0.1:9025") {
                admin = AdminConfiguration(host: host, port: port)
            }
            if map["drain-notice-seconds"] != nil,
               let seconds = reader.int(map["drain-notice-seconds"], "admin.drain-notice-seconds", range: 0...300) {
                admin?.drainNoticeSeconds = Int64(seconds)
            }
        }

        let registration = top["registration"].flatMap { node in
            RegistrationConfiguration.read(node, reader: &reader, inherited: .init(tls: tls, hasDirectory: directory != nil || top["directory"] != nil,
                                                                                 groupBase: directory?.groupBase, hostname: hostname))
        }

        if !reader.issues.isEmpty { throw ConfigErrors(issues: reader.issues) }
        var configuration = GatewayConfiguration(file: file, hostname: hostname, policyDirectory: policyDirectory, tls: tls, limits: limits,
                                                 listeners: listeners, delivery: delivery, auditOutput: auditOutput, auditRetention: auditRetention,
                                                 directory: directory,
                                                 authThrottle: authThrottle, revealNotAuthorized: revealNotAuthorized, warnings: reader.warnings,
                                                 admin: admin, registration: registration)
        configuration.spoolKeyFile = spoolKeyFile
        configuration.spoolKeys = spoolKeys
        return configuration
    }

    /// `delivery.spool` as a mapping: `{ directory: DIR, encrypt: { key-file: FILE } }` (the string form is the directory).
    static func readSpool(_ node: Node, reader: inout ConfigReader, resolve: (String) -> String)
        -> (path: String?, keyFile: String?, keys: SpoolKeyRing?) {
        let map = reader.mapping(node, known: ["directory", "encrypt"], context: "delivery.spool")
        let path = reader.string(map["directory"], "delivery.spool.directory")
        if path == nil { reader.issue(node, "delivery.spool needs a directory", fix: "spool: { directory: /var/lib/postern/spool, encrypt: { key-file: ... } }") }
        guard let encrypt = map["encrypt"] else { return (path, nil, nil) }
        let fields = reader.mapping(encrypt, known: ["key-file"], context: "delivery.spool.encrypt")
        guard let keyFile = reader.string(fields["key-file"], "delivery.spool.encrypt.key-file").map(resolve) else {
            reader.issue(encrypt, "delivery.spool.encrypt needs a key-file", fix: "key-file: /etc/postern/spool-keys (lines 'KEY-ID BASE64', from openssl rand -base64 32)")
            return (path, nil, nil)
        }
        do {
            return (path, keyFile, try SpoolKeyRing(contentsOfFile: keyFile))
        } catch {
            reader.issue(fields["key-file"], "\(error)", fix: "one key per line: KEY-ID and 32 bytes in base64 (openssl rand -base64 32); the first seals; chmod 600")
            return (path, keyFile, nil)
        }
    }

    /// What `max-message-size` may be, in `limits` and on a listener.
    static let messageSizes = 1024...(1 << 30)

    static func parseDirectory(_ node: Node, reader: inout ConfigReader, resolve: (String) -> String) -> DirectoryConfiguration? {
        let map = reader.mapping(node, known: ["uris", "ca-file", "bind-dn", "bind-password-file", "bind-password-env", "search-base",
                                               "user-filter", "address-attributes", "group-attribute", "group-search-base",
                                               "group-search-filter", "required-groups", "group-base", "connect-timeout-seconds",
                                               "operation-timeout-seconds", "max-connections", "throttle", "reveal-not-authorized"],
                                        context: "directory")
        let uris = reader.strings(map["uris"], "directory.uris")
        if uris.isEmpty { reader.issue(node, "directory.uris is missing", fix: "e.g. uris: [ldaps://ldap.example.edu]") }
        guard let bindDN = reader.string(map["bind-dn"], "directory.bind-dn") else {
            reader.issue(node, "directory.bind-dn is missing", fix: "the service account's DN")
            return nil
        }
        let secret: SecretSource
        switch (reader.string(map["bind-password-file"], "bind-password-file"), reader.string(map["bind-password-env"], "bind-password-env")) {
        case (let file?, nil): secret = .file(resolve(file))
        case (nil, let env?): secret = .environment(env)
        default:
            reader.issue(node, "directory needs exactly one of bind-password-file or bind-password-env",
                         fix: "the password never goes into this file")
            return nil
        }
        guard let base = reader.string(map["search-base"], "directory.search-base") else {
            reader.issue(node, "directory.search-base is missing", fix: "e.g. ou=people,dc=example,dc=edu")
            return nil
        }
        var configuration = DirectoryConfiguration(uris: uris, caFile: reader.string(map["ca-file"], "ca-file").map(resolve),
                                                   bindDN: bindDN, bindPassword: secret, searchBase: base)
        if let filter = reader.string(map["user-filter"], "user-filter") { configuration.userFilter = filter }
        let attributes = reader.strings(map["address-attributes"], "address-attributes")
        if !attributes.isEmpty { configuration.addressAttributes = attributes }
        if let searchBase = reader.string(map["group-search-base"], "group-search-base") {
            let filter = reader.string(map["group-search-filter"], "group-search-filter") ?? "(&(objectClass=groupOfNames)(member=%s))"
            configuration.groupLookup = .search(base: searchBase, filter: filter)
        } else if let attribute = reader.string(map["group-attribute"], "group-attribute") {
            configuration.groupLookup = .attribute(attribute)
        }
        configuration.requiredGroups = reader.strings(map["required-groups"], "required-groups")
        configuration.groupBase = reader.string(map["group-base"], "group-base")
        reader.warnBareGroupNames(configuration.requiredGroups, base: configuration.groupBase, node: map["required-groups"],
                                  what: "directory.required-groups")
        if let t = reader.int(map["connect-timeout-seconds"], "connect-timeout-seconds", range: 1...60) { configuration.connectTimeout = .seconds(t) }
        if let t = reader.int(map["operation-timeout-seconds"], "operation-timeout-seconds", range: 1...120) { configuration.operationTimeout = .seconds(t) }
        if let n = reader.int(map["max-connections"], "max-connections", range: 1...64) { configuration.maxConnections = n }
        do {
            try configuration.validate()
        } catch {
            reader.issue(node, "directory: \(error)", fix: "see the directory section in the README")
        }
        return configuration
    }

    static func parseRelay(_ node: Node, hostname: String, reader: inout ConfigReader, resolve: (String) -> String) -> RelayConfiguration? {
        let map = reader.mapping(node, known: ["hostname", "upstreams", "default", "routes", "retry"], context: "relay")
        var upstreams: [UpstreamConfiguration] = []
        for entry in reader.sequence(map["upstreams"], "relay.upstreams") {
            let u = reader.mapping(entry, known: Set(["name", "host", "port", "tls", "server-name", "ca-file", "certificate", "key",
                                                      "max-connections", "connect-timeout-seconds"]).union(upstreamAuthKeys), context: "upstream")
            guard let name = reader.string(u["name"], "upstream name"), let host = reader.string(u["host"], "upstream host"),
                  let port = reader.int(u["port"], "upstream port", range: 1...65535),
                  let ca = reader.string(u["ca-file"], "upstream ca-file"),
                  let certificate = reader.string(u["certificate"], "upstream certificate"),
                  let key = reader.string(u["key"], "upstream key") else {
                reader.issue(entry, "an upstream needs name, host, port, ca-file, certificate and key",
                             fix: "the certificate and key are the client certificate Postern presents (mutual TLS)")
                continue
            }
            let tlsText = reader.string(u["tls"], "upstream tls") ?? "starttls"
            guard let mode = UpstreamConfiguration.TLSMode(rawValue: tlsText) else {
                reader.issue(u["tls"], "upstream tls must be starttls or implicit; there is no plaintext relay", fix: "tls: starttls or tls: implicit")
                continue
            }
            for (field, path) in [("ca-file", ca), ("certificate", certificate), ("key", key)] where !FileManager.default.isReadableFile(atPath: resolve(path)) {
                reader.issue(u[field], "cannot read \(resolve(path))", fix: "run certs/make-dev-certs.sh for development certificates")
            }
            var upstream = UpstreamConfiguration(name: name, host: host, port: port, tls: mode,
                                                 serverName: reader.string(u["server-name"], "server-name") ?? host,
                                                 caFile: resolve(ca), certificateFile: resolve(certificate), keyFile: resolve(key))
            if let n = reader.int(u["max-connections"], "max-connections", range: 1...256) { upstream.maxConnections = n }
            if let t = reader.int(u["connect-timeout-seconds"], "connect-timeout-seconds", range: 1...300) { upstream.connectTimeout = .seconds(t) }
            parseUpstreamAuth(u, into: &upstream, reader: &reader, resolve: resolve)
            upstreams.append(upstream)
        }
        guard !upstreams.isEmpty else {
            reader.issue(node, "relay has no upstreams", fix: "list at least one under relay.upstreams")
            return nil
        }
        let names = Set(upstreams.map(\.name))
        let defaultUpstream = reader.string(map["default"], "relay.default") ?? upstreams[0].name
        if !names.contains(defaultUpstream) {
            reader.issue(map["default"], "relay.default '\(defaultUpstream)' is not an upstream", fix: "one of \(names.sorted().joined(separator: ", "))")
        }
        var routes: [RelayConfiguration.Route] = []
        for entry in reader.sequence(map["routes"], "relay.routes") {
            let r = reader.mapping(entry, known: ["domain", "upstream"], context: "route")
            guard let domain = reader.string(r["domain"], "route domain"), let upstream = reader.string(r["upstream"], "route upstream") else {
                reader.issue(entry, "a route needs domain and upstream", fix: "e.g. { domain: \"*.example.edu\", upstream: hub }")
                continue
            }
            if !names.contains(upstream) {
                reader.issue(r["upstream"], "route upstream '\(upstream)' is not an upstream", fix: "one of \(names.sorted().joined(separator: ", "))")
            }
            routes.append(RelayConfiguration.Route(domainPattern: domain.lowercased(), upstream: upstream))
        }
        var relay = RelayConfiguration(hostname: reader.string(map["hostname"], "relay.hostname") ?? hostname, upstreams: upstreams,
                                       defaultUpstream: defaultUpstream, routes: routes)
        if let retryNode = map["retry"] {
            let retry = reader.mapping(retryNode, known: ["initial-seconds", "max-seconds", "expire-hours", "scan-seconds"], context: "relay.retry")
            if let n = reader.int(retry["initial-seconds"], "initial-seconds", range: 1...86_400) { relay.initialRetry = .seconds(n) }
            if let n = reader.int(retry["max-seconds"], "max-seconds", range: 1...86_400) { relay.maxRetry = .seconds(n) }
            if let n = reader.int(retry["expire-hours"], "expire-hours", range: 1...24 * 30) { relay.expiry = .seconds(n * 3600) }
            if let n = reader.int(retry["scan-seconds"], "scan-seconds", range: 1...3600) { relay.scanInterval = .seconds(n) }
        }
        return relay
    }
}
