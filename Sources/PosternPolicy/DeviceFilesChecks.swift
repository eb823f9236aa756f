// The checks of devices.d that span files, on the records `DeviceFiles.scan` keeps: each device against its
// department and policy.yaml (`DeviceFieldRules`), directories against departments.yaml, and all devices
// against each other (`DeviceCatalog`).
extension DeviceFiles {
    /// Works out the rule issues of the files read by the last scan, and of every file of a department whose
    /// rules changed (its domains, or the internal domains). Without departments.yaml or internal domains the
    /// rules have nothing to judge by; those files' own errors say why.
    mutating func checkRules(internalDomains: [DomainPattern], departments: DepartmentsFileContent?) {
        for name in Array(self.departments.keys) {
            guard var files = self.departments.removeValue(forKey: name) else { continue }
            let context = departments?.departments[name].flatMap { department in
                internalDomains.isEmpty ? nil : RuleContext(internalDomains: internalDomains, department: department)
            }
            let names = files.ruleContext == context ? files.fresh : Array(files.files.keys)
            files.ruleContext = context
            for fileName in names {
                guard var record = files.files[fileName] else { continue }
                if let context, let device = record.reading.device {
                    record.ruleIssues = DeviceSchema.ruleIssues(device, reading: record.reading, file: record.reading.file,
                                                                department: context.department, internalDomains: context.internalDomains)
                } else {
                    record.ruleIssues = []
                }
                if record.hasIssues { files.troubled.insert(fileName) } else { files.troubled.remove(fileName) }
                files.files[fileName] = record
            }
            files.fresh = []
            self.departments[name] = files
        }
    }

    /// Every problem of devices.d but those between devices (duplicate ids, overlaps: `catalog`).
    func issues(departments: DepartmentsFileContent?, display: String) -> [PolicyIssue] {
        var issues = topIssues
        let known = departments?.isKnown == true ? departments?.departments : nil
        for (name, files) in self.departments {
            if let issue = files.directoryIssue { issues.append(issue) }
            issues += files.entryIssues.values
            if let known, known[name] == nil, !files.files.isEmpty {
                let names = known.keys.sorted().joined(separator: ", ")
                issues.append(PolicyIssue(file: display + "/" + name, line: 0, message: "directory '\(name)' is not a department in departments.yaml",
                                          fix: names.isEmpty ? "add the department to departments.yaml" : "use one of: \(names), or add it to departments.yaml"))
            }
            for fileName in files.troubled {
                guard let record = files.files[fileName] else { continue }
                issues += record.reading.issues + record.ruleIssues
            }
        }
        return issues
    }

    /// The device tables: `base` (the last good load's) patched with the files changed since, or, without a base or
    /// when a changed device may clash with another, built from every device with each clash in `issues` (reported on
    /// the file in `blaming`, of the two, when one is).
    func catalog(patching base: DeviceCatalog?, blaming: Set<String> = [], counts: inout PolicyLoadCounts, issues: inout [PolicyIssue]) -> DeviceCatalog {
        if let base {
            let keys = pending.sorted()
            var adding: [DeviceEntry] = []
            for key in keys {
                if let record = departments[key.department]?.files[key.name], let entry = Self.entry(record) { adding.append(entry) }
            }
            if let patched = base.patched(removing: keys.map { ($0.id, $0.department) }, adding: adding) {
                counts.catalogPatched = true
                return patched
            }
        }
        var entries: [DeviceEntry] = []
        for files in departments.values {
            for record in files.files.values {
                if let entry = Self.entry(record) { entries.append(entry) }
            }
        }
        let (catalog, clashes) = DeviceCatalog.build(entries, blaming: blaming)
        issues += clashes
        return catalog
    }

    static func entry(_ record: DeviceFileRecord) -> DeviceEntry? {
        guard let device = record.reading.device else { return nil }
        return DeviceEntry(device: device, file: record.reading.file, idLine: record.reading.idLine, addressesLine: record.reading.addressesLine,
                           sourceDigest: record.reading.digest)
    }
}
