/// What departments.yaml says: the departments that register devices, with their contacts, sunsets and domains.
struct DepartmentsFileContent: Sendable {
    var departments: [String: Department] = [:]
    /// Whether the file was read far enough to tell which departments exist (devices naming others are wrong).
    var isKnown = false
    /// Line of each department's `domains:` entry, for messages about its domains.
    var domainLines: [String: Int] = [:]
    /// Its own problems; the file is not used when there are any.
    var issues: [PolicyIssue] = []

    init(file: String, text: String) {
        var reader = SchemaReader(file: file)
        defer { issues = reader.issues }
        guard let root = reader.document(text),
              let top = reader.mapping(root, what: "departments.yaml", allowed: ["departments"], required: ["departments"]),
              let items = top["departments"].flatMap({ reader.list($0, what: "departments") })
        else { return }
        isKnown = true
        for item in items {
            guard let entry = reader.mapping(item, what: "department", allowed: ["id", "name", "contact", "sunset", "domains"],
                                             required: ["id", "name"]),
                  let idNode = entry["id"], let id = reader.string(idNode, what: "id")
            else { continue }
            guard SchemaReader.isIdentifier(id) else {
                reader.issue(idNode, "department id '\(id)' is not a short name of a-z, 0-9, '-', '_' and '.' starting with a letter or digit",
                             fix: "use a short lower-case name like chem (it names the department's directory in devices.d)")
                continue
            }
            if departments[id] != nil {
                reader.issue(idNode, "department '\(id)' is defined twice", fix: "remove or rename one of the entries")
                continue
            }
            let name = entry["name"].flatMap { reader.string($0, what: "name") } ?? id
            if let n = entry["name"], let problem = DeviceFieldRules.freeTextProblem(name) {
                reader.issue(n, "name of department '\(id)': \(problem)", fix: "write the name in plain text")
            }
            var contact: String?
            if let c = entry["contact"], let text = reader.string(c, what: "contact") {
                if SchemaReader.isMailbox(text) { contact = text } else {
                    reader.issue(c, "contact '\(text)' is not a mail address", fix: "write an address like it-chem@chem.example.edu")
                }
            }
            let sunset = entry["sunset"].flatMap { reader.date($0, what: "sunset") }
            var domains: [DomainPattern] = []
            if let d = entry["domains"], let list = reader.list(d, what: "domains") {
                for dn in list {
                    guard let text = reader.string(dn, what: "domain") else { continue }
                    if let pattern = DomainPattern(text) { domains.append(pattern) } else {
                        reader.issue(dn, "'\(text)' is not a domain", fix: "write a domain like chem.example.edu, or *.chem.example.edu for its subdomains")
                    }
                }
                domainLines[id] = SchemaReader.line(d)
            }
            departments[id] = Department(id: id, name: name, contact: contact, sunset: sunset, domains: domains)
        }
    }

    /// A department's own domains must lie in the internal domains, or its devices could send as anyone.
    func domainIssues(file: String, internalDomains: [DomainPattern]) -> [PolicyIssue] {
        guard isKnown, !internalDomains.isEmpty else { return [] }
        var issues: [PolicyIssue] = []
        for id in departments.keys.sorted() {
            guard let department = departments[id] else { continue }
            for pattern in department.domains {
                if let problem = DeviceFieldRules.departmentDomainProblem(pattern, internalDomains: internalDomains) {
                    issues.append(PolicyIssue(file: file, line: domainLines[id] ?? 0, message: "department '\(id)': \(problem)",
                                              fix: "list only domains inside internal-domains in policy.yaml"))
                }
            }
        }
        return issues
    }
}
