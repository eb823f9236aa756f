import Foundation

/// aiosmtpd (Debian's python3-aiosmtpd) as a real third-party mutual-TLS upstream: STARTTLS
/// required, client certificate required and verified against `clientCA`. Each message is
/// written to `outbox` as `<n>.eml` with `X-Peer-Cert:` and envelope headers prepended.
public final class TestUpstream: @unchecked Sendable {
    public let port: Int
    public let outbox: String
    let runner: ProcessRunner

    static let script = #"""
import asyncio, os, ssl, sys, time, itertools
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

port, cert, key, ca, outbox = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(cert, key)
context.load_verify_locations(ca)
context.verify_mode = ssl.CERT_REQUIRED
counter = itertools.count()

class Handler:
    async def handle_DATA(self, server, session, envelope):
        peer = session.ssl.get('peercert') if session.ssl else None
        subject = dict(x[0] for x in peer['subject'])['commonName'] if peer else 'none'
        n = next(counter)
        tmp = os.path.join(outbox, '.%d.tmp' % n)
        with open(tmp, 'wb') as f:
            f.write(('X-Peer-Cert: %s\r\nX-Envelope-From: <%s>\r\nX-Envelope-To: %s\r\n' % (subject, envelope.mail_from, ', '.join(envelope.rcpt_tos))).encode())
            f.write(envelope.original_content)
        os.rename(tmp, os.path.join(outbox, '%d.eml' % n))
        return '250 2.0.0 Ok: stored'

class Ctl(Controller):
    def factory(self):
        return SMTP(self.handler, require_starttls=True, tls_context=context, hostname='upstream.localhost')

ctl = Ctl(Handler(), hostname='127.0.0.1', port=port)
ctl.start()
print('ready', flush=True)
while True:
    time.sleep(3600)
"""#

    public init(certificates: RelayTestCertificates, clientCA: String? = nil) throws {
        port = freeLoopbackPort()
        outbox = FileManager.default.temporaryDirectory.appendingPathComponent("postern-upstream-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: outbox, withIntermediateDirectories: true)
        let scriptPath = outbox + ".py"
        try Self.script.write(toFile: scriptPath, atomically: true, encoding: .utf8)
        runner = try ProcessRunner("/usr/bin/python3", [scriptPath, "\(port)", certificates.serverCertificate, certificates.serverKey,
                                                        clientCA ?? certificates.ca, outbox])
        guard relayTestWaitForPort(port, timeout: 15) else {
            runner.stop()
            throw NSError(domain: "TestUpstream", code: 1, userInfo: [NSLocalizedDescriptionKey: "aiosmtpd did not start: \(runner.output)"])
        }
    }

    /// Messages received so far, oldest first.
    public func messages() -> [String] {
        let names = ((try? FileManager.default.contentsOfDirectory(atPath: outbox)) ?? []).filter { $0.hasSuffix(".eml") }
        return names.sorted { (Int($0.dropLast(4)) ?? 0) < (Int($1.dropLast(4)) ?? 0) }
            .compactMap { try? String(contentsOfFile: outbox + "/" + $0, encoding: .utf8) }
    }

    public var log: String { runner.output }

    public func stop() { runner.stop() }
}
