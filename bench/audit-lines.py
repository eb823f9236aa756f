#!/usr/bin/env python3
"""Writes audit lines in the gateway's own format (one JSON object per line, keys sorted, as
JSONLineLogHandler writes them) for `bench/report.sh`: per message a connection, a MAIL and a RCPT decision
per recipient, the accepted event and one relay outcome per recipient, from 40 devices and 200 logins, a tenth
of the recipients external, 2% bounced, 1% deferred. The first parts are written as rotated files
(audit.jsonl.STAMP.gz) and the rest as the current file, as `audit.rotate` leaves them.

  audit-lines.py OUT LINES [ROTATED_PARTS]
"""
import gzip, json, random, sys, datetime

out, total = sys.argv[1], int(sys.argv[2])
parts = int(sys.argv[3]) if len(sys.argv) > 3 else 3
rng = random.Random(18)
start = datetime.datetime(2026, 11, 1, tzinfo=datetime.timezone.utc)

def line(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False) + "\n"

def stamp(t):
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (t.microsecond // 1000)

def messages():
    n = 0
    while True:
        n += 1
        t = start + datetime.timedelta(seconds=n * 2.5)
        session = "S%010d" % n
        qid = "00Q%017d" % n
        device = rng.random() < 0.6
        client = "10.1.%d.%d" % (rng.randrange(40), rng.randrange(1, 250))
        rcpts = []
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            if rng.random() < 0.1 and not device:
                rcpts.append("user%d@partner%d.example.org" % (rng.randrange(5000), rng.randrange(50)))
            else:
                rcpts.append("staff%d@%s" % (rng.randrange(20000), rng.choice(("example.edu", "chem.example.edu", "med.example.edu"))))
        external = [r for r in rcpts if not r.endswith("example.edu")]
        base = {"session": session, "time": stamp(t)}
        kind = "device" if device else "submission"
        yield line(dict(base, event="connection", listener=kind, kind=kind, client=client, client_port=str(40000 + n % 20000)))
        who = {"device": "dev-scanner-%d" % rng.randrange(40)} if device else {"login": "user%d" % rng.randrange(200)}
        sender = "scan@example.edu" if device else "%s@example.edu" % who["login"]
        yield line(dict(base, event="decision", stage="mail", sender="<%s>" % sender, result="accept", rule="allowed sender", **who))
        for r in rcpts:
            yield line(dict(base, event="decision", stage="rcpt", sender="<%s>" % sender, recipient="<%s>" % r, result="accept",
                            rule="internal-domains", **who))
        accepted = dict(base, event="accepted", queue_id=qid, sender="<%s>" % sender, recipients=["<%s>" % r for r in rcpts],
                        size=str(rng.randrange(2000, 3_000_000)), listener=kind, client=client,
                        message_id="<%d@%s>" % (n, client), external=["<%s>" % r for r in external], **who)
        yield line(accepted)
        t2 = stamp(t + datetime.timedelta(seconds=1))
        for r in rcpts:
            x = rng.random()
            outcome, reply = ("failed", "550 5.1.1 no such user") if x < 0.02 else ("deferred", "451 4.3.0 try later") if x < 0.03 \
                else ("delivered", "250 2.0.0 Ok: queued as %d" % n)
            yield line({"event": "relay", "queue_id": qid, "recipient": r, "upstream": "hub", "reply": reply, "attempt": "1",
                        "outcome": outcome, "time": t2})

gen = messages()
per_part = total // (parts + 1)
written = 0
for p in range(parts + 1):
    count = per_part if p < parts else total - written
    chunk = [next(gen) for _ in range(count)]
    written += count
    if p < parts:
        name = "%s.2026110%dT000000.000Z.gz" % (out, p + 1)
        with gzip.open(name, "wt", encoding="utf-8") as f:
            f.writelines(chunk)
    else:
        with open(out, "w", encoding="utf-8") as f:
            f.writelines(chunk)
print("wrote %d lines: %d rotated gzip files and %s" % (written, parts, out))
