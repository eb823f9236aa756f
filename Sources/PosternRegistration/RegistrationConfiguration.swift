import Foundation
import PosternCore
import PosternDirectory
import PosternPolicy
import PosternSMTP
import Yams

/// The `registration:` section of postern.yaml: where the device-registration web page listens and who may do what.
///
/// ```yaml
/// registration:
///   listen: 127.0.0.1:8443
///   tls: { certificate: ..., key: ... }      # default: the gateway's tls
///   admin-groups: [postern-admins]           # full DNs, or names of groups directly under directory.group-base
///   department-groups:                       # department id (departments.yaml) -> groups of its contacts
///     it: [dept-it]
///     chem: [cn=dept-chem,ou=groups,dc=example,dc=edu]
///   campus-ranges: [10.0.0.0/8, 127.0.0.0/8]
///   state: ../var/registration               # pending requests (requests.json)
///   session-minutes: 60
///   university-name: Example University      # in every page's title and header, and in the mails
///   help-url: /help                          # the "Help" link; default: the page's own help
///   contact: postmaster@example.edu          # "Questions?" on every page; Reply-To of the mails
///   notify-admins: [postern-admins@example.edu]  # mailed when a request arrives; default: [contact]
///   public-url: https://devices.example.edu/ # the page's address in the mails; default https://HOSTNAME:PORT/
/// ```
public struct RegistrationConfiguration: Sendable {
    public var host: String
    public var port: Int
    public var tls: TLSFiles
    public var adminGroups: [String]
    public var departmentGroups: [String: [String]]
    public var campusRanges: [AddressRange]
    public var stateDirectory: String
    public var sessionLifetime: Duration = .seconds(3600)
    /// Where bare group names are: the directory's `group-base`; nil: only full DNs match.
    public var groupBase: String?
    /// Shown in every page's title and header and in the notification mails.
    public var universityName = "Example University"
    /// The "Help" link in the header: an http(s) URL, or a path on the page (`/help`, its own help).
    public var helpURL = "/help"
    /// Whom to ask (every page's footer) and where replies to the notification mails go.
    public var contact = "postmaster@localhost"
    /// Who gets a mail when a request arrives; empty: `contact`.
    public var notifyAdmins: [String] = []
    /// The page's address as the mails link to it, with a trailing slash; nil: `https://HOSTNAME:PORT/`.
    public var publicURL: String?

    /// Who gets a mail when a request arrives.
    public var adminRecipients: [String] { notifyAdmins.isEmpty ? [contact] : notifyAdmins }

    public init(host: String, port: Int, tls: TLSFiles, adminGroups: [String], departmentGroups: [String: [String]],
                campusRanges: [AddressRange], stateDirectory: String) {
        self.host = host
        self.port = port
        self.tls = tls
        self.adminGroups = adminGroups
        self.departmentGroups = departmentGroups
        self.campusRanges = campusRanges
        self.stateDirectory = stateDirectory
    }

    /// What the section takes from the rest of postern.yaml.
    public struct Inherited: Sendable {
        /// The gateway's `tls`, the default for the page's.
        public var tls: TLSFiles?
        /// The page logs in against the directory; without one it cannot run.
        public var hasDirectory: Bool
        /// `directory.group-base`, where bare group names are.
        public var groupBase: String?
        /// The gateway's `hostname`: the default contact's domain and the page's public address.
        public var hostname: String

        public init(tls: TLSFiles?, hasDirectory: Bool, groupBase: String?, hostname: String) {
            self.tls = tls
            self.hasDirectory = hasDirectory
            self.groupBase = groupBase
            self.hostname = hostname
        }
    }

    /// Reads the `registration:` section of postern.yaml (the gateway's reader calls this, so its issues come
    /// with the rest of the file's); nil with the issues recorded when it is not usable.
    public static func read(_ node: Node, reader: inout ConfigReader, inherited: Inherited) -> RegistrationConfiguration? {
        let map = reader.mapping(node, known: ["listen", "tls", "admin-groups", "department-groups", "campus-ranges", "state", "session-minutes",
                                               "university-name", "help-url", "contact", "notify-admins", "public-url"],
                                 context: "registration")
        let (host, port) = reader.listenAddress(map["listen"], "registration.listen", example: "127.0.0.1:8443") ?? ("127.0.0.1", 8443)
        let tls = map["tls"].map { reader.tlsFiles($0, "registration.tls") } ?? inherited.tls
        if tls == nil, map["tls"] == nil {
            reader.issue(node, "the registration page is served over HTTPS only and no tls is configured", fix: "add tls: certificate/key")
        }
        let admins = reader.strings(map["admin-groups"], "registration.admin-groups")
        if admins.isEmpty { reader.issue(map["admin-groups"] ?? node, "registration.admin-groups is empty", fix: "name the LDAP group(s) of gateway admins") }
        var departments: [String: [String]] = [:]
        if let d = map["department-groups"] {
            for (key, value) in d.mapping ?? [:] {
                guard let id = key.string else { continue }
                let groups = value.sequence != nil ? reader.strings(value, "department-groups.\(id)") : [reader.string(value, "department-groups.\(id)")].compactMap { $0 }
                departments[id] = groups
            }
            if d.mapping == nil {
                reader.issue(d, "registration.department-groups must map department ids to group names", fix: "e.g. department-groups: { it: [dept-it] }")
            }
        }
        var ranges: [AddressRange] = []
        for entry in reader.sequence(map["campus-ranges"], "registration.campus-ranges") {
            guard let text = reader.string(entry, "campus-ranges") else { continue }
            switch AddressRange.parse(text) {
            case .success(let r): ranges.append(r)
            case .failure: reader.issue(entry, "'\(text)' is not an address or CIDR range", fix: "e.g. 10.0.0.0/8")
            }
        }
        if ranges.isEmpty { reader.issue(map["campus-ranges"] ?? node, "registration.campus-ranges is empty", fix: "list the campus networks devices may sit in") }
        let state = reader.string(map["state"], "registration.state")
        if state == nil { reader.issue(node, "registration.state is missing", fix: "a directory for pending requests, e.g. /var/lib/postern/registration") }
        let minutes = reader.int(map["session-minutes"], "registration.session-minutes", range: 1...24 * 60) ?? 60
        let (university, helpURL, contact, notifyAdmins, publicURL) = readPresentation(map, hostname: inherited.hostname, reader: &reader)
        if !inherited.hasDirectory {
            reader.issue(node, "the registration page logs in against the directory, and no directory is configured", fix: "add a directory: section")
        }
        reader.warnBareGroupNames(admins, base: inherited.groupBase, node: map["admin-groups"], what: "registration.admin-groups")
        for id in departments.keys.sorted() {
            reader.warnBareGroupNames(departments[id] ?? [], base: inherited.groupBase, node: map["department-groups"],
                                      what: "registration.department-groups.\(id)")
        }
        guard let tls, let state else { return nil }
        var configuration = RegistrationConfiguration(host: host, port: port, tls: tls, adminGroups: admins, departmentGroups: departments,
                                                      campusRanges: ranges, stateDirectory: reader.resolve(state))
        configuration.sessionLifetime = .seconds(minutes * 60)
        configuration.groupBase = inherited.groupBase
        configuration.universityName = university
        configuration.helpURL = helpURL
        configuration.contact = contact
        configuration.notifyAdmins = notifyAdmins
        configuration.publicURL = publicURL ?? "https://\(inherited.hostname.isEmpty ? host : inherited.hostname):\(port)/"
        return configuration
    }

    /// The page's own words for the university, help and contact: plain text, an http(s) URL or a path, mail addresses.
    static func readPresentation(_ map: [String: Node], hostname: String, reader: inout ConfigReader)
        -> (university: String, helpURL: String, contact: String, notifyAdmins: [String], publicURL: String?) {
        var university = "Example University"
        if let text = reader.string(map["university-name"], "registration.university-name") {
            if text.trimmingCharacters(in: .whitespaces).isEmpty || text.count > 100 {
                reader.issue(map["university-name"], "registration.university-name must be 1 to 100 characters", fix: "e.g. University of Example")
            } else if let problem = DeviceFieldRules.freeTextProblem(text) {
                reader.issue(map["university-name"], "registration.university-name: \(problem)", fix: "plain text, e.g. University of Example")
            } else {
                university = text
            }
        }
        var helpURL = "/help"
        if let text = reader.string(map["help-url"], "registration.help-url") {
            if Self.isLink(text) {
                helpURL = text
            } else {
                reader.issue(map["help-url"], "registration.help-url '\(text)' is not an http(s) URL or a path starting with /",
                             fix: "e.g. https://it.example.edu/legacy-devices")
            }
        }
        func mailbox(_ node: Node?, _ what: String) -> String? {
            guard let text = reader.string(node, what) else { return nil }
            guard (try? AddressParser.parseMailbox(text)) != nil else {
                reader.issue(node, "\(what) '\(text)' is not a mail address", fix: "e.g. postmaster@example.edu")
                return nil
            }
            return text
        }
        let contact = mailbox(map["contact"], "registration.contact") ?? "postmaster@\(hostname.isEmpty ? "localhost" : hostname)"
        let admins = reader.sequence(map["notify-admins"], "registration.notify-admins").compactMap { mailbox($0, "registration.notify-admins") }
        var publicURL: String?
        if let text = reader.string(map["public-url"], "registration.public-url") {
            if text.hasPrefix("https://"), Self.isLink(text) {
                publicURL = text.hasSuffix("/") ? text : text + "/"
            } else {
                reader.issue(map["public-url"], "registration.public-url '\(text)' is not an https URL", fix: "e.g. https://devices.example.edu/")
            }
        }
        return (university, helpURL, contact, admins, publicURL)
    }

    /// An http(s) URL or an absolute path, without white space, quotes or angle brackets (it goes into an attribute).
    static func isLink(_ text: String) -> Bool {
        let lower = text.lowercased()
        guard lower.hasPrefix("https://") || lower.hasPrefix("http://") || (text.hasPrefix("/") && !text.hasPrefix("//")) else { return false }
        return text.unicodeScalars.allSatisfy { $0.value > 0x20 && $0.value < 0x7F && !"\"'<>\\`".unicodeScalars.contains($0) }
    }
}
