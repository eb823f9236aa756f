/// Who a successfully authenticated user is, as the directory describes them.
public struct DirectoryIdentity: Sendable, Hashable {
    /// The login as the directory matched it (`LoginName.normalized` of what the client typed).
    public var login: String
    /// The user's entry.
    public var dn: String
    /// Every address the user owns (values of the configured address attributes, in order,
    /// duplicates removed).
    public var addresses: [String]
    /// DNs of the user's groups.
    public var groups: [String]

    public init(login: String, dn: String, addresses: [String], groups: [String]) {
        self.login = login
        self.dn = dn
        self.addresses = addresses
        self.groups = groups
    }
}

/// The outcome of one credential check; each case maps to one SMTP reply.
public enum DirectoryResult: Sendable, Hashable {
    case success(DirectoryIdentity)
    /// Wrong password, unknown or ambiguous login, empty password (`535 5.7.8`).
    case invalidCredentials
    /// The credentials are right but the user is in none of the required groups (answered like a wrong
    /// password, `535 5.7.8`, unless `reveal-not-authorized` asks for `550 5.7.1`).
    case notAuthorized
    /// The directory could not give an answer: unreachable, timed out, misconfigured (`454 4.7.0`).
    case unavailable(String)
}

/// What a password check found, before anyone decides who may pass (`Directory.checkPassword`).
public enum PasswordCheck: Sendable, Hashable {
    /// The password is right; the identity carries the entry's addresses and groups.
    case verified(DirectoryIdentity)
    /// Wrong password, unknown or ambiguous login, empty password.
    case invalidCredentials
    /// The entry was found, and the caller's `beforeBind` said not to bind (the account is locked).
    case refusedBeforeBind
    /// The directory could not give an answer.
    case unavailable(String)
}

/// What `Directory.lookup` found for a login, without a password.
public enum DirectoryLookup: Sendable, Hashable {
    /// One entry; `meetsRequiredGroups` is the gateway's group requirement applied to it.
    case found(DirectoryIdentity, meetsRequiredGroups: Bool)
    /// No entry, or several: SMTP AUTH would answer as for a wrong password.
    case notFound
    /// The directory could not give an answer.
    case unavailable(String)
}
