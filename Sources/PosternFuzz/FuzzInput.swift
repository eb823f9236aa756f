import NIOCore
import PosternSMTP
import PosternSession

/// One fuzz input: the first bytes choose parameters (chunk sizes, endpoint kind, bare-LF mode), the rest is
/// the byte stream a client would send. Every check is an invariant of the code under test; a violated one
/// traps (`fuzzCheck`), and libFuzzer records the input as a crash.
struct FuzzInput {
    let seed: UInt64
    let flags: UInt8
    let payload: [UInt8]

    init(_ bytes: [UInt8]) {
        var seed: UInt64 = 0x9E37_79B9_7F4A_7C15
        for b in bytes.prefix(4) { seed = (seed ^ UInt64(b)) &* 0x1000_0000_01B3 }
        self.seed = seed
        flags = bytes.count > 4 ? bytes[4] : 0
        payload = bytes.count > 5 ? Array(bytes[5...]) : []
    }

    func run() {
        parseLines()
        frameLines()
        frameData()
        parseOriginators()
        driveSession()
        parseProxyHeader()
        parseReplies()
    }

    // MARK: (a) command and address parsers, line by line

    func parseLines() {
        for raw in payload.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false) {
            var line = raw
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            let text = String(decoding: line, as: UTF8.self)
            do {
                let command = try CommandParser.parse(Substring(text))
                switch command {
                case .mail(let path, _):
                    if let mailbox = path.mailbox { checkMailbox(mailbox) }
                case .rcpt(let mailbox, _):
                    checkMailbox(mailbox)
                case .ehlo(let name), .helo(let name):
                    fuzzCheck(!name.isEmpty && !name.contains(" "), "EHLO name with a space")
                default:
                    break
                }
            } catch {
                checkReply(error.reply)
            }
            if let mailbox = try? AddressParser.parseMailbox(text) { checkMailbox(mailbox) }
        }
    }

    func checkMailbox(_ mailbox: Mailbox) {
        fuzzCheck(mailbox.localPart.utf8.count <= AddressParser.maxLocalPart, "local part over 64 octets")
        fuzzCheck(mailbox.normalized.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F } || mailbox.isQuotedLocalPart,
                  "unquoted address with space or control character")
        fuzzCheck(!mailbox.normalized.utf8.contains(where: { $0 == 0x0D || $0 == 0x0A || $0 == 0 }), "CR, LF or NUL in an address")
        switch mailbox.domain {
        case .name(let name): fuzzCheck(name.utf8.count <= AddressParser.maxDomain, "domain over 255 octets")
        case .literal: break
        }
    }

    // MARK: (b) framers: the same bytes in any chunking give the same result

    func frameLines() {
        let maxLength = [512, 64, 12288][Int(flags % 3)]
        let whole = lines(in: payload, chunking: [payload.count], maxLength: maxLength)
        var random = SplitMix(seed)
        let chunked = lines(in: payload, chunking: random.chunking(of: payload.count), maxLength: maxLength)
        fuzzCheck(whole == chunked, "LineFramer depends on chunking")
    }

    func lines(in bytes: [UInt8], chunking: [Int], maxLength: Int) -> [LineFramer.Line] {
        var framer = LineFramer(maxLength: maxLength)
        var buffer = ByteBuffer()
        var result: [LineFramer.Line] = []
        var offset = 0
        for size in chunking {
            buffer.writeBytes(bytes[offset..<offset + size])
            offset += size
            while let line = framer.next(&buffer) {
                if case .line(let text) = line {
                    fuzzCheck(!text.utf8.contains(UInt8(ascii: "\n")), "line with LF")
                    fuzzCheck(text.utf8.count + 2 <= maxLength || text.unicodeScalars.contains("\u{FFFD}"), "line over the limit")
                }
                result.append(line)
            }
            fuzzCheck(buffer.readableBytes <= maxLength, "LineFramer holds more than the limit")
        }
        return result
    }

    func frameData() {
        let normalize = flags & 0x10 != 0
        let maxSize = [1 << 20, 64, 2048][Int((flags >> 5) % 3)]
        let whole = data(payload, chunking: [payload.count], maxSize: maxSize, normalize: normalize)
        var random = SplitMix(seed &+ 1)
        let chunked = data(payload, chunking: random.chunking(of: payload.count), maxSize: maxSize, normalize: normalize)
        fuzzCheck(whole.outcome == chunked.outcome && whole.consumed == chunked.consumed, "DataFramer depends on chunking")

        // Anti-smuggling: the end of data is exactly the first <CRLF>.<CRLF> (the DATA line's CRLF counts).
        let stream = [0x0D, 0x0A] + payload
        let terminator: [UInt8] = [0x0D, 0x0A, 0x2E, 0x0D, 0x0A]
        var first: Int?
        if stream.count >= 5 {
            for i in 0...(stream.count - 5) where stream[i..<i + 5].elementsEqual(terminator) {
                first = i + 5 - 2
                break
            }
        }
        fuzzCheck(whole.consumed == (first ?? payload.count), "end of data is not the first <CRLF>.<CRLF>")
        fuzzCheck((whole.outcome == nil) == (first == nil), "end of data without <CRLF>.<CRLF>")

        if case .message(let body)? = whole.outcome {
            let bytes = Array(body.readableBytesView)
            fuzzCheck(bytes.count <= maxSize, "message over the size limit accepted")
            fuzzCheck(bytes.isEmpty || bytes.suffix(2).elementsEqual([0x0D, 0x0A]), "message does not end in CRLF")
            var lineLength = 0
            for (i, b) in bytes.enumerated() {
                if b == 0x0A { fuzzCheck(i > 0 && bytes[i - 1] == 0x0D, "bare LF in an accepted message") }
                if b == 0x0D { fuzzCheck(i + 1 < bytes.count && bytes[i + 1] == 0x0A, "bare CR in an accepted message") }
                if b == 0x0D || b == 0x0A { lineLength = 0 } else { lineLength += 1 }
                fuzzCheck(lineLength <= 998, "line over 998 octets in an accepted message")
            }
            if !normalize {
                // Without normalizing, the message is the input with dot-stuffing removed: never longer.
                fuzzCheck(bytes.count <= whole.consumed, "message longer than its input")
            }
        }
    }

    func data(_ bytes: [UInt8], chunking: [Int], maxSize: Int, normalize: Bool) -> (outcome: DataFramer.Outcome?, consumed: Int) {
        var framer = DataFramer(maxMessageSize: maxSize, normalizeBareLF: normalize)
        var buffer = ByteBuffer()
        var offset = 0
        var consumed = 0
        for size in chunking {
            buffer.writeBytes(bytes[offset..<offset + size])
            offset += size
            let before = buffer.readableBytes
            let outcome = framer.feed(&buffer)
            consumed += before - buffer.readableBytes
            if let outcome { return (outcome, consumed) }
            fuzzCheck(buffer.readableBytes == 0, "DataFramer left bytes without finishing")
        }
        return (nil, consumed)
    }

    // MARK: (c) the originator fields (From:, Sender:) of the payload read as a message

    func parseOriginators() {
        let whole = OriginatorParser.parse(payload)
        fuzzCheck(whole == OriginatorParser.parse(payload), "OriginatorParser is not deterministic")
        switch whole {
        case .success(let fields):
            fuzzCheck(fields.addresses.count <= OriginatorParser.maxAddresses, "more addresses than the limit")
            fuzzCheck(fields.fromFields > 0 || fields.addresses.allSatisfy { $0.field == .sender }, "From: address without a From: field")
            for address in fields.addresses {
                checkMailbox(address.mailbox)
                // What policy judges is what MAIL FROM would be: the mailbox parses back to itself.
                let again = try? AddressParser.parseMailbox(address.mailbox.description)
                fuzzCheck(again == address.mailbox, "header address \(address.mailbox) does not parse back to itself")
                address.displayNameAddresses.forEach(checkMailbox)
            }
            // The body never changes what the header section says.
            if let end = headerSectionEnd(payload) {
                var other = Array(payload[..<end])
                other += Array("From: body@elsewhere.example\r\n\r\n".utf8)
                fuzzCheck(OriginatorParser.parse(other) == whole, "the body changed the originator fields")
            }
        case .failure(let error):
            checkReply(SMTPReply(550, "5.7.1", "\(error)"))
        }
        // A smaller limit gives the same answer or says the header section is too long.
        let limit = 64
        switch OriginatorParser.parse(payload, maxHeaderSection: limit) {
        case .failure(.headerSectionTooLong(limit: limit)): break
        case let small: fuzzCheck(small == whole, "the header section limit changed the answer without saying so")
        }
    }

    /// The index just past the empty line (CRLF CRLF) that ends the header section, if there is one.
    func headerSectionEnd(_ bytes: [UInt8]) -> Int? {
        if bytes.starts(with: [0x0D, 0x0A]) { return 2 }
        guard bytes.count >= 4 else { return nil }
        for i in 0...(bytes.count - 4) where bytes[i] == 0x0D && bytes[i + 1] == 0x0A && bytes[i + 2] == 0x0D && bytes[i + 3] == 0x0A {
            return i + 4
        }
        return nil
    }

    // MARK: (d) the session state machine, driven like the channel handler drives it

    func driveSession() {
        let kinds: [ListenerKind] = [.device, .submission, .submissions]
        let kind = kinds[Int(flags % 3)]
        let maxRecipients = flags & 0x08 != 0 ? 3 : 100
        let configuration = SessionConfiguration(hostname: "gw.fuzz", listenerName: kind.rawValue, kind: kind,
                                                 maxMessageSize: 4096, maxRecipients: maxRecipients,
                                                 normalizeBareLF: flags & 0x10 != 0, authAvailable: flags & 0x20 == 0, maxErrors: 20)
        let facts = ConnectionFacts(listenerName: kind.rawValue, kind: kind, clientAddress: "192.0.2.1", sessionID: "fuzz")
        var session = SMTPSession(configuration: configuration, facts: facts, rules: FuzzRules())
        if kind == .submissions { session.tlsEstablished(TLSInfo(version: "TLSv1.3")) }  // implicit TLS: handshake first
        checkReply(session.greeting())

        var random = SplitMix(seed &+ 2)
        var input = ByteBuffer()
        var lineFramer = LineFramer()
        var dataFramer: DataFramer?
        var dataStarted = 0
        var delivered = 0
        var authAnswers = 0
        var offset = 0
        var steps = 0

        /// Applies an action; returns false when the session closed.
        func apply(_ action: SessionAction) -> Bool {
            var action = action
            while true {
                steps += 1
                fuzzCheck(steps < 1_000_000, "session does not make progress")
                switch action {
                case .reply(let reply):
                    checkReply(reply)
                    return true
                case .close(let reply):
                    checkReply(reply)
                    fuzzCheck(session.isClosed, "close action on an open session")
                    return false
                case .startTLS(let reply):
                    checkReply(reply)
                    fuzzCheck(kind == .submission, "STARTTLS outside submission")
                    input.clear()  // pipelined plaintext after STARTTLS is dropped (CVE-2011-0411)
                    session.tlsEstablished(TLSInfo(version: "TLSv1.3"))
                    return true
                case .startData(let reply, let limits):
                    checkReply(reply)
                    fuzzCheck(limits.maxMessageSize <= 4096, "DATA limit above the configured size")
                    dataStarted += 1
                    dataFramer = DataFramer(maxMessageSize: limits.maxMessageSize, normalizeBareLF: limits.normalizeBareLF)
                    return true
                case .authenticate(let credentials):
                    fuzzCheck(kind != .device && session.tlsActive, "AUTH without TLS or on the device endpoint")
                    authAnswers += 1
                    let outcomes: [AuthOutcome] = [
                        .success(AuthenticatedUser(login: credentials.login, distinguishedName: "uid=x", addresses: ["a@example.edu"], groups: [])),
                        .invalidCredentials, .temporaryFailure,
                        .refused(SMTPReply(550, "5.7.1", "not allowed")),
                        .throttled(SMTPReply(421, "4.7.0", "too many failures")),
                    ]
                    action = session.authCompleted(outcomes[authAnswers % outcomes.count])
                case .deliver(let envelope, let body):
                    delivered += 1
                    fuzzCheck(delivered <= dataStarted, "more deliveries than DATA commands")
                    fuzzCheck(!envelope.recipients.isEmpty, "delivery without recipients")
                    fuzzCheck(envelope.recipients.count <= maxRecipients, "more recipients than the limit")
                    fuzzCheck(envelope.recipients.allSatisfy(FuzzRules.isInternal), "delivery to a refused recipient")
                    let keys = envelope.recipients.map { FuzzRules().recipientKey($0) }
                    fuzzCheck(Set(keys).count == keys.count, "a recipient twice in one delivery")
                    // The message received is within the limit; the rules may put one From: field of the sender before it.
                    fuzzCheck(body.readableBytes <= 4096 + "From: \r\n".utf8.count + AddressParser.maxPath, "body over the size limit")
                    // What the rules let through has only internal originators, and a From: field.
                    if case .success(let fields) = OriginatorParser.parse(body) {
                        fuzzCheck(fields.fromFields > 0, "delivery without a From: field")
                        fuzzCheck(fields.addresses.allSatisfy { FuzzRules.isInternal($0.mailbox) }, "delivery with an outside From: or Sender:")
                    } else {
                        fuzzCheck(false, "delivery of a message whose originator fields do not parse")
                    }
                    if kind != .device {
                        fuzzCheck(envelope.facts.tls != nil && envelope.facts.user != nil, "delivery without TLS and AUTH")
                    }
                    action = session.deliveryCompleted(delivered % 2 == 0 ? .queued(id: "Q\(delivered)")
                                                                          : .temporaryFailure(SMTPReply(451, "4.3.0", "spool")))
                }
            }
        }

        // Feed the payload in chunks, as reads arrive; process everything buffered after each.
        for size in random.chunking(of: payload.count) {
            input.writeBytes(payload[offset..<offset + size])
            offset += size
            while true {
                if dataFramer != nil {
                    guard let outcome = dataFramer!.feed(&input) else { break }  // checked just above
                    dataFramer = nil
                    guard apply(session.dataCompleted(outcome)) else { return }
                } else {
                    lineFramer.maxLength = session.maxLineLength
                    guard let line = lineFramer.next(&input) else { break }
                    guard apply(session.receive(line)) else { return }
                }
            }
        }
        _ = session.close(with: SMTPReply(421, "4.4.2", "end of input"))
    }

    // MARK: Replies

    func checkReply(_ reply: SMTPReply) {
        fuzzCheck((200...599).contains(reply.code), "reply code \(reply.code) out of range")
        if let status = reply.enhancedStatus {
            fuzzCheck(status.first == String(reply.code).first, "enhanced status \(status) does not match \(reply.code)")
        }
        let wire = Array(reply.wireString.utf8)
        for (i, b) in wire.enumerated() {
            if b == 0x0A { fuzzCheck(i > 0 && wire[i - 1] == 0x0D, "bare LF in a reply") }
            if b == 0x0D { fuzzCheck(i + 1 < wire.count && wire[i + 1] == 0x0A, "bare CR in a reply") }
        }
        fuzzCheck(wire.split(separator: 0x0A).count == reply.lines.count, "reply text carries a line break")
    }
}

/// Accepts any sender; recipients only in example.edu (and its subdomains).
struct FuzzRules: SessionRules {
    static func isInternal(_ mailbox: Mailbox) -> Bool {
        let domain = mailbox.normalizedDomain
        return domain == "example.edu" || domain.hasSuffix(".example.edu")
    }

    func checkSender(_ facts: ConnectionFacts, sender: ReversePath) -> Verdict { .accept }

    func checkRecipient(_ facts: ConnectionFacts, sender: ReversePath, recipient: Mailbox) -> Verdict {
        Self.isInternal(recipient) ? .accept : .refuse(SMTPReply(550, "5.7.1", "\(recipient): internal recipients only"))
    }

    func messageSizeLimit(_ facts: ConnectionFacts) -> Int? { facts.kind == .device ? 2048 : nil }

    /// A header From policy in small: every From: and Sender: address internal; without From:, the sender's is added.
    func checkMessage(_ facts: ConnectionFacts, sender: ReversePath, message: ByteBuffer) -> MessageVerdict {
        guard case .success(let fields) = OriginatorParser.parse(message) else { return .refuse(SMTPReply(550, "5.7.1", "unreadable From:")) }
        guard fields.addresses.allSatisfy({ Self.isInternal($0.mailbox) }) else { return .refuse(SMTPReply(550, "5.7.1", "outside From:")) }
        guard fields.fromFields == 0 else { return .accept }
        guard case .mailbox(let mailbox) = sender, Self.isInternal(mailbox) else { return .refuse(SMTPReply(550, "5.7.1", "no From:")) }
        return .acceptAdding("From: \(mailbox)\r\n")
    }
}

/// A small deterministic generator (SplitMix64) for chunk sizes.
struct SplitMix {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Splits `count` bytes into chunks of 1 to 64 bytes (sometimes the rest at once).
    mutating func chunking(of count: Int) -> [Int] {
        var sizes: [Int] = []
        var left = count
        while left > 0 {
            let r = next()
            let size = r % 8 == 0 ? left : min(left, Int((r >> 8) % 64) + 1)
            sizes.append(size)
            left -= size
        }
        return sizes.isEmpty ? [0] : sizes
    }
}

/// A violated invariant: a trap libFuzzer records as a crash, with the reason on stderr (`fatalError` keeps
/// its message in optimised builds, `preconditionFailure` does not).
@inline(never)
func fuzzCheck(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String) {
    if !condition() {
        fatalError("fuzz invariant: \(message())")
    }
}
