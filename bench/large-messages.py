#!/usr/bin/env python3
"""Large-message memory check for Postern (issue #20); bench/run.sh's `large` phase runs it.

Sends COUNT messages of SIZE octets at once (one connection each) to the device listener (plaintext) or the
submission listener (STARTTLS, AUTH PLAIN), while sampling the gateway's RSS; then waits until the sink's
outbox holds every message and checks each against the SHA-256 of what was sent (matched by Message-ID).
Bodies are base64 lines from a per-message seeded generator, made and hashed chunk by chunk, so this
script's memory does not grow with SIZE either. Prints one RESULT line. Every wait is bounded (--timeout).
"""
import argparse, base64, hashlib, os, random, re, socket, ssl, sys, threading, time

p = argparse.ArgumentParser()
p.add_argument("--port", type=int, required=True)
p.add_argument("--mode", choices=["device", "submission"], default="device")
p.add_argument("--count", type=int, default=50)
p.add_argument("--size", type=int, default=20_000_000)
p.add_argument("--pid", type=int, required=True, help="the gateway's process id (its RSS is sampled)")
p.add_argument("--outbox", required=True, help="the sink's outbox directory")
p.add_argument("--sender", default="scanner@example.edu")
p.add_argument("--to", default="bob@example.edu")
p.add_argument("--user"); p.add_argument("--password"); p.add_argument("--ca")
p.add_argument("--timeout", type=int, default=600)
p.add_argument("--label", default="large")
args = p.parse_args()
deadline = time.time() + args.timeout


def status_kib(field):
    with open(f"/proc/{args.pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


rest_kib = status_kib("VmRSS")
peak_kib = rest_kib
sampling = True


def sample():
    global peak_kib
    while sampling:
        try:
            peak_kib = max(peak_kib, status_kib("VmRSS"))
        except OSError:
            return
        time.sleep(0.02)


def body_chunks(seed, size):
    """Base64 lines (76 + CRLF) from a generator seeded by the message number, SIZE octets in all."""
    rng = random.Random(seed)
    left = size
    while left > 0:
        raw = rng.randbytes(57 * 1024)  # 1024 lines
        text = base64.b64encode(raw)
        lines = b"\r\n".join(text[i:i + 76] for i in range(0, len(text), 76)) + b"\r\n"
        chunk = lines[:left]
        if len(chunk) < len(lines) and not chunk.endswith(b"\r\n"):
            chunk = chunk[:-2] + b"\r\n" if len(chunk) >= 2 else b"\r\n"
        left -= len(chunk)
        yield chunk


results = {}
errors = []


def send(n):
    message_id = f"<large-{n}-{os.getpid()}@bench.example.edu>"
    digest = hashlib.sha256()
    try:
        s = socket.create_connection(("127.0.0.1", args.port), timeout=max(5, deadline - time.time()))
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line:
                    raise RuntimeError("connection closed")
                if line[3:4] != b"-":
                    return line.decode().strip()

        def command(text, expect):
            s.sendall(text.encode() + b"\r\n")
            r = reply()
            if not r.startswith(expect):
                raise RuntimeError(f"{text.split()[0]}: {r}")

        reply()
        command("EHLO bench.example.edu", "250")
        if args.mode == "submission":
            command("STARTTLS", "220")
            context = ssl.create_default_context(cafile=args.ca)
            s = context.wrap_socket(s, server_hostname="localhost")
            f = s.makefile("rb")
            command("EHLO bench.example.edu", "250")
            token = base64.b64encode(f"\0{args.user}\0{args.password}".encode()).decode()
            command(f"AUTH PLAIN {token}", "235")
        command(f"MAIL FROM:<{args.sender}>", "250")
        command(f"RCPT TO:<{args.to}>", "250")
        command("DATA", "354")
        header = (f"From: <{args.sender}>\r\nTo: <{args.to}>\r\nSubject: large message {n}\r\n"
                  f"Message-ID: {message_id}\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream\r\n"
                  f"Content-Transfer-Encoding: base64\r\n\r\n").encode()
        s.sendall(header)
        for chunk in body_chunks(n, args.size - len(header)):
            digest.update(chunk)
            s.sendall(chunk)  # base64 lines never start with a dot: nothing to stuff
        s.sendall(b".\r\n")
        r = reply()
        if not r.startswith("250"):
            raise RuntimeError(f"end of data: {r}")
        results[message_id] = digest.hexdigest()
        s.sendall(b"QUIT\r\n")
        s.close()
    except Exception as e:  # one line per failure; the RESULT counts them
        errors.append(f"message {n}: {e}")


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t0 = time.time()
threads = [threading.Thread(target=send, args=(n,)) for n in range(args.count)]
for t in threads: t.start()
for t in threads: t.join(max(0, deadline - time.time()))
accepted_seconds = time.time() - t0

# Every accepted message must reach the sink's outbox, whole.
verified, mismatched, found = 0, 0, {}
while time.time() < deadline:
    for name in os.listdir(args.outbox):
        if not name.endswith(".eml") or name in found.values():
            continue
        path = os.path.join(args.outbox, name)
        with open(path, "rb") as fh:
            head = fh.read(65536)
        m = re.search(rb"\r\nMessage-ID: (<[^>]+>)\r\n", head)
        if m and m.group(1).decode() in results:
            found[m.group(1).decode()] = name
    if len(found) >= len(results):
        break
    time.sleep(0.2)
relayed_seconds = time.time() - t0
sampling = False
sampler.join()
hwm_kib = status_kib("VmHWM")
for message_id, name in found.items():
    digest = hashlib.sha256()
    with open(os.path.join(args.outbox, name), "rb") as fh:
        data = fh.read(65536)
        end = data.index(b"\r\n\r\n") + 4
        digest.update(data[end:])
        while True:
            block = fh.read(1 << 20)
            if not block:
                break
            digest.update(block)
    # The sink's copy ends with the message; the line after the body is the message's own last CRLF.
    if digest.hexdigest() == results[message_id]:
        verified += 1
    else:
        mismatched += 1
for e in errors[:5]:
    print(f"large-messages: {e}", file=sys.stderr)
print(f"RESULT label={args.label} mode={args.mode} messages={args.count} size={args.size} accepted={len(results)} "
      f"failed={len(errors)} arrived={len(found)} intact={verified} mismatched={mismatched} "
      f"accept_seconds={accepted_seconds:.2f} relayed_seconds={relayed_seconds:.2f} "
      f"rss_rest_mib={rest_kib / 1024:.1f} rss_peak_sampled_mib={peak_kib / 1024:.1f} vmhwm_mib={hwm_kib / 1024:.1f} "
      f"growth_mib={(max(peak_kib, hwm_kib) - rest_kib) / 1024:.1f}")
