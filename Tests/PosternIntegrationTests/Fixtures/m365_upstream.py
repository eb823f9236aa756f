#!/usr/bin/python3
"""A stand-in for Microsoft 365 on loopback, for M365UpstreamTests: an OAuth 2.0 token endpoint over HTTPS and an
SMTP upstream that takes XOAUTH2 and PLAIN after STARTTLS with a client certificate. Independent of Postern's code:
PyJWT (python3-jwt) checks the client assertions, aiosmtpd (python3-aiosmtpd) speaks SMTP.

Token endpoint (RFC 6749 4.4): POST /tenant/oauth2/v2.0/token with grant_type=client_credentials, the client id, the
scope, and either client_secret or a private_key_jwt client_assertion (RFC 7523) whose signature is checked against
the registered client certificate, whose x5t names that certificate, whose aud is this endpoint, iss and sub the
client id, and whose jti is not replayed. Errors answer as Entra ID does (401 invalid_client, AADSTS text).

Upstream: EHLO offers AUTH LOGIN PLAIN XOAUTH2 after STARTTLS only; MAIL needs AUTH. XOAUTH2's initial response
must be exactly base64("user=<mailbox>\\x01auth=Bearer <token>\\x01\\x01") with a token this endpoint issued that
has neither expired nor been revoked; a refusal is 535 5.7.3 like Exchange Online's, or with --error-challenge a
334 with base64 JSON first (the SASL error form) and then 535.

Control: one command per line on standard input (revoke, down, up, lifetime N); the state (ports, tokens issued,
AUTH attempts, messages) is rewritten as JSON to --state after every event, with `commands` counting the commands
done.
"""
import argparse, asyncio, base64, hashlib, json, os, secrets, ssl, sys, threading, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

parser = argparse.ArgumentParser()
parser.add_argument("--certs", required=True)
parser.add_argument("--state", required=True)
parser.add_argument("--client-id", required=True)
parser.add_argument("--client-secret", required=True)
parser.add_argument("--client-certificate", required=True, help="the certificate registered for private_key_jwt")
parser.add_argument("--mailbox", required=True)
parser.add_argument("--plain-user", required=True)
parser.add_argument("--plain-password", required=True)
parser.add_argument("--lifetime", type=int, default=3600)
parser.add_argument("--scope", default="https://outlook.office365.com/.default")
parser.add_argument("--close-after-message", action="store_true", help="close the SMTP connection after each message")
parser.add_argument("--drop-reused-session", action="store_true",
                    help="close a session without a reply at its second MAIL (an upstream that closed an idle session just as it was reused)")
parser.add_argument("--error-challenge", action="store_true", help="refuse XOAUTH2 with a 334 error challenge first")
args = parser.parse_args()

lock = threading.RLock()
state = {"dropped": 0, "token_port": 0, "smtp_port": 0, "commands": 0, "token_requests": [], "tokens_issued": 0, "issued": [],
         "auth": [], "messages": [], "endpoint": "up"}
tokens = {}  # token -> {"expires": float, "revoked": bool}
seen_jti = set()
with open(args.client_certificate, "rb") as f:
    registered = x509.load_pem_x509_certificate(f.read())
registered_der = registered.public_bytes(Encoding.DER)
registered_x5t = base64.urlsafe_b64encode(hashlib.sha1(registered_der).digest()).rstrip(b"=").decode()


def save():
    with lock:
        tmp = args.state + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, args.state)


def server_context(require_client_certificate):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(os.path.join(args.certs, "server.pem"), os.path.join(args.certs, "server.key"))
    if require_client_certificate:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(os.path.join(args.certs, "ca.pem"))
    return context


class TokenEndpoint(BaseHTTPRequestHandler):
    def log_message(self, *_):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def refuse(self, status, error, description, record):
        with lock:
            state["token_requests"].append(dict(record, ok=False, reason=error))
        save()
        self.answer(status, {"error": error, "error_description": description})

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        form = {k: v[0] for k, v in urllib.parse.parse_qs(self.rfile.read(length).decode(), keep_blank_values=True).items()}
        url = "https://127.0.0.1:%d%s" % (self.server.server_address[1], self.path)
        record = {"client_auth": "assertion" if "client_assertion" in form else "secret" if "client_secret" in form else "none"}
        if self.path != "/tenant/oauth2/v2.0/token":
            return self.refuse(404, "not_found", "no such endpoint", record)
        if self.headers.get("Content-Type", "").split(";")[0] != "application/x-www-form-urlencoded":
            return self.refuse(400, "invalid_request", "AADSTS900144: form body expected", record)
        if form.get("grant_type") != "client_credentials":
            return self.refuse(400, "unsupported_grant_type", "AADSTS70003: grant_type must be client_credentials", record)
        if form.get("client_id") != args.client_id:
            return self.refuse(400, "unauthorized_client", "AADSTS700016: application not found in the directory", record)
        if form.get("scope") != args.scope:
            return self.refuse(400, "invalid_scope", "AADSTS70011: the scope is not valid", record)
        if "client_assertion" in form:
            if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                return self.refuse(400, "invalid_request", "AADSTS50027: client_assertion_type", record)
            assertion = form["client_assertion"]
            try:
                header = jwt.get_unverified_header(assertion)
                if header.get("x5t") != registered_x5t:
                    return self.refuse(401, "invalid_client", "AADSTS700027: the certificate with thumbprint x5t is not registered", record)
                claims = jwt.decode(assertion, registered.public_key(), algorithms=["RS256", "ES256"], audience=url,
                                    issuer=args.client_id, options={"require": ["exp", "aud", "iss", "sub", "jti", "nbf"]})
            except jwt.PyJWTError as error:
                return self.refuse(401, "invalid_client", "AADSTS700027: client assertion failed signature validation: %s" % error, record)
            if claims["sub"] != args.client_id or claims["exp"] - time.time() > 600:
                return self.refuse(401, "invalid_client", "AADSTS700023: bad subject or lifetime", record)
            with lock:
                if claims["jti"] in seen_jti:
                    return self.refuse(401, "invalid_client", "AADSTS700021: client assertion replayed", record)
                seen_jti.add(claims["jti"])
            record["alg"] = header.get("alg")
        elif form.get("client_secret") != args.client_secret:
            return self.refuse(401, "invalid_client", "AADSTS7000215: Invalid client secret provided.", record)
        token = secrets.token_urlsafe(32)
        with lock:
            tokens[token] = {"expires": time.time() + args.lifetime, "revoked": False}
            state["tokens_issued"] += 1
            state["issued"].append(token)  # for the tests that look for leaked secrets
            state["token_requests"].append(dict(record, ok=True))
        save()
        self.answer(200, {"token_type": "Bearer", "expires_in": args.lifetime, "ext_expires_in": args.lifetime, "access_token": token})


class TokenServer:
    def __init__(self):
        self.port = 0
        self.httpd = None
        self.start()

    def start(self):
        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True
        self.httpd = Server(("127.0.0.1", self.port), TokenEndpoint)
        self.httpd.socket = server_context(False).wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class Upstream:
    async def auth_XOAUTH2(self, server, arguments):
        blob = arguments[1] if len(arguments) > 1 else None
        if blob is None:
            response = await server.challenge_auth("")
            if not isinstance(response, bytes):
                return AuthResult(success=False, handled=True)
        else:
            try:
                response = base64.b64decode(blob, validate=True)
            except Exception:
                await server.push("501 5.5.2 Can't decode base64")
                return AuthResult(success=False, handled=True)
        text = response.decode("utf-8", "replace")
        reason = None
        if not text.startswith("user=") or not text.endswith("\x01\x01") or "\x01auth=Bearer " not in text:
            reason = "not an XOAUTH2 string"
        else:
            user, token = text[5:-2].split("\x01auth=Bearer ", 1)
            entry = tokens.get(token)
            if user != args.mailbox:
                reason = "wrong mailbox %s" % user
            elif entry is None:
                reason = "unknown token"
            elif entry["revoked"]:
                reason = "revoked token"
            elif entry["expires"] <= time.time():
                reason = "expired token"
        with lock:
            state["auth"].append({"mechanism": "XOAUTH2", "ok": reason is None, "reason": reason})
        save()
        if reason is None:
            return AuthResult(success=True, auth_data=LoginPassword(args.mailbox.encode(), b""))
        if args.error_challenge:
            error = json.dumps({"status": "401", "schemes": "bearer", "scope": args.scope})
            await server.challenge_auth(error)
        await server.push("535 5.7.3 Authentication unsuccessful")
        return AuthResult(success=False, handled=True)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if args.drop_reused_session and getattr(session, "messages", 0) > 0:
            with lock:
                state["dropped"] += 1
            save()
            server.transport.close()
            return "421 4.4.2 (never seen: the connection is closed)"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        session.messages = getattr(session, "messages", 0) + 1
        with lock:
            state["messages"].append({"from": envelope.mail_from, "to": envelope.rcpt_tos,
                                      "login": getattr(session.auth_data, "login", b"").decode(), "size": len(envelope.content)})
        save()
        if args.close_after_message:
            # Right after the 250 is written (the next turn of the loop, before the client can answer it): a
            # delayed close could fall into the next transaction on this session, after its message was sent,
            # and a lost reply is a duplicate at the next attempt, correct for SMTP but not what this counts.
            asyncio.get_event_loop().call_soon(server.transport.close)
        return "250 2.6.0 Queued mail for delivery"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = (mechanism in ("PLAIN", "LOGIN") and isinstance(auth_data, LoginPassword)
          and auth_data.login.decode() == args.plain_user and auth_data.password.decode() == args.plain_password)
    with lock:
        state["auth"].append({"mechanism": mechanism, "ok": ok, "reason": None if ok else "wrong password"})
    save()
    return AuthResult(success=ok, auth_data=auth_data)


class UpstreamController(Controller):
    def factory(self):
        return SMTP(self.handler, hostname="mx.m365.test", tls_context=server_context(True), require_starttls=True,
                    auth_required=True, auth_require_tls=True, authenticator=authenticator)

    def _trigger_server(self):
        # The base class connects to self.port, which is 0 here: connect to the port bound and read the greeting.
        import socket
        with socket.create_connection(("127.0.0.1", self.server.sockets[0].getsockname()[1]), 2.0) as probe:
            probe.recv(1024)


def main():
    token_server = TokenServer()
    controller = UpstreamController(Upstream(), hostname="127.0.0.1", port=0)
    controller.start()
    with lock:
        state["token_port"] = token_server.port
        state["smtp_port"] = controller.server.sockets[0].getsockname()[1]
    save()
    for line in sys.stdin:
        command = line.split()
        if not command:
            continue
        with lock:
            if command[0] == "revoke":
                for entry in tokens.values():
                    entry["revoked"] = True
            elif command[0] == "down" and state["endpoint"] == "up":
                token_server.stop()
                state["endpoint"] = "down"
            elif command[0] == "up" and state["endpoint"] == "down":
                token_server.start()
                state["endpoint"] = "up"
            elif command[0] == "lifetime":
                args.lifetime = int(command[1])
            state["commands"] += 1
        save()
    controller.stop()


main()
