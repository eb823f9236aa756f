#!/usr/bin/python3
"""Bounded SMTP load that behaves like a well-behaved client of a gateway pair (the HA tests and `make ha-demo`).

Each of --clients threads keeps a connection and sends messages over it, each with a unique X-HA-Id header, until
--messages have been accepted in all or --seconds have passed. What a client does when something goes wrong is what
a mail client or a relaying MTA does: on a 4xx reply, a connection refused or closed, or a timeout, it reconnects
after a short pause and sends the same message again. A 5xx reply is final.

Every outcome is classified, so that a test can say what a client could and could not have retried:
  accepted       250 at the end of DATA
  temporary      a 4xx reply (421 while a node drains, for example)
  before-greeting  connection refused, or closed before the 220 greeting
  cut            the connection ended mid-transaction, before the end of the message was sent: nothing was
                 accepted, the client sends again (a node killed under it)
  unanswered     the connection ended after the whole message was sent and before its reply: the client
                 cannot know whether it was accepted, sends again, and may deliver it twice
  refused        a 5xx reply

Prints a JSON summary on stdout; with --accepted FILE writes the accepted ids there, one a line. The failover
time is, per client, the time from its first failure to its next 250; the summary gives the longest.

Usage: ha-load.py --port 2525 [--host 127.0.0.1] [--source 127.0.0.1] [--clients 6] [--messages 300]
                  [--seconds 60] [--pause 0.05] [--prefix run1] [--accepted FILE] [--from scanner@example.edu] [--to bob@example.edu]
"""
import argparse
import json
import socket
import sys
import threading
import time


class Failure(Exception):
    def __init__(self, kind, detail):
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Client:
    """One SMTP connection, reading whole (multi-line) replies."""

    def __init__(self, host, port, source, timeout):
        self.greeted = False
        try:
            self.sock = socket.create_connection((host, port), timeout=timeout, source_address=(source, 0))
        except OSError as error:
            raise Failure("before-greeting", "connect: %s" % error)
        self.file = self.sock.makefile("rb")
        code, text = self.reply("greeting")
        if code != 220:
            raise Failure("temporary" if 400 <= code < 500 else "refused", "greeting: %s" % text)
        self.greeted = True

    def reply(self, stage):
        lines = []
        while True:
            try:
                line = self.file.readline()
            except OSError as error:
                raise self.ended(stage, str(error))
            if not line:
                raise self.ended(stage, "connection closed")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                try:
                    return int(text[:3]), " | ".join(lines)
                except ValueError:
                    raise Failure("cut", "%s: not a reply: %r" % (stage, text))

    def ended(self, stage, detail):
        if not self.greeted:
            return Failure("before-greeting", "%s: %s" % (stage, detail))
        if stage == "end of data":
            return Failure("unanswered", "%s: %s" % (stage, detail))
        return Failure("cut", "%s: %s" % (stage, detail))

    def command(self, line, stage, expect):
        try:
            self.sock.sendall(line.encode() + b"\r\n")
        except OSError:
            # The server may have said why it closed (421 while draining) before the write failed: that reply counts.
            pass
        code, text = self.reply(stage)
        if code != expect:
            raise Failure("temporary" if 400 <= code < 500 else "refused", "%s: %s" % (stage, text))
        return text

    def send(self, sender, recipient, message_id, body):
        self.command("MAIL FROM:<%s>" % sender, "mail", 250)
        self.command("RCPT TO:<%s>" % recipient, "rcpt", 250)
        self.command("DATA", "data", 354)
        message = ("From: <%s>\r\nTo: <%s>\r\nSubject: ha load %s\r\nX-HA-Id: %s\r\n\r\n%s\r\n.\r\n"
                   % (sender, recipient, message_id, message_id, body))
        try:
            self.sock.sendall(message.encode())
        except OSError as error:
            # Part of the message may have gone; without its final dot nothing can have been accepted.
            raise Failure("cut", "data: %s" % error)
        code, text = self.reply("end of data")
        if code != 250:
            raise Failure("temporary" if 400 <= code < 500 else "refused", "end of data: %s" % text)
        return text

    def close(self):
        try:
            self.sock.sendall(b"QUIT\r\n")
        except OSError:
            pass
        try:
            self.sock.close()
        except OSError:
            pass


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="127.0.0.1")
    parser.add_argument("--clients", type=int, default=6)
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--pause", type=float, default=0, help="seconds each client waits between messages")
    parser.add_argument("--per-connection", type=int, default=20, help="messages before a client reconnects on its own")
    parser.add_argument("--prefix", default="ha")
    parser.add_argument("--accepted")
    parser.add_argument("--from", dest="sender", default="scanner@example.edu")
    parser.add_argument("--to", dest="recipient", default="bob@example.edu")
    args = parser.parse_args()

    lock = threading.Lock()
    started = time.monotonic()
    deadline = started + args.seconds
    state = {"next": 0, "accepted": [], "failures": [], "outages": [], "refused": 0}
    body = "\r\n".join(["x" * 76] * 26)  # about 2 KB in lines of 76

    def next_id():
        with lock:
            if state["next"] >= args.messages:
                return None
            state["next"] += 1
            return "%s-%05d" % (args.prefix, state["next"])

    def worker():
        client = None
        sent_on_connection = 0
        down_since = None
        message_id = next_id()
        while message_id is not None and time.monotonic() < deadline:
            try:
                if client is None:
                    client = Client(args.host, args.port, args.source, timeout=15)
                    client.command("EHLO load.test", "ehlo", 250)
                    sent_on_connection = 0
                client.send(args.sender, args.recipient, message_id, body)
                now = time.monotonic()
                with lock:
                    state["accepted"].append(message_id)
                    if down_since is not None:
                        state["outages"].append(now - down_since)
                down_since = None
                message_id = next_id()
                sent_on_connection += 1
                if args.pause:
                    time.sleep(args.pause)
                if sent_on_connection >= args.per_connection:
                    client.close()
                    client = None
            except Failure as failure:
                now = time.monotonic()
                with lock:
                    state["failures"].append({"id": message_id, "kind": failure.kind, "detail": failure.detail,
                                              "at": round(now - started, 3)})
                if client is not None:
                    client.close()
                client = None
                if failure.kind == "refused":
                    with lock:
                        state["refused"] += 1
                    message_id = next_id()
                    continue
                if down_since is None:
                    down_since = now
                time.sleep(0.05)
        if client is not None:
            client.close()

    threads = [threading.Thread(target=worker) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    kinds = {}
    for failure in state["failures"]:
        kinds[failure["kind"]] = kinds.get(failure["kind"], 0) + 1
    if args.accepted:
        with open(args.accepted, "w") as out:
            out.write("".join(i + "\n" for i in state["accepted"]))
    print(json.dumps({
        "accepted": len(state["accepted"]),
        "unique_accepted": len(set(state["accepted"])),
        "seconds": round(time.monotonic() - started, 3),
        "failures": kinds,
        "failover_seconds": round(max(state["outages"]), 3) if state["outages"] else 0,
        "outages": len(state["outages"]),
        "examples": state["failures"][:12],
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
