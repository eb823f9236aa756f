import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Revocation and sunset changes: the same validated, locked, atomic path as `append`, touching only the lines of one entry.
extension DevicesFileEditor {
    /// Removes the device's entry (with the comment lines directly above it) and returns the device as it was.
    /// The rest of the file (other entries, comments, order) is unchanged.
    public static func remove(id: String, directory: URL) -> Result<RegisteredDevice, PolicyErrors> {
        edit(directory: directory, id: id) { lines, entry, policy in
            guard let device = policy.device(id: id) else { return .refused("device '\(id)' is not registered", "check the id (postern devices list)") }
            var start = entry.start
            while start > 0, isComment(lines[start - 1]) { start -= 1 }
            var end = entry.end
            lines.removeSubrange(start..<end)
            end = start
            // Keep one blank line between the neighbours, not two.
            if start > 0, isBlank(lines[start - 1]), end == lines.count || isBlank(lines[end]) {
                lines.remove(at: start - 1)
            }
            if entry.isOnly, let keyLine = entry.listKeyLine, keyLine < lines.count {
                lines[keyLine] = lines[keyLine].replacingOccurrences(of: #"devices:\s*$"#, with: "devices: []", options: .regularExpression)
            }
            return .edited(device)
        } check: { policy, _ in
            policy.device(id: id) == nil
        }
    }

    /// Sets the device's own sunset date (its last valid day). Department and global dates still apply on top.
    public static func setSunset(id: String, date: CalendarDate, directory: URL) -> Result<RegisteredDevice, PolicyErrors> {
        edit(directory: directory, id: id) { lines, entry, policy in
            guard let line = entry.sunsetLine, line < lines.count, let old = entry.sunsetText else {
                return .refused("device '\(id)' has no sunset line to change", "add 'sunset: YYYY-MM-DD' to its entry")
            }
            let pattern = #"(sunset\s*:\s*["']?)"# + NSRegularExpression.escapedPattern(for: old)
            guard let range = lines[line].range(of: pattern, options: .regularExpression) else {
                return .refused("cannot find the sunset date of '\(id)' on line \(line + 1)", "edit devices.yaml by hand")
            }
            let matched = String(lines[line][range])
            lines[line].replaceSubrange(range, with: matched.dropLast(old.count) + date.description)
            return .edited(nil)
        } check: { policy, _ in
            policy.device(id: id)?.sunset == date
        }
    }

    enum EditOutcome {
        case edited(RegisteredDevice?)
        case refused(String, String)
    }

    /// Where one device's entry sits in devices.yaml (0-based line indexes).
    struct EntryLines {
        var start: Int
        /// One past the last line of the entry (trailing blank lines included, the next entry's comments not).
        var end: Int
        var isOnly: Bool
        var listKeyLine: Int?
        var sunsetLine: Int?
        var sunsetText: String?
    }

    /// Under the lock: load and check the current policy, locate the entry, apply `change`, validate the new text, write it atomically.
    static func edit(directory: URL, id: String,
                     _ change: (inout [String], EntryLines, PolicySet) -> EditOutcome,
                     check: (PolicySet, RegisteredDevice?) -> Bool) -> Result<RegisteredDevice, PolicyErrors> {
        let devicesURL = directory.appendingPathComponent(PolicyLoader.devicesFile)
        let display = PolicyLoader.displayPath(directory: directory, name: PolicyLoader.devicesFile)
        func failure(_ message: String, _ fix: String, line: Int = 0) -> Result<RegisteredDevice, PolicyErrors> {
            .failure(PolicyErrors(issues: [PolicyIssue(file: display, line: line, message: message, fix: fix)]))
        }
        let current: PolicySet
        let lock: DevicesLock
        switch lockAndLoad(directory: directory, display: display, refusal: "devices.yaml was not changed") {
        case .failure(let errors): return .failure(errors)
        case .success(let (held, policy)): (lock, current) = (held, policy)
        }
        defer { lock.release() }
        guard let before = current.device(id: id) else { return failure("device '\(id)' is not registered", "check the id (postern devices list)") }
        guard let data = try? Data(contentsOf: devicesURL), let text = String(data: data, encoding: .utf8) else {
            return failure("cannot read \(display)", "check that it exists and is UTF-8")
        }
        var lines = text.components(separatedBy: "\n")
        let hadFinalNewline = lines.last == ""
        if hadFinalNewline { lines.removeLast() }
        guard let entry = locate(id: id, in: text, lineCount: lines.count) else {
            return failure("cannot find the entry of '\(id)' in \(display)", "edit devices.yaml by hand", line: before.line)
        }
        let edited: RegisteredDevice?
        switch change(&lines, entry, current) {
        case .refused(let message, let fix): return failure(message, fix, line: before.line)
        case .edited(let device): edited = device
        }
        let newText = lines.joined(separator: "\n") + (hadFinalNewline || lines.isEmpty ? "\n" : "")
        switch PolicyLoader.load(directory: directory, replacing: [PolicyLoader.devicesFile: newText]) {
        case .failure(var errors):
            errors.issues.append(PolicyIssue(file: display, line: before.line, message: "the change to '\(id)' was refused, devices.yaml is unchanged",
                                             fix: "correct the request"))
            return .failure(errors)
        case .success(let policy):
            let after = policy.device(id: id)
            guard check(policy, after) else { return failure("the edit of '\(id)' did not have the intended effect", "report this as a bug", line: before.line) }
            do {
                try writeAtomically(Data(newText.utf8), to: devicesURL)
            } catch {
                return failure("cannot write \(display): \(error)", "check the directory's permissions and free space")
            }
            return .success(edited ?? after ?? before)
        }
    }

    /// Finds the entry's lines through the YAML parser's line numbers.
    static func locate(id: String, in text: String, lineCount: Int) -> EntryLines? {
        // The parser's numbers count line breaks that the split at LF does not; they would point at
        // other lines, or past the last one (an index out of range, a trap in the gateway's process).
        guard !hasLineBreaksBesideLF(text),
              let root = try? YAMLTree.compose(text), case .mapping(let pairs, _) = root,
              let pair = pairs.first(where: { $0.key.string == "devices" }), case .sequence(let items, _) = pair.value
        else { return nil }
        let lines = text.components(separatedBy: "\n")
        for (index, item) in items.enumerated() {
            guard case .mapping(let fields, let line) = item,
                  fields.contains(where: { $0.key.string == "id" && $0.value.string == id }) else { continue }
            let start = line - 1
            guard start >= 0, start < lineCount else { return nil }
            var end: Int
            if index + 1 < items.count {
                end = min(items[index + 1].line - 1, lineCount)
                while end > start + 1, isComment(lines[end - 1]) { end -= 1 }
            } else {
                // The last entry runs to the next top-level key or the end of the file.
                end = lineCount
                for i in (start + 1)..<max(lineCount, start + 1) where !isBlank(lines[i]) && !isComment(lines[i]) && !lines[i].hasPrefix(" ") && !lines[i].hasPrefix("-") {
                    end = i
                    break
                }
                while end > start + 1, isComment(lines[end - 1]) { end -= 1 }
            }
            let sunset = fields.first(where: { $0.key.string == "sunset" })
            return EntryLines(start: start, end: end, isOnly: items.count == 1, listKeyLine: pair.key.line - 1,
                              sunsetLine: sunset.map { $0.value.line - 1 }, sunsetText: sunset?.value.string)
        }
        return nil
    }

    /// A line break libyaml counts that is not an LF (with or without its CR): a bare CR, NEL, LINE
    /// SEPARATOR or PARAGRAPH SEPARATOR.
    private static func hasLineBreaksBesideLF(_ text: String) -> Bool {
        var afterCR = false
        for scalar in text.unicodeScalars {
            if afterCR && scalar != "\n" { return true }
            afterCR = scalar == "\r"
            if scalar == "\u{85}" || scalar == "\u{2028}" || scalar == "\u{2029}" { return true }
        }
        return afterCR
    }

    private static func isBlank(_ line: String) -> Bool { line.allSatisfy { $0 == " " || $0 == "\t" || $0 == "\r" } }
    private static func isComment(_ line: String) -> Bool { line.trimmingCharacters(in: .whitespaces).hasPrefix("#") }
}
