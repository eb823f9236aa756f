import Foundation

/// A new device as an admin describes it to `postern devices add`, or the registration page's approval does.
public struct DeviceRegistration: Sendable, Hashable {
    public var id: String
    public var department: String
    public var owner: String
    public var location: String?
    /// Free text kept with the entry (e.g. the model, or where the registration came from).
    public var note: String?
    public var addresses: [String]
    public var senders: [String]
    /// Defaults to the global sunset date.
    public var sunset: CalendarDate?
    /// Bytes or with a suffix (`10M`), as in a device file.
    public var maxMessageSize: String?
    /// e.g. `60/hour`.
    public var maxRate: String?
    /// `recipients:` rules (`owner`, an address, `*@a.domain`); empty: any internal recipient.
    public var recipients: [String]

    public init(id: String, department: String, owner: String, location: String? = nil, addresses: [String],
                senders: [String], sunset: CalendarDate? = nil, maxMessageSize: String? = nil, maxRate: String? = nil,
                note: String? = nil, recipients: [String] = []) {
        self.recipients = recipients
        self.id = id
        self.note = note
        self.department = department
        self.owner = owner
        self.location = location
        self.addresses = addresses
        self.senders = senders
        self.sunset = sunset
        self.maxMessageSize = maxMessageSize
        self.maxRate = maxRate
    }
}
