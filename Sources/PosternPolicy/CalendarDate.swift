import Foundation

/// A day in the proleptic Gregorian calendar, as policy files write it (`2026-06-30`).
///
/// Sunset dates are calendar dates, not instants: "expired on 2026-06-30" means 2026-06-30 is the
/// last valid day in the policy's time zone. Arithmetic is done on day numbers so it needs no `Calendar`.
public struct CalendarDate: Sendable, Hashable, Comparable, CustomStringConvertible {
    public let year: Int
    public let month: Int
    public let day: Int

    /// Parses `YYYY-MM-DD` strictly (four-digit year, two-digit month and day, a day that exists).
    public init?(_ text: String) {
        guard case .success(let date) = Self.parse(text) else { return nil }
        self = date
    }

    /// Why a text is not a calendar date, in the words every place that reads dates uses (policy files, the
    /// registration page, `postern devices add`).
    public enum Problem: Error, Sendable, Equatable {
        /// Not of the form YYYY-MM-DD.
        case notADate(String)
        /// Of the form, but no such day: 2027-02-30, 2027-13-01.
        case noSuchDay(year: Int, month: Int, day: Int)

        public var message: String {
            switch self {
            case .notADate(let text):
                return "'\(text)' is not a date: write YYYY-MM-DD, e.g. 2027-06-30"
            case .noSuchDay(let year, let month, let day):
                let text = CalendarDate(unchecked: year, month, day).description
                guard (1...12).contains(month) else { return "\(text) does not exist: there is no month \(month)" }
                return "\(text) does not exist: \(CalendarDate.monthNames[month - 1]) \(year) has \(CalendarDate.daysInMonth(year: year, month: month)) days"
            }
        }
    }

    static let monthNames = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
                             "November", "December"]

    /// `YYYY-MM-DD` as a day that exists, or why not.
    public static func parse(_ text: String) -> Result<CalendarDate, Problem> {
        var copy = text
        let parts = copy.withUTF8 { bytes -> (Int, Int, Int)? in
            guard bytes.count == 10, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-") else { return nil }
            func number(_ range: Range<Int>) -> Int? {
                var value = 0
                for b in bytes[range] {
                    guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(b) else { return nil }
                    value = value * 10 + Int(b - UInt8(ascii: "0"))
                }
                return value
            }
            guard let y = number(0..<4), let m = number(5..<7), let d = number(8..<10) else { return nil }
            return (y, m, d)
        }
        guard let (y, m, d) = parts else { return .failure(.notADate(String(text.prefix(40)))) }
        guard let date = CalendarDate(year: y, month: m, day: d) else { return .failure(.noSuchDay(year: y, month: m, day: d)) }
        return .success(date)
    }

    public init?(year: Int, month: Int, day: Int) {
        guard (1...12).contains(month), day >= 1, day <= Self.daysInMonth(year: year, month: month) else { return nil }
        self.year = year
        self.month = month
        self.day = day
    }

    private init(unchecked year: Int, _ month: Int, _ day: Int) {
        self.year = year
        self.month = month
        self.day = day
    }

    /// The calendar date that `date` falls on in `timeZone`.
    public init(_ date: Date, in timeZone: TimeZone) {
        let local = date.timeIntervalSince1970 + Double(timeZone.secondsFromGMT(for: date))
        self = Self(dayNumber: Int((local / 86_400).rounded(.down)))
    }

    /// Days since 1970-01-01 (negative before it).
    public var dayNumber: Int {
        // Howard Hinnant's days_from_civil.
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yoe = y - era * 400
        let mp = (month + 9) % 12
        let doy = (153 * mp + 2) / 5 + day - 1
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy
        return era * 146_097 + doe - 719_468
    }

    public init(dayNumber: Int) {
        // Howard Hinnant's civil_from_days.
        let z = dayNumber + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        self.init(unchecked: yoe + era * 400 + (m <= 2 ? 1 : 0), m, d)
    }

    public func adding(days: Int) -> CalendarDate { CalendarDate(dayNumber: dayNumber + days) }

    /// Whole days from `self` to `other` (positive when `other` is later).
    public func days(until other: CalendarDate) -> Int { other.dayNumber - dayNumber }

    /// The first instant of this day in `timeZone`.
    public func startOfDay(in timeZone: TimeZone) -> Date {
        let utc = Date(timeIntervalSince1970: Double(dayNumber) * 86_400)
        // Two passes settle the offset across a DST change near midnight.
        var guess = utc.addingTimeInterval(-Double(timeZone.secondsFromGMT(for: utc)))
        guess = utc.addingTimeInterval(-Double(timeZone.secondsFromGMT(for: guess)))
        return guess
    }

    public var description: String {
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))"
    }

    public static func < (lhs: CalendarDate, rhs: CalendarDate) -> Bool { lhs.dayNumber < rhs.dayNumber }

    static func daysInMonth(year: Int, month: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }
}
