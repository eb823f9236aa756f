#!/usr/bin/env bash
# Runs Postern on its demo default, in the foreground:
#   device 127.0.0.1:2525, submission 127.0.0.1:2587 (STARTTLS), submissions 127.0.0.1:2465 (TLS)
#   -> durable spool var/spool -> mutual TLS -> `postern sink` on 127.0.0.1:2526 -> var/outbox/
# with a throwaway slapd (var/slapd, 127.0.0.1:3389 and ldaps 3636) holding the demo users.
# Ctrl-C stops all three.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="$(swift build --show-bin-path)/postern"
mkdir -p var/outbox var/spool
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  scripts/slapd-instance.sh stop var/slapd >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

scripts/slapd-instance.sh start var/slapd 3389 3636 policies/demo-directory.ldif certs
"$bin" sink --listen 127.0.0.1:2526 --tls starttls --cert certs/server.pem --key certs/server.key \
  --ca certs/ca.pem --outbox var/outbox --hostname sink.localhost &
pids+=($!)

cat <<'TEXT'
Postern demo
  device       127.0.0.1:2525   plaintext, registered devices only (127.0.0.1 = demo-scanner)
  submission   127.0.0.1:2587   STARTTLS + AUTH (alice / alice-demo-pass)
  submissions  127.0.0.1:2465   implicit TLS + AUTH
Mail is spooled in var/spool/ and relayed over mutual TLS to the demo sink, which writes var/outbox/.
Audit lines (JSON) go to standard output. Ctrl-C to stop.
TEXT
export POSTERN_LDAP_PASSWORD=postern-demo-pass
"$bin" serve --config policies/postern.yaml &
pids+=($!)
wait "${pids[-1]}"
