/// Sizes as admins write them, the same in postern.yaml and in the policy files: bytes (`26214400`), or a whole
/// number with a binary unit, `512K`, `25M`, `1G` (`25MB` and `25MiB` too, in any case). `_` may group digits
/// (`26_214_400`), as YAML 1.1 allows in numbers.
public enum ByteSize {
    /// What to write, for an issue's fix.
    public static let forms = "write bytes, or a whole number with K, M or G, e.g. 25M"

    /// The bytes `text` stands for; nil when it is not a size or does not fit an `Int` (`99999999999999999999G`
    /// is a mistake to report, not a number to trap on).
    public static func parse(_ text: String) -> Int? {
        var digits = Substring(text.uppercased())
        if digits.hasSuffix("IB") {
            digits = digits.dropLast(2)
        } else if digits.hasSuffix("B"), let unit = digits.dropLast().last, !unit.isNumber {
            digits = digits.dropLast()  // `25MB`; a bare `25B` is not a form
        }
        var factor = 1
        switch digits.last {
        case "K": factor = 1 << 10
        case "M": factor = 1 << 20
        case "G": factor = 1 << 30
        default: break
        }
        if factor > 1 { digits = digits.dropLast() }
        guard let value = wholeNumber(digits) else { return nil }
        let bytes = value.multipliedReportingOverflow(by: factor)
        return bytes.overflow ? nil : bytes.partialValue
    }

    /// ASCII digits, `_` only between two of them; nil for anything else or a value beyond `Int`.
    private static func wholeNumber(_ text: Substring) -> Int? {
        var value = 0
        var previous: UInt8?
        for byte in text.utf8 {
            if byte == UInt8(ascii: "_") {
                guard let p = previous, p != UInt8(ascii: "_") else { return nil }
                previous = byte
                continue
            }
            guard byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9") else { return nil }
            let shifted = value.multipliedReportingOverflow(by: 10)
            let next = shifted.partialValue.addingReportingOverflow(Int(byte - UInt8(ascii: "0")))
            guard !shifted.overflow, !next.overflow else { return nil }
            value = next.partialValue
            previous = byte
        }
        guard let last = previous, last != UInt8(ascii: "_") else { return nil }  // empty, or a trailing `_`
        return value
    }

    /// The shortest way to write `bytes` in these forms: `25M` for 26214400, `1000` for 1000.
    public static func describe(_ bytes: Int) -> String {
        for (unit, factor) in [("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)] where bytes != 0 && bytes % factor == 0 {
            return "\(bytes / factor)\(unit)"
        }
        return "\(bytes)"
    }
}
