import Foundation

/// Building search filters from templates without letting input change their structure.
enum LDAPFilter {
    /// Escapes a value for use inside an RFC 4515 filter: `*`, `(`, `)`, `\` and NUL become
    /// `\2a`, `\28`, `\29`, `\5c`, `\00`. Everything else (UTF-8 included) is kept.
    static func escape(_ value: String) -> String {
        var out = ""
        out.unicodeScalars.reserveCapacity(value.unicodeScalars.count)
        for scalar in value.unicodeScalars {
            switch scalar {
            case "*": out += "\\2a"
            case "(": out += "\\28"
            case ")": out += "\\29"
            case "\\": out += "\\5c"
            case "\u{0}": out += "\\00"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// The template with every `%s` replaced by the escaped value.
    static func fill(_ template: String, with value: String) -> String {
        template.replacingOccurrences(of: "%s", with: escape(value))
    }
}
