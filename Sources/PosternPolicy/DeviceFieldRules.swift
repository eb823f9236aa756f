import Foundation
import PosternSMTP

/// The rules a device registration's fields follow, wherever it comes from: the registration page checks a
/// request's fields with them, and the policy loader checks every device file with them, which is what
/// `postern devices add`, approval on the page and `postern check` go through. A sunset that is written (a
/// registration, a sunset change) follows `sunsetProblem` on the page and in `DeviceFilesEditor` alike. One place,
/// so the three cannot drift apart.
public enum DeviceFieldRules {
    /// nil when `text` may be stored in the policy files and shown on the page and in reminder mails.
    ///
    /// Refused: C0 and C1 controls (U+0085 and friends are line breaks to libyaml, and would end the line of a
    /// comment or a message), U+2028/U+2029 (the same, and line breaks in a browser) and the bidirectional
    /// controls, which make text read differently from what it is (Trojan Source).
    /// `allowLineBreaks` lets CR and LF through, for a multi-line field stored as JSON only (the justification).
    public static func freeTextProblem(_ text: String, allowLineBreaks: Bool = false) -> String? {
        for scalar in text.unicodeScalars {
            let v = scalar.value
            if allowLineBreaks && (v == 0x0A || v == 0x0D) { continue }
            if v < 0x20 || (0x7F...0x9F).contains(v) {
                return "control character U+\(hex(v)) is not allowed"
            }
            if v == 0x2028 || v == 0x2029 {
                return "line or paragraph separator U+\(hex(v)) is not allowed"
            }
            if bidiControls.contains(v) {
                return "bidirectional control U+\(hex(v)) is not allowed"
            }
        }
        return nil
    }

    /// ALM, LRM, RLM, the embeddings and overrides, and the isolates.
    static let bidiControls: Set<UInt32> = [0x061C, 0x200E, 0x200F, 0x202A, 0x202B, 0x202C, 0x202D, 0x202E, 0x2066, 0x2067, 0x2068, 0x2069]

    private static func hex(_ v: UInt32) -> String {
        let digits = String(v, radix: 16, uppercase: true)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    /// The domains a department's devices may send from: its own, or the internal domains when it lists none.
    public static func senderDomains(department: Department, internalDomains: [DomainPattern]) -> [DomainPattern] {
        department.domains.isEmpty ? internalDomains : department.domains
    }

    /// nil when every address `sender` allows lies in the department's domains (or the internal ones, failing those).
    public static func senderProblem(_ sender: SenderPattern, department: Department, internalDomains: [DomainPattern]) -> String? {
        let allowed = senderDomains(department: department, internalDomains: internalDomains)
        let pattern = sender.domainPattern
        guard !allowed.contains(where: { $0.covers(pattern) }) else { return nil }
        let whose = department.domains.isEmpty ? "the internal domains" : "department \(department.id)'s domains"
        return "sender \(sender) is outside \(whose) (\(allowed.map(\.description).joined(separator: ", ")))"
    }

    /// Whether the approving admin should look twice: the sender is not in the department's own domains (it has
    /// none, so only the internal domains bound it).
    public static func isOutsideOwnDomains(_ sender: SenderPattern, department: Department) -> Bool {
        !department.domains.contains { $0.covers(sender.domainPattern) }
    }

    /// nil when `address` is a mail address in the internal domains: the contact gets the sunset reminders,
    /// which Postern sends as postmaster and which quote the device's fields.
    public static func contactProblem(_ address: String, internalDomains: [DomainPattern]) -> String? {
        guard let mailbox = try? AddressParser.parseMailbox(address), case .name = mailbox.domain else {
            return "\(address) is not a mail address"
        }
        let domain = mailbox.normalizedDomain
        guard internalDomains.contains(where: { $0.matches(domain) }) else {
            return "\(address) is not an internal address (\(internalDomains.map(\.description).joined(separator: ", ")))"
        }
        return nil
    }

    /// The last day the rules allow a device of `department`: the earlier of its department's sunset and the global
    /// one, with which of the two it is; nil when neither is set.
    public static func latestSunset(department: Department?, globalSunset: CalendarDate?) -> (date: CalendarDate, rule: String)? {
        switch (department?.sunset, globalSunset) {
        case (let own?, let global?) where own < global: return (own, "department \(department?.id ?? "")'s sunset")
        case (_, let global?): return (global, "the global sunset")
        case (let own?, nil): return (own, "department \(department?.id ?? "")'s sunset")
        case (nil, nil): return nil
        }
    }

    /// nil when `sunset` may be written as the last day of a device of `department` today: not before `today`, and
    /// not after the last day the rules allow (`latestSunset`), which would end the device first anyway. For what is
    /// written: a registration (the page, its approval, `postern devices add`) and a sunset change. A file that is
    /// already there and goes past the global sunset is a warning of `postern check`.
    public static func sunsetProblem(_ sunset: CalendarDate, department: Department?, globalSunset: CalendarDate?,
                                     today: CalendarDate) -> String? {
        if sunset < today { return "sunset \(sunset) cannot be in the past (today is \(today))" }
        if let latest = latestSunset(department: department, globalSunset: globalSunset), sunset > latest.date {
            return "the rules allow \(latest.date) at the latest for department \(department?.id ?? "?") (\(latest.rule)), not \(sunset)"
        }
        return nil
    }

    /// How a `recipients:` entry is written, for messages.
    public static let recipientForms = "write owner (the device's owner), an address like j.doe@chem.example.edu, or a domain like *@chem.example.edu"

    /// nil when `recipient` lies inside the internal domains: the device endpoint takes internal recipients only, so an
    /// entry outside them would never match (and reads as if it allowed something it does not).
    public static func recipientProblem(_ recipient: RecipientPattern, internalDomains: [DomainPattern]) -> String? {
        guard let pattern = recipient.domainPattern, !internalDomains.contains(where: { $0.covers(pattern) }) else { return nil }
        return "recipient rule \(recipient) is outside the internal domains (\(internalDomains.map(\.description).joined(separator: ", ")))"
    }

    /// The texts of `recipients` (as typed on the page or to `postern devices add`) that are no recipient rule, or
    /// lie outside the internal domains, with why.
    public static func recipientsProblem(_ texts: [String], internalDomains: [DomainPattern]) -> String? {
        for text in texts {
            guard let pattern = RecipientPattern(text) else { return "'\(text)' is not a recipient rule: \(recipientForms)" }
            if let problem = recipientProblem(pattern, internalDomains: internalDomains) { return problem }
        }
        return nil
    }

    /// nil when a department's own domain lies in the internal domains; else its devices could send as anyone.
    public static func departmentDomainProblem(_ pattern: DomainPattern, internalDomains: [DomainPattern]) -> String? {
        guard !internalDomains.contains(where: { $0.covers(pattern) }) else { return nil }
        return "domain \(pattern) is not inside the internal domains"
    }
}
