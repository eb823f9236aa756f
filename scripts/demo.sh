#!/usr/bin/env bash
# Runs Postern on its demo default, in the foreground:
#   device 127.0.0.1:2525, submission 127.0.0.1:2587 (STARTTLS), submissions 127.0.0.1:2465 (TLS)
#   -> durable spool var/spool -> mutual TLS -> `postern sink` on 127.0.0.1:2526 -> var/outbox/
# with a throwaway slapd (var/slapd, 127.0.0.1:3389 and ldaps 3636) holding the demo users, the
# registration page on https://127.0.0.1:8443/ and the metrics on http://127.0.0.1:9025/metrics.
#
# The gateway runs on a scratch copy of the policy files, var/demo/policies/, made on the first run
# (`make clean-var` starts over): approvals on the page and `postern devices add` change the copy,
# never the tracked policies/. var/demo/postern.yaml is policies/postern.yaml with its paths pointed
# there. Ctrl-C (SIGINT) or SIGTERM stops the gateway (it drains), the sink and slapd, and exits 0.
#
# Environment (for tests): DEMO_VAR (default var), DEMO_PORT_OFFSET (added to every port, default 0),
# POSTERN_BIN (default: the debug build's postern).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${POSTERN_BIN:-$(swift build --show-bin-path)/postern}"
var="${DEMO_VAR:-var}"
offset="${DEMO_PORT_OFFSET:-0}"
port() { echo $(( $1 + offset )); }
mkdir -p "$var/outbox" "$var/spool" "$var/demo"

pids=()
stopping=0
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/slapd-instance.sh stop "$var/slapd" >/dev/null 2>&1 || true
}
stop() {
  [ "$stopping" = 1 ] && return
  stopping=1
  echo "demo: stopping (the gateway finishes the sessions in progress first)" >&2
  cleanup
  trap - EXIT
  exit 0
}
trap stop INT TERM
trap cleanup EXIT

# The scratch policy copy, and the configuration pointing at it (paths are relative to the file).
if [ ! -d "$var/demo/policies" ]; then
  mkdir -p "$var/demo/policies.tmp"
  cp -R policies/. "$var/demo/policies.tmp/"
  rm -f "$var/demo/policies.tmp/postern.yaml"
  mv "$var/demo/policies.tmp" "$var/demo/policies"
fi
root="$(pwd)"
varpath="$(cd "$var" && pwd)"
sed -e "s|^policies: \.$|policies: $varpath/demo/policies|" \
    -e "s|\.\./certs/|$root/certs/|g" -e "s|\.\./var/|$varpath/|g" \
    -e "s|127\.0\.0\.1:2525|127.0.0.1:$(port 2525)|; s|127\.0\.0\.1:2587|127.0.0.1:$(port 2587)|" \
    -e "s|127\.0\.0\.1:2465|127.0.0.1:$(port 2465)|; s|127\.0\.0\.1:9025|127.0.0.1:$(port 9025)|" \
    -e "s|127\.0\.0\.1:8443|127.0.0.1:$(port 8443)|; s|port: 2526|port: $(port 2526)|" \
    -e "s|ldaps://127\.0\.0\.1:3636|ldaps://127.0.0.1:$(port 3636)|" \
    policies/postern.yaml > "$var/demo/postern.yaml"

scripts/slapd-instance.sh start "$var/slapd" "$(port 3389)" "$(port 3636)" policies/demo-directory.ldif certs
"$bin" sink --listen "127.0.0.1:$(port 2526)" --tls starttls --cert certs/server.pem --key certs/server.key \
  --ca certs/ca.pem --outbox "$var/outbox" --hostname sink.localhost &
pids+=($!)
# The gateway relays at once when it has something to send (a sunset reminder, mail left in the spool): a sink
# that is not listening yet would back the upstream off for a minute. So the sink listens first.
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$(port 2526)") 2>/dev/null && break
  sleep 0.1
done

stale=""
if [ -n "$(find policies -newer "$var/demo/policies" -name '*.yaml' ! -name postern.yaml -print -quit)" ]; then
  stale="
  (policies/ changed since this copy was made; \`make clean-var\` to start from the tracked files)"
fi
cat <<TEXT
Postern demo
  device        127.0.0.1:$(port 2525)   plaintext, registered devices only (127.0.0.1 = demo-scanner)
  submission    127.0.0.1:$(port 2587)   STARTTLS + AUTH
  submissions   127.0.0.1:$(port 2465)   implicit TLS + AUTH
  registration  https://127.0.0.1:$(port 8443)/   the device registration page
  metrics       http://127.0.0.1:$(port 9025)/metrics   and /health
  upstream      127.0.0.1:$(port 2526)   the demo sink (mutual TLS), writes $var/outbox/
  directory     ldaps://127.0.0.1:$(port 3636) (ldap 127.0.0.1:$(port 3389)), the demo users:
    alice / alice-demo-pass     may submit (alice@example.edu, a.smith@example.edu); page admin
    bob / bob-demo-pass         IT Services' device contact on the page; not in mail-submitters
    webapp / webapp-demo-pass   a service account (policy.yaml service-accounts)
Policy: a scratch copy in $var/demo/policies/ (approvals change it, not policies/).$stale
Mail is spooled in $var/spool/ and relayed over mutual TLS to the demo sink.
Audit lines (JSON) go to standard output. Ctrl-C to stop.
TEXT
export POSTERN_LDAP_PASSWORD=postern-demo-pass
"$bin" serve --config "$var/demo/postern.yaml" &
pids+=($!)
# The gateway ended on its own (a port in use, a bad configuration): its status is the demo's.
wait "${pids[-1]}"
