import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// RFC 5322 section 3.3 date-time in UTC: `Tue, 24 Nov 2026 16:13:54 +0000`.
///
/// Written out by hand (gmtime_r and fixed English names) rather than with a `DateFormatter`:
/// this stamps every accepted message's Received header, and creating a formatter per message
/// cost about 4 % of the gateway's CPU under load; a shared formatter is not safe across threads.
public enum MessageDate {
    private static let days = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
    private static let months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]

    public static func rfc5322(_ date: Date) -> String {
        // A DSN's Arrival-Date comes from a queue file and may be any Double, which time_t(_:) would trap
        // on: dates outside 1970-9999 (no clock of ours makes them) are clamped into it.
        let since1970 = date.timeIntervalSince1970.rounded(.down)
        var seconds = time_t(since1970 >= 0 ? min(since1970, 253_402_300_799) : 0)  // NaN is not >= 0
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let day = days[Int(parts.tm_wday)]
        let month = months[Int(parts.tm_mon)]
        return "\(day), \(two(parts.tm_mday)) \(month) \(parts.tm_year + 1900) \(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)) +0000"
    }
}
