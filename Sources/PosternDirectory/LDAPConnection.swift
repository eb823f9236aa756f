import CLDAP
import Foundation

/// A failure talking to the directory, classified by what it means for the connection.
struct LDAPFailure: Error, CustomStringConvertible {
    /// libldap's result code (negative: client side, e.g. -1 server down, -5 timeout).
    var code: Int32
    var message: String

    /// The connection cannot be trusted any more (lost, timed out mid-operation, TLS failure).
    var breaksConnection: Bool { code < 0 }
    /// The request most likely never reached a server, so retrying on a fresh connection is safe.
    var serverWasDown: Bool { code == LDAP_SERVER_DOWN || code == LDAP_CONNECT_ERROR }

    var description: String { "\(message) (LDAP result \(code))" }
}

/// One entry of a search result.
struct LDAPEntry: Sendable, Hashable {
    var dn: String
    var attributes: [String: [String]]
}

/// A result of a search that may have hit its size limit.
struct LDAPSearchResult: Sendable {
    var entries: [LDAPEntry]
    /// The server had more entries than the size limit allowed.
    var truncated: Bool
}

/// What a simple bind said about the credentials.
enum LDAPBindOutcome: Sendable, Hashable {
    case accepted
    case rejected(code: Int32)
}

/// Settings every connection is opened with.
struct LDAPConnectionSettings: Sendable {
    var servers: [LDAPServerURI]
    var caFile: String?
    var connectTimeout: Duration
    var operationTimeout: Duration
}

/// One libldap handle. Its calls block, so they are made on a thread pool only, and the pool
/// that owns the connection lends it to one task at a time; the lock makes that a guarantee.
///
/// libldap has no timeout for the TLS handshake of an ldaps:// connection, and its own timeouts
/// might not cover every wait; `interrupt()` (from another thread) shuts the socket down so that
/// any blocked call returns.
final class LDAPConnection: @unchecked Sendable {
    private let lock = NSLock()
    private var handle: OpaquePointer?
    let uri: String
    let needsStartTLS: Bool
    private let operationTimeout: Duration
    private let socket = SocketWatch()
    private let callbacks: UnsafeMutablePointer<ldap_conncb>

    private init(handle: OpaquePointer, server: LDAPServerURI, operationTimeout: Duration) {
        self.handle = handle
        self.uri = server.uri
        self.needsStartTLS = server.needsStartTLS
        self.operationTimeout = operationTimeout
        callbacks = .allocate(capacity: 1)
        callbacks.initialize(to: ldap_conncb(
            lc_add: { _, sockbuf, _, _, context in
                var fd: Int32 = -1
                if ber_sockbuf_ctrl(sockbuf, LBER_SB_OPT_GET_FD, &fd) == 1, let arg = context?.pointee.lc_arg {
                    Unmanaged<SocketWatch>.fromOpaque(arg).takeUnretainedValue().opened(fd)
                }
                return 0
            },
            lc_del: { _, _, context in
                if let arg = context?.pointee.lc_arg {
                    Unmanaged<SocketWatch>.fromOpaque(arg).takeUnretainedValue().closing()
                }
            },
            lc_arg: Unmanaged.passUnretained(socket).toOpaque()))
    }

    deinit {
        if let handle { ldap_unbind_ext_s(handle, nil, nil) }
        callbacks.deallocate()
    }

    /// A handle for `server` with every option set; nothing is sent yet.
    static func prepare(server: LDAPServerURI, settings: LDAPConnectionSettings) throws -> LDAPConnection {
        var ld: OpaquePointer?
        let rc = ldap_initialize(&ld, server.uri)
        guard rc == LDAP_SUCCESS, let ld else {
            throw LDAPFailure(code: LDAP_PARAM_ERROR, message: "cannot use URI: \(errorString(rc))")
        }
        let connection = LDAPConnection(handle: ld, server: server, operationTimeout: settings.operationTimeout)
        var version = LDAP_VERSION3
        var networkTimeout = timeval(settings.connectTimeout)
        var apiTimeout = timeval(settings.operationTimeout)
        var requireCert = LDAP_OPT_X_TLS_DEMAND
        var newContextIsServer: Int32 = 0
        try connection.setOption(LDAP_OPT_PROTOCOL_VERSION, &version)
        try connection.setOption(LDAP_OPT_REFERRALS, nil)  // LDAP_OPT_OFF: never chase referrals
        try connection.setOption(LDAP_OPT_NETWORK_TIMEOUT, &networkTimeout)
        try connection.setOption(LDAP_OPT_TIMEOUT, &apiTimeout)
        try connection.setOption(LDAP_OPT_CONNECT_CB, connection.callbacks)
        if let caFile = settings.caFile {
            try caFile.withCString { try connection.setOption(LDAP_OPT_X_TLS_CACERTFILE, $0) }
        }
        try connection.setOption(LDAP_OPT_X_TLS_REQUIRE_CERT, &requireCert)
        // The TLS options above take effect on this handle only once it gets its own context.
        try connection.setOption(LDAP_OPT_X_TLS_NEWCTX, &newContextIsServer)
        return connection
    }

    /// Connects and sets up TLS: StartTLS on ldap://, the handshake on ldaps://. Blocks.
    func secure() throws {
        lock.lock()
        defer { lock.unlock() }
        guard let handle else { throw LDAPFailure(code: LDAP_SERVER_DOWN, message: "connection closed") }
        let rc = needsStartTLS ? ldap_start_tls_s(handle, nil, nil) : ldap_connect(handle)
        guard rc == LDAP_SUCCESS else {
            let failure = failure(rc, doing: needsStartTLS ? "StartTLS" : "connect")
            // Whatever went wrong, this server cannot give us a secured connection now.
            throw LDAPFailure(code: rc < 0 ? rc : LDAP_CONNECT_ERROR, message: failure.message)
        }
    }

    /// Makes a call blocked on this connection return; the connection is unusable afterwards.
    /// Safe to call from any thread at any time.
    func interrupt() {
        socket.interrupt()
    }

    /// Whether `interrupt()` cut the connection.
    var wasInterrupted: Bool { socket.wasInterrupted }

    private func setOption(_ option: Int32, _ value: UnsafeRawPointer?) throws {
        let rc = ldap_set_option(handle, option, value)
        guard rc == LDAP_OPT_SUCCESS else {
            throw LDAPFailure(code: LDAP_LOCAL_ERROR, message: "cannot set LDAP option \(option)")
        }
    }

    /// A simple bind. A result code from the server is an outcome; anything that keeps the server
    /// from answering is thrown.
    func bind(dn: String, password: [UInt8]) throws -> LDAPBindOutcome {
        lock.lock()
        defer { lock.unlock() }
        guard let handle else { throw LDAPFailure(code: LDAP_SERVER_DOWN, message: "connection closed") }
        var bytes = password.map { CChar(bitPattern: $0) }
        let rc: Int32 = bytes.withUnsafeMutableBufferPointer { buffer in
            var credential = berval(bv_len: ber_len_t(buffer.count), bv_val: buffer.baseAddress)
            // A nil mechanism is LDAP_SASL_SIMPLE.
            return ldap_sasl_bind_s(handle, dn, nil, &credential, nil, nil, nil)
        }
        // Do not keep a copy of the password around longer than needed.
        for index in bytes.indices { bytes[index] = 0 }
        if rc == LDAP_SUCCESS { return .accepted }
        if rc < 0 { throw failure(rc, doing: "bind") }
        return .rejected(code: rc)
    }

    /// A subtree search returning at most `sizeLimit` entries (0: no limit).
    func search(base: String, filter: String, attributes: [String], sizeLimit: Int32) throws -> LDAPSearchResult {
        lock.lock()
        defer { lock.unlock() }
        guard let handle else { throw LDAPFailure(code: LDAP_SERVER_DOWN, message: "connection closed") }
        var attributeList: [UnsafeMutablePointer<CChar>?] = attributes.map { strdup($0) } + [nil]
        defer { for pointer in attributeList { free(pointer) } }
        var timeout = timeval(operationTimeout)
        var message: OpaquePointer?
        defer { if message != nil { ldap_msgfree(message) } }
        let rc = attributeList.withUnsafeMutableBufferPointer { list in
            ldap_search_ext_s(handle, base, LDAP_SCOPE_SUBTREE, filter, list.baseAddress, 0, nil, nil, &timeout, sizeLimit, &message)
        }
        switch rc {
        case LDAP_SUCCESS, LDAP_SIZELIMIT_EXCEEDED:
            break
        case LDAP_NO_SUCH_OBJECT:
            return LDAPSearchResult(entries: [], truncated: false)
        default:
            throw failure(rc, doing: "search")
        }
        var entries: [LDAPEntry] = []
        var entry = ldap_first_entry(handle, message)
        while let current = entry {
            var dn = ""
            if let raw = ldap_get_dn(handle, current) {
                dn = String(cString: raw)
                ldap_memfree(raw)
            }
            var values: [String: [String]] = [:]
            for attribute in attributes where attribute != "1.1" {
                guard let list = ldap_get_values_len(handle, current, attribute) else { continue }
                var strings: [String] = []
                var index = 0
                while let value = list[index] {
                    let buffer = UnsafeRawBufferPointer(start: value.pointee.bv_val, count: Int(value.pointee.bv_len))
                    strings.append(String(decoding: buffer, as: UTF8.self))
                    index += 1
                }
                ldap_value_free_len(list)
                values[attribute] = strings
            }
            entries.append(LDAPEntry(dn: dn, attributes: values))
            entry = ldap_next_entry(handle, current)
        }
        return LDAPSearchResult(entries: entries, truncated: rc == LDAP_SIZELIMIT_EXCEEDED)
    }

    /// Sends an unbind and frees the handle. Further calls fail as "connection closed".
    func close() {
        lock.lock()
        defer { lock.unlock() }
        if let handle { ldap_unbind_ext_s(handle, nil, nil) }
        handle = nil
    }

    private func failure(_ rc: Int32, doing operation: String) -> LDAPFailure {
        var text = "\(operation) failed: \(Self.errorString(rc))"
        var diagnostic: UnsafeMutablePointer<CChar>?
        if let handle, ldap_get_option(handle, LDAP_OPT_DIAGNOSTIC_MESSAGE, &diagnostic) == LDAP_OPT_SUCCESS, let diagnostic {
            let detail = String(cString: diagnostic)
            ldap_memfree(diagnostic)
            if !detail.isEmpty { text += " (\(detail))" }
        }
        return LDAPFailure(code: rc, message: text)
    }

    static func errorString(_ rc: Int32) -> String {
        guard let text = ldap_err2string(rc) else { return "LDAP error \(rc)" }
        return String(cString: text)
    }
}

extension timeval {
    init(_ duration: Duration) {
        let (seconds, attoseconds) = duration.components
        self.init(tv_sec: Int(seconds), tv_usec: Int(attoseconds / 1_000_000_000_000))
    }
}

/// The socket under a libldap handle, as libldap's connection callbacks report it.
final class SocketWatch: @unchecked Sendable {
    private let lock = NSLock()
    private var fd: Int32 = -1
    private var interrupted = false

    func opened(_ descriptor: Int32) {
        lock.withLock {
            fd = descriptor
            if interrupted { _ = shutdown(descriptor, Int32(SHUT_RDWR)) }
        }
    }

    func closing() { lock.withLock { fd = -1 } }

    func interrupt() {
        lock.withLock {
            interrupted = true
            if fd >= 0 { _ = shutdown(fd, Int32(SHUT_RDWR)) }
        }
    }

    var wasInterrupted: Bool { lock.withLock { interrupted } }
}
