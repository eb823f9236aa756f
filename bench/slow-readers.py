#!/usr/bin/env python3
"""Slow readers: connections that send HELP and NOOP as fast as the gateway takes them and never read a reply.

  slow-readers.py attack PORT COUNT SECONDS
      The attack alone, from 127.0.0.2 (SlowReaderTests runs this against the real binary). One thread,
      non-blocking sockets. A connection the gateway closes is replaced while the attack lasts; then the
      script keeps writing to what is left until every connection it opened first is closed (40 s at most).
      Last line: opened N closed N first_closed N.

  slow-readers.py measure BINARY [SECONDS]
      Starts `BINARY serve` on a free loopback port in a temporary directory (device listener, the
      repository's policies), attacks it with 20 connections for SECONDS (default 8) and prints what a new
      client saw (a connection every 0.1 s: time to its 220, then to the reply to EHLO), the gateway's RSS,
      and the kernel send queues of its connections. Everything it starts, it stops. See SECURITY.md.
"""
import os, select, shutil, signal, socket, subprocess, sys, tempfile, time

PAYLOAD = b"HELP\r\nNOOP\r\n" * 256


def attack(port, count, seconds):
    def connect():
        s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.2", 0))
        s.setblocking(False)
        return s
    live = [connect() for _ in range(count)]
    first = list(live)  # kept referenced, so their ids stay unique
    first_ids = {id(s) for s in first}
    print("started", flush=True)
    opened, closed, first_closed = count, 0, 0
    attack_ends = time.time() + seconds
    give_up = attack_ends + 40
    while time.time() < give_up and (time.time() < attack_ends or first_closed < count):
        _, writable, _ = select.select([], live, [], 0.1)
        for s in writable:
            try:
                s.send(PAYLOAD)
            except OSError:  # reset or broken pipe: the gateway closed it
                closed += 1
                first_closed += id(s) in first_ids
                live.remove(s)
                s.close()
                if time.time() < attack_ends:
                    live.append(connect())
                    opened += 1
    print("opened", opened, "closed", closed, "first_closed", first_closed, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def probe(port):
    """Seconds to the 220, and from EHLO to its reply."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")
        line = f.readline()
        greeted = time.monotonic()
        assert line.startswith(b"220 "), line
        s.sendall(b"EHLO probe.test\r\n")
        while True:
            line = f.readline()
            assert line.startswith(b"250"), line
            if line[3:4] == b" ":
                break
        return greeted - start, time.monotonic() - greeted


def resident_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def send_queues(port):
    """Total and largest tx_queue of established connections on local port `port` (Send-Q in `ss`)."""
    total = largest = 0
    with open("/proc/net/tcp") as f:
        for line in list(f)[1:]:
            fields = line.split()
            if fields[3] == "01" and int(fields[1].split(":")[1], 16) == port:
                queued = int(fields[4].split(":")[0], 16)
                total += queued
                largest = max(largest, queued)
    return total, largest


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def measure(binary, seconds):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = tempfile.mkdtemp(prefix="postern-slow-readers-")
    port = free_port()
    with open(os.path.join(work, "postern.yaml"), "w") as f:
        f.write("hostname: gw.test\npolicies: %s\nlimits: { max-connections-per-client: 500 }\n"
                "listeners:\n  - { name: device, kind: device, listen: \"127.0.0.1:%d\" }\n"
                "delivery: { outbox: %s/outbox }\naudit: { output: %s/audit.jsonl }\n"
                % (os.path.join(root, "policies"), port, work, work))
    log = open(os.path.join(work, "serve.log"), "w")
    server = subprocess.Popen([binary, "serve", "--config", os.path.join(work, "postern.yaml"), "--log-level", "warning"],
                              stdout=log, stderr=log)
    attacker = None
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("postern did not start; see " + log.name)
                time.sleep(0.05)
        quiet = [probe(port)[0] for _ in range(20)]
        before = resident_kib(server.pid)
        attacker = subprocess.Popen([sys.executable, os.path.abspath(__file__), "attack", str(port), "20", str(seconds)],
                                    stdout=subprocess.PIPE, text=True)
        assert attacker.stdout.readline().startswith("started")
        time.sleep(1.5)
        greetings, ehlos, peak, total, largest = [], [], before, 0, 0
        ends = time.time() + seconds - 2
        while time.time() < ends:
            greeting, ehlo = probe(port)
            greetings.append(greeting)
            ehlos.append(ehlo)
            peak = max(peak, resident_kib(server.pid))
            t, l = send_queues(port)
            total, largest = max(total, t), max(largest, l)
            time.sleep(0.1)
        result = attacker.stdout.read().strip().splitlines()[-1]
        attacker.wait()
        time.sleep(1)
        after = resident_kib(server.pid)
        ms = lambda s: "%.1f" % (s * 1000)
        print("greeting without attack: p50 %s ms, max %s ms" % (ms(percentile(quiet, 0.5)), ms(max(quiet))))
        print("under attack (%d clients): greeting p50 %s ms, max %s ms; EHLO reply p50 %s ms, max %s ms"
              % (len(greetings), ms(percentile(greetings, 0.5)), ms(max(greetings)), ms(percentile(ehlos, 0.5)), ms(max(ehlos))))
        print("gateway RSS: before %d MiB, peak %d MiB, after %d MiB" % (before // 1024, peak // 1024, after // 1024))
        print("kernel send queues of the gateway's connections: total up to %d KiB, largest %d KiB" % (total // 1024, largest // 1024))
        print("attacker:", result)
    finally:
        if attacker and attacker.poll() is None:
            attacker.kill()
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=40)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "attack":
        attack(int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]))
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "measure":
        measure(os.path.abspath(sys.argv[2]), float(sys.argv[3]) if len(sys.argv) == 4 else 8)
    else:
        sys.exit(__doc__)
