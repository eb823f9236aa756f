import Foundation

/// What policy.yaml says: time zone, internal domains, sunset rules, listeners, service accounts.
struct PolicyFileContent: Sendable {
    var timeZone: TimeZone?
    var internalDomains: [DomainPattern] = []
    var globalSunset: CalendarDate?
    var reminderDays = PolicyLoader.defaultReminderDays
    var listeners: [PolicyEndpoint: ListenerRule] = [:]
    var serviceAccounts: [ServiceAccount] = []
    /// Its own problems; the file is not used when there are any.
    var issues: [PolicyIssue] = []

    /// Reads policy.yaml's text (`file` is the name to report).
    init(file: String, text: String) {
        var reader = SchemaReader(file: file)
        defer { issues = reader.issues }
        guard let root = reader.document(text), let top = reader.mapping(
            root, what: "policy.yaml",
            allowed: ["timezone", "internal-domains", "sunset", "listeners", "service-accounts"],
            required: ["timezone", "internal-domains"])
        else { return }

        if let node = top["timezone"], let name = reader.string(node, what: "timezone") {
            if let tz = TimeZone(identifier: name) {
                timeZone = tz
            } else {
                reader.issue(node, "unknown time zone '\(name)'", fix: "use an IANA name such as Europe/Berlin or UTC")
            }
        }
        if let node = top["internal-domains"], let items = reader.list(node, what: "internal-domains") {
            for item in items {
                guard let text = reader.string(item, what: "internal domain") else { continue }
                if let pattern = DomainPattern(text) {
                    internalDomains.append(pattern)
                } else {
                    reader.issue(item, "'\(text)' is not a domain", fix: "write a domain like example.edu, or *.example.edu for its subdomains")
                }
            }
            if items.isEmpty {
                reader.issue(node, "internal-domains is empty", fix: "list at least one domain, e.g. example.edu")
            }
        }
        if let node = top["sunset"], let sunset = reader.mapping(node, what: "sunset", allowed: ["global", "reminder-days"], required: []) {
            if let g = sunset["global"] { globalSunset = reader.date(g, what: "sunset.global") }
            if let r = sunset["reminder-days"], let items = reader.list(r, what: "reminder-days") {
                var days: [Int] = []
                for item in items {
                    guard let d = reader.int(item, what: "reminder day") else { continue }
                    if d > 0 { days.append(d) } else {
                        reader.issue(item, "reminder day must be a positive number of days", fix: "write e.g. [30, 7, 1]")
                    }
                }
                reminderDays = Array(Set(days)).sorted(by: >)
            }
        }
        if let node = top["listeners"], let entries = reader.mapping(
            node, what: "listeners", allowed: PolicyEndpoint.allCases.map(\.rawValue), required: [],
            unknownFix: "listener kinds are submission, submissions and device")
        {
            for endpoint in PolicyEndpoint.allCases {
                guard let entryNode = entries[endpoint.rawValue] else { continue }
                guard let entry = reader.mapping(entryNode, what: "listener \(endpoint.rawValue)",
                                                 allowed: ["enabled", "max-message-size", "header-from"], required: [])
                else { continue }
                var rule = ListenerRule(endpoint: endpoint, enabled: true, maxMessageSize: nil)
                if let e = entry["enabled"] { rule.enabled = reader.bool(e, what: "enabled") ?? true }
                if let s = entry["max-message-size"] { rule.maxMessageSize = reader.size(s, what: "max-message-size") }
                if let h = entry["header-from"], let text = reader.string(h, what: "header-from") {
                    if let mode = HeaderFromMode(rawValue: text.lowercased()) { rule.headerFrom = mode } else {
                        reader.issue(h, "'\(text)' is not a header-from mode", fix: "write enforce, warn or off")
                    }
                }
                listeners[endpoint] = rule
            }
        }
        if let node = top["service-accounts"], let items = reader.list(node, what: "service-accounts") {
            var seen: Set<String> = []
            for item in items {
                guard let entry = reader.mapping(item, what: "service account", allowed: ["login", "domains", "null-sender"],
                                                 required: ["login", "domains"]),
                      let loginNode = entry["login"], let login = reader.string(loginNode, what: "login")
                else { continue }
                if !seen.insert(login).inserted {
                    reader.issue(loginNode, "service account '\(login)' is listed twice", fix: "merge the two entries")
                }
                var domains: [DomainPattern] = []
                if let d = entry["domains"], let ds = reader.list(d, what: "domains") {
                    for dn in ds {
                        guard let text = reader.string(dn, what: "domain") else { continue }
                        if let p = DomainPattern(text) { domains.append(p) } else {
                            reader.issue(dn, "'\(text)' is not a domain", fix: "write a domain like example.edu or *.example.edu")
                        }
                    }
                }
                let allowNull = entry["null-sender"].flatMap { reader.bool($0, what: "null-sender") } ?? false
                serviceAccounts.append(ServiceAccount(login: login, domains: domains, allowNullSender: allowNull))
            }
        }
    }
}
