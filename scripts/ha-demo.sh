#!/usr/bin/env bash
# Two Postern nodes behind HAProxy (what `make ha-demo` runs), in the foreground:
#
#   clients ──► HAProxy 127.0.0.1:2525 device, :2587 submission, :2465 submissions  (TCP mode, send-proxy-v2,
#               │        connecting from 127.0.0.5; stats on http://127.0.0.1:8404/)
#               ├──► node1 127.0.0.1:2535 / 2597 / 2475, admin http://127.0.0.1:9035/health, spool var/ha/node1/spool
#               └──► node2 127.0.0.1:2545 / 2607 / 2485, admin http://127.0.0.1:9045/health, spool var/ha/node2/spool
#   both nodes: one policy directory (var/ha/policies, a scratch copy of policies/), the demo directory (slapd on
#   127.0.0.1:3389, ldaps 3636) and the demo upstream (`postern sink` on 127.0.0.1:2526, writing var/ha/outbox/).
#
# HAProxy checks each node's /health every 500 ms (two failures: down, two successes: up). On SIGTERM a node
# answers 503 `draining` for admin.drain-notice-seconds (3) while it still accepts, so HAProxy stops sending it
# new connections before it stops taking them; then it finishes the sessions in progress and exits. A node
# only trusts PROXY headers from 127.0.0.5 (proxy-protocol-from), so what policy, limits and the audit log see
# is the client's own address.
#
# A node that ends (kill -9, SIGTERM) is started again on its own spool after HA_RESTART_SECONDS (default 3),
# as a service manager would: what it had accepted and not yet relayed is delivered then. Its pid is in
# var/ha/nodeN.pid, its log in var/ha/nodeN.log, its audit log in var/ha/nodeN/audit.jsonl. Ctrl-C or SIGTERM
# stops everything and exits 0.
#
# Environment (for tests): DEMO_VAR (default var), DEMO_PORT_OFFSET (added to every port, default 0),
# POSTERN_BIN (default: the debug build's postern), HA_RESTART_SECONDS, HA_MAX_CONNECTIONS_PER_CLIENT (per
# node, default 50).
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${POSTERN_BIN:-$(swift build --show-bin-path)/postern}"
var="${DEMO_VAR:-var}"
offset="${DEMO_PORT_OFFSET:-0}"
restart="${HA_RESTART_SECONDS:-3}"
per_client="${HA_MAX_CONNECTIONS_PER_CLIENT:-50}"
haproxy=/usr/sbin/haproxy
[ -x "$haproxy" ] || { echo "ha-demo: $haproxy is missing: run make deps (it installs Debian's haproxy)" >&2; exit 1; }
port() { echo $(( $1 + offset )); }
mkdir -p "$var/ha/outbox" "$var/ha/node1/spool" "$var/ha/node2/spool"
root="$(pwd)"
ha="$(cd "$var/ha" && pwd)"
rm -f "$ha/stopping"

pids=()
supervisors=()
stopping=0
cleanup() {
  touch "$ha/stopping"
  for node in node1 node2; do
    [ -s "$ha/$node.pid" ] && kill -TERM "$(cat "$ha/$node.pid")" 2>/dev/null || true
  done
  # A supervisor returns once its node has drained and exited.
  for pid in "${supervisors[@]}"; do wait "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/slapd-instance.sh stop "$ha/slapd" >/dev/null 2>&1 || true
}
stop() {
  [ "$stopping" = 1 ] && return
  stopping=1
  echo "ha-demo: stopping (each node finishes the sessions in progress first)" >&2
  cleanup
  trap - EXIT
  exit 0
}
trap stop INT TERM
trap cleanup EXIT

# One policy directory for both nodes: a scratch copy, made on the first run (`make clean-var` starts over).
if [ ! -d "$ha/policies" ]; then
  mkdir -p "$ha/policies.tmp"
  cp -R policies/. "$ha/policies.tmp/"
  rm -f "$ha/policies.tmp/postern.yaml"
  mv "$ha/policies.tmp" "$ha/policies"
fi

# node N: listeners at base+10*N, admin at 9025+10*N.
node_config() {
  local n=$1
  cat <<YAML
# Node $n of the HA demo (written by scripts/ha-demo.sh).
hostname: node$n.localhost
policies: $ha/policies
tls:
  certificate: $root/certs/server.pem
  key: $root/certs/server.key
limits:
  max-connections-per-client: $per_client
  max-connections: 20000
listeners:
  - { name: device, kind: device, listen: "127.0.0.1:$(port $((2525 + 10 * n)))", proxy-protocol-from: [127.0.0.5] }
  - { name: submission, kind: submission, listen: "127.0.0.1:$(port $((2587 + 10 * n)))", proxy-protocol-from: [127.0.0.5] }
  - { name: submissions, kind: submissions, listen: "127.0.0.1:$(port $((2465 + 10 * n)))", proxy-protocol-from: [127.0.0.5] }
directory:
  uris: [ldaps://127.0.0.1:$(port 3636)]
  ca-file: $root/certs/ca.pem
  bind-dn: cn=postern,ou=services,dc=example,dc=edu
  bind-password-env: POSTERN_LDAP_PASSWORD
  search-base: ou=people,dc=example,dc=edu
  user-filter: (&(objectClass=inetOrgPerson)(uid=%s))
  address-attributes: [mail, mailAlternateAddress]
  group-attribute: memberOf
  group-base: ou=groups,dc=example,dc=edu
  required-groups: [mail-submitters]
delivery:
  spool: $ha/node$n/spool
  relay:
    upstreams:
      - { name: demo-sink, host: 127.0.0.1, port: $(port 2526), tls: starttls, server-name: localhost,
          ca-file: $root/certs/ca.pem, certificate: $root/certs/client.pem, key: $root/certs/client.key, max-connections: 4 }
    default: demo-sink
    retry: { initial-seconds: 10, max-seconds: 600, expire-hours: 120 }
audit:
  output: $ha/node$n/audit.jsonl
admin:
  listen: "127.0.0.1:$(port $((9025 + 10 * n)))"
  drain-notice-seconds: 3
YAML
}
node_config 1 > "$ha/node1/postern.yaml"
node_config 2 > "$ha/node2/postern.yaml"

backend() {
  local name=$1 base=$2
  cat <<CFG
frontend $name
  bind 127.0.0.1:$(port "$base")
  option tcplog
  default_backend $name
backend $name
  balance roundrobin
  source 127.0.0.5
  option httpchk
  http-check send meth GET uri /health ver HTTP/1.1 hdr Host localhost
  http-check expect status 200
  server node1 127.0.0.1:$(port $((base + 10))) port $(port 9035)
  server node2 127.0.0.1:$(port $((base + 20))) port $(port 9045)
CFG
}
{
  cat <<CFG
# HAProxy in front of the two demo nodes (written by scripts/ha-demo.sh; docs/production.md explains it).
global
  maxconn 4000
  stats socket $ha/haproxy.sock mode 600 level admin
  log stdout format raw local0 info
defaults
  mode tcp
  log global
  timeout connect 2s
  timeout client 5m
  timeout server 5m
  timeout check 2s
  # A node that refuses the connection (killed, or past its drain notice) is not the client's problem: the
  # connection is tried again, on the other node.
  retries 3
  option redispatch 1
  default-server check inter 500ms fall 2 rise 2 send-proxy-v2
listen stats
  mode http
  bind 127.0.0.1:$(port 8404)
  stats enable
  stats uri /
  stats refresh 2s
CFG
  backend device 2525
  backend submission 2587
  backend submissions 2465
} > "$ha/haproxy.cfg"
"$haproxy" -c -q -f "$ha/haproxy.cfg"

scripts/slapd-instance.sh start "$ha/slapd" "$(port 3389)" "$(port 3636)" policies/demo-directory.ldif certs
"$bin" sink --listen "127.0.0.1:$(port 2526)" --tls starttls --cert certs/server.pem --key certs/server.key \
  --ca certs/ca.pem --outbox "$ha/outbox" --hostname sink.localhost >"$ha/sink.log" 2>&1 &
pids+=($!)
echo $! > "$ha/sink.pid"
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$(port 2526)") 2>/dev/null && break
  sleep 0.1
done

export POSTERN_LDAP_PASSWORD=postern-demo-pass
# Runs a node, and runs it again on its spool when it ends, until the demo stops.
# A signal for the whole process group (Ctrl-C, a test's SIGTERM) must not end the supervisor before its node
# has drained: it is caught (not ignored, so the node does not inherit it ignored) and the wait goes on.
supervise() {
  local node=$1 status child
  trap 'true' TERM INT
  while :; do
    "$bin" serve --config "$ha/$node/postern.yaml" >>"$ha/$node.log" 2>&1 &
    child=$!
    echo "$child" > "$ha/$node.pid"
    while :; do
      status=0
      wait "$child" || status=$?
      kill -0 "$child" 2>/dev/null || break
    done
    [ -e "$ha/stopping" ] && return 0
    echo "ha-demo: $node ended (status $status); starting it again on its spool in ${restart} s" >&2
    sleep "$restart"
    [ -e "$ha/stopping" ] && return 0
    echo "ha-demo: $node starting again" >&2
  done
}
supervise node1 &
supervisors+=($!)
supervise node2 &
supervisors+=($!)
for node in 1 2; do
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$(port $((9025 + 10 * node)))/health" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
"$haproxy" -db -f "$ha/haproxy.cfg" >"$ha/haproxy.log" 2>&1 &
pids+=($!)
haproxy_pid=$!

cat <<TEXT
Postern HA demo: HAProxy (TCP, send-proxy-v2) in front of two nodes
  device        127.0.0.1:$(port 2525)   plaintext, registered devices only (127.0.0.1 = demo-scanner)
  submission    127.0.0.1:$(port 2587)   STARTTLS + AUTH (alice / alice-demo-pass)
  submissions   127.0.0.1:$(port 2465)   implicit TLS + AUTH
  haproxy stats http://127.0.0.1:$(port 8404)/   (;csv for the numbers)
  node1         http://127.0.0.1:$(port 9035)/health and /metrics   pid in $ha/node1.pid, log $ha/node1.log
  node2         http://127.0.0.1:$(port 9045)/health and /metrics   pid in $ha/node2.pid, log $ha/node2.log
  upstream      127.0.0.1:$(port 2526)   the demo sink (mutual TLS), writes $ha/outbox/
Policy: one scratch copy for both nodes, $ha/policies/. Spools: $ha/node1/spool, $ha/node2/spool.
Try: kill -9 \$(cat $ha/node1.pid)   or   kill -TERM \$(cat $ha/node1.pid)   (started again after ${restart} s)
Ctrl-C to stop.
TEXT
# HAProxy ended on its own (a port in use): its status is the demo's.
wait "$haproxy_pid"
